"""Every answer is an answer: values Python cannot hold, through execute_query and export_query.

``execute_query`` returns them as the server's own text (checked against the server's
rendering under ISO DateStyle, UTC and the ``iso_8601`` IntervalStyle); ``export_query``
writes them into the typed Parquet column, infinity clamped to the type's extreme.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import asyncpg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.workspace import Workspace

pytestmark = pytest.mark.integration

# (expression, what execute_query returns; None: the server's own text)
VALUES: list[tuple[str, object]] = [
    ("date 'infinity'", None),
    ("date '-infinity'", None),
    ("date '5874897-12-31'", None),
    ("date '4714-11-24 BC'", None),
    ("date '0044-03-15 BC'", None),
    ("date '2024-02-29'", "2024-02-29"),
    ("timestamp 'infinity'", None),
    ("timestamp '-infinity'", None),
    ("timestamp '294276-12-31 23:59:59.999999'", None),
    ("timestamp '4714-11-24 00:00:00 BC'", None),
    ("timestamp '10000-01-01 12:30:00.5'", None),
    ("timestamptz 'infinity'", None),
    ("timestamptz '4714-11-24 00:00:00+00 BC'", None),
    ("timestamptz '205000-01-10 17:32:01+02'", None),
    ("timestamptz '2024-06-01 12:00:00+02'", "2024-06-01T10:00:00+00:00"),
    ("time '24:00:00'", None),
    ("timetz '24:00:00-07'", None),
    ("interval '2147483647 months 2147483647 days 9223372036854775807 us'", None),
    ("interval '-2147483648 months -2147483648 days -9223372036854775807 us'", None),
    ("interval '1000000000 days'", None),
    ("interval '1 day 2 hours'", 93600.0),
]


async def _server_text(dsn: str, expressions: list[str]) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "SET DateStyle = 'ISO, YMD'; SET TimeZone = 'UTC'; SET IntervalStyle = 'iso_8601'"
        )
        return [await conn.fetchval(f"SELECT ({e})::text") for e in expressions]
    finally:
        await conn.close()


async def test_values_python_cannot_hold_arrive_as_the_servers_text(
    postgres_database: str, postgres_reader: str
) -> None:
    expressions = [e for e, _ in VALUES]
    texts = await _server_text(postgres_database, expressions)
    async with PostgreSQLConnector({"dsn": postgres_reader}, source_id="pg") as connector:
        for (expression, expected), text in zip(VALUES, texts, strict=True):
            result = await connector.execute_query(f"SELECT {expression} AS v")
            assert result.rows == [[text if expected is None else expected]], expression
        # All of them in one row, and inside ranges and arrays.
        together = await connector.execute_query(f"SELECT {', '.join(expressions)}")
        assert len(together.rows[0]) == len(VALUES)
        ranges = await connector.execute_query(
            "SELECT daterange('2000-01-01', 'infinity'), "
            "tstzrange('-infinity', '2024-01-01'), ARRAY[date 'infinity', date '2024-01-02'], "
            "ARRAY[timestamp '294276-12-31 00:00:00']"
        )
    daterange, tstzrange, dates, stamps = ranges.rows[0]
    assert "infinity" in str(daterange) and "-infinity" in str(tstzrange)
    assert dates == ["infinity", "2024-01-02"] and stamps == ["294276-12-31 00:00:00"]


async def test_parameters_still_take_python_values(postgres_reader: str) -> None:
    async with PostgreSQLConnector({"dsn": postgres_reader}, source_id="pg") as connector:
        result = await connector.execute_query(
            "SELECT $1::date + 1, $2::timestamptz, $3::time, $4::interval",
            [
                dt.date(2024, 2, 28),
                dt.datetime(2024, 1, 1, 12, tzinfo=dt.UTC),
                dt.time(1, 2, 3),
                dt.timedelta(hours=1),
            ],
        )
    assert result.rows == [["2024-02-29", "2024-01-01T12:00:00+00:00", "01:02:03", 3600.0]]


async def test_export_writes_them_into_typed_columns(postgres_reader: str, tmp_path: Path) -> None:
    sql = (
        "SELECT * FROM (VALUES "
        "(date 'infinity', timestamp 'infinity', timestamptz '-infinity', time '24:00:00', "
        " interval '2147483647 months 2147483647 days 9223372036854775807 us'), "
        "(date '5874897-12-31', timestamp '4714-11-24 00:00:00 BC', "
        " timestamptz '294276-12-31 23:59:59+00', time '12:00', interval '1 day'), "
        "(date '4714-11-24 BC', timestamp '2024-01-01 00:00:00', timestamptz 'epoch', "
        " NULL, NULL), (NULL, NULL, NULL, NULL, NULL)) AS v(d, ts, tz, tm, iv)"
    )
    async with PostgreSQLConnector({"dsn": postgres_reader}, source_id="pg") as connector:
        path = await connector.export_query(sql, Workspace(tmp_path / "ws"))
        csv = await connector.export_query(sql, Workspace(tmp_path / "ws"), format="csv")
    table = pq.read_table(path)
    types = {f.name: f.type for f in table.schema}
    assert types["d"] == pa.date32() and types["ts"] == pa.timestamp("us")
    assert types["tz"] == pa.timestamp("us", tz="UTC") and types["tm"] == pa.time64("us")
    days = table.column("d").cast(pa.int32()).to_pylist()
    leap = [y % 4 == 0 and (y % 100 != 0 or y % 400 == 0) for y in range(10000, 5874898)]
    beyond_9999 = (dt.date(9999, 12, 31) - dt.date(1970, 1, 1)).days + 365 * len(leap) + sum(leap)
    # infinity clamped; 5874897-12-31 counted by the calendar; 4714-11-24 BC is Julian day 0.
    assert days == [2**31 - 1, beyond_9999, -2440588, None]
    micros = table.column("ts").cast(pa.int64()).to_pylist()
    assert micros[0] == 2**63 - 1 and micros[2] == 1704067200 * 10**6 and micros[3] is None
    zoned = table.column("tz").cast(pa.int64()).to_pylist()
    assert zoned[0] == -(2**63) and zoned[1] == 2**63 - 1 and zoned[2] == 0
    assert table.column("tm").cast(pa.int64()).to_pylist()[:2] == [86399999999, 43200000000]
    assert table.column("iv").to_pylist()[0].startswith("P178956970Y7M")
    assert "infinity" in csv.read_text() and "5874897-12-31" in csv.read_text()
