"""PostgreSQL exports to Parquet and CSV: faithful types, limits, parameters, hostile input."""

from __future__ import annotations

import asyncio
import datetime as dt
import decimal
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.errors import (
    DataSourceError,
    InvalidInputError,
    LimitExceededError,
    UnsafePathError,
)
from datasources.sql_guard import ReadOnlyViolation
from datasources.workspace import Workspace
from tests.integration.pg import reader_connector
from tests.waiting import eventually

pytestmark = pytest.mark.integration

TYPES = r"""
CREATE TYPE mood AS ENUM ('sad', 'happy');
CREATE TABLE typed (
  i2 smallint, i4 integer, i8 bigint, f4 real, f8 double precision,
  n numeric(12, 3), nbig numeric(50, 10), nfree numeric, b boolean, t text, vc varchar(5),
  ch char(3), d date, tm time, ts timestamp, tz timestamptz, iv interval, j json, jb jsonb,
  u uuid, by bytea, ai int[], at text[], an numeric[], m mood, ip inet
);
INSERT INTO typed VALUES
 (1, 2, 9007199254740993, 1.5, 0.1, 1234.567, 12345678901234567890123456789.0123456789,
  1.000000000000000000001, true, E'line1\nline2, "quoted"', 'abc', 'x', '2024-02-29',
  '23:59:59.999999', '2024-01-01 00:00:00.000001', '2024-06-01 12:00:00+02', '1 year 2 days',
  '{"a": 1}', '{"b": [true, null]}', 'a8098c1a-f86e-11da-bd1a-00112444be1e', '\x00ff10',
  '{1,NULL,3}', '{"a b",NULL,""}', '{1.10,2.25}', 'happy', '10.0.0.1/8'),
 (NULL, NULL, NULL, 'NaN', '-Infinity', NULL, NULL, 'NaN', NULL, '', NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, 'null', NULL, '\x', '{}', '{}', NULL, NULL, NULL),
 (NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
CREATE TABLE big AS SELECT g AS id, md5(g::text) AS label FROM generate_series(1, 50000) g;
CREATE TABLE canary (id int PRIMARY KEY);
INSERT INTO canary VALUES (1), (2);
"""


@pytest.fixture
async def connector(
    postgres_database: str, postgres_reader: str
) -> AsyncIterator[PostgreSQLConnector]:
    async with reader_connector(postgres_database, postgres_reader, TYPES) as connector:
        yield connector


async def test_table_types_round_trip_into_parquet(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "ws")
    local = await connector.fetch_data("public.typed", workspace)
    assert local == (tmp_path / "ws" / "public" / "typed.parquet").resolve()
    table = pq.read_table(local)
    types = {f.name: f.type for f in table.schema}
    assert types["i2"] == pa.int16() and types["i4"] == pa.int32() and types["i8"] == pa.int64()
    assert types["f4"] == pa.float32() and types["f8"] == pa.float64()
    assert types["n"] == pa.decimal128(12, 3) and types["nbig"] == pa.decimal256(50, 10)
    # No declared scale, and NaN among the values: no decimal holds it, a float does.
    assert types["nfree"] == pa.float64()
    assert types["tz"] == pa.timestamp("us", tz="UTC") and types["ts"] == pa.timestamp("us")
    assert types["d"] == pa.date32() and types["tm"] == pa.time64("us")
    assert types["u"] == pa.uuid() and types["j"] == pa.json_() and types["jb"] == pa.json_()
    assert types["by"] == pa.binary() and types["ai"] == pa.list_(pa.int32())
    assert types["at"] == pa.list_(pa.string()) and types["an"] == pa.list_(pa.string())
    assert table.schema.field("n").metadata == {b"pg_type": b"numeric(12,3)"}
    first, second, third = table.to_pylist()
    assert first["i8"] == 9007199254740993  # beyond a double's integers
    assert first["n"] == decimal.Decimal("1234.567")
    assert first["nbig"] == decimal.Decimal("12345678901234567890123456789.0123456789")
    assert first["nfree"] == 1.0
    assert first["b"] is True
    assert first["t"] == 'line1\nline2, "quoted"' and first["vc"] == "abc" and first["ch"] == "x  "
    assert first["d"] == dt.date(2024, 2, 29) and first["tm"] == dt.time(23, 59, 59, 999999)
    assert first["ts"] == dt.datetime(2024, 1, 1, 0, 0, 0, 1)
    assert first["tz"] == dt.datetime(2024, 6, 1, 10, 0, tzinfo=dt.UTC)
    assert first["iv"] == "P1Y2D"
    assert first["j"] == '{"a": 1}' and first["jb"] == '{"b": [true, null]}'
    assert first["u"] == uuid.UUID("a8098c1a-f86e-11da-bd1a-00112444be1e")
    assert first["by"] == b"\x00\xff\x10"
    assert first["ai"] == [1, None, 3] and first["at"] == ["a b", None, ""]
    assert first["an"] == ["1.10", "2.25"] and first["m"] == "happy" and first["ip"] == "10.0.0.1/8"
    assert (
        second["t"] == "" and second["by"] == b"" and second["ai"] == [] and second["jb"] == "null"
    )
    assert second["f8"] == float("-inf") and second["nfree"] != second["nfree"]  # NaN
    assert all(v is None for v in third.values())
    entry = workspace.manifest()["public/typed.parquet"]
    assert entry.source_id == "pg" and entry.remote_path == "public.typed"
    assert entry.size == local.stat().st_size and len(entry.sha256) == 64
    assert not list(workspace.tmp_dir.iterdir())


async def test_query_export_parameters_limits_and_csv(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "ws")
    # $2 inside a comment and '$1' inside a string are not parameters.
    sql = "SELECT id, id, label, '$1' AS s FROM big WHERE id <= $1 -- $2\nORDER BY id"
    local = await connector.export_query(sql, workspace, params=[3], filename="out/q.parquet")
    rows = pq.read_table(local).to_pylist()
    assert [r["id"] for r in rows] == [1, 2, 3] and rows[0]["id_2"] == 1 and rows[0]["s"] == "$1"
    entry = workspace.manifest()["out/q.parquet"]
    assert entry.query == sql and entry.extra["params"] == [3]
    assert [c["type"] for c in entry.extra["columns"]] == ["int32", "int32", "string", "string"]
    # A string parameter that tries to break out of its literal stays a value.
    hostile = "x'); DELETE FROM canary; --"
    local = await connector.export_query(
        "SELECT $1::text AS v", workspace, params=[hostile], filename="h.parquet"
    )
    assert pq.read_table(local).to_pylist() == [{"v": hostile}]
    limited = await connector.export_query(
        "SELECT * FROM big ORDER BY id", workspace, max_rows=1000, filename="l.parquet"
    )
    assert pq.read_table(limited).num_rows == 1000
    csv = await connector.export_query(
        "SELECT id, label FROM big ORDER BY id", workspace, format="csv", max_rows=2
    )
    assert csv.suffix == ".csv" and csv.read_text().splitlines()[0] == "id,label"
    assert len(csv.read_text().splitlines()) == 3
    empty = await connector.export_query("SELECT 1 AS x WHERE false", workspace)
    assert pq.read_table(empty).num_rows == 0
    whole = await connector.export_query("SELECT * FROM big", workspace, filename="all.parquet")
    assert pq.read_table(whole).num_rows == 50000
    with pytest.raises(InvalidInputError, match="parameter"):
        await connector.export_query("SELECT $1::int", workspace)
    with pytest.raises(InvalidInputError):
        await connector.export_query("SELECT 1", workspace, format="xlsx")  # type: ignore[arg-type]


@pytest.mark.parametrize("parser", [True, False])
async def test_export_refuses_writes_with_or_without_the_parser(
    connector: PostgreSQLConnector, tmp_path: Path, postgres_database: str, parser: bool
) -> None:
    connector.parser_check = connector.catalog_check = parser  # the guard's two layers
    attempts = [
        "DELETE FROM canary RETURNING id",
        "SELECT 1; DELETE FROM canary",
        "SELECT 1) TO STDOUT; DELETE FROM canary; COPY (SELECT 1",
        "WITH d AS (DELETE FROM canary RETURNING id) SELECT * FROM d",
        "SELECT 1 --\n) TO STDOUT; DELETE FROM canary; COPY (SELECT 1",
        "SELECT nextval('no_such_seq')",
    ]
    for sql in attempts:
        with pytest.raises(DataSourceError):
            await connector.export_query(sql, tmp_path / "ws", filename="x.parquet")
    # Without the parser this one runs, inside the read-only transaction that is rolled
    # back: the session setting it changes does not survive.
    flip = "SELECT set_config('default_transaction_read_only', 'off', false)"
    if parser:
        with pytest.raises(DataSourceError):
            await connector.export_query(flip, tmp_path / "ws", filename="x.parquet")
    else:
        await connector.export_query(flip, tmp_path / "ws", filename="x.parquet")
    check = await connector.export_query(
        "SELECT current_setting('default_transaction_read_only') AS v", tmp_path / "ws"
    )
    assert pq.read_table(check).to_pylist() == [{"v": "on"}]
    conn = await asyncpg.connect(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM canary") == 2
    finally:
        await conn.close()
    # The pool is healthy afterwards.
    assert (await connector.execute_query("SELECT count(*) FROM canary")).rows == [[2]]


async def test_parser_layer_rejects_before_the_server(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    with pytest.raises(ReadOnlyViolation):
        await connector.export_query("SELECT pg_read_file('/etc/passwd')", tmp_path / "ws")


@pytest.mark.parametrize(
    "name", ["../x.parquet", "/etc/x", ".datasources/manifest.jsonl", "a\x00b"]
)
async def test_hostile_filenames(connector: PostgreSQLConnector, tmp_path: Path, name: str) -> None:
    with pytest.raises((UnsafePathError, InvalidInputError)):
        await connector.export_query("SELECT 1", tmp_path / "ws", filename=name)
    assert not (tmp_path / "x.parquet").exists()


async def test_byte_limit_and_failures_leave_nothing_behind(
    postgres_reader: str, connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "ws")
    async with PostgreSQLConnector(
        {"dsn": postgres_reader, "max_download_bytes": 10_000}, source_id="pg"
    ) as small:
        with pytest.raises(LimitExceededError):
            await small.fetch_data("public.big", workspace)
        with pytest.raises(LimitExceededError):
            await small.fetch_data("public.big", workspace, format="csv")
        # A conversion that fails midway (a 2-D array) names the column.
        with pytest.raises(InvalidInputError, match="arr"):
            await small.export_query("SELECT '{{1,2},{3,4}}'::int[] AS arr", workspace)
        assert (await small.execute_query("SELECT 1")).rows == [[1]]
    assert not list(workspace.tmp_dir.iterdir())
    assert [
        p for p in workspace.root.rglob("*") if p.is_file() and ".datasources" not in p.parts
    ] == []


async def test_cancelling_an_export_stops_it_cleanly(
    connector: PostgreSQLConnector, postgres_database: str, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "ws")
    task = asyncio.create_task(
        connector.export_query(
            "SELECT g, md5(g::text) FROM generate_series(1, 100000000) g", workspace
        )
    )
    admin = await asyncpg.connect(postgres_database)

    async def running() -> bool:
        count = await admin.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
            "AND datname = current_database() AND pid <> pg_backend_pid() "
            "AND query LIKE '%generate_series(1, 100000000)%'"
        )
        return bool(count)

    try:
        # Cancelled while the server is working on it (not after a guessed delay).
        await eventually(running, what="the export's query is running on the server")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await eventually(lambda: _not(running), what="the server stopped the export's query")
    finally:
        await admin.close()
    assert not list(workspace.tmp_dir.iterdir())
    assert (await connector.execute_query("SELECT 1")).rows == [[1]]


async def test_progress_is_reported(connector: PostgreSQLConnector, tmp_path: Path) -> None:
    seen: list[int] = []
    await connector.fetch_data("public.big", tmp_path / "ws", progress=lambda d, t: seen.append(d))
    assert seen and seen == sorted(seen) and seen[-1] > 1_000_000


async def test_declared_decimals_for_query_columns(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    sql = "SELECT n, n AS m, i4 FROM typed WHERE i4 = 2"
    local = await connector.export_query(sql, tmp_path / "ws", decimals={"n": (12, 3)})
    table = pq.read_table(local)
    assert table.schema.field("n").type == pa.decimal128(12, 3)
    assert table.schema.field("m").type == pa.decimal128(38, 3)  # measured from the data
    row = {"n": decimal.Decimal("1234.567"), "m": decimal.Decimal("1234.567"), "i4": 2}
    assert table.to_pylist() == [row]
    with pytest.raises(InvalidInputError, match="Parquet"):  # would lose digits: refused
        await connector.export_query(sql, tmp_path / "ws", decimals={"n": (12, 1)})
    for bad in ({"zz": (3, 1)}, {"n": (0, 0)}, {"n": (5, 7)}):
        with pytest.raises(InvalidInputError):
            await connector.export_query(sql, tmp_path / "ws", decimals=bad)


async def test_one_column_of_nulls_and_empty_strings(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    """A row holding one NULL is an empty line in CSV; it must still be a row."""
    sql = "SELECT * FROM (VALUES (NULL::text), (''), (E'\\\\N'), (E'a\\tb\\n')) v(t)"
    local = await connector.export_query(sql, tmp_path / "ws")
    assert pq.read_table(local).column("t").to_pylist() == [None, "", "\\N", "a\tb\n"]


async def _not(probe: Callable[[], Awaitable[bool]]) -> bool:
    return not await probe()
