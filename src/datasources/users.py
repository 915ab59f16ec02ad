"""People who sign in to the workbench: local users with argon2id password hashes.

A user *is* an owner: signed in, they see exactly the data sources and chats that their
owner's API keys see. A user created without an owner gets a new one (``o_<id>``);
``owner=`` puts them beside existing keys or users.

Passwords are hashed with argon2id (argon2-cffi's RFC 9106 low-memory profile) off the
event loop. A sign-in for a name that does not exist, or for a disabled user, costs what
a wrong password costs — a hash is always verified — and gets the same answer, so
neither timing nor the reply tells which names exist.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import secrets
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from datasources.errors import InvalidInputError, NotFoundError
from datasources.store import Store, StoredUser

__all__ = ["MAX_PASSWORD_CHARS", "MIN_PASSWORD_CHARS", "Users", "normalize_name"]

logger = logging.getLogger(__name__)

MIN_PASSWORD_CHARS = 8
MAX_PASSWORD_CHARS = 1024  # hashing cost does not grow with length, but bodies should not
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
_OWNER_RE = re.compile(r"^[\w.@:-]{1,128}$")


def normalize_name(name: str) -> str:
    """A user name as stored and looked up: trimmed, lower case."""
    return name.strip().lower() if isinstance(name, str) else ""


def _check_password(password: str) -> None:
    if not isinstance(password, str) or not (
        MIN_PASSWORD_CHARS <= len(password) <= MAX_PASSWORD_CHARS
    ):
        raise InvalidInputError(
            f"A password is {MIN_PASSWORD_CHARS} to {MAX_PASSWORD_CHARS} characters."
        )


class Users:
    """Create, list, disable and check users kept in the store.

    Args:
        store: The store (opened by the caller).
        hasher: The argon2 hasher; the default is argon2id with RFC 9106's
            low-memory parameters (t=3, m=64 MiB, p=4).
    """

    def __init__(self, store: Store, *, hasher: PasswordHasher | None = None) -> None:
        self._store = store
        self._hasher = hasher or PasswordHasher()

    @functools.cached_property
    def _dummy_hash(self) -> str:
        # Verified when the name is unknown, so a miss costs what a hit costs.
        return self._hasher.hash(secrets.token_urlsafe(16))

    async def _hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def create(self, name: str, password: str, *, owner: str | None = None) -> StoredUser:
        """A new user; for ``owner`` if given (an owner that exists), else a new owner."""
        name = normalize_name(name)
        if not _NAME_RE.match(name):
            raise InvalidInputError(
                "A user name is 1-64 letters, digits or . _ @ - characters, starting with a "
                "letter or digit."
            )
        _check_password(password)
        if owner is not None:
            if not _OWNER_RE.match(owner):
                raise InvalidInputError(
                    "An owner is 1-128 letters, digits or . @ : _ - characters."
                )
            if not await self._store.owner_exists(owner):
                raise NotFoundError(
                    f"Owner {owner!r} does not exist: create the user without --owner, or "
                    "name the owner of an existing key, user or source."
                )
        user_id = f"u_{secrets.token_hex(6)}"
        now = datetime.now(UTC)
        record = StoredUser(
            id=user_id,
            name=name,
            owner=owner or f"o_{secrets.token_hex(6)}",
            password_hash=await self._hash(password),
            created_at=now,
            password_changed_at=now,
        )
        return await self._store.add_user(record)

    async def list_users(self) -> list[StoredUser]:
        """Every user, oldest first (disabled ones too)."""
        return await self._store.list_users()

    async def get(self, ref: str) -> StoredUser:
        """A user by id or name."""
        user = await self._store.get_user(ref)
        if user is None:
            user = await self._store.get_user_by_name(normalize_name(ref))
        if user is None:
            raise NotFoundError(f"User {ref!r} not found.")
        return user

    async def disable(self, ref: str) -> StoredUser:
        """Stop a user signing in, and end their sessions at once."""
        user = await self.get(ref)
        updated = await self._store.update_user(
            user.id, disabled_at=user.disabled_at or datetime.now(UTC)
        )
        await self._store.delete_user_web_sessions(user.id)
        return updated

    async def enable(self, ref: str) -> StoredUser:
        """Let a disabled user sign in again."""
        user = await self.get(ref)
        return await self._store.update_user(user.id, enable=True)

    async def set_password(self, ref: str, password: str) -> StoredUser:
        """A new password; every session of the user ends (they sign in again)."""
        _check_password(password)
        user = await self.get(ref)
        updated = await self._store.update_user(
            user.id, password_hash=await self._hash(password), password_changed_at=datetime.now(UTC)
        )
        await self._store.delete_user_web_sessions(user.id)
        return updated

    async def verify(self, name: str, password: str) -> StoredUser | None:
        """The user whose name and password these are, if they may sign in; else None.

        Unknown names, wrong passwords and disabled users take the same time (one argon2
        verification each) and give the same None.
        """
        if not isinstance(password, str) or len(password) > MAX_PASSWORD_CHARS:
            password = ""
        user = await self._store.get_user_by_name(normalize_name(name))
        stored = user.password_hash if user is not None else self._dummy_hash
        ok = await asyncio.to_thread(self._check, stored, password)
        if user is None or not ok or not user.active:
            return None
        if self._hasher.check_needs_rehash(user.password_hash):
            # Parameters moved on since this hash was made: upgrade it now that the
            # password is at hand (the sessions stay: the password did not change).
            user = await self._store.update_user(user.id, password_hash=await self._hash(password))
        return user

    def _check(self, stored: str, password: str) -> bool:
        try:
            return bool(self._hasher.verify(stored, password))
        except VerifyMismatchError:
            return False
        except (VerificationError, InvalidHashError):
            logger.warning("A stored password hash could not be read; sign-in refused.")
            return False
