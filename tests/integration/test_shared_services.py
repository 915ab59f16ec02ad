"""Rate limits and change feeds against real Redis and PostgreSQL, outages included."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from redis.asyncio import Redis

from datasources.config import Settings
from datasources.shared import Rate, RedisChangeFeed, RedisRateLimiter, redis_client
from datasources.store import Store, StoredApiKey
from datasources.store.changes import Change
from tests.conftest import logged_text
from tests.waiting import eventually

pytestmark = pytest.mark.integration


def client_for(url: str, tmp_path: Path, timeout: float = 1.0) -> Redis:
    return redis_client(Settings(home=tmp_path, redis_url=url, redis_timeout=timeout))


class Heard:
    """A change handler that records what it is told."""

    def __init__(self) -> None:
        self.changes: list[Change | None] = []

    async def __call__(self, change: Change | None) -> None:
        self.changes.append(change)

    def resyncs(self) -> int:
        return sum(1 for c in self.changes if c is None)


# -- rate limits -------------------------------------------------------------------------


async def test_two_limiters_share_one_bucket(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    one, two = client_for(redis_url, tmp_path), client_for(redis_url, tmp_path)
    rate = Rate.per_minute(1, burst=3)  # no refill worth counting during the test
    a = RedisRateLimiter(one, rate, name="api", prefix=redis_prefix, owns_client=True)
    b = RedisRateLimiter(two, rate, name="api", prefix=redis_prefix, owns_client=True)
    login = RedisRateLimiter(one, rate, name="login", prefix=redis_prefix)
    try:
        assert [await a.take("k"), await b.take("k"), await a.take("k")] == [None] * 3
        wait = await b.take("k")
        assert wait is not None and 50 < wait <= 60  # one a minute
        assert await a.peek("k") is not None
        assert await a.take("other") is None  # per key
        assert await login.take("k") is None  # per name
        await b.reset("k")
        assert await a.peek("k") is None
        assert await a.take("k") is None
        assert a.shared and b.shared
    finally:
        await a.close()
        await b.close()


async def test_a_limiter_falls_back_to_its_own_bucket_while_redis_is_down(
    private_redis: Any, tmp_path: Path, all_logs: pytest.LogCaptureFixture
) -> None:
    limiter = RedisRateLimiter(
        client_for(private_redis.url, tmp_path, timeout=0.5),
        Rate.per_minute(1, burst=2),
        name="api",
        retry_after=0.2,
        owns_client=True,
    )
    try:
        assert await limiter.take("k") is None
        assert await limiter.take("k") is None
        assert await limiter.take("k") is not None  # the shared bucket is empty
        private_redis.stop()
        # Served from a bucket of this process's own (full: it never saw the others).
        assert await limiter.take("k") is None
        assert not limiter.shared
        assert await limiter.take("k") is None
        assert await limiter.take("k") is not None  # ...which limits too
        assert "Redis cannot be reached" in logged_text(all_logs)
        private_redis.start()  # a fresh Redis, empty

        async def shared_again() -> bool:
            return await limiter.take("fresh") is None and limiter.shared

        await eventually(shared_again, what="the limiter uses Redis again")
        assert "limits are shared again" in logged_text(all_logs)
    finally:
        await limiter.close()


# -- the Redis change feed -------------------------------------------------------------


async def test_a_published_change_reaches_every_subscriber(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    heard_a, heard_b = Heard(), Heard()
    client_a, client_b = client_for(redis_url, tmp_path), client_for(redis_url, tmp_path)
    a = RedisChangeFeed(client_a, f"{redis_prefix}changes", heard_a)
    b = RedisChangeFeed(client_b, f"{redis_prefix}changes", heard_b)
    try:
        await a.start(wait=10)
        await b.start(wait=10)
        assert a.healthy and b.healthy
        assert heard_a.changes == [None] and heard_b.changes == [None]  # the first resync
        await a.publish(Change("api_key", "abc123"))
        await client_a.publish(f"{redis_prefix}changes", "garbage")  # ignored
        await eventually(lambda: Change("api_key", "abc123") in heard_b.changes, what="b hears")
        await eventually(lambda: Change("api_key", "abc123") in heard_a.changes, what="a hears")
        assert len(heard_b.changes) == 2
    finally:
        await a.close()
        await b.close()
        await client_a.aclose()
        await client_b.aclose()


async def test_a_feed_reports_an_outage_and_resyncs_after_it(
    private_redis: Any, tmp_path: Path
) -> None:
    heard = Heard()
    client = client_for(private_redis.url, tmp_path, timeout=0.5)
    feed = RedisChangeFeed(client, "t:changes", heard, timeout=0.5)
    try:
        await feed.start(wait=10)
        assert feed.healthy and heard.resyncs() == 1
        private_redis.stop()
        await eventually(lambda: not feed.healthy, what="the feed sees Redis gone")
        await feed.publish(Change("api_key", "lost"))  # logged, not raised
        private_redis.start()
        await eventually(lambda: feed.healthy, what="the feed is back")
        # Whatever was published meanwhile is lost: the handler was told to forget all.
        assert heard.resyncs() == 2
        await feed.publish(Change("api_key", "after"))
        await eventually(lambda: Change("api_key", "after") in heard.changes, what="heard")
    finally:
        await feed.close()
        await client.aclose()


# -- PostgreSQL notifications ----------------------------------------------------------------


def _key(key_id: str) -> StoredApiKey:
    return StoredApiKey(id=key_id, name="k", owner="o", secret_hash="0" * 64)


async def test_the_store_notifies_committed_changes_to_every_listener(
    postgres_database: str,
) -> None:
    url = postgres_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    writer, reader = Store(url), Store(url)  # two processes, as far as PostgreSQL knows
    await writer.open()
    await reader.open()
    heard = Heard()
    listener = reader.change_listener(heard)
    assert listener is not None
    try:
        await listener.start(wait=10)
        assert listener.healthy and heard.changes == [None]
        await writer.add_api_key(_key("k1"))
        assert await writer.revoke_api_key("k1", datetime.now(UTC))
        assert not await writer.revoke_api_key("k1", datetime.now(UTC))  # no change, no news
        await eventually(lambda: Change("api_key", "k1") in heard.changes, what="revocation")
        assert heard.changes.count(Change("api_key", "k1")) == 1
    finally:
        await listener.close()
        await writer.close()
        await reader.close()


async def test_a_listener_whose_connection_dies_reconnects_and_resyncs(
    postgres_database: str, all_logs: pytest.LogCaptureFixture
) -> None:
    url = postgres_database.replace("postgresql://", "postgresql+asyncpg://", 1)
    store = Store(url)
    await store.open()
    heard = Heard()
    listener = store.change_listener(heard)
    assert listener is not None
    try:
        await listener.start(wait=10)
        admin = await asyncpg.connect(postgres_database)
        try:
            # The listening backend is killed (a failover, a network cut, an admin).
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND query LIKE 'LISTEN%'"
            )
        finally:
            await admin.close()
        assert killed == 1
        await eventually(lambda: heard.resyncs() == 2 and listener.healthy, what="resync")
        assert "caches are bypassed" in logged_text(all_logs)
        await store.add_api_key(_key("k2"))
        await store.revoke_api_key("k2", datetime.now(UTC))
        await eventually(lambda: Change("api_key", "k2") in heard.changes, what="heard again")
    finally:
        await listener.close()
        await store.close()


async def test_sqlite_stores_tell_their_observers_after_commit(tmp_path: Path) -> None:
    store = Store(f"sqlite+aiosqlite:///{tmp_path / 'x.db'}")
    await store.open()
    told: list[Change] = []

    async def observer(change: Change) -> None:
        told.append(change)

    async def broken(change: Change) -> None:
        raise ConnectionError("redis is down")

    store.observe(broken)  # logged; the write stands and the next observer still hears
    store.observe(observer)
    try:
        assert store.change_listener(Heard()) is None
        await store.add_api_key(_key("k3"))
        await store.revoke_api_key("k3", datetime.now(UTC))
        assert told == [Change("api_key", "k3")]
    finally:
        await store.close()
