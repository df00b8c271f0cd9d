"""The metadata store's access-control records: users, API tokens, workspace members and the audit
table. A mixin of `MetadataStore`, kept apart so the rest of the store reads as before."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime
from typing import TypeVar

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from flightline.server.errors import AlreadyExists, InvalidArgument, NotFound
from flightline.server.store.records import AuditEvent, Member, StoredToken, TokenInfo, User
from flightline.server.store.tables import AuditRow, MemberRow, TokenRow, UserRow, WorkspaceRow, utc_now

T = TypeVar("T")
ROLES = ("viewer", "editor", "admin")
MAX_USER_NAME = 100


class AccessRecords:
    def _read(self) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, work: Callable[[Session], T]) -> T:
        raise NotImplementedError

    # -- users

    def create_user(self, name: str, *, admin: bool = False) -> User:
        if not 1 <= len(name) <= MAX_USER_NAME:
            raise InvalidArgument(f"user name must be 1 to {MAX_USER_NAME} characters, got {len(name)}")

        def create(session: Session) -> User:
            if session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
                raise AlreadyExists(f"user {name!r} already exists")
            row = UserRow(name=name, admin=admin, created_at=utc_now())
            session.add(row)
            session.flush()
            return _user(row)

        return self._write(create)

    def get_user(self, user_id: int) -> User:
        with self._read() as session:
            return _user(_user_row(session, user_id))

    def find_user(self, name: str) -> User | None:
        with self._read() as session:
            row = session.scalars(select(UserRow).where(UserRow.name == name)).one_or_none()
            return None if row is None else _user(row)

    def list_users(self, limit: int, after_id: int = 0) -> list[User]:
        query = select(UserRow).where(UserRow.id > after_id).order_by(UserRow.id).limit(limit)
        with self._read() as session:
            return [_user(row) for row in session.scalars(query)]

    def count_users(self) -> int:
        with self._read() as session:
            return int(session.scalar(select(func.count()).select_from(UserRow)) or 0)

    # -- tokens

    def add_token(
        self,
        user_id: int,
        token_id: str,
        name: str,
        salt: bytes,
        digest: bytes,
        expires_at: datetime | None = None,
    ) -> TokenInfo:
        def add(session: Session) -> TokenInfo:
            _user_row(session, user_id)
            row = TokenRow(
                id=token_id,
                user_id=user_id,
                name=name,
                salt=salt,
                hash=digest,
                created_at=utc_now(),
                expires_at=expires_at,
                revoked_at=None,
            )
            session.add(row)
            session.flush()
            return _token(row)

        return self._write(add)

    def stored_token(self, token_id: str) -> StoredToken | None:
        """A token with its hash, its user and the user's memberships (what authentication needs)."""
        with self._read() as session:
            row = session.get(TokenRow, token_id)
            if row is None:
                return None
            user = _user_row(session, row.user_id)
            roles = {
                m.workspace_id: m.role
                for m in session.scalars(select(MemberRow).where(MemberRow.user_id == user.id))
            }
            return StoredToken(_token(row), row.salt, row.hash, _user(user), roles)

    def list_tokens(self, user_id: int) -> list[TokenInfo]:
        query = select(TokenRow).where(TokenRow.user_id == user_id).order_by(TokenRow.created_at)
        with self._read() as session:
            _user_row(session, user_id)
            return [_token(row) for row in session.scalars(query)]

    def get_token(self, token_id: str) -> TokenInfo:
        with self._read() as session:
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id!r} does not exist")
            return _token(row)

    def revoke_token(self, token_id: str) -> TokenInfo:
        def revoke(session: Session) -> TokenInfo:
            row = session.get(TokenRow, token_id)
            if row is None:
                raise NotFound(f"token {token_id!r} does not exist")
            if row.revoked_at is None:
                row.revoked_at = utc_now()
                session.flush()
            return _token(row)

        return self._write(revoke)

    # -- members

    def set_member(self, workspace_id: int, user_id: int, role: str) -> Member:
        """Gives a user a role in a workspace (replacing the one they had)."""
        if role not in ROLES:
            raise InvalidArgument(f"role must be one of {', '.join(ROLES)}, got {role!r}")

        def put(session: Session) -> Member:
            if session.get(WorkspaceRow, workspace_id) is None:
                raise NotFound(f"workspace {workspace_id} does not exist")
            user = _user_row(session, user_id)
            row = session.get(MemberRow, (workspace_id, user_id))
            if row is None:
                row = MemberRow(workspace_id=workspace_id, user_id=user_id, role=role)
                session.add(row)
            row.role = role
            session.flush()
            return Member(workspace_id, user_id, user.name, role)

        return self._write(put)

    def remove_member(self, workspace_id: int, user_id: int) -> None:
        def remove(session: Session) -> None:
            row = session.get(MemberRow, (workspace_id, user_id))
            if row is None:
                raise NotFound(f"user {user_id} is not a member of workspace {workspace_id}")
            session.delete(row)

        self._write(remove)

    def list_members(self, workspace_id: int, limit: int, after_user_id: int = 0) -> list[Member]:
        query = (
            select(MemberRow, UserRow.name)
            .join(UserRow, UserRow.id == MemberRow.user_id)
            .where(MemberRow.workspace_id == workspace_id, MemberRow.user_id > after_user_id)
            .order_by(MemberRow.user_id)
            .limit(limit)
        )
        with self._read() as session:
            return [Member(m.workspace_id, m.user_id, name, m.role) for m, name in session.execute(query)]

    # -- audit

    def add_audit(
        self,
        *,
        user_id: int | None,
        actor: str,
        action: str,
        resource: str,
        workspace_id: int | None,
        outcome: str,
    ) -> None:
        def add(session: Session) -> None:
            session.add(
                AuditRow(
                    time=utc_now(),
                    user_id=user_id,
                    actor=actor,
                    action=action,
                    resource=resource,
                    workspace_id=workspace_id,
                    outcome=outcome,
                )
            )

        self._write(add)

    def audit_events(self, limit: int = 100, after_id: int = 0) -> list[AuditEvent]:
        query = select(AuditRow).where(AuditRow.id > after_id).order_by(AuditRow.id).limit(limit)
        with self._read() as session:
            return [
                AuditEvent(r.id, r.time, r.user_id, r.actor, r.action, r.resource, r.workspace_id, r.outcome)
                for r in session.scalars(query)
            ]


def _user_row(session: Session, user_id: int) -> UserRow:
    row = session.get(UserRow, user_id)
    if row is None:
        raise NotFound(f"user {user_id} does not exist")
    return row


def _user(row: UserRow) -> User:
    return User(id=row.id, name=row.name, admin=row.admin, created_at=row.created_at)


def _token(row: TokenRow) -> TokenInfo:
    return TokenInfo(
        id=row.id,
        user_id=row.user_id,
        name=row.name,
        created_at=row.created_at,
        expires_at=row.expires_at,
        revoked_at=row.revoked_at,
    )
