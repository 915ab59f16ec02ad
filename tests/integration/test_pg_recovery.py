"""PostgreSQL sources recover from real faults: restarts, resets, stalls, refusals.

Each case breaks the server or the wire under an open source (a private cluster this
test may restart, or tests/faults.py between us and the shared server) and checks what
the caller sees (an error of our tree, never a driver's), what is left on disk (nothing
partial) and that the next call succeeds.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest

from datasources import DataSourceRegistry
from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.connectors.sql import as_sql
from datasources.errors import DataSourceError, TimeoutError, UnavailableError
from datasources.workspace import Workspace
from tests.faults import FaultProxy
from tests.servers import PrivatePostgres, private_postgres
from tests.waiting import eventually

pytestmark = pytest.mark.integration

WORK = "SELECT count(*) FROM generate_series(1, 20000)"
SLOW = "SELECT count(*) FROM generate_series(1, 100000000000)"  # minutes of work, no sleep()


async def _with_reader(server: PrivatePostgres) -> str:
    """A least-privilege login on the private cluster (trust auth): its DSN."""
    admin = await asyncpg.connect(server.dsn)
    try:
        await admin.execute("CREATE ROLE reader LOGIN")
    finally:
        await admin.close()
    return server.dsn.replace("postgres@", "reader@", 1)


def _via(proxy: FaultProxy, dsn: str) -> str:
    return dsn.replace(urlsplit(dsn).netloc.split("@")[-1], f"{proxy.host}:{proxy.port}", 1)


APP = "ds_recovery"


async def _registry(dsn: str, **config: Any) -> DataSourceRegistry:
    registry = DataSourceRegistry()
    config = {"dsn": dsn, "application_name": APP, **config}
    await registry.register_data_source(
        {"id": "db", "name": "db", "type": "postgresql", "config": config}
    )
    return registry


async def _fill_the_pool(connector: Any, admin_dsn: str, app: str = APP) -> None:
    """Several idle pooled connections, as a busy source has (counted by the server)."""
    results = await asyncio.gather(*(connector.execute_query(WORK) for _ in range(10)))
    assert all(r.rows for r in results)
    admin = await asyncpg.connect(admin_dsn)
    try:
        held = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", app
        )
    finally:
        await admin.close()
    assert held >= 2, held


# -- restarts ------------------------------------------------------------------------------


async def test_the_first_query_after_a_real_restart_succeeds() -> None:
    """Server restarted (fast): every pooled connection ended; the next query just works."""
    async with private_postgres() as server:
        registry = await _registry(await _with_reader(server))
        try:
            connector = await registry.get_connector("db")  # the seed's way
            await _fill_the_pool(connector, server.dsn)
            await server.restart()
            assert (await as_sql(connector).execute_query("SELECT 1")).rows == [[1]]
            await _fill_the_pool(connector, server.dsn)
            await server.restart()
            async with registry.get_connector("db") as borrowed:
                assert (await as_sql(borrowed).execute_query("SELECT 2")).rows == [[2]]
        finally:
            await registry.close()


async def test_the_first_query_after_a_failover_succeeds() -> None:
    """Restarted behind a middlebox that lost its connections (a NAT, a load balancer, a
    failover): the client is not told, and finds each pooled connection dead only by
    using it. The first dead one takes the whole set with it, and the query runs again
    on a new connection."""
    async with private_postgres() as server:
        dsn = await _with_reader(server)
        async with FaultProxy("127.0.0.1", server.port) as proxy:
            registry = await _registry(_via(proxy, dsn))
            try:
                connector = await registry.get_connector("db")  # the seed's way
                for attempt in range(2):
                    await _fill_the_pool(connector, server.dsn)
                    proxy.lose_state()
                    await server.restart()
                    if attempt == 0:
                        result = await as_sql(connector).execute_query("SELECT 1")
                    else:
                        async with registry.get_connector("db") as borrowed:
                            result = await as_sql(borrowed).execute_query("SELECT 1")
                    assert result.rows == [[1]]
                    # The dead connections went as a set: one was found dead, not each.
                    assert (await as_sql(connector).execute_query(WORK)).rows
            finally:
                await registry.close()


async def test_cut_then_refused_then_back(postgres_reader: str, postgres_admin_dsn: str) -> None:
    """Connections closed and the server gone (a restart seen from the client), then back."""
    host, port = urlsplit(postgres_reader).netloc.split("@")[-1].split(":")
    async with FaultProxy(host, int(port)) as proxy:
        app = "ds_cut_" + secrets.token_hex(4)
        registry = await _registry(_via(proxy, postgres_reader), application_name=app)
        try:
            connector = await registry.get_connector("db")
            await _fill_the_pool(connector, postgres_admin_dsn, app)
            proxy.refuse()
            proxy.cut()
            with pytest.raises(UnavailableError) as info:
                await as_sql(connector).execute_query("SELECT 1")
            assert "cannot be reached" in info.value.message and info.value.transient
            proxy.heal()
            assert (await as_sql(connector).execute_query("SELECT 1")).rows == [[1]]
        finally:
            await registry.close()


# -- resets and stalls on the wire ------------------------------------------------------------


@pytest.fixture
async def proxied(postgres_reader: str) -> AsyncIterator[tuple[FaultProxy, str, str]]:
    """A proxy in front of the shared server: (proxy, source DSN, admin DSN of the database)."""
    split = urlsplit(postgres_reader)
    host, port = split.netloc.split("@")[-1].split(":")
    admin = f"postgresql://postgres@{host}:{port}{split.path}"
    async with FaultProxy(host, int(port)) as proxy:
        yield proxy, _via(proxy, postgres_reader), admin


async def _running(admin_dsn: str, app: str) -> int:
    admin = await asyncpg.connect(admin_dsn)
    try:
        return int(
            await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 "
                "AND state = 'active'",
                app,
            )
        )
    finally:
        await admin.close()


def _connector(dsn: str, app: str, **config: Any) -> PostgreSQLConnector:
    return PostgreSQLConnector({"dsn": dsn, "application_name": app, **config}, source_id="faulty")


async def test_reset_mid_query(proxied: tuple[FaultProxy, str, str]) -> None:
    proxy, dsn, admin = proxied
    app = "ds_reset_" + secrets.token_hex(4)
    async with _connector(dsn, app, statement_timeout=60) as connector:
        task = asyncio.create_task(connector.execute_query(SLOW))
        await eventually(lambda: _running(admin, app), what="the query runs on the server")
        proxy.refuse()  # the one retry finds nobody either
        proxy.reset()
        with pytest.raises(DataSourceError) as info:
            async with asyncio.timeout(60):
                await task
        assert isinstance(info.value, UnavailableError) and info.value.transient, info.value
        proxy.heal()
        assert (await as_sql(connector).execute_query("SELECT 1")).rows == [[1]]


async def test_reset_mid_export_leaves_no_file(
    proxied: tuple[FaultProxy, str, str], tmp_path: Path
) -> None:
    proxy, dsn, _admin = proxied
    workspace = Workspace(tmp_path / "ws")
    sql = "SELECT g, md5(g::text) AS h FROM generate_series(1, 3000000) g"
    async with _connector(dsn, "ds_export_" + secrets.token_hex(4)) as connector:
        proxy.throttle(4 * 1024 * 1024)  # slow enough to break it half-way
        task = asyncio.create_task(connector.export_query(sql, workspace, filename="out.parquet"))
        await proxy.wait_for_bytes(down=2 * 1024 * 1024)
        proxy.refuse()
        proxy.reset()
        with pytest.raises(DataSourceError) as info:
            async with asyncio.timeout(60):
                await task
        assert isinstance(info.value, UnavailableError) and info.value.transient, info.value
        assert not (workspace.root / "out.parquet").exists()
        assert list(workspace.tmp_dir.iterdir()) == []
        proxy.heal()
        done = await connector.export_query(
            "SELECT g FROM generate_series(1, 1000) g", workspace, filename="out.parquet"
        )
        import pyarrow.parquet as pq

        assert pq.read_table(done).num_rows == 1000


async def test_a_stalled_server_times_out_and_the_query_is_cancelled(
    proxied: tuple[FaultProxy, str, str],
) -> None:
    proxy, dsn, admin = proxied
    app = "ds_stall_" + secrets.token_hex(4)
    async with _connector(dsn, app, statement_timeout=1) as connector:
        task = asyncio.create_task(connector.execute_query(SLOW))
        await eventually(lambda: _running(admin, app), what="the query runs on the server")
        proxy.stall()  # nothing moves either way; the sockets stay open
        with pytest.raises(TimeoutError):
            # The source's own deadline ends it, not this bound.
            async with asyncio.timeout(30):
                await task

        async def gone() -> bool:
            return await _running(admin, app) == 0

        await eventually(gone, what="the server no longer runs the query")
        proxy.heal()
        assert (await as_sql(connector).execute_query("SELECT 1")).rows == [[1]]
