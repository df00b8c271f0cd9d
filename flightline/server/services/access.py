"""Users, API tokens and workspace members: the domain behind AccessService. Who may do what is checked
before (api/auth.py); here only what depends on the caller beyond its role: a token of someone else's is
a platform admin's business, and looks missing to anyone else."""

from __future__ import annotations

from datetime import timedelta

from flightline.server.access import tokens
from flightline.server.access.authn import Authenticator, Identity
from flightline.server.access.roles import Role
from flightline.server.errors import InvalidArgument, NotFound
from flightline.server.store.metadata import MetadataStore
from flightline.server.store.records import Member, TokenInfo, User
from flightline.server.store.tables import utc_now

MAX_TTL_SECONDS = 10 * 365 * 24 * 3600
MAX_TOKEN_NAME = 100


class AccessService:
    def __init__(self, store: MetadataStore, authenticator: Authenticator) -> None:
        self.store = store
        self.authenticator = authenticator

    def create_user(self, name: str, *, admin: bool = False) -> User:
        return self.store.create_user(name, admin=admin)

    def users(self, limit: int, after_id: int = 0) -> list[User]:
        return self.store.list_users(limit, after_id)

    def create_token(
        self, caller: Identity, user_id: int, name: str, ttl_seconds: int
    ) -> tuple[TokenInfo, str]:
        """(the token as stored, its text: shown this once)."""
        user = self._user_for(caller, user_id)
        if len(name) > MAX_TOKEN_NAME:
            raise InvalidArgument(f"name must be at most {MAX_TOKEN_NAME} characters, got {len(name)}")
        if not 0 <= ttl_seconds <= MAX_TTL_SECONDS:
            raise InvalidArgument(f"ttl_seconds must be 0 (never expires) to {MAX_TTL_SECONDS}")
        expires = utc_now() + timedelta(seconds=ttl_seconds) if ttl_seconds else None
        issued = tokens.new_token()
        info = self.store.add_token(user, issued.id, name, issued.salt, issued.digest, expires)
        return info, issued.text

    def tokens(self, caller: Identity, user_id: int) -> list[TokenInfo]:
        return self.store.list_tokens(self._user_for(caller, user_id))

    def revoke(self, caller: Identity, token_id: str) -> TokenInfo:
        try:
            token = self.store.get_token(token_id)
        except NotFound:
            raise NotFound(f"token {token_id!r} does not exist") from None
        if token.user_id != caller.user_id and not caller.admin:
            raise NotFound(f"token {token_id!r} does not exist")
        revoked = self.store.revoke_token(token_id)
        self.authenticator.forget()
        return revoked

    def set_member(self, workspace_id: int, user_id: int, role: Role) -> Member:
        member = self.store.set_member(workspace_id, user_id, role.label)
        self.authenticator.forget()
        return member

    def remove_member(self, workspace_id: int, user_id: int) -> None:
        self.store.remove_member(workspace_id, user_id)
        self.authenticator.forget()

    def members(self, workspace_id: int, limit: int, after_user_id: int = 0) -> list[Member]:
        return self.store.list_members(workspace_id, limit, after_user_id)

    def _user_for(self, caller: Identity, user_id: int) -> int:
        if user_id in (0, caller.user_id):
            return caller.user_id
        if not caller.admin:  # other users' ids do not leak
            raise NotFound(f"user {user_id} does not exist")
        return self.store.get_user(user_id).id
