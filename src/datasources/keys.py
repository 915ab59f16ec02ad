"""API keys of the HTTP service: created once, stored as a hash, checked in constant time.

A key reads ``dsk_<id>_<secret>``. The id is public (it names the key in listings and
logs); only a SHA-256 of the secret part is stored. The secret has 256 bits of entropy, so
a fast hash is the right tool (a password hash would only slow every request down), and
the comparison uses :func:`hmac.compare_digest`.

Every key belongs to an owner: its own (``o_<id>``) unless it is created for an owner
that already exists, so several keys can share one owner's data sources.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from datasources.credentials import register_secret
from datasources.errors import InvalidInputError, NotFoundError
from datasources.store import Store, StoredApiKey

__all__ = ["ApiKeys", "CreatedKey", "Principal"]

_KEY_RE = re.compile(r"^dsk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
_NAME_RE = re.compile(r"^[\w .@:-]{1,200}$")
_OWNER_RE = re.compile(r"^[\w.@:-]{1,128}$")
# Compared against when the id is unknown, so a miss costs what a hit costs.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: the owner whose data it may see, and the key it used (or,
    for a signed-in browser, the user; ``key_id`` is then empty)."""

    owner: str
    key_id: str
    user_id: str | None = None

    @property
    def actor(self) -> str:
        """A name for logs and rate limits: the key id, or ``user:<id>``."""
        return self.key_id or f"user:{self.user_id}"


@dataclass(frozen=True)
class CreatedKey:
    """A new key. ``key`` is shown once and never stored."""

    id: str
    name: str
    owner: str
    key: str

    def __repr__(self) -> str:
        return f"CreatedKey(id={self.id!r}, name={self.name!r}, owner={self.owner!r})"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiKeys:
    """Create, list, revoke and check API keys kept in the store.

    Args:
        store: The store (opened by the caller).
        cache_seconds: How long a checked key is trusted without reading the store
            again. A revocation takes effect at once in this process and, unless other
            replicas hear of it sooner (:meth:`forget`), within this many seconds there.
        cache_trusted: Asked before each cached answer is used; while it returns False
            every key is checked against the store (the service passes "the change feed
            is connected", so a revocation is never missed while the feed is down).
    """

    def __init__(
        self,
        store: Store,
        *,
        cache_seconds: float = 5.0,
        cache_trusted: Callable[[], bool] | None = None,
    ) -> None:
        self._store = store
        self._cache_seconds = cache_seconds
        self._cache_trusted = cache_trusted
        # Keyed by (key id, secret digest): an entry vouches for that exact key only, so
        # a presented token whose secret collides with a cached one under another id, or
        # a revoked key re-presented with a new id, is checked against the store.
        self._cache: dict[tuple[str, str], tuple[float, Principal]] = {}
        # Bumped by every forget(): a store read begun before one must not be cached
        # after it (it may predate the revocation it announced).
        self._generation = 0

    async def create(
        self, name: str, *, owner: str | None = None, new_owner: bool = False
    ) -> CreatedKey:
        """A new key named ``name``; for ``owner`` if given (it must exist already, unless
        ``new_owner``: the operator's own tools may act for an owner with nothing yet)."""
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise InvalidInputError(
                "A key name is 1-200 letters, digits, spaces or . @ : _ - characters."
            )
        if owner is not None:
            if not _OWNER_RE.match(owner):
                raise InvalidInputError(
                    "An owner is 1-128 letters, digits or . @ : _ - characters."
                )
            if not new_owner and not await self._store.owner_exists(owner):
                raise NotFoundError(
                    f"Owner {owner!r} does not exist: create a key without --owner first, "
                    "or register a source for it."
                )
        key_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        record = StoredApiKey(
            id=key_id,
            name=name,
            owner=owner or f"o_{key_id}",
            secret_hash=_hash(secret),
            created_at=datetime.now(UTC),
        )
        await self._store.add_api_key(record)
        key = f"dsk_{key_id}_{secret}"
        register_secret(key)  # never in a log line of this process
        return CreatedKey(id=key_id, name=name, owner=record.owner, key=key)

    async def list_keys(self, *, owner: str | None = None) -> list[StoredApiKey]:
        """Keys (revoked ones too), oldest first."""
        return await self._store.list_api_keys(owner)

    async def revoke(self, ref: str) -> StoredApiKey:
        """Revoke a key by id, or by name when exactly one active key has it."""
        key = await self._store.get_api_key(ref)
        if key is None:
            matches = [k for k in await self._store.list_api_keys() if k.name == ref]
            active = [k for k in matches if k.revoked_at is None]
            if len(active) > 1:
                raise InvalidInputError(f"Several active keys are named {ref!r}; revoke by id.")
            candidates = active or matches
            key = candidates[0] if candidates else None
        if key is None:
            raise NotFoundError(f"API key {ref!r} not found.")
        await self._store.revoke_api_key(key.id, datetime.now(UTC))
        self.forget(key.id)
        return key

    def forget(self, key_id: str | None = None) -> None:
        """Drop what is cached about ``key_id`` (every key when None): it changed elsewhere."""
        self._generation += 1
        if key_id is None:
            self._cache = {}
        else:
            self._cache = {k: v for k, v in self._cache.items() if v[1].key_id != key_id}

    def _trusted(self) -> bool:
        return self._cache_trusted is None or self._cache_trusted()

    async def authenticate(self, token: str) -> Principal | None:
        """The principal a presented key stands for, or None (malformed, unknown, revoked)."""
        match = _KEY_RE.match(token)
        if match is None:
            return None
        key_id, secret = match.groups()
        digest = _hash(secret)
        now = time.monotonic()
        cached = self._cache.get((key_id, digest)) if self._trusted() else None
        if cached is not None and cached[0] > now and cached[1].key_id == key_id:
            return cached[1]
        generation = self._generation
        record = await self._store.get_api_key(key_id)
        expected = record.secret_hash if record is not None else _DUMMY_HASH
        if not hmac.compare_digest(digest, expected) or record is None or record.revoked_at:
            return None
        principal = Principal(owner=record.owner, key_id=record.id)
        if generation != self._generation or not self._trusted():
            return principal
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[(key_id, digest)] = (now + self._cache_seconds, principal)
        return principal
