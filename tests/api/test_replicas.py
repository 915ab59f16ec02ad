"""Two app instances on one PostgreSQL store: what several replicas behind a balancer see."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from datasources.api import create_app
from datasources.config import ApiSettings, PoolSettings, SandboxLimits, Settings
from datasources.credentials import generate_key
from tests.waiting import eventually

pytestmark = [pytest.mark.api, pytest.mark.integration]

SOURCES = "/api/v1/datasources"


async def test_replicas_share_keys_sources_and_revocations(
    tmp_path: Path, postgres_database: str
) -> None:
    (tmp_path / "data").mkdir()
    secret_key = generate_key()

    def settings(name: str) -> Settings:
        return Settings(
            home=tmp_path / name,
            database_url=postgres_database,
            secret_keys=secret_key,
            local_folder_roots=[tmp_path / "data"],
            pool=PoolSettings(listing_cache_seconds=0.2),
            api=ApiSettings(rate_limit_per_minute=0, key_cache_seconds=0.2),
            sandbox_limits=SandboxLimits(pool_size=0),
        )

    one, two = create_app(settings("one")), create_app(settings("two"))
    async with one.router.lifespan_context(one), two.router.lifespan_context(two):
        key = await one.state.keys.create("shared")
        auth = {"Authorization": f"Bearer {key.key}"}
        t1, t2 = httpx.ASGITransport(app=one), httpx.ASGITransport(app=two)
        async with (
            httpx.AsyncClient(transport=t1, base_url="http://one") as a,
            httpx.AsyncClient(transport=t2, base_url="http://two") as b,
        ):
            assert (await b.get(SOURCES, headers=auth)).json()["items"] == []
            body = {"name": "f", "type": "local_folder", "config": {"root": str(tmp_path / "data")}}
            assert (await a.post(SOURCES, json=body, headers=auth)).status_code == 201

            async def b_lists_it() -> bool:
                listed = (await b.get(SOURCES, headers=auth)).json()["items"]
                return [s["id"] for s in listed] == ["f"]

            await eventually(b_lists_it, what="replica two lists the new source")
            assert (await b.get(f"{SOURCES}/f/items", headers=auth)).status_code == 200
            assert (await b.delete(f"{SOURCES}/f", headers=auth)).status_code == 204
            assert (await a.get(f"{SOURCES}/f", headers=auth)).status_code == 404
            await two.state.keys.revoke(key.id)

            async def refused() -> bool:
                return (await a.get(SOURCES, headers=auth)).status_code == 401

            await eventually(refused, what="replica one refuses the revoked key")
