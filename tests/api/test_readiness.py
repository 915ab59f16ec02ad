"""``/readyz`` answers 503 while the store cannot be reached, and 200 again after
(docs/deployment.md: point the load balancer's health check at it). Real PostgreSQL
store; the database is made unreachable by refusing connections and dropping them."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest
from pydantic import SecretStr

from datasources.api import create_app
from tests.api.conftest import make_settings
from tests.waiting import eventually

pytestmark = [pytest.mark.api, pytest.mark.integration]


async def test_readyz_is_503_while_the_store_is_down(
    tmp_path: Path, postgres_database: str, postgres_admin_dsn: str
) -> None:
    name = postgres_database.rsplit("/", 1)[1]
    store = SecretStr(postgres_database)
    settings = make_settings(tmp_path).model_copy(update={"database_url": store})
    app = create_app(settings)
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:

                async def status() -> tuple[int, str]:
                    response = await client.get("/readyz")
                    return response.status_code, response.json()["store"]

                assert await status() == (200, "ok")
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
                await admin.execute(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                    name,
                )
                await eventually(
                    lambda: _is(status, (503, "down")), what="/readyz reports the store down"
                )
                assert (await client.get("/healthz")).status_code == 200  # alive all along
                await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
                await eventually(lambda: _is(status, (200, "ok")), what="/readyz recovers")
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


async def _is(probe: object, expected: tuple[int, str]) -> bool:
    assert callable(probe)
    return bool(await probe() == expected)
