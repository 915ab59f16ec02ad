"""Rate limits in one process, the change wire format, and caches told to forget."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from datasources.config import ApiSettings, Settings
from datasources.errors import ConfigurationError
from datasources.keys import ApiKeys
from datasources.models import DataSourceConfig
from datasources.registry import DataSourceRegistry
from datasources.shared import CacheInvalidation, LocalRateLimiter, Rate, SharedState
from datasources.store import Store
from datasources.store.changes import Change

# -- the local bucket ---------------------------------------------------------------------


async def test_a_bucket_allows_its_burst_then_says_how_long_to_wait() -> None:
    limiter = LocalRateLimiter(Rate.per_minute(60, burst=3))
    assert [await limiter.take("k") for _ in range(3)] == [None, None, None]
    wait = await limiter.take("k")
    assert wait is not None and 0 < wait <= 1.0
    assert await limiter.take("other") is None  # one bucket per key


async def test_peek_does_not_spend_and_reset_refills() -> None:
    limiter = LocalRateLimiter(Rate.every(2, seconds=900))
    assert await limiter.peek("ann") is None
    assert await limiter.peek("ann") is None
    assert await limiter.take("ann") is None
    assert await limiter.take("ann") is None
    wait = await limiter.peek("ann")
    # "2 in 15 minutes" refills one every 450 s.
    assert wait is not None and 440 < wait <= 450
    await limiter.reset("ann")
    assert await limiter.take("ann") is None


async def test_a_zero_rate_limits_nothing() -> None:
    limiter = LocalRateLimiter(Rate.per_minute(0, burst=1))
    assert all([await limiter.take("k") is None for _ in range(1000)])


def test_without_redis_the_limiter_is_per_process(tmp_path: Path) -> None:
    state = SharedState(Settings(home=tmp_path, api=ApiSettings(rate_limit_per_minute=5)))
    assert isinstance(state.limiter, LocalRateLimiter)
    assert state.redis is None and state.invalidation == "none" and state.cache_trusted()


@pytest.mark.parametrize(
    "url", ["http://u:hunter2-canary@h:1/0", "redis://u:hunter2-canary@h:notaport/0"]
)
def test_a_malformed_redis_url_is_refused_without_repeating_it(tmp_path: Path, url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SharedState(Settings(home=tmp_path, redis_url=url))
    assert "hunter2" not in str(caught.value) and "hunter2" not in repr(caught.value)
    assert caught.value.__suppress_context__  # the parser's message is not chained either


# -- what travels on the wire ----------------------------------------------------------


def test_a_change_round_trips_and_carries_ids_only() -> None:
    change = Change("source", "sales", "o_1")
    assert Change.from_json(change.to_json()) == change
    assert Change.from_json(change.to_json().encode()) == change
    assert set(json.loads(change.to_json())) == {"kind", "id", "owner"}


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "not json",
        "[]",
        "null",
        '{"kind": "source"}',
        '{"kind": "table", "id": "x"}',
        '{"kind": "api_key", "id": 7}',
        '{"kind": "api_key", "id": ""}',
        '{"kind": "source", "id": "x", "owner": ["o"]}',
        '{"kind": "source", "id": "' + "x" * 300 + '"}',
        b"\xff\xfe",
    ],
)
def test_a_malformed_change_is_ignored(payload: str | bytes) -> None:
    assert Change.from_json(payload) is None


# -- API keys told to forget -------------------------------------------------------------


class _CountingStore:
    """Wraps a real store and counts key reads; can hold a read until released."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self.reads = 0
        self.gate: asyncio.Event | None = None
        self.reading = asyncio.Event()

    async def get_api_key(self, key_id: str) -> Any:
        self.reads += 1
        record = await self._store.get_api_key(key_id)
        if self.gate is not None:
            self.reading.set()
            await self.gate.wait()
        return record

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


@pytest.fixture
async def store() -> Any:
    store = Store.memory()
    await store.open()
    yield store
    await store.close()


async def test_a_forgotten_key_is_read_again(store: Store) -> None:
    counting = _CountingStore(store)
    keys = ApiKeys(counting, cache_seconds=3600)  # type: ignore[arg-type]
    created = await keys.create("k")
    assert await keys.authenticate(created.key) is not None
    assert await keys.authenticate(created.key) is not None
    assert counting.reads == 1  # the second answer came from the cache
    # Revoked by another process: this one still trusts its cache...
    await store.revoke_api_key(created.id, datetime.now(UTC))
    assert await keys.authenticate(created.key) is not None
    # ...until it hears of it.
    keys.forget(created.id)
    assert await keys.authenticate(created.key) is None


async def test_an_untrusted_cache_is_never_used(store: Store) -> None:
    trusted = True
    counting = _CountingStore(store)
    keys = ApiKeys(counting, cache_seconds=3600, cache_trusted=lambda: trusted)  # type: ignore[arg-type]
    created = await keys.create("k")
    assert await keys.authenticate(created.key) is not None
    trusted = False  # the change feed is down
    await store.revoke_api_key(created.id, datetime.now(UTC))
    assert await keys.authenticate(created.key) is None
    assert counting.reads == 2


async def test_a_read_that_began_before_a_revocation_is_not_cached(store: Store) -> None:
    counting = _CountingStore(store)
    keys = ApiKeys(counting, cache_seconds=3600)  # type: ignore[arg-type]
    created = await keys.create("k")
    counting.gate = asyncio.Event()
    pending = asyncio.create_task(keys.authenticate(created.key))
    await counting.reading.wait()  # the store answered "active"; the answer is in flight
    await store.revoke_api_key(created.id, datetime.now(UTC))
    keys.forget(created.id)  # the revocation is heard while the read is in flight
    counting.gate.set()
    assert await pending is not None  # that request began before the revocation
    counting.gate = None
    assert await keys.authenticate(created.key) is None  # but nothing stale was cached


# -- the registry told to forget --------------------------------------------------------------


async def test_a_changed_source_loses_its_pool_and_listing(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    async with DataSourceRegistry() as registry:
        keys = ApiKeys(registry.store)
        forget = CacheInvalidation(keys, registry)
        await registry.register_data_source(
            DataSourceConfig(name="a", type="local_folder", config={"root": str(tmp_path / "a")})
        )
        await registry.register_data_source(
            DataSourceConfig(name="b", type="local_folder", config={"root": str(tmp_path / "a")})
        )
        for name in ("a", "b"):
            async with registry.get_connector(name):
                pass
        await registry.list_data_sources()
        assert sorted(registry.pool_stats()) == ["local/a", "local/b"]

        await forget(Change("source", "a", "local"))
        assert sorted(registry.pool_stats()) == ["local/b"]
        await forget(Change("source", "b", "someone-else"))  # another owner's "b"
        assert sorted(registry.pool_stats()) == ["local/b"]
        await forget(None)  # changes may have been missed: everything goes
        assert registry.pool_stats() == {}
