"""AccessService over gRPC: decode, call the domain, encode. The caller is the one `api/auth.py` bound."""

from __future__ import annotations

import grpc

from flightline.server.access.authn import Identity, current
from flightline.server.access.roles import Role
from flightline.server.api import messages
from flightline.server.errors import InvalidArgument, Unauthenticated
from flightline.server.services.access import AccessService
from flightline.server.store.records import Member, TokenInfo, User
from flightline.v1 import access_pb2 as pb
from flightline.v1 import access_pb2_grpc

ROLES: dict[Role, pb.Role] = {
    Role.VIEWER: pb.ROLE_VIEWER,
    Role.EDITOR: pb.ROLE_EDITOR,
    Role.ADMIN: pb.ROLE_ADMIN,
}


def caller() -> Identity:
    identity = current()
    if identity is None:  # AuthInterceptor binds one for every call of this service
        raise Unauthenticated("no caller")
    return identity


class AccessServicer(access_pb2_grpc.AccessServiceServicer):
    def __init__(self, access: AccessService) -> None:
        self.access = access

    def WhoAmI(self, request: pb.WhoAmIRequest, context: grpc.ServicerContext) -> pb.WhoAmIResponse:
        me = caller()
        user = self.access.store.get_user(me.user_id)
        members = [
            _member(Member(w, me.user_id, me.name, role.label)) for w, role in sorted(me.roles.items())
        ]
        return pb.WhoAmIResponse(user=_user(user), memberships=members, token_id=me.token_id)

    def CreateUser(self, request: pb.CreateUserRequest, context: grpc.ServicerContext) -> pb.User:
        return _user(self.access.create_user(request.name, admin=request.admin))

    def ListUsers(self, request: pb.ListUsersRequest, context: grpc.ServicerContext) -> pb.ListUsersResponse:
        page = messages.keyset_page(
            request.page_size, messages.page_after(request.page_token), self.access.users, lambda u: u.id
        )
        return pb.ListUsersResponse(
            users=[_user(u) for u in page.items], next_page_token=page.next_page_token
        )

    def CreateToken(
        self, request: pb.CreateTokenRequest, context: grpc.ServicerContext
    ) -> pb.CreateTokenResponse:
        info, text = self.access.create_token(caller(), request.user_id, request.name, request.ttl_seconds)
        return pb.CreateTokenResponse(token=_token(info), secret=text)

    def ListTokens(
        self, request: pb.ListTokensRequest, context: grpc.ServicerContext
    ) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(
            tokens=[_token(t) for t in self.access.tokens(caller(), request.user_id)]
        )

    def RevokeToken(self, request: pb.RevokeTokenRequest, context: grpc.ServicerContext) -> pb.Token:
        return _token(self.access.revoke(caller(), request.token_id))

    def SetMember(self, request: pb.SetMemberRequest, context: grpc.ServicerContext) -> pb.Member:
        if request.role == pb.ROLE_UNSPECIFIED:
            raise InvalidArgument("role must be ROLE_VIEWER, ROLE_EDITOR or ROLE_ADMIN")
        return _member(self.access.set_member(request.workspace_id, request.user_id, Role(request.role)))

    def RemoveMember(
        self, request: pb.RemoveMemberRequest, context: grpc.ServicerContext
    ) -> pb.RemoveMemberResponse:
        self.access.remove_member(request.workspace_id, request.user_id)
        return pb.RemoveMemberResponse()

    def ListMembers(
        self, request: pb.ListMembersRequest, context: grpc.ServicerContext
    ) -> pb.ListMembersResponse:
        page = messages.keyset_page(
            request.page_size,
            messages.page_after(request.page_token),
            lambda limit, after: self.access.members(request.workspace_id, limit, after),
            lambda m: m.user_id,
        )
        return pb.ListMembersResponse(
            members=[_member(m) for m in page.items], next_page_token=page.next_page_token
        )


def _user(user: User) -> pb.User:
    return pb.User(
        id=user.id, name=user.name, admin=user.admin, create_time=messages.timestamp(user.created_at)
    )


def _token(token: TokenInfo) -> pb.Token:
    message = pb.Token(
        id=token.id, user_id=token.user_id, name=token.name, create_time=messages.timestamp(token.created_at)
    )
    if token.expires_at is not None:
        message.expire_time.CopyFrom(messages.timestamp(token.expires_at))
    if token.revoked_at is not None:
        message.revoke_time.CopyFrom(messages.timestamp(token.revoked_at))
    return message


def _member(member: Member) -> pb.Member:
    return pb.Member(
        workspace_id=member.workspace_id,
        user_id=member.user_id,
        user_name=member.user_name,
        role=ROLES[Role.parse(member.role)],
    )
