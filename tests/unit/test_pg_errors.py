"""The PostgreSQL translation table on its own: every row, and the rules no server reaches.

Exceptions are built as asyncpg builds them from a server's ErrorResponse fields (C code,
M message, P position, c column…); the real-server tests are
tests/integration/test_postgresql_errors.py and tests/api/test_pg_error_text.py.
"""

from __future__ import annotations

import builtins

import asyncpg
import pytest

from datasources.connectors.postgresql.errors import TABLE, error_for
from datasources.connectors.postgresql.sqlstates import CONDITIONS
from datasources.errors import DataSourceError

SECRET = "Zq7-secret"


def _server(code: str, **fields: str) -> BaseException:
    base = {"C": code, "S": "ERROR", "M": SECRET, "D": SECRET, "H": SECRET, "W": SECRET}
    exc: BaseException = asyncpg.PostgresError.new({**base, **fields})
    return exc


def _shown(error: DataSourceError) -> str:
    return f"{error.message} {error!r} {error.details!r}"


def test_every_key_is_a_defined_code_class_or_exception_type() -> None:
    classes = {code[:2] for code in CONDITIONS}
    for key, rule in TABLE.items():
        if isinstance(key, str):
            assert key in CONDITIONS or key in classes, key
        else:
            assert issubclass(key, BaseException), key
        # Every template formats from our own values only.
        rule.message.format(what="query", source="'pg'", sqlstate="SQLSTATE 00000 x")


@pytest.mark.parametrize("code", sorted({c for c in CONDITIONS if c[:2] not in {"00", "01", "02"}}))
def test_no_defined_code_passes_server_text_without_a_position(code: str) -> None:
    error = error_for(
        _server(code, c=SECRET, t=SECRET, s=SECRET, n=SECRET, d=SECRET), "query", "pg"
    )
    assert error is not None and SECRET not in _shown(error)
    assert error.details == {"sqlstate": code, "condition": CONDITIONS[code]}


def test_an_undefined_code_is_not_repeated() -> None:
    error = error_for(_server("ZZ9Q7", M=SECRET), "query", "pg")
    assert error is not None and "ZZ9Q7" not in _shown(error) and SECRET not in _shown(error)
    assert "an SQLSTATE PostgreSQL does not define" in error.message and error.details == {}


def test_a_located_class_42_error_keeps_its_message_never_detail_or_hint() -> None:
    error = error_for(
        _server("42703", M='column "nme" does not exist', P="8", c="nme"), "query", "pg"
    )
    assert error is not None
    assert error.message == (
        'PostgreSQL refused the query: column "nme" does not exist '
        "(SQLSTATE 42703 undefined_column, at character 8)."
    )
    assert error.details["position"] == 8 and error.details["column_name"] == "nme"
    assert SECRET not in _shown(error)
    # A located error of another class (a literal's cast) still gets the fixed text.
    cast = error_for(_server("22P02", P="8"), "query", "pg")
    assert cast is not None and SECRET not in _shown(cast) and "position" not in cast.details


def test_client_side_failures_by_type() -> None:
    for exc in (ConnectionResetError(SECRET), builtins.TimeoutError(SECRET), OSError(SECRET)):
        error = error_for(exc, "query", "pg")
        assert error is not None and error.code == "unavailable" and SECRET not in _shown(error)
    assert error_for(KeyError(SECRET), "query", "pg") is None  # not ours: raised as it is
