"""The PostgreSQL connector against a real server: read-only in depth, layer by layer."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.errors import (
    ConfigurationError,
    DataSourceError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
)
from datasources.sql_guard import ReadOnlyViolation
from datasources.testing.contract import DatabaseContract
from datasources.testing.readonly_corpus import ALLOWED, BYPASS_CORPUS
from tests.waiting import eventually

pytestmark = pytest.mark.integration

SLOW = "SELECT count(*) FROM generate_series(1, 100000000000)"  # minutes of work, no sleep()

SETUP = """
CREATE TABLE canary (id int PRIMARY KEY, v text NOT NULL);
COMMENT ON TABLE canary IS 'must never change';
COMMENT ON COLUMN canary.v IS 'a value';
INSERT INTO canary SELECT g, 'a' || g FROM generate_series(1, 50) g;
CREATE SEQUENCE canary_seq;
CREATE VIEW canary_view AS SELECT id FROM canary WHERE id < 10;
CREATE TABLE types (n numeric(12, 3), ts timestamptz, j jsonb, u uuid, b bytea, arr int[]);
INSERT INTO types VALUES (1234.5, '2026-01-02 03:04:05+00', '{"k": [1, 2]}',
  'a8098c1a-f86e-11da-bd1a-00112444be1e', '\\x00ff', '{1,2,3}');
"""


class Database:
    """A fresh database with a writer (owner) role and a reader (SELECT only) role."""

    def __init__(self, admin_dsn: str, url: str, name: str) -> None:
        self.admin_dsn, self.url, self.name = admin_dsn, url, name
        suffix = secrets.token_hex(4)
        self.writer, self.reader = f"ds_w_{suffix}", f"ds_r_{suffix}"
        self.password = "pw-" + secrets.token_hex(8)
        base = admin_dsn.split("://", 1)[1].split("@", 1)[-1].rsplit("/", 1)[0]
        self.host, _, port = base.partition(":")
        self.port = int(port or 5432)

    def config(self, role: str, **extra: Any) -> dict[str, Any]:
        return {
            "host": self.host,
            "port": self.port,
            "database": self.name,
            "user": role,
            "password": self.password,
            "statement_timeout": 2,
            **extra,
        }

    async def snapshot(self) -> tuple[Any, ...]:
        conn = await asyncpg.connect(self.url)
        try:
            rows = await conn.fetch("SELECT id, v FROM canary ORDER BY id")
            tables = await conn.fetch(
                "SELECT relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' ORDER BY 1"
            )
            seq = await conn.fetchval("SELECT last_value FROM canary_seq")
            columns = await conn.fetchval(
                "SELECT count(*) FROM pg_attribute WHERE attrelid = 'canary'::regclass"
            )
        finally:
            await conn.close()
        return tuple(map(tuple, rows)), tuple(r[0] for r in tables), seq, columns


@pytest.fixture
async def database(postgres_admin_dsn: str, postgres_database: str) -> AsyncIterator[Database]:
    name = postgres_database.rsplit("/", 1)[1]
    db = Database(postgres_admin_dsn, postgres_database, name)
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        for role in (db.writer, db.reader):
            await admin.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{db.password}'")
        await admin.execute(f'GRANT ALL ON DATABASE "{name}" TO {db.writer}')
    finally:
        await admin.close()
    owner = await asyncpg.connect(postgres_database)
    try:
        await owner.execute(f"GRANT ALL ON SCHEMA public TO {db.writer}")
        await owner.execute(f"SET ROLE {db.writer}")
        await owner.execute(SETUP)
        await owner.execute(f"GRANT USAGE ON SCHEMA public TO {db.reader}")
        await owner.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {db.reader}")
    finally:
        await owner.close()
    try:
        yield db
    finally:
        admin = await asyncpg.connect(postgres_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            for role in (db.writer, db.reader):
                await admin.execute(f"DROP ROLE IF EXISTS {role}")
        finally:
            await admin.close()


@pytest.fixture
def connector_for(database: Database) -> Callable[..., PostgreSQLConnector]:
    def make(role: str = "reader", *, parser: bool = True, **extra: Any) -> PostgreSQLConnector:
        name = database.reader if role == "reader" else database.writer
        connector = PostgreSQLConnector(database.config(name, **extra), source_id="pg")
        connector.parser_check = parser
        return connector

    return make


@pytest.mark.parametrize("sql", ALLOWED)
async def test_reads_work(connector_for: Callable[..., PostgreSQLConnector], sql: str) -> None:
    async with connector_for() as connector:
        result = await connector.execute_query(sql, [41] if "$1" in sql else None)
    assert result.columns and result.row_count >= 1


async def test_corpus_with_every_layer(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    before = await database.snapshot()
    async with connector_for("writer") as connector:
        for sql in BYPASS_CORPUS:
            with pytest.raises(ReadOnlyViolation):
                await connector.execute_query(sql)
    assert await database.snapshot() == before


async def test_corpus_with_the_parser_switched_off(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    """A role that owns the table and the parser off: the server layers alone stop every write."""
    before = await database.snapshot()
    outcomes: dict[str, str] = {}
    async with connector_for("writer", parser=False, statement_timeout=1) as connector:
        for sql in BYPASS_CORPUS:
            try:
                await connector.execute_query(sql)
                outcomes[sql] = "ran"
            except DataSourceError as exc:
                outcomes[sql] = exc.code
            assert await database.snapshot() == before, f"changed by: {sql}"
        # The pool is still healthy after all of that.
        result = await connector.execute_query("SELECT count(*) FROM canary")
        assert result.rows == [[50]]
    refused = [sql for sql, outcome in outcomes.items() if outcome != "ran"]
    assert len(refused) >= 40, outcomes
    for sql in (
        "DELETE FROM canary",
        "SELECT 1; DELETE FROM canary",
        "SELECT nextval('canary_seq')",
    ):
        assert outcomes[sql] != "ran"


async def test_extended_protocol_refuses_stacked_statements(
    connector_for: Callable[..., PostgreSQLConnector],
) -> None:
    async with connector_for("writer", parser=False) as connector:
        with pytest.raises(InvalidInputError) as info:
            await connector.execute_query("SELECT 1; SELECT 2")
    assert "multiple commands" in info.value.message


async def test_timeout_cancels_on_the_server_and_the_pool_recovers(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    async with connector_for(statement_timeout=0.5, pool_max_size=1) as connector:
        with pytest.raises(TimeoutError):
            await connector.execute_query(SLOW, max_rows=1)
        assert (await connector.execute_query("SELECT 1")).rows == [[1]]


async def test_cancelling_the_caller_cancels_the_server_query(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    async with connector_for(statement_timeout=60) as connector:
        task = asyncio.create_task(connector.execute_query(SLOW))
        await asyncio.sleep(0.5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        admin = await asyncpg.connect(database.admin_dsn)
        try:
            for _ in range(50):
                active = await admin.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' "
                    "AND query = $2",
                    database.name,
                    SLOW,
                )
                if active == 0:
                    break
                await asyncio.sleep(0.1)
        finally:
            await admin.close()
        assert active == 0
        assert (await connector.execute_query("SELECT 2")).rows == [[2]]


async def test_results_are_capped_and_json_safe(
    connector_for: Callable[..., PostgreSQLConnector],
) -> None:
    import json

    async with connector_for() as connector:
        big = await connector.execute_query(
            "SELECT g FROM generate_series(1, 1000000) g", max_rows=10
        )
        assert big.truncated and big.row_count == 10 and big.rows[-1] == [10]
        typed = await connector.execute_query("SELECT * FROM types")
    assert [c.type for c in typed.columns] == [
        "numeric",
        "timestamptz",
        "jsonb",
        "uuid",
        "bytea",
        "int4[]",
    ]
    row = typed.rows[0]
    assert row[0] == "1234.500" and row[1].startswith("2026-01-02T03:04:05")
    assert (
        row[3] == "a8098c1a-f86e-11da-bd1a-00112444be1e"
        and row[4] == "AP8="
        and row[5] == [1, 2, 3]
    )
    json.dumps(typed.model_dump())


async def test_role_inspection(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    async with connector_for("writer") as writer:
        status = await writer.test_connection()
    assert status.ok and any("INSERT on public.canary" in w for w in status.warnings), (
        status.warnings
    )
    async with connector_for("reader") as reader:
        status = await reader.test_connection()
    assert status.ok and status.warnings == []
    admin = PostgreSQLConnector({"dsn": database.admin_dsn.rsplit("/", 1)[0] + f"/{database.name}"})
    async with admin:
        status = await admin.test_connection()
    assert any("superuser" in w for w in status.warnings)


async def test_missing_database_and_unreachable_server(database: Database) -> None:
    # The test servers use trust authentication, so a wrong password cannot be shown here.
    missing = PostgreSQLConnector({**database.config(database.reader), "database": "no_such_db_x"})
    assert not (await missing.test_connection()).ok
    down = PostgreSQLConnector(
        {**database.config(database.reader), "port": 1, "connect_timeout": 2}
    )
    status = await down.test_connection()
    assert not status.ok and "cannot be reached" in status.message


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://u:p@h/db?passfile=/etc/passwd",
        "postgresql://u@h/db?service=evil",
        "postgresql://u@h/db?options=-c%20default_transaction_read_only%3Doff",
        "host=h dbname=d user=u sslkeylogfile=/tmp/keys",
        "host=h dbname=d user=u sslkey=/root/.ssh/id_rsa",
        "host=h dbname=d user=u target_session_attrs=any",
    ],
)
async def test_hostile_dsn_parameters_are_refused(dsn: str) -> None:
    config = PostgreSQLConnector.validate_config({"dsn": dsn})
    with pytest.raises(ConfigurationError) as info:
        await PostgreSQLConnector.check_config(config)
    assert "not allowed" in info.value.message
    assert ":p@" not in info.value.message


def test_config_shapes() -> None:
    with pytest.raises(ConfigurationError):
        PostgreSQLConnector.validate_config({"dsn": "postgresql://u@h/d", "host": "h"})
    with pytest.raises(ConfigurationError):
        PostgreSQLConnector.validate_config({"host": "h"})
    config = PostgreSQLConnector.validate_config(
        {"dsn": "host=h port=5433 dbname='my db' user=u password='p w'"}
    )
    params = config.connection_params()
    assert params["dbname"] == "my db" and params["password"] == "p w" and params["port"] == "5433"
    assert "p w" not in repr(config)


async def test_listing_metadata_and_export(
    connector_for: Callable[..., PostgreSQLConnector], tmp_path: Path
) -> None:
    async with connector_for() as connector:
        items = {i.path: i for i in await connector.list_items()}
        assert {"public.canary", "public.canary_view", "public.types"} <= set(items)
        assert items["public.canary_view"].kind == "view"
        assert items["public.canary"].metadata["comment"] == "must never change"
        assert [i.path for i in await connector.list_items("public.canary")] == [
            "public.canary",
            "public.canary_view",
        ]
        meta = await connector.get_metadata("public.canary")
        columns = meta.metadata["columns"]
        assert [(c["name"], c["type"], c["nullable"]) for c in columns] == [
            ("id", "integer", False),
            ("v", "text", False),
        ]
        assert columns[1]["comment"] == "a value"
        local = await connector.fetch_data("public.canary", tmp_path / "ws", format="csv")
        lines = local.read_text().splitlines()
        assert lines[0] == "id,v" and lines[1] == "1,a1" and len(lines) == 51
        assert local == (tmp_path / "ws" / "public" / "canary.csv").resolve()
        for bad in ("canary", "a.b.c", "../x", "public.no_such_table", "pg_catalog.pg_authid"):
            with pytest.raises((InvalidInputError, NotFoundError)):
                await connector.fetch_data(bad, tmp_path / "ws")
        with pytest.raises(PermissionDeniedError):
            await connector.upload_data(local, "public.canary")
    async with connector_for(schemas=["other"]) as limited:
        assert await limited.list_items() == []
        with pytest.raises(NotFoundError):
            await limited.get_metadata("public.canary")


async def test_schema_inspection(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    owner = await asyncpg.connect(database.url)
    try:
        await owner.execute(f"SET ROLE {database.writer}")
        await owner.execute(
            """
            CREATE TABLE customers (id int PRIMARY KEY, email text UNIQUE, name text);
            CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers (id),
                                 total numeric(10, 2) DEFAULT 0);
            CREATE INDEX orders_customer ON orders (customer_id);
            COMMENT ON COLUMN orders.total IS 'in EUR';
            CREATE MATERIALIZED VIEW order_totals AS
                SELECT customer_id, sum(total) FROM orders GROUP BY 1;
            """
        )
        await owner.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {database.reader}")
    finally:
        await owner.close()
    async with connector_for() as connector:
        schema = await connector.get_schema()
        assert schema.schemas == ["public"]
        tables = {t.name: t for t in schema.tables}
        assert tables["order_totals"].kind == "materialized_view"
        assert tables["canary_view"].kind == "view"
        orders = tables["orders"]
        assert [(c.name, c.type) for c in orders.columns] == [
            ("id", "integer"),
            ("customer_id", "integer"),
            ("total", "numeric(10,2)"),
        ]
        assert orders.columns[2].comment == "in EUR" and orders.columns[2].default == "0"
        kinds = {(c.kind, tuple(c.columns), c.references) for c in orders.constraints}
        assert ("primary_key", ("id",), None) in kinds
        assert ("foreign_key", ("customer_id",), "customers") in kinds
        assert {"orders_customer", "orders_pkey"} <= {i.name for i in orders.indexes}
        assert ("unique", ("email",), None) in {
            (c.kind, tuple(c.columns), c.references) for c in tables["customers"].constraints
        }
        assert await connector.get_schema() is schema  # cached
        assert await connector.get_schema(refresh=True) is not schema
        with pytest.raises(NotFoundError):
            await PostgreSQLConnector(
                {**database.config(database.reader), "schemas": ["other"]}
            ).get_schema(["public"])


async def test_schema_inspection_at_scale(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    owner = await asyncpg.connect(database.url)
    try:
        await owner.execute(f"SET ROLE {database.writer}")
        for batch in range(10):  # one transaction cannot hold 5,000 tables' locks
            await owner.execute(
                f"DO $$ BEGIN FOR i IN {batch * 500 + 1}..{batch * 500 + 500} LOOP "
                "EXECUTE format('CREATE TABLE t%s (id int PRIMARY KEY, v text, n numeric)', i); "
                "END LOOP; END $$"
            )
    finally:
        await owner.close()
    queries = 0
    original_fetch = asyncpg.connection.Connection.fetch

    async def counted_fetch(self: Any, *args: Any, **kwargs: Any) -> Any:
        nonlocal queries
        queries += 1
        return await original_fetch(self, *args, **kwargs)

    async with connector_for("writer", statement_timeout=120) as connector:
        with pytest.MonkeyPatch.context() as patch:  # counts round trips; the server is real
            patch.setattr(asyncpg.connection.Connection, "fetch", counted_fetch)
            schema = await connector.get_schema()
    # At scale: every table complete, from a handful of catalog queries, never one per table.
    made = {t.name: t for t in schema.tables if t.name.startswith("t") and t.name[1:].isdigit()}
    assert len(made) == 5000
    for table in made.values():
        assert [c.name for c in table.columns] == ["id", "v", "n"], table
        assert [(c.kind, c.columns) for c in table.constraints] == [("primary_key", ["id"])]
    assert 0 < queries <= 10, queries
    print(f"\n5,000-table schema inspected in {schema.elapsed_ms:.0f} ms")


async def test_dropped_connections_are_retried_once_and_the_pool_refills(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    async def drop_everyone() -> int:
        admin = await asyncpg.connect(database.admin_dsn)
        try:
            return int(
                await admin.fetchval(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid()",
                    database.name,
                )
            )
        finally:
            await admin.close()

    async def backends() -> list[int]:
        admin = await asyncpg.connect(database.admin_dsn)
        try:
            rows = await admin.fetch(
                "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
                database.name,
            )
        finally:
            await admin.close()
        return [r["pid"] for r in rows]

    async with connector_for(pool_min_size=2, pool_max_size=2) as connector:
        assert (await connector.execute_query("SELECT 1")).rows == [[1]]
        before = set(await backends())
        assert await drop_everyone() >= 1  # what a server restart looks like from here

        async def all_gone() -> bool:
            return not before & set(await backends())

        # The pool's connections are really dead before the next query (not a guess).
        await eventually(all_gone, what="the terminated backends are gone")
        assert (await connector.execute_query("SELECT count(*) FROM canary")).rows == [[50]]
        assert await connector.ping()


def test_cli_query(database: Database, tmp_path: Path) -> None:
    import json as jsonlib

    from typer.testing import CliRunner

    from datasources.cli import app

    runner = CliRunner()
    home = tmp_path / "home"
    env = {"PG_PASSWORD": database.password}
    args = ["--home", str(home)]
    added = runner.invoke(
        app,
        [
            *args,
            "sources",
            "add",
            "warehouse",
            "--type",
            "postgresql",
            "-c",
            f"host={database.host}",
            "-c",
            f"port={database.port}",
            "-c",
            f"database={database.name}",
            "-c",
            f"user={database.reader}",
            "--config-env",
            "password=PG_PASSWORD",
        ],
        env=env,
    )
    assert added.exit_code == 0, added.output
    result = runner.invoke(
        app,
        [*args, "--json", "query", "warehouse", "SELECT id, v FROM canary ORDER BY id", "-n", "3"],
    )
    assert result.exit_code == 0, result.output
    body = jsonlib.loads(result.output)
    assert body["rows"] == [[1, "a1"], [2, "a2"], [3, "a3"]] and body["truncated"] is True
    human = runner.invoke(app, [*args, "query", "warehouse", "SELECT count(*) AS n FROM canary"])
    assert human.exit_code == 0 and "50" in human.output
    refused = runner.invoke(app, [*args, "query", "warehouse", "DELETE FROM canary"])
    assert refused.exit_code == 1 and refused.output.startswith("error:")
    shown = runner.invoke(app, [*args, "--json", "sources", "show", "warehouse"])
    assert database.password not in shown.output
    local = runner.invoke(
        app, [*args, "sources", "add", "f", "--type", "local_folder", "-c", f"root={tmp_path}"]
    )
    assert local.exit_code == 0
    not_db = runner.invoke(app, [*args, "query", "f", "SELECT 1"])
    assert not_db.exit_code == 1 and "does not run queries" in not_db.output


async def test_profile_from_a_sample_from_pg_stats_and_of_a_query(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    async with connector_for() as connector:
        sampled = await connector.profile("public.canary")
        assert sampled.method == "sample" and sampled.sampled_rows == 50
        id_col, v_col = sampled.columns
        assert (id_col.name, id_col.type, id_col.min, id_col.max) == ("id", "int4", 1, 50)
        assert id_col.null_fraction == 0 and id_col.distinct_estimate == 50
        assert v_col.min == "a1" and v_col.top_values == []  # 50 distinct: not low-cardinality
        query = await connector.profile(
            "SELECT id % 3 AS bucket, NULLIF(id % 2, 0) AS odd FROM canary", sample_rows=30
        )
        assert query.method == "sample" and query.sampled_rows == 30
        bucket, odd = query.columns
        assert bucket.distinct_estimate == 3 and len(bucket.top_values) == 3
        assert abs(sum(v.fraction for v in bucket.top_values) - 1) < 1e-9
        assert odd.null_fraction == 0.5
        with pytest.raises(ReadOnlyViolation):
            await connector.profile("DELETE FROM canary")
        with pytest.raises(NotFoundError):
            await connector.profile("public.no_such_table")
    owner = await asyncpg.connect(database.url)
    try:
        await owner.execute(f"SET ROLE {database.writer}")
        await owner.execute("ANALYZE canary")
    finally:
        await owner.close()
    async with connector_for() as connector:
        stats = await connector.profile("public.canary")
    assert stats.method == "pg_stats" and stats.estimated_rows == 50
    assert stats.columns[0].name == "id" and stats.columns[0].null_fraction == 0
    assert stats.columns[0].min == "1" and stats.columns[0].max == "50"


class TestPostgreSQLContract(DatabaseContract):
    @pytest.fixture
    def schema(self) -> str:
        return "contract"

    @pytest.fixture
    async def make_table(self, database: Database, schema: str) -> Callable[[str, int], Any]:
        owner = await asyncpg.connect(database.url)
        await owner.execute(f"SET ROLE {database.writer}")
        await owner.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await owner.execute(f"GRANT USAGE ON SCHEMA {schema} TO {database.reader}")
        await owner.close()

        async def make(name: str, rows: int) -> None:
            conn = await asyncpg.connect(database.url)
            try:
                await conn.execute(f"SET ROLE {database.writer}")
                await conn.execute(
                    f"CREATE TABLE {schema}.{name} (id int PRIMARY KEY, v text);"
                    f"INSERT INTO {schema}.{name} "
                    f"SELECT g, 'v' || g FROM generate_series(1, {rows}) g;"
                    f"GRANT SELECT ON {schema}.{name} TO {database.reader}"
                )
            finally:
                await conn.close()

        return make

    @pytest.fixture
    def make_connector(self, database: Database) -> Callable[..., PostgreSQLConnector]:
        def make(read_only: bool = False, **extra: Any) -> PostgreSQLConnector:
            return PostgreSQLConnector(
                database.config(database.reader, **extra),
                source_id="pg-contract",
                read_only=read_only,
            )

        return make

    @pytest.fixture
    def secret_values(self, database: Database) -> list[str]:
        return [database.password]
