"""A chat's ``query`` reference must be read-only (docs/chat.md): a writing query is a 4xx
that names it, nothing is fetched or stored, and the database is unchanged; a read is
exported into the workspace. Real PostgreSQL, on its superuser role: only the read-only
layers stand between the reference and a write (the operator's opt-in lets it register)."""

from __future__ import annotations

import asyncpg
import pytest

from tests.api.conftest import Api

pytestmark = [pytest.mark.api, pytest.mark.integration]

CHATS = "/api/v1/chats"

WRITES = [
    "DELETE FROM t",
    "UPDATE t SET v = 'changed'",
    "SELECT 1; DELETE FROM t",
    "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
    "SELECT set_config('default_transaction_read_only', 'off', false)",
    "CREATE TABLE planted (x int)",
    "SELECT * INTO planted FROM t",
]


async def _rows(dsn: str) -> list[tuple[int, str]]:
    conn = await asyncpg.connect(dsn)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [r["tablename"] for r in tables] == ["t"]
        return [(r["id"], r["v"]) for r in await conn.fetch("SELECT id, v FROM t ORDER BY id")]
    finally:
        await conn.close()


async def test_query_references_must_be_read_only(
    privileged_api: Api, postgres_database: str
) -> None:
    api = privileged_api  # the superuser source needs the operator's opt-in
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            "CREATE TABLE t (id int, v text); INSERT INTO t VALUES (1, 'a'), (2, 'b')"
        )
    finally:
        await conn.close()
    before = await _rows(postgres_database)
    body = {"name": "wh", "type": "postgresql", "config": {"dsn": postgres_database}}
    assert (await api.request("POST", "/api/v1/datasources", json=body)).status_code == 201
    chat = (await api.request("POST", CHATS, json={})).json()["id"]
    data = api.settings.workspaces_dir / chat / "data"
    for sql in WRITES:
        refs = [{"data_source_id": "wh", "query": sql}]
        response = await api.request(
            "POST", f"{CHATS}/{chat}/messages", json={"content": "x", "data_source_refs": refs}
        )
        assert 400 <= response.status_code < 500, (sql, response.status_code, response.text)
        assert response.json()["code"] in ("read_only_violation", "invalid_input"), sql
        assert await _rows(postgres_database) == before, sql
        assert not [p for p in data.rglob("*") if p.is_file()], sql
    assert (await api.request("GET", f"{CHATS}/{chat}/messages")).json()["items"] == []
    # A read is exported into the workspace.
    refs = [{"data_source_id": "wh", "query": "SELECT id, v FROM t ORDER BY id"}]
    ok = await api.request(
        "POST", f"{CHATS}/{chat}/messages", json={"content": "x", "data_source_refs": refs}
    )
    assert ok.status_code == 200, ok.text
    assert [p.suffix for p in (data / "wh" / "queries").iterdir()] == [".parquet"]
