"""Server errors never carry row data into our errors (issue 11 §7).

A PostgreSQL message can quote the value it choked on: a cast of a cell, a date parse, a
PL/pgSQL ``RAISE EXCEPTION '%', cell``, or a ``RAISE`` that forges a class 42 SQLSTATE and
its identifier fields. A secret is planted in a table, and every statement below makes the
server fail over it, through ``execute_query`` and ``export_query`` (Parquet and CSV):
the secret must appear in no message, ``details``, ``repr`` or log record at INFO or
above. A typo'd column and a syntax error still say what is wrong.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.errors import DataSourceError, InvalidInputError, NotFoundError
from tests.integration.pg import reader_connector

pytestmark = pytest.mark.integration

# Not an integer, a date, JSON or a regular expression; longer than two characters. The
# server quotes all of it (a regclass lower-cased), its first token ("Zq7") or two characters.
SECRET = "Zq7-secret-(cell"
PIECES = (SECRET, SECRET.lower(), "Zq7", '"Zq"')

SETUP = f"""
CREATE TABLE vault (id int, secret text);
INSERT INTO vault VALUES (1, '{SECRET}');
CREATE TABLE short (v varchar(2));
CREATE FUNCTION shout(v text) RETURNS int IMMUTABLE LANGUAGE plpgsql
  AS $$ BEGIN RAISE EXCEPTION '%', v; END $$;
CREATE FUNCTION forge(v text) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$ BEGIN
  RAISE EXCEPTION USING ERRCODE = '42703', MESSAGE = 'column "' || v || '" does not exist',
    COLUMN = v, TABLE = v, SCHEMA = v, CONSTRAINT = v, DATATYPE = v, DETAIL = v, HINT = v;
END $$;
"""

# (what fails, statement, the SQLSTATE the server reports)
FAILING = [
    ("cast to int", "SELECT secret::int FROM vault", "22P02"),
    ("RAISE '%'", "SELECT shout(secret) FROM vault", "P0001"),
    ("division by zero", "SELECT length(secret) / (id - 1) FROM vault", "22012"),
    ("cut to varchar(2), then to int", "SELECT secret::varchar(2)::int FROM vault", "22P02"),
    (
        "too long for varchar(2)",
        "SELECT json_populate_record(NULL::short, json_build_object('v', secret)) FROM vault",
        "22001",
    ),
    ("JSON parse", "SELECT secret::json FROM vault", "22P02"),
    ("regex", "SELECT 'x' ~ secret FROM vault", "2201B"),
    ("date parse", "SELECT secret::date FROM vault", "22007"),
    ("regclass of a cell", "SELECT secret::regclass FROM vault", "42P01"),
    ("forged 42703 with identifiers", "SELECT forge(secret) FROM vault", "42703"),
]


@pytest.fixture
async def connector(
    postgres_database: str, postgres_reader: str
) -> AsyncIterator[PostgreSQLConnector]:
    async with reader_connector(postgres_database, postgres_reader, SETUP) as connector:
        yield connector


def assert_clean(error: DataSourceError, caplog: pytest.LogCaptureFixture) -> None:
    for shown in (error.message, str(error), repr(error), repr(error.details)):
        assert not any(piece in shown for piece in PIECES), shown
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            text = record.getMessage()
            assert not any(piece in text for piece in PIECES), text


@pytest.mark.parametrize(("label", "sql", "sqlstate"), FAILING, ids=[f[0] for f in FAILING])
async def test_query_errors_carry_no_cell(
    connector: PostgreSQLConnector,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    label: str,
    sql: str,
    sqlstate: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    errors = []
    with pytest.raises(DataSourceError) as raised:
        await connector.execute_query(sql)
    errors.append(raised.value)
    for fmt in ("parquet", "csv"):
        with pytest.raises(DataSourceError) as raised:
            await connector.export_query(sql, tmp_path / fmt, format=fmt)
        errors.append(raised.value)
    for error in errors:
        assert_clean(error, caplog)
        # The fixed text names the condition, so the caller still learns what failed.
        assert f"SQLSTATE {sqlstate}" in error.message, error.message
        assert error.details["sqlstate"] == sqlstate
    # The operator can read the server's full text, at debug level only.
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(f"(SQLSTATE {sqlstate})" in m for m in debug)


async def test_a_typo_and_a_syntax_error_still_say_what_is_wrong(
    connector: PostgreSQLConnector,
) -> None:
    """Errors the server locates in the caller's own text keep the server's words."""
    with pytest.raises(InvalidInputError) as typo:
        await connector.execute_query("SELECT secrett FROM vault")
    assert 'column "secrett" does not exist' in typo.value.message, typo.value.message
    assert "SQLSTATE 42703 undefined_column, at character 8" in typo.value.message
    assert typo.value.details["sqlstate"] == "42703" and typo.value.details["position"] == 8
    assert "Perhaps" not in typo.value.message  # never the HINT
    # The guard parses first and says where; with the guard's layers off, the server does.
    with pytest.raises(InvalidInputError) as guarded:
        await connector.execute_query("SELEC secret FROM vault")
    assert 'syntax error at or near "SELEC"' in guarded.value.message, guarded.value.message
    connector.parser_check = connector.catalog_check = False
    with pytest.raises(InvalidInputError) as syntax:
        await connector.execute_query("SELECT secret FROM vault WHERE")
    assert "syntax error at end of input" in syntax.value.message, syntax.value.message
    assert syntax.value.details["sqlstate"] == "42601"
    with pytest.raises(NotFoundError) as table:
        await connector.execute_query("SELECT 1 FROM vaultt")
    assert 'relation "vaultt" does not exist' in table.value.message, table.value.message
    with pytest.raises(InvalidInputError) as function:
        await connector.execute_query("SELECT lenght(secret) FROM vault")
    assert "lenght(text) does not exist" in function.value.message, function.value.message
    assert function.value.details["sqlstate"] == "42883"
