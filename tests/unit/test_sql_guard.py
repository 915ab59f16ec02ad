"""The parser layer alone: every bypass statement refused, ordinary reads accepted."""

from __future__ import annotations

import pytest

from datasources.sql_guard import ReadOnlyViolation, check_read_only
from datasources.testing.readonly_corpus import ALLOWED, BYPASS_CORPUS


def test_the_corpus_is_big_enough() -> None:
    assert len(BYPASS_CORPUS) >= 40


@pytest.mark.parametrize("sql", BYPASS_CORPUS)
def test_bypass_statements_are_refused(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation) as info:
        check_read_only(sql)
    assert info.value.message


@pytest.mark.parametrize("sql", ALLOWED)
def test_reads_are_accepted(sql: str) -> None:
    assert check_read_only(sql) == sql


@pytest.mark.parametrize("sql", ["", "   ", "SELECT 'a\x00b'", "SELEC * FRM", "SELECT (((", 42])
def test_garbage_is_refused_with_a_clear_message(sql: object) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only(sql)  # type: ignore[arg-type]
