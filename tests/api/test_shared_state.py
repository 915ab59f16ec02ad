"""Two replicas of the service sharing a store and a Redis: what one does, the other knows.

Each replica is a whole app (its own registry, key cache, pools, limiter and feed) on one
store. Their caches are set to trust an answer for a minute, so anything the other
replica sees within a second came from invalidation, not from a cache running out. "Within
a second" is the requirement (docs/deployment.md), waited on as a condition with that
deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from datasources.api import create_app
from datasources.config import ApiSettings, PoolSettings, SandboxLimits, Settings
from datasources.credentials import generate_key
from datasources.keys import CreatedKey
from tests.waiting import eventually

pytestmark = [pytest.mark.api, pytest.mark.integration]

SOURCES = "/api/v1/datasources"
WITHIN = 1.0  # seconds: the bound every replica must meet
LONG = 60.0  # cache ages: nothing expires by itself during a test


@dataclass
class Replicas:
    a: httpx.AsyncClient
    b: httpx.AsyncClient
    app_a: FastAPI
    app_b: FastAPI
    key: CreatedKey
    data: Path
    env: dict[str, str]

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key.key}"}


def replica_settings(
    tmp_path: Path,
    name: str,
    database_url: str,
    secret_key: str,
    *,
    redis_url: str | None = None,
    redis_prefix: str = "datasources:",
    per_minute: int = 0,
    burst: int = 1,
) -> Settings:
    return Settings(
        home=tmp_path / name,
        database_url=database_url,
        secret_keys=secret_key,
        local_folder_roots=[tmp_path / "data"],
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        redis_timeout=0.5,
        pool=PoolSettings(listing_cache_seconds=LONG, revalidate_after=LONG),
        api=ApiSettings(
            rate_limit_per_minute=per_minute, rate_limit_burst=burst, key_cache_seconds=LONG
        ),
        sandbox_limits=SandboxLimits(pool_size=0, min_free_disk_bytes=0),
    )


@asynccontextmanager
async def two_replicas(
    tmp_path: Path, database_url: str, **options: Any
) -> AsyncIterator[Replicas]:
    data = tmp_path / "data"
    (data / "one").mkdir(parents=True, exist_ok=True)
    (data / "two").mkdir(exist_ok=True)
    (data / "one" / "a.csv").write_text("x\n1\n")
    (data / "two" / "b.csv").write_text("y\n2\n")
    secret_key = generate_key()
    apps = [
        create_app(replica_settings(tmp_path, n, database_url, secret_key, **options))
        for n in ("a", "b")
    ]
    async with AsyncExitStack() as stack:
        clients = []
        for app, name in zip(apps, "ab", strict=True):
            await stack.enter_async_context(app.router.lifespan_context(app))
            transport = httpx.ASGITransport(app=app)
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url=f"http://{name}")
                )
            )
        key = await apps[0].state.keys.create("shared")
        env = {
            "DATASOURCES_HOME": str(tmp_path / "cli"),
            "DATASOURCES_DATABASE_URL": database_url,
            "DATASOURCES_SECRET_KEYS": secret_key,
        }
        yield Replicas(clients[0], clients[1], apps[0], apps[1], key, data, env)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"


async def _used_by_both(r: Replicas) -> None:
    """Each replica has checked the key and borrowed the source: both are cached now."""
    for client in (r.a, r.b):
        assert (await client.get(f"{SOURCES}/f/items", headers=r.auth)).status_code == 200
        listed = (await client.get(SOURCES, headers=r.auth)).json()["items"]
        assert [s["id"] for s in listed] == ["f"]


async def _add_source(r: Replicas) -> None:
    body = {"name": "f", "type": "local_folder", "config": {"root": str(r.data / "one")}}
    assert (await r.a.post(SOURCES, json=body, headers=r.auth)).status_code == 201


# -- PostgreSQL store: the store notifies ------------------------------------------------------


async def test_a_key_revoked_on_one_replica_is_refused_by_the_other_within_a_second(
    tmp_path: Path, postgres_database: str
) -> None:
    async with two_replicas(tmp_path, postgres_database) as r:
        assert (await r.b.get(SOURCES, headers=r.auth)).status_code == 200  # cached on B
        await r.app_a.state.keys.revoke(r.key.id)

        async def b_refuses() -> bool:
            return (await r.b.get(SOURCES, headers=r.auth)).status_code == 401

        await eventually(b_refuses, what="replica B refuses the revoked key", timeout=WITHIN)


async def test_a_key_revoked_by_the_cli_elsewhere_is_refused_by_every_replica_within_a_second(
    tmp_path: Path, postgres_database: str
) -> None:
    async with two_replicas(tmp_path, postgres_database) as r:
        for client in (r.a, r.b):
            assert (await client.get(SOURCES, headers=r.auth)).status_code == 200
        # Another machine sharing the store: a separate process, no Redis, no API.
        cli = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "datasources"),
            "keys",
            "revoke",
            r.key.id,
            env={**os.environ, **r.env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, stderr = await asyncio.wait_for(cli.communicate(), 120)
        assert cli.returncode == 0, stderr.decode()

        async def both_refuse() -> bool:
            codes = [(await c.get(SOURCES, headers=r.auth)).status_code for c in (r.a, r.b)]
            return codes == [401, 401]

        await eventually(both_refuse, what="both replicas refuse the key", timeout=WITHIN)


async def test_a_source_removed_or_changed_on_one_replica_reaches_the_other_within_a_second(
    tmp_path: Path, postgres_database: str
) -> None:
    async with two_replicas(tmp_path, postgres_database) as r:
        await _add_source(r)
        await eventually(
            lambda: _lists(r.b, r, ["f"]), what="B lists the new source", timeout=WITHIN
        )
        await _used_by_both(r)

        # Changed on A: B's pooled connector follows the new folder.
        change = {"config": {"root": str(r.data / "two")}}
        assert (await r.a.patch(f"{SOURCES}/f", json=change, headers=r.auth)).status_code == 200

        async def b_sees_the_new_folder() -> bool:
            items = (await r.b.get(f"{SOURCES}/f/items", headers=r.auth)).json()["items"]
            return [i["path"] for i in items] == ["b.csv"]

        await eventually(b_sees_the_new_folder, what="B uses the new root", timeout=WITHIN)

        # Removed on A: gone from B's listing and from its pools.
        assert (await r.a.delete(f"{SOURCES}/f", headers=r.auth)).status_code == 204

        async def gone_on_b() -> bool:
            items = await r.b.get(f"{SOURCES}/f/items", headers=r.auth)
            return items.status_code == 404 and await _lists(r.b, r, [])

        await eventually(gone_on_b, what="B no longer serves the source", timeout=WITHIN)


async def _lists(client: httpx.AsyncClient, r: Replicas, ids: list[str]) -> bool:
    listed = (await client.get(SOURCES, headers=r.auth)).json()["items"]
    return [s["id"] for s in listed] == ids


async def test_a_rate_limit_is_global_across_replicas(
    tmp_path: Path, postgres_database: str, redis_url: str, redis_prefix: str
) -> None:
    async with two_replicas(
        tmp_path,
        postgres_database,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        per_minute=1,  # nothing refills during the test
        burst=4,
    ) as r:
        statuses = []
        for client in (r.a, r.b, r.a, r.b, r.a, r.b):
            statuses.append((await client.get(SOURCES, headers=r.auth)).status_code)
        assert statuses == [200, 200, 200, 200, 429, 429]
        refused = await r.b.get(SOURCES, headers=r.auth)
        assert refused.json()["code"] == "rate_limited"
        assert 50 <= int(refused.headers["Retry-After"]) <= 60


async def test_failed_sign_ins_on_two_replicas_lock_the_name_on_both(
    tmp_path: Path, postgres_database: str, redis_url: str, redis_prefix: str
) -> None:
    """The login limiter is global: five failures split across the replicas lock the name
    out on each of them (a limiter per process would allow five per replica)."""
    async with two_replicas(
        tmp_path, postgres_database, redis_url=redis_url, redis_prefix=redis_prefix
    ) as r:
        await r.app_a.state.users.create("alice", "correct horse battery", owner=r.key.owner)

        async def sign_in(client: httpx.AsyncClient, password: str) -> httpx.Response:
            origin = str(client.base_url).rstrip("/")
            data = {"name": "alice", "password": password}
            return await client.post("/login", data=data, headers={"Origin": origin})

        statuses = [
            (await sign_in(client, f"wrong password {n}")).status_code
            for n, client in enumerate((r.a, r.b, r.a, r.b, r.a))
        ]
        assert statuses == [401] * 5
        for client in (r.a, r.b):
            locked = await sign_in(client, "correct horse battery")  # even the right one
            assert locked.status_code == 429
            assert 1 <= int(locked.headers["Retry-After"]) <= 15 * 60
            assert "set-cookie" not in locked.headers
        # The buckets are in Redis under the test's prefix, named by digests only.
        from redis.asyncio import Redis

        redis = Redis.from_url(redis_url)
        try:
            keys = [k.decode() async for k in redis.scan_iter(f"{redis_prefix}ratelimit:login:*")]
        finally:
            await redis.aclose()
        assert keys and not any("alice" in k or "127.0.0.1" in k for k in keys)


# -- SQLite store (several workers on one machine): Redis carries the news ------------------


async def test_workers_on_one_sqlite_file_hear_each_other_through_redis(
    tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    async with two_replicas(
        tmp_path, sqlite_url(tmp_path), redis_url=redis_url, redis_prefix=redis_prefix
    ) as r:
        assert r.app_a.state.shared.invalidation == "redis"
        await _add_source(r)
        await eventually(lambda: _lists(r.b, r, ["f"]), what="B lists it", timeout=WITHIN)
        await _used_by_both(r)
        assert (await r.a.delete(f"{SOURCES}/f", headers=r.auth)).status_code == 204

        async def gone_on_b() -> bool:
            items = await r.b.get(f"{SOURCES}/f/items", headers=r.auth)
            return items.status_code == 404 and await _lists(r.b, r, [])

        await eventually(gone_on_b, what="B no longer serves the source", timeout=WITHIN)
        await r.app_a.state.keys.revoke(r.key.id)

        async def b_refuses() -> bool:
            return (await r.b.get(SOURCES, headers=r.auth)).status_code == 401

        await eventually(b_refuses, what="B refuses the revoked key", timeout=WITHIN)


async def test_while_redis_is_down_keys_are_checked_in_the_store_and_limits_are_per_replica(
    tmp_path: Path, private_redis: Any
) -> None:
    async with two_replicas(
        tmp_path, sqlite_url(tmp_path), redis_url=private_redis.url, per_minute=1, burst=3
    ) as r:
        auth = r.auth
        assert [(await r.a.get(SOURCES, headers=auth)).status_code for _ in range(2)] == [200] * 2
        assert (await r.b.get(SOURCES, headers=auth)).status_code == 200
        assert (await r.b.get(SOURCES, headers=auth)).status_code == 429  # shared: 3 in all

        private_redis.stop()
        feed_b = r.app_b.state.shared
        await eventually(lambda: not feed_b.cache_trusted(), what="B knows its feed is down")
        # Requests are still served: each replica falls back to a bucket of its own.
        assert [(await r.a.get(SOURCES, headers=auth)).status_code for _ in range(4)] == [
            200,
            200,
            200,
            429,
        ]
        assert (await r.b.get(SOURCES, headers=auth)).status_code == 200

        # Revoked on A while no news can travel: B reads the store instead of its cache.
        await r.app_a.state.keys.revoke(r.key.id)
        assert (await r.b.get(SOURCES, headers=auth)).status_code == 401

        private_redis.start()
        await eventually(feed_b.cache_trusted, what="B's feed is back")


# -- two real processes -------------------------------------------------------------------


async def test_two_service_processes_share_revocations_and_rate_limits(
    tmp_path: Path, postgres_database: str, redis_url: str, redis_prefix: str
) -> None:
    """``datasources serve`` twice, configured only by its environment, as a deployment is."""
    from tests.api.conftest import free_port

    cli = str(Path(sys.executable).parent / "datasources")
    env = {
        **os.environ,
        "DATASOURCES_HOME": str(tmp_path / "home"),
        "DATASOURCES_DATABASE_URL": postgres_database,
        "DATASOURCES_SECRET_KEYS": generate_key(),
        "DATASOURCES_REDIS_URL": redis_url,
        "DATASOURCES_REDIS_PREFIX": redis_prefix,
        "DATASOURCES_API__RATE_LIMIT_PER_MINUTE": "1",
        "DATASOURCES_API__RATE_LIMIT_BURST": "5",
        "DATASOURCES_API__KEY_CACHE_SECONDS": str(LONG),
        "DATASOURCES_SANDBOX_LIMITS__POOL_SIZE": "0",
    }

    async def run(*args: str) -> str:
        process = await asyncio.create_subprocess_exec(
            cli, *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        out, err = await asyncio.wait_for(process.communicate(), 120)
        assert process.returncode == 0, err.decode()
        return out.decode()

    key = json.loads(await run("--json", "keys", "create", "proc"))
    auth = {"Authorization": f"Bearer {key['key']}"}
    ports = [free_port(), free_port()]
    servers = [
        await asyncio.create_subprocess_exec(
            cli, "serve", "--port", str(port), env=env, stdout=asyncio.subprocess.DEVNULL
        )
        for port in ports
    ]
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            urls = [f"http://127.0.0.1:{port}" for port in ports]

            async def up() -> bool:
                try:
                    codes = [(await http.get(f"{u}/readyz")).status_code for u in urls]
                except httpx.TransportError:
                    return False
                return codes == [200, 200]

            await eventually(up, what="both services answer", timeout=120)
            codes = [(await http.get(f"{u}{SOURCES}", headers=auth)).status_code for u in urls * 3]
            assert codes == [200, 200, 200, 200, 200, 429]  # one bucket of 5 for both

            await run("keys", "revoke", key["id"])

            async def both_refuse() -> bool:
                got = [(await http.get(f"{u}{SOURCES}", headers=auth)).status_code for u in urls]
                return got == [401, 401]

            await eventually(both_refuse, what="both processes refuse the key", timeout=WITHIN)
    finally:
        for server in servers:
            if server.returncode is None:
                server.terminate()
        for server in servers:
            await asyncio.wait_for(server.wait(), 30)
