"""Signed-in browsers: opaque session tokens, stored only as hashes, with two expiries.

The cookie carries 256 random bits. The store keeps their SHA-256 as the session's id,
so a copy of the database signs nobody in. A session ends when it has been idle for
``idle_seconds`` or is ``max_seconds`` old, whichever comes first, when its user is
disabled or changes password, and at sign-out.

The CSRF token a page sends back in a header is derived from the session token
(HMAC-SHA256 under it): a page that can read it is a page of this origin that was handed
it by ``/api/v1/session``; another site can neither read the cookie nor compute it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from datasources.store import Store, StoredUser, StoredWebSession

__all__ = ["NewSession", "SignedIn", "WebSessions"]

_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{43}$")


def _now() -> datetime:
    return datetime.now(UTC)


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def csrf_token_for(token: str) -> str:
    """The CSRF token of the session whose cookie holds ``token``."""
    return hmac.new(token.encode(), b"datasources csrf v1", hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class NewSession:
    """A session just started: ``token`` goes into the cookie and is never stored."""

    token: str = field(repr=False)
    csrf_token: str = field(repr=False)
    user: StoredUser
    expires_at: datetime


@dataclass(frozen=True)
class SignedIn:
    """A live session and its user."""

    user: StoredUser
    session: StoredWebSession
    csrf_token: str = field(repr=False)

    def csrf_matches(self, presented: str | None) -> bool:
        """Whether a presented CSRF token is this session's (compared in constant time)."""
        if not presented:
            return False
        return hmac.compare_digest(presented.encode(), self.csrf_token.encode())


class WebSessions:
    """Start, resolve and end browser sessions.

    Args:
        store: The store (opened by the caller).
        idle_seconds: A session unused this long has ended.
        max_seconds: A session this old has ended, however busy.
        touch_every: Activity is written to the store at most this often per session.
        clock: The time (tests move it).
    """

    def __init__(
        self,
        store: Store,
        *,
        idle_seconds: float,
        max_seconds: float,
        touch_every: float = 60.0,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        self._store = store
        self.idle = timedelta(seconds=idle_seconds)
        self.max_age = timedelta(seconds=max_seconds)
        self._touch_every = timedelta(seconds=touch_every)
        self._clock = clock

    async def start(self, user: StoredUser) -> NewSession:
        """A new session for ``user`` (always a new token: a token presented before
        signing in is never promoted)."""
        token = secrets.token_urlsafe(32)
        now = self._clock()
        record = StoredWebSession(
            id=_digest(token),
            user_id=user.id,
            created_at=now,
            last_seen_at=now,
            expires_at=now + self.max_age,
        )
        await self._store.add_web_session(record)
        return NewSession(
            token=token, csrf_token=csrf_token_for(token), user=user, expires_at=record.expires_at
        )

    async def resolve(self, token: str | None) -> SignedIn | None:
        """The live session a cookie's token stands for, or None."""
        if not token or not _TOKEN_RE.match(token):
            return None
        session_id = _digest(token)
        found = await self._store.get_web_session(session_id)
        if found is None:
            return None
        record, user = found
        now = self._clock()
        if (
            now >= record.expires_at
            or now - record.last_seen_at >= self.idle
            or not user.active
            or record.created_at < user.password_changed_at
        ):
            await self._store.delete_web_session(session_id)
            return None
        if now - record.last_seen_at >= self._touch_every:
            await self._store.touch_web_session(session_id, now)
        return SignedIn(user=user, session=record, csrf_token=csrf_token_for(token))

    async def end(self, token: str | None) -> None:
        """End the session of this token, if there is one."""
        if token and _TOKEN_RE.match(token):
            await self._store.delete_web_session(_digest(token))

    async def sweep(self) -> int:
        """Delete sessions that have ended by time; how many."""
        now = self._clock()
        return await self._store.delete_stale_web_sessions(
            expired_before=now, idle_before=now - self.idle
        )
