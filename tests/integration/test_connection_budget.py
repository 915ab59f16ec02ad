"""The connection budget: one source never holds more than ``max_connections`` server
connections per process, however many callers read from it at once.

The server itself is asked (``pg_stat_activity``), from a thread of its own with its own
event loop, so the count is sampled all through the run and not only when the loop
under test happens to be idle.
"""

from __future__ import annotations

import asyncio
import secrets
import threading

import asyncpg
import pytest

from datasources import DataSourceRegistry
from datasources.config import PoolSettings
from datasources.connectors.sql import as_sql
from tests.waiting import eventually

pytestmark = pytest.mark.integration

READS = 500
BUDGET = 3


class Sampler(threading.Thread):
    """Counts the server connections of one application_name until stopped."""

    def __init__(self, admin_dsn: str, application: str) -> None:
        super().__init__(daemon=True)
        self.admin_dsn, self.application = admin_dsn, application
        self.counts: list[int] = []
        self.stopping = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        async def sample() -> None:
            admin = await asyncpg.connect(self.admin_dsn)
            try:
                while not self.stopping.is_set():
                    self.counts.append(
                        await admin.fetchval(
                            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
                            self.application,
                        )
                    )
            finally:
                await admin.close()

        try:
            asyncio.run(sample())
        except BaseException as exc:  # reported by the test
            self.error = exc


async def test_500_concurrent_reads_stay_within_max_connections(
    postgres_reader: str, postgres_admin_dsn: str
) -> None:
    application = "ds_budget_" + secrets.token_hex(4)
    registry = DataSourceRegistry(pool_settings=PoolSettings(max_connections=BUDGET))
    await registry.register_data_source(
        {
            "id": "db",
            "name": "db",
            "type": "postgresql",
            "config": {"dsn": postgres_reader, "application_name": application},
        }
    )
    sampler = Sampler(postgres_admin_dsn, application)
    sampler.start()
    try:

        async def read(i: int) -> list[list[object]]:
            sql = f"SELECT {i} AS n, count(*) FROM generate_series(1, 20000)"
            if i % 2:  # the seed's way and the borrowing way, mixed
                connector = await registry.get_connector("db")
                return (await as_sql(connector).execute_query(sql)).rows
            async with registry.get_connector("db") as connector:
                return (await as_sql(connector).execute_query(sql)).rows

        results = await asyncio.gather(*(read(i) for i in range(READS)), return_exceptions=True)
        # One more sample after every read has returned, so the last state is counted too.
        counted = len(sampler.counts)
        await eventually(
            lambda: len(sampler.counts) > counted or not sampler.is_alive(),
            what="one more sample",
        )
    finally:
        sampler.stopping.set()
        await asyncio.to_thread(sampler.join)
        await registry.close()
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, failures[:3]
    assert [r[0][0] for r in results if isinstance(r, list)] == list(range(READS))
    assert sampler.error is None, sampler.error
    assert sampler.counts and max(sampler.counts) >= 1, "the sampler never saw the reads"
    assert max(sampler.counts) <= BUDGET, f"peak {max(sampler.counts)} > {BUDGET}"


async def test_an_update_closes_the_old_pool_once_its_queries_finish(
    postgres_reader: str, postgres_admin_dsn: str
) -> None:
    """The query in flight finishes on the old pool; then that pool's connections go, so a
    source never holds its budget twice for longer than its slowest query."""
    old_app, new_app = "ds_old_" + secrets.token_hex(4), "ds_new_" + secrets.token_hex(4)
    registry = DataSourceRegistry(pool_settings=PoolSettings(max_connections=BUDGET))
    config = {"dsn": postgres_reader, "application_name": old_app}
    await registry.register_data_source(
        {"id": "db", "name": "db", "type": "postgresql", "config": config}
    )
    admin = await asyncpg.connect(postgres_admin_dsn)

    async def held(app: str) -> int:
        query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
        return int(await admin.fetchval(query, app))

    try:
        slow = "SELECT count(*) FROM generate_series(1, 3000000)"
        entered = asyncio.Event()

        async def borrower() -> list[list[object]]:
            async with registry.get_connector("db") as connector:
                entered.set()
                return (await as_sql(connector).execute_query(slow)).rows

        task = asyncio.create_task(borrower())
        await entered.wait()
        await eventually(lambda: held(old_app), what="the slow query holds a connection")
        await registry.update_data_source("db", {"config": {"application_name": new_app}})
        async with registry.get_connector("db") as connector:
            assert (await as_sql(connector).execute_query("SELECT 1")).rows == [[1]]
        assert await held(new_app) >= 1
        assert (await task) == [[3000000]]  # finished on the old pool, undisturbed

        async def old_pool_closed() -> bool:
            return await held(old_app) == 0

        await eventually(old_pool_closed, what="the old pool's connections are closed")
    finally:
        await admin.close()
        await registry.close()
