"""Rows of a source that does not share samples never reach the model through ``profile``
or ``run_python`` (docs/chat.md, "What the model sees"); a sharing source's do.

Only documented, successful paths are here; values echoed through *error* text are
issue 10's (the outbound work) and tested there."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.api.test_assistant import ScriptedModel, _app_with_model

pytestmark = [pytest.mark.api, pytest.mark.integration]

HIDDEN = "hidden-row-value-7f3a"
SHOWN = "shared-row-value-2b9c"

READ_AND_PRINT = (
    "import pandas as pd\n"
    "t = pd.read_parquet('data/{source}/public/t.parquet')\n"
    "print(t.to_json(orient='records'))\n"
    "display(t)\n"
)


async def _database(dsn: str, value: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "CREATE TABLE t (id int, v text);"
            f"INSERT INTO t SELECT i, '{value}' FROM generate_series(1, 20) i;"
        )
    finally:
        await conn.close()


@pytest.mark.parametrize("shares", [False, True])
async def test_profile_and_run_python_withhold_rows_unless_the_source_shares(
    tmp_path: Path,
    live_server_factory: Any,
    postgres_database: str,
    postgres_reader: str,
    shares: bool,
) -> None:
    value = SHOWN if shares else HIDDEN
    await _database(postgres_database, value)
    model = ScriptedModel([
        {"calls": [("profile", {"source": "wh", "table_or_sql": "public.t"}),
                   ("profile", {"source": "wh", "table_or_sql": "SELECT v, id FROM public.t"})]},
        {"calls": [("fetch", {"source": "wh", "table": "public.t"})]},
        {"calls": [("run_python", {"code": READ_AND_PRINT.format(source="wh")})]},
        {"content": "done"},
    ])  # fmt: skip
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server):
        body = {"name": "wh", "type": "postgresql",
                "config": {"dsn": postgres_reader, "share_samples_with_llm": shares}}  # fmt: skip
        assert (
            await client.post("/api/v1/datasources", json=body, headers=auth)
        ).status_code == 201
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        response = await client.post(
            f"/api/v1/chats/{chat}/messages", json={"content": "profile t"}, headers=auth
        )
        assert response.status_code == 200, response.text
        parts = response.json()["reply"]["parts"]
    # The user sees the output either way: the code really read the rows.
    assert any(value in (p.get("text") or "") for p in parts if p["type"] == "stdout"), parts
    assert len(model.requests) == 4
    received = json.dumps(model.requests)
    tool_results = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert len(tool_results) == 4
    sql_profile = tool_results.pop(1)
    assert not any('"error"' in r[:20] for r in tool_results)
    if shares:
        assert value in received  # the switch is what withholds, not a blanket filter
        assert '"error"' not in sql_profile[:20]
    else:
        assert value not in received, [r for r in tool_results if value in r]
        assert '"v"' in "".join(tool_results)  # the shape (column names) is still shared
        # A profile of SQL would profile whatever the model computes: refused, in words.
        assert json.loads(sql_profile)["error"] == "not_shared"
