"""PostgreSQL's own regression statements, both ways, through the real guard.

The corpus (35,306 statements from ``src/test/regress/sql``, classified with the server's
parser: READ, WRITE, DANGEROUS_READ) is read from ``../shared/corpus/`` beside the
repository, or from ``DATASOURCES_TEST_SQL_CORPUS``; it is never copied into the project.
Under ``CI=true`` a missing corpus fails the test.

- No WRITE and no DANGEROUS_READ passes the guard, so none reaches the server; nothing
  needs to run to show it.
- Of the reads the server can run (they prepare on it: their tables, types and functions
  exist), at most 1 % are refused by the guard.
- Every read the guard passes gets an answer: rows, or a :class:`DataSourceError`, never
  a raw ``OverflowError``/``ValueError`` or driver error.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.errors import DataSourceError
from tests.conftest import IN_CI

pytestmark = pytest.mark.integration

CORPUS_ENV = "DATASOURCES_TEST_SQL_CORPUS"
REPO = Path(__file__).resolve().parents[2]


def _corpus() -> list[dict[str, Any]]:
    path = Path(
        os.environ.get(CORPUS_ENV)
        or REPO.parent / "shared" / "corpus" / "pg_regress_statements.json"
    )
    if not path.is_file():
        message = f"The SQL corpus is not at {path} (set {CORPUS_ENV})."
        if IN_CI:  # the same rule as every service: CI fails where a developer skips
            pytest.fail(message)
        pytest.skip(message)
    statements: list[dict[str, Any]] = json.loads(path.read_text())
    return statements


async def _verdicts(connector: PostgreSQLConnector, statements: list[str]) -> list[str | None]:
    verdicts: list[str | None] = []
    for sql in statements:
        try:
            await connector._guard(sql)
            verdicts.append(None)
        except DataSourceError as exc:
            verdicts.append(exc.message)
    return verdicts


async def test_the_regression_corpus_both_ways(
    postgres_database: str, postgres_reader: str
) -> None:
    corpus = _corpus()
    classes = collections.Counter(entry["class"] for entry in corpus)
    assert sum(classes.values()) > 30_000 and classes["DANGEROUS_READ"] > 200
    async with PostgreSQLConnector(
        {"dsn": postgres_reader, "statement_timeout": 2}, source_id="regress"
    ) as connector:
        verdicts = await _verdicts(connector, [entry["sql"] for entry in corpus])
        passed = collections.Counter(
            entry["class"]
            for entry, verdict in zip(corpus, verdicts, strict=True)
            if verdict is None
        )
        assert passed["WRITE"] == 0 and passed["DANGEROUS_READ"] == 0, [
            entry["sql"]
            for entry, verdict in zip(corpus, verdicts, strict=True)
            if verdict is None and entry["class"] != "READ"
        ]
        # Reads the server can run: they prepare (parse analysis only, nothing runs).
        admin = await asyncpg.connect(postgres_database)
        runnable: list[int] = []
        try:
            await admin.execute("SET statement_timeout = '2s'")
            for index, entry in enumerate(corpus):
                if entry["class"] != "READ":
                    continue
                try:
                    await admin.prepare(entry["sql"])
                except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError):
                    continue
                runnable.append(index)
        finally:
            await admin.close()
        refused = [i for i in runnable if verdicts[i] is not None]
        share = len(refused) / len(runnable)
        print(
            f"\nregression corpus: {len(corpus)} statements; passed the guard: {dict(passed)}; "
            f"reads the server can run: {len(runnable)}, refused by the guard: {len(refused)} "
            f"({share:.2%})"
        )
        assert len(runnable) > 5000
        assert share <= 0.01, collections.Counter(str(verdicts[i])[:80] for i in refused)
        # Every read that passes gets an answer.
        raw: list[tuple[str, str]] = []
        answered = 0
        for index in runnable:
            if verdicts[index] is not None:
                continue
            try:
                await connector.execute_query(corpus[index]["sql"], max_rows=50)
                answered += 1
            except DataSourceError:
                pass
            except Exception as exc:
                raw.append((corpus[index]["sql"], f"{type(exc).__name__}: {exc}"))
        print(f"answered with rows: {answered}; raw errors: {len(raw)}")
        assert raw == [], "\n".join(f"{e} <- {s[:150]!r}" for s, e in raw)
