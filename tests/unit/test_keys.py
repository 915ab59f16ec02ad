"""API keys: the check cache vouches for one exact key (id and secret), nothing else."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from datasources.keys import ApiKeys
from datasources.store import Store, StoredApiKey


@pytest.fixture
async def keys() -> AsyncIterator[ApiKeys]:
    store = Store.memory()
    await store.open()
    try:
        yield ApiKeys(store, cache_seconds=60.0)
    finally:
        await store.close()


async def test_a_cached_secret_does_not_vouch_for_another_key_id(keys: ApiKeys) -> None:
    alice = await keys.create("alice")
    bob = await keys.create("bob")
    secret = alice.key.split("_", 2)[2]
    assert (await keys.authenticate(alice.key)) is not None  # cached now
    # Alice's secret presented under Bob's id (and under an id nobody has).
    for other_id in (bob.id, "0123456789ab"):
        assert await keys.authenticate(f"dsk_{other_id}_{secret}") is None


async def test_a_revoked_key_sharing_a_cached_secret_is_refused(keys: ApiKeys) -> None:
    """A revoked key whose secret equals a live, cached key's secret (a copied record,
    a replica that has not seen the revocation) is judged by its own record."""
    alice = await keys.create("alice")
    secret = alice.key.split("_", 2)[2]
    assert await keys.authenticate(alice.key) is not None  # alice's secret is cached
    revoked_id = "fedcba987654"
    store = keys._store
    await store.add_api_key(
        StoredApiKey(
            id=revoked_id,
            name="old",
            owner="o_someone_else",
            secret_hash=hashlib.sha256(secret.encode()).hexdigest(),
            created_at=datetime.now(UTC),
            revoked_at=datetime.now(UTC),
        )
    )
    assert await keys.authenticate(f"dsk_{revoked_id}_{secret}") is None
    found = await keys.authenticate(alice.key)
    assert found is not None and found.key_id == alice.id
