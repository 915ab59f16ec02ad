"""The store's part for people: users and their signed-in browser sessions.

Kept apart from the data-source repository; :class:`~datasources.store.Store` mixes it in
and supplies the session factory and the fast read path.
"""

from __future__ import annotations

import builtins
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy import exc as sa_exc

from datasources.errors import AlreadyExistsError, NotFoundError
from datasources.store.models import UserRow, WebSessionRow

__all__ = ["AccountsMixin", "StoredUser", "StoredWebSession"]

_USERS = UserRow.__table__
_WEB_SESSIONS = WebSessionRow.__table__


def _aware(value: datetime) -> datetime:
    from datetime import UTC

    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


@dataclass(frozen=True)
class StoredUser:
    """A user as stored. ``password_hash`` is an argon2id PHC string, never shown."""

    id: str
    name: str
    owner: str
    password_hash: str = field(repr=False)
    created_at: datetime
    password_changed_at: datetime
    disabled_at: datetime | None = None

    @property
    def active(self) -> bool:
        """Whether the user may sign in."""
        return self.disabled_at is None


@dataclass(frozen=True)
class StoredWebSession:
    """A signed-in browser as stored; ``id`` is the SHA-256 of the cookie's token."""

    id: str = field(repr=False)
    user_id: str
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime


def _user(row: Any) -> StoredUser:
    return StoredUser(
        id=row.id,
        name=row.name,
        owner=row.owner,
        password_hash=row.password_hash,
        created_at=_aware(row.created_at),
        password_changed_at=_aware(row.password_changed_at),
        disabled_at=_aware(row.disabled_at) if row.disabled_at is not None else None,
    )


def _web_session(row: Any) -> StoredWebSession:
    return StoredWebSession(
        id=row.id,
        user_id=row.user_id,
        created_at=_aware(row.created_at),
        last_seen_at=_aware(row.last_seen_at),
        expires_at=_aware(row.expires_at),
    )


class AccountsMixin:
    """Users and web sessions; the host class provides ``_session`` and ``_read``."""

    def _session(self) -> Any:  # pragma: no cover - provided by Store
        raise NotImplementedError

    async def _read(self, query: Any) -> builtins.list[Any]:  # pragma: no cover
        raise NotImplementedError

    # -- users -----------------------------------------------------------------------

    async def add_user(self, user: StoredUser) -> StoredUser:
        """Insert; :class:`AlreadyExistsError` if the name is taken."""
        try:
            async with self._session() as session, session.begin():
                session.add(UserRow(**asdict(user)))
        except sa_exc.IntegrityError:
            raise AlreadyExistsError(f"A user named {user.name!r} already exists.") from None
        return user

    async def get_user(self, user_id: str) -> StoredUser | None:
        """One user by id."""
        rows = await self._read(select(_USERS).where(_USERS.c.id == user_id))
        return _user(rows[0]) if rows else None

    async def get_user_by_name(self, name: str) -> StoredUser | None:
        """One user by name."""
        rows = await self._read(select(_USERS).where(_USERS.c.name == name))
        return _user(rows[0]) if rows else None

    async def list_users(self) -> builtins.list[StoredUser]:
        """Every user, oldest first."""
        query = select(_USERS).order_by(_USERS.c.created_at, _USERS.c.id)
        return [_user(r) for r in await self._read(query)]

    async def update_user(
        self,
        user_id: str,
        *,
        password_hash: str | None = None,
        password_changed_at: datetime | None = None,
        disabled_at: datetime | None = None,
        enable: bool = False,
    ) -> StoredUser:
        """Change a user's hash or state; ``enable`` clears ``disabled_at``."""
        async with self._session() as session, session.begin():
            row = await session.get(UserRow, user_id, with_for_update=True)
            if row is None:
                raise NotFoundError(f"User {user_id!r} not found.")
            if password_hash is not None:
                row.password_hash = password_hash
            if password_changed_at is not None:
                row.password_changed_at = password_changed_at
            if disabled_at is not None:
                row.disabled_at = disabled_at
            if enable:
                row.disabled_at = None
            return _user(row)

    # -- web sessions ----------------------------------------------------------------

    async def add_web_session(self, record: StoredWebSession) -> StoredWebSession:
        """Insert a session (its id is a hash of 256 random bits: a clash is an error)."""
        async with self._session() as session, session.begin():
            session.add(WebSessionRow(**asdict(record)))
        return record

    async def get_web_session(self, session_id: str) -> tuple[StoredWebSession, StoredUser] | None:
        """A session and its user, in one read."""
        query = (
            select(_WEB_SESSIONS, _USERS)
            .join(_USERS, _USERS.c.id == _WEB_SESSIONS.c.user_id)
            .where(_WEB_SESSIONS.c.id == session_id)
        )
        rows = await self._read(query)
        if not rows:
            return None
        row = rows[0]._mapping
        record = StoredWebSession(
            id=row[_WEB_SESSIONS.c.id],
            user_id=row[_WEB_SESSIONS.c.user_id],
            created_at=_aware(row[_WEB_SESSIONS.c.created_at]),
            last_seen_at=_aware(row[_WEB_SESSIONS.c.last_seen_at]),
            expires_at=_aware(row[_WEB_SESSIONS.c.expires_at]),
        )
        user = StoredUser(
            id=row[_USERS.c.id],
            name=row[_USERS.c.name],
            owner=row[_USERS.c.owner],
            password_hash=row[_USERS.c.password_hash],
            created_at=_aware(row[_USERS.c.created_at]),
            password_changed_at=_aware(row[_USERS.c.password_changed_at]),
            disabled_at=(
                _aware(row[_USERS.c.disabled_at]) if row[_USERS.c.disabled_at] is not None else None
            ),
        )
        return record, user

    async def touch_web_session(self, session_id: str, when: datetime) -> None:
        """Record activity (the idle expiry counts from here)."""
        async with self._session() as session, session.begin():
            row = await session.get(WebSessionRow, session_id)
            if row is not None:
                row.last_seen_at = when

    async def delete_web_session(self, session_id: str) -> bool:
        """End one session; whether it existed."""
        async with self._session() as session, session.begin():
            result = await session.execute(
                delete(WebSessionRow).where(WebSessionRow.id == session_id)
            )
            return bool(getattr(result, "rowcount", 0))

    async def delete_user_web_sessions(self, user_id: str) -> int:
        """End every session of a user; how many."""
        async with self._session() as session, session.begin():
            result = await session.execute(
                delete(WebSessionRow).where(WebSessionRow.user_id == user_id)
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def delete_stale_web_sessions(
        self, *, expired_before: datetime, idle_before: datetime
    ) -> int:
        """Remove sessions past their absolute expiry or idle since ``idle_before``."""
        async with self._session() as session, session.begin():
            result = await session.execute(
                delete(WebSessionRow).where(
                    (WebSessionRow.expires_at < expired_before)
                    | (WebSessionRow.last_seen_at < idle_before)
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)

    async def list_web_sessions(self, user_id: str) -> builtins.list[StoredWebSession]:
        """A user's sessions."""
        query = select(_WEB_SESSIONS).where(_WEB_SESSIONS.c.user_id == user_id)
        return [_web_session(r) for r in await self._read(query)]
