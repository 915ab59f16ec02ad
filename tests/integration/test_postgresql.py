"""The PostgreSQL connector against a real server: read-only in depth, layer by layer."""

from __future__ import annotations

import asyncio
import re
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import asyncpg
import pyarrow.parquet as pq
import pytest

from datasources.connectors.postgresql import PostgreSQLConfig, PostgreSQLConnector
from datasources.connectors.sql import as_sql
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
from datasources.testing.readonly_corpus import ALLOWED, ATTEMPTS, BYPASS_CORPUS
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
CREATE SCHEMA hidden;
CREATE TABLE hidden.data (secret text);
INSERT INTO hidden.data VALUES ('top secret');
"""
LAYERS = ("parser", "catalog", "transaction", "role")
# Server-side paths the corpus tries to write (COPY … TO, lo_export).
SERVER_FILES = ("/tmp/datasources-pwned", "/tmp/x")

_SNAPSHOT_QUERIES = {
    "data": """SELECT 'canary', md5(string_agg(c::text, ',' ORDER BY c.id)) FROM canary c
               UNION ALL SELECT 'hidden', md5(string_agg(d::text, ',')) FROM hidden.data d
               UNION ALL SELECT 'types', md5(string_agg(t::text, ',')) FROM types t""",
    "sequences": "SELECT last_value, is_called FROM canary_seq",
    "relations": """SELECT n.nspname, c.relname, c.relkind::text, c.relacl::text,
                           (SELECT string_agg(a.attname || ':' || a.atttypid, ',' ORDER BY a.attnum)
                            FROM pg_attribute a WHERE a.attrelid = c.oid AND a.attnum > 0)
                    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                    WHERE n.nspname NOT IN ('pg_catalog', 'information_schema')
                      AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2""",
    "schemas": "SELECT nspname, nspacl::text FROM pg_namespace ORDER BY 1",
    "functions": "SELECT count(*), max(oid::int8) FROM pg_proc",
    "types": "SELECT count(*), max(oid::int8) FROM pg_type",
    "database": "SELECT datname, datacl::text FROM pg_database WHERE datname = current_database()",
    "default_acl": "SELECT defaclrole, defaclobjtype::text, defaclacl::text FROM pg_default_acl",
    "roles": """SELECT rolname, rolsuper, rolcreaterole, rolcreatedb, rolcanlogin,
                       rolreplication, rolbypassrls FROM pg_roles
                WHERE rolname = ANY($2::text[]) ORDER BY 1""",
    "memberships": """SELECT roleid, member, admin_option FROM pg_auth_members
                      WHERE member IN (SELECT oid FROM pg_roles WHERE rolname = ANY($2::text[]))
                      ORDER BY 1, 2""",
    "comments": "SELECT objoid, classoid, objsubid, description FROM pg_description "
    "WHERE objoid >= 16384 ORDER BY 1, 2, 3",
    "shared_comments": """SELECT objoid, description FROM pg_shdescription
                          WHERE objoid IN (SELECT oid FROM pg_roles WHERE rolname = ANY($2::text[]))
                             OR objoid = (SELECT oid FROM pg_database
                                          WHERE datname = current_database())""",
    "large_objects": "SELECT oid FROM pg_largeobject_metadata ORDER BY 1",
    "role_settings": "SELECT setdatabase, setrole, setconfig::text FROM pg_db_role_setting",
    "settings": "SELECT name, setting FROM pg_settings ORDER BY 1",
    "files": "SELECT f, (pg_stat_file(f, true)).size FROM unnest($1::text[]) f",
    "data_directory": "SELECT string_agg(f, ',' ORDER BY f) FROM pg_ls_dir('.') f",
}


class Database:
    """A fresh database with a writer (owner), a reader (SELECT only) and the superuser."""

    def __init__(self, admin_dsn: str, url: str, name: str) -> None:
        self.admin_dsn, self.url, self.name = admin_dsn, url, name
        suffix = secrets.token_hex(4)
        self.writer, self.reader = f"ds_w_{suffix}", f"ds_r_{suffix}"
        self.password = "pw-" + secrets.token_hex(8)
        base = admin_dsn.split("://", 1)[1].split("@", 1)[-1].rsplit("/", 1)[0]
        self.host, _, port = base.partition(":")
        self.port = int(port or 5432)

    def config(self, role: str, **extra: Any) -> dict[str, Any]:
        if role == "super":
            return {"dsn": self.url, "statement_timeout": 2, **extra}
        return {
            "host": self.host,
            "port": self.port,
            "database": self.name,
            "user": role,
            "password": self.password,
            "statement_timeout": 2,
            **extra,
        }

    async def snapshot(self) -> dict[str, Any]:
        """Everything the corpus could change: data, sequences, catalog, permissions,
        comments, large objects, settings and server-side files."""
        conn = await asyncpg.connect(self.url)
        try:
            taken = {}
            roles = [self.writer, self.reader, "postgres"]
            for name, query in _SNAPSHOT_QUERIES.items():
                args: list[Any] = [list(SERVER_FILES)] if "$1" in query else []
                if "$2" in query:
                    args = [roles]
                    query = query.replace("$2", "$1")
                taken[name] = [tuple(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()
        return taken

    async def sibling(self, role: str) -> asyncpg.Connection:
        """Another session of ``role``: a signal sent from the corpus would end it."""
        if role == "super":
            return await asyncpg.connect(self.url)
        return await asyncpg.connect(
            host=self.host, port=self.port, user=role, password=self.password, database=self.name
        )


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
        for schema in ("public", "hidden"):
            await owner.execute(f"GRANT USAGE ON SCHEMA {schema} TO {db.reader}")
            await owner.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {db.reader}")
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
    """A connector as ``reader`` (least privilege), ``writer`` (the owner) or ``super``.

    ``layers`` names the layers left on (default all); ``super`` sources carry the
    operator's opt-in unless the privilege layer is what is being tried.
    """

    def make(
        role: str = "reader",
        *,
        parser: bool = True,
        layers: Sequence[str] = LAYERS,
        **extra: Any,
    ) -> PostgreSQLConnector:
        name = {"reader": database.reader, "writer": database.writer}.get(role, role)
        on = set(layers) if parser else set(layers) - {"parser"}
        connector = PostgreSQLConnector(
            database.config(name, **extra),
            source_id="pg",
            allow_privileged_role=role == "super" and on != {"role"},
        )
        connector.parser_check = "parser" in on
        connector.catalog_check = "catalog" in on
        connector.transaction_check = "transaction" in on
        connector.privilege_check = "role" in on
        return connector

    return make


@pytest.mark.parametrize("sql", ALLOWED)
async def test_reads_work(connector_for: Callable[..., PostgreSQLConnector], sql: str) -> None:
    async with connector_for() as connector:
        result = await connector.execute_query(sql, [41] if "$1" in sql else None)
    assert result.columns and result.row_count >= 1


async def _try_all(connector: PostgreSQLConnector, statements: Sequence[str]) -> dict[str, str]:
    outcomes: dict[str, str] = {}
    for sql in statements:
        try:
            await connector.execute_query(sql)
            outcomes[sql] = "ran"
        except DataSourceError as exc:
            outcomes[sql] = exc.code
    return outcomes


@pytest.mark.parametrize("role", ["reader", "super"])
async def test_corpus_with_every_layer(
    connector_for: Callable[..., PostgreSQLConnector], database: Database, role: str
) -> None:
    """Every attempt is refused before the server sees it, on any role; nothing changes."""
    before = await database.snapshot()
    sibling = await database.sibling(database.reader if role == "reader" else "super")
    try:
        async with connector_for(role, schemas=["public"]) as connector:
            outcomes = await _try_all(connector, BYPASS_CORPUS)
        assert await sibling.fetchval("SELECT 1") == 1
    finally:
        await sibling.close()
    early = ("read_only_violation", "schema_not_allowed")
    late = {sql: code for sql, code in outcomes.items() if code not in early}
    assert late == {}
    assert await database.snapshot() == before


@pytest.mark.parametrize("role", ["reader", "super"])
@pytest.mark.parametrize("layer", LAYERS)
async def test_each_layer_alone(
    connector_for: Callable[..., PostgreSQLConnector],
    database: Database,
    layer: str,
    role: str,
) -> None:
    """One layer on, the others off: it refuses every attempt it owns, and nothing changes.

    On the superuser the role layer alone refuses the source outright.
    """
    owned = [a.sql for a in ATTEMPTS if layer in a.stops]
    before = await database.snapshot()
    sibling = await database.sibling(database.reader if role == "reader" else "super")
    try:
        async with connector_for(
            role, layers=[layer], schemas=["public"], statement_timeout=1
        ) as connector:
            outcomes = await _try_all(connector, owned)
            ran = [sql for sql, outcome in outcomes.items() if outcome == "ran"]
            assert ran == [], ran
            if role == "super" and layer == "role":
                assert set(outcomes.values()) == {"privileged_role"}
            else:  # the pool is still healthy after all of that
                result = await connector.execute_query("SELECT count(*) FROM canary")
                assert result.rows == [[50]]
        assert await sibling.fetchval("SELECT 1") == 1, "a sibling session was signalled"
    finally:
        await sibling.close()
    after = await database.snapshot()
    changed = {k for k in before if before[k] != after[k]}
    assert not changed, {k: (before[k], after[k]) for k in changed}


async def test_extended_protocol_refuses_stacked_statements(
    connector_for: Callable[..., PostgreSQLConnector],
) -> None:
    async with connector_for("writer", layers=()) as connector:
        with pytest.raises(InvalidInputError) as info:
            await connector.execute_query("SELECT 1; SELECT 2")
    # The server's "cannot insert multiple commands" points at no character of the query:
    # only its SQLSTATE passes (see connectors/postgresql/errors.py).
    assert "SQLSTATE 42601 syntax_error" in info.value.message, info.value.message


async def test_timeout_cancels_on_the_server_and_the_pool_recovers(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    async with connector_for(statement_timeout=0.5, pool_max_size=1) as connector:
        with pytest.raises(TimeoutError):
            await connector.execute_query(SLOW, max_rows=1)
        assert (await connector.execute_query("SELECT 1")).rows == [[1]]


async def _running(admin: asyncpg.Connection, database: Database) -> list[int]:
    """Backends of the test database running ``SLOW`` right now."""
    rows = await admin.fetch(
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND state = 'active' AND query = $2",
        database.name,
        SLOW,
    )
    return [r["pid"] for r in rows]


async def _until(condition: Callable[[], Any], what: str, seconds: float = 20) -> Any:
    """Poll ``condition`` (an async callable) until it is truthy; fail after ``seconds``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        value = await condition()
        if value:
            return value
        await asyncio.sleep(0.02)
    pytest.fail(f"gave up waiting: {what}")


async def test_cancelling_the_caller_cancels_the_server_query(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    """The server shows the statement running, then no longer running once we cancel."""
    admin = await asyncpg.connect(database.admin_dsn)
    try:
        async with connector_for(statement_timeout=60) as connector:
            task = asyncio.create_task(connector.execute_query(SLOW))
            pids = await _until(lambda: _running(admin, database), "the query to start")
            assert not task.done()
            task.cancel()

            async def stopped() -> bool:
                return not set(pids) & set(await _running(admin, database))

            # Well before the 60 s statement timeout could end it: the server stopped it.
            await _until(stopped, "the server to stop the query", seconds=20)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert (await connector.execute_query("SELECT 2")).rows == [[2]]
    finally:
        await admin.close()


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
    async with connector_for("super") as admin:  # the operator allowed it: a warning
        status = await admin.test_connection()
    assert status.ok and any("superuser" in w for w in status.warnings)


async def _grant(database: Database, *statements: str) -> None:
    admin = await asyncpg.connect(database.url)
    try:
        for statement in statements:
            await admin.execute(statement)
    finally:
        await admin.close()


@pytest.mark.parametrize(
    ("grant", "reason"),
    [
        (None, "is a superuser"),
        ("GRANT pg_read_server_files TO {role}", "pg_read_server_files"),
        ("GRANT pg_write_server_files TO {role}", "pg_write_server_files"),
        ("GRANT pg_execute_server_program TO {role}", "pg_execute_server_program"),
        ("GRANT pg_signal_backend TO {role}", "pg_signal_backend"),
        ("GRANT EXECUTE ON FUNCTION pg_read_file(text) TO {role}", "pg_read_file(text)"),
    ],
)
async def test_privileged_roles_are_refused_unless_the_operator_allows_them(
    database: Database, grant: str | None, reason: str
) -> None:
    from datasources.registry import DataSourceRegistry

    if grant is None:
        config = database.config("super")
    else:
        await _grant(database, grant.format(role=database.reader))
        config = database.config(database.reader)
    refused = PostgreSQLConnector(config, source_id="pg")
    async with refused:
        status = await refused.test_connection()
        assert not status.ok and status.details["error"] == "privileged_role"
        assert reason in status.message and database.password not in status.message
        with pytest.raises(PermissionDeniedError, match="least-privilege"):
            await refused.execute_query("SELECT 1")
    # The opt-in is the operator's (settings → registry), never a field of the config.
    with pytest.raises(ConfigurationError):
        PostgreSQLConnector({**config, "allow_privileged_role": True})
    source = {"name": "pg", "type": "postgresql", "config": config}
    async with DataSourceRegistry() as registry:  # refused at registration
        with pytest.raises(PermissionDeniedError) as refusal:
            await registry.register_data_source(source)
        assert refusal.value.code == "privileged_role" and reason in refusal.value.message
        assert await registry.list_data_sources() == []
    async with DataSourceRegistry(allow_privileged_roles=True) as registry:
        await registry.register_data_source(source)
        status = await registry.test_data_source("pg")
        assert status.ok and any(reason in w for w in status.warnings)
        async with registry.get_connector("pg") as connector:
            assert (await as_sql(connector).execute_query("SELECT 1")).rows == [[1]]


async def test_a_role_made_privileged_after_registration_is_refused(database: Database) -> None:
    """Every new connection checks again: a grant made after registration is caught."""
    from datasources.registry import DataSourceRegistry

    async with DataSourceRegistry() as registry:
        source = {"name": "pg", "type": "postgresql", "config": database.config(database.reader)}
        await registry.register_data_source(source)
        assert (await registry.test_data_source("pg")).ok
        await _grant(database, f"GRANT pg_signal_backend TO {database.reader}")
        status = await registry.test_data_source("pg")
        assert not status.ok and status.details["error"] == "privileged_role"
        # Unreachable at registration: registered, and checked when it connects.
        down = {**database.config(database.reader), "port": 1, "connect_timeout": 2}
        await registry.register_data_source({"name": "down", "type": "postgresql", "config": down})


async def test_the_operator_opt_in_comes_from_settings(tmp_path: Path) -> None:
    from datasources.config import Settings
    from datasources.registry import DataSourceRegistry

    for value, expected in (("true", True), ("false", False)):
        settings = Settings(home=tmp_path, allow_privileged_database_roles=value)
        registry = DataSourceRegistry.from_settings(settings, enforce_outbound=True)
        assert registry._shared.allow_privileged_roles is expected


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
    assert isinstance(config, PostgreSQLConfig)
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
        assert schema.schemas == ["hidden", "public"]
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
    args = ["--home", str(home), "--create"]
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
    # A table in the terminal: listed with its estimated rows (not "0 B"), fetched with
    # its provenance shown (not "sha256:?").
    listed = runner.invoke(app, [*args, "ls", "warehouse"])
    assert listed.exit_code == 0 and "rows" in listed.output and " 0 B" not in listed.output
    (tmp_path / "ws").mkdir()  # a folder: the table lands at public/canary.parquet in it
    got = runner.invoke(app, [*args, "get", "warehouse", "public.canary", str(tmp_path / "ws")])
    assert got.exit_code == 0, got.output
    assert "sha256:?" not in got.output and re.search(r"sha256:[0-9a-f]{64}", got.output)
    assert got.output.split()[0].endswith("canary.parquet")
    named = tmp_path / "my-canary.parquet"  # a file name: the table is written there
    got = runner.invoke(app, [*args, "get", "warehouse", "public.canary", str(named)])
    assert got.exit_code == 0, got.output
    assert named.is_file() and pq.read_table(named).num_rows == 50


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


@pytest.mark.parametrize(
    "rootcert",
    ["/etc/passwd", "/etc/hostname", "/no/such/file", "/etc/shadow", "-----BEGIN CERTIFICATE-----"],
)
async def test_sslrootcert_is_never_a_server_path(database: Database, rootcert: str) -> None:
    """A path (or broken PEM) is refused at registration as a 4xx error, the same for every
    path: no server file is read for an API user, so none can be probed."""
    from datasources.netpolicy import OutboundPolicy
    from datasources.registry import DataSourceRegistry

    policy = OutboundPolicy(allow_private_networks=True)
    for config in (
        database.config(database.reader, sslmode="verify-ca", sslrootcert=rootcert),
        {"dsn": f"postgresql://u@{database.host}/d?sslmode=verify-ca&sslrootcert={rootcert}"},
    ):
        async with DataSourceRegistry(outbound=policy) as registry:
            with pytest.raises(ConfigurationError) as info:
                source = {"name": "pg", "type": "postgresql", "config": config}
                await registry.register_data_source(source)
        message = info.value.message
        assert "sslrootcert" in message and "root:" not in message
        assert rootcert not in message or rootcert.startswith("-----")


def _one_ca_certificate() -> str:
    import certifi

    return Path(certifi.where()).read_text()


async def test_sslrootcert_takes_the_certificate_itself(database: Database) -> None:
    bundle = _one_ca_certificate()
    pem = bundle[bundle.index("-----BEGIN CERTIFICATE-----") :]
    pem = pem[: pem.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")]
    for value in (pem, "system"):
        config = PostgreSQLConnector.validate_config(
            database.config(database.reader, sslmode="verify-full", sslrootcert=value)
        )
        await PostgreSQLConnector.check_config(config)


async def test_unqualified_names_resolve_as_the_server_resolves_them(
    connector_for: Callable[..., PostgreSQLConnector], database: Database
) -> None:
    """With ``hidden`` first on the role's search path, ``data`` is hidden.data: refused."""
    await _grant(database, f"ALTER ROLE {database.reader} SET search_path = hidden, public")
    async with connector_for(schemas=["public"]) as connector:
        with pytest.raises(PermissionDeniedError) as info:
            await connector.execute_query("SELECT * FROM data")
        assert info.value.code == "schema_not_allowed" and "hidden.data" in info.value.message
        # canary resolves to public.canary along the same path, and CTEs shadow.
        assert (await connector.execute_query("SELECT count(*) FROM canary")).rows == [[50]]
        shadowed = await connector.execute_query("WITH data AS (SELECT 1 AS x) SELECT * FROM data")
        assert shadowed.rows == [[1]]
        # A relation newer than the connector's catalog facts is not read past the check.
        await _grant(
            database,
            f"SET ROLE {database.writer}",
            "CREATE TABLE hidden.late AS SELECT 'late secret' AS v",
            f"GRANT SELECT ON hidden.late TO {database.reader}",
        )
        with pytest.raises(PermissionDeniedError) as late:
            await connector.execute_query("SELECT * FROM late")
        assert late.value.code == "schema_not_allowed"
    async with connector_for(schemas=["public", "hidden"]) as connector:
        assert (await connector.execute_query("SELECT * FROM data")).rows == [["top secret"]]


async def test_a_long_statement_is_parsed_off_the_event_loop(
    connector_for: Callable[..., PostgreSQLConnector],
) -> None:
    """Parsing costs about 1 ms a kilobyte: the loop keeps serving while a long one parses."""
    sql = "SELECT 1 WHERE " + " OR ".join(f"{i} = {i} + 0" for i in range(12_000))
    assert 200_000 < len(sql) < 256 * 1024
    async with connector_for() as connector:
        await connector.execute_query("SELECT 1")  # the catalog is loaded
        ticks, done = 0, False

        async def ticker() -> None:
            nonlocal ticks
            while not done:
                ticks += 1
                await asyncio.sleep(0)

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0)
        before = ticks
        await connector._guard(sql)
        during = ticks - before
        done = True
        await task
    assert during > 10, during
