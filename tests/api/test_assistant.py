"""The tool-calling loop against a scripted OpenAI-compatible server on loopback.

The server is real HTTP (uvicorn in a thread) that answers with planned tool calls and
records every request, so the tests see exactly what reached the model."""

from __future__ import annotations

import json
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI, Request

from tests.api.conftest import LiveServer, make_settings, served

pytestmark = [pytest.mark.api, pytest.mark.integration]

SECRET_CELL = "row-value-that-must-not-reach-the-model"


class ScriptedModel:
    """Plays back planned answers; keeps the requests."""

    def __init__(self, plan: list[dict[str, Any]]) -> None:
        self.plan = plan
        self.requests: list[dict[str, Any]] = []
        self.app = FastAPI()

        @self.app.post("/v1/chat/completions")
        async def complete(request: Request) -> dict[str, Any]:
            body = await request.json()
            self.requests.append(body)
            step = self.plan[min(len(self.requests) - 1, len(self.plan) - 1)]
            message: dict[str, Any] = {"role": "assistant", "content": step.get("content")}
            if "calls" in step:
                message["tool_calls"] = [
                    {"id": f"call{len(self.requests)}_{i}", "type": "function",
                     "function": {"name": name, "arguments": json.dumps(args)}}
                    for i, (name, args) in enumerate(step["calls"])
                ]  # fmt: skip
            return {
                "id": f"r{len(self.requests)}", "object": "chat.completion", "created": 0,
                "model": body["model"],
                "choices": [{"index": 0, "message": message,
                             "finish_reason": "tool_calls" if "calls" in step else "stop"}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110},
            }  # fmt: skip


async def _app_with_model(
    tmp_path: Path, model: ScriptedModel, server: LiveServer, **extra: Any
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    settings = make_settings(tmp_path, pool_size=1).model_copy(
        update={"llm_base_url": f"{server.url}/v1", "llm_model": "scripted", **extra}
    )
    async for pair in served(settings):
        yield pair


async def test_the_loop_uses_tools_and_shares_only_what_sources_allow(
    tmp_path: Path, live_server_factory: Any, postgres_database: str, postgres_reader: str
) -> None:
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            "CREATE TABLE t (id int, secret_col text);"
            f"INSERT INTO t VALUES (1, '{SECRET_CELL}'), (2, 'x');"
        )
    finally:
        await conn.close()
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "local.csv").write_text("a,b\n1,x\n2,y\n3,z\n")
    model = ScriptedModel([
        {"calls": [("list_data_sources", {})]},
        {"calls": [("get_schema", {"source": "warehouse"}),
                   ("run_sql", {"source": "warehouse", "sql": "SELECT * FROM t"})]},
        {"calls": [("fetch", {"source": "files", "path": "local.csv"})]},
        {"calls": [("run_python", {"code": "import pandas as pd\n"
                                           "print(pd.read_csv('data/files/local.csv').a.sum())"})]},
        {"calls": [("run_sql", {"source": "warehouse", "sql": "DELETE FROM t"}),
                   ("no_such_tool", {})]},
        {"content": "The sum of a is 6."},
    ])  # fmt: skip
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server):
        for body in (
            {"name": "warehouse", "type": "postgresql", "config": {"dsn": postgres_reader}},
            {"name": "files", "type": "local_folder",
             "config": {"root": str(folder), "share_samples_with_llm": True}},
        ):  # fmt: skip
            assert (
                await client.post("/api/v1/datasources", json=body, headers=auth)
            ).status_code == 201
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        response = await client.post(
            f"/api/v1/chats/{chat}/messages", json={"content": "What is the sum of a?"},
            headers=auth,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        parts = response.json()["reply"]["parts"]
    assert {"type": "stdout", "text": "6\n"} in parts
    assert parts[-1] == {"type": "text", "text": "The sum of a is 6."}
    assert any(p["type"] == "code" for p in parts)
    assert len(model.requests) == 6
    tools = {t["function"]["name"] for t in model.requests[0]["tools"]}
    assert tools == {"list_data_sources", "list_items", "get_schema", "profile", "run_sql",
                     "fetch", "run_python"}  # fmt: skip
    last = model.requests[-1]["messages"]
    assert last[0]["role"] == "system" and "<data>" in last[0]["content"]
    tool_results = [m["content"] for m in last if m["role"] == "tool"]
    assert all(r.startswith("<data") or r.startswith('{"error"') for r in tool_results)
    everything = json.dumps(model.requests)
    assert SECRET_CELL not in everything  # the warehouse does not share rows
    assert "secret_col" in everything  # its schema is shared
    assert '\\"fetched\\": [\\"data/files/local.csv\\"]' in everything
    assert "read_only_violation" in everything and "no_such_tool" in everything


async def test_the_loop_is_bounded_in_steps(tmp_path: Path, live_server_factory: Any) -> None:
    model = ScriptedModel([{"calls": [("list_data_sources", {})]}])  # asks forever
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server, llm_max_steps=3):
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        response = await client.post(
            f"/api/v1/chats/{chat}/messages", json={"content": "loop"}, headers=auth
        )
        parts = response.json()["reply"]["parts"]
    assert len(model.requests) == 3
    assert "budget" in parts[-1]["text"]


async def test_an_unreachable_model_is_a_clear_error(
    tmp_path: Path, live_server_factory: Any
) -> None:
    model = ScriptedModel([{"content": "unused"}])
    server = live_server_factory(model.app)
    gone = LiveServer(url="http://127.0.0.1:9", app=server.app)
    async for client, auth in _app_with_model(tmp_path, model, gone):
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        response = await client.post(
            f"/api/v1/chats/{chat}/messages", json={"content": "hi"}, headers=auth
        )
        parts = response.json()["reply"]["parts"]
    assert parts[-1]["type"] == "error" and parts[-1]["name"] == "unavailable"
    # Clear: it says what is wrong in words, and nothing of the plumbing behind it.
    text = parts[-1]["text"]
    assert "model" in text and "reached" in text, text
    for internal in ("127.0.0.1", ":9", "http", "Error", "Traceback", "httpx", "errno"):
        assert internal not in text, text


async def test_no_value_of_a_non_sharing_source_reaches_the_model(
    tmp_path: Path, live_server_factory: Any, postgres_database: str, postgres_reader: str
) -> None:
    """Values of a source without share_samples_with_llm reach the user, never the model:
    not through SQL errors, profiles, fetch errors, stdout, tracebacks or display data."""
    marker = "mkr" + secrets.token_hex(8)
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute("CREATE TABLE t (id int, name text)")
        await conn.executemany(
            "INSERT INTO t VALUES ($1, $2)", [(i, f"{marker}-{i}") for i in range(3)]
        )
    finally:
        await conn.close()
    load = (
        "import glob, sys\nimport pandas as pd\nfrom IPython.display import display\n"
        "df = pd.read_parquet(sorted(glob.glob('data/**/*.parquet', recursive=True))[0])\n"
    )
    model = ScriptedModel([
        {"calls": [("run_sql", {"source": "warehouse", "sql": "SELECT name::int FROM t"}),
                   ("run_sql", {"source": "warehouse",
                                "sql": "SELECT 1 / 0 FROM t WHERE name > ''"}),
                   ("profile", {"source": "warehouse",
                                "table_or_sql": "SELECT name::int AS n FROM t"}),
                   ("profile", {"source": "warehouse", "table_or_sql": "public.t"}),
                   ("profile", {"source": "warehouse",
                                "table_or_sql": "SELECT name, upper(name) AS u FROM t"}),
                   ("fetch", {"source": "warehouse", "query": "SELECT name::date FROM t"})]},
        {"calls": [("fetch", {"source": "warehouse", "table": "public.t"})]},
        {"calls": [("run_python", {"code": load + "print(df.to_string())\n"
                                               "print(df.name.tolist(), file=sys.stderr)\n"
                                               "display(df)\n"
                                               "df.name.iloc[0]\n"})]},
        {"calls": [("run_python", {"code": "display({'application/vnd.datasources.table+json':"
                                           " {'columns': list(df.columns),"
                                           " 'rows': df.values.tolist()}}, raw=True)\n"
                                           "raise ValueError(df)\n"})]},
        {"calls": [("run_python", {"code": "df.set_index('name').loc['nope' + df.name[0]]"})]},
        {"content": "Done."},
    ])  # fmt: skip
    server = live_server_factory(model.app)
    # Ten tool calls: over the default budget of eight per message.
    async for client, auth in _app_with_model(tmp_path, model, server, llm_max_steps=10):
        body = {"name": "warehouse", "type": "postgresql", "config": {"dsn": postgres_reader}}
        created = await client.post("/api/v1/datasources", json=body, headers=auth)
        assert created.status_code == 201, created.text
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        response = await client.post(
            f"/api/v1/chats/{chat}/messages", json={"content": "Look at t."}, headers=auth
        )
        assert response.status_code == 200, response.text
        parts = response.json()["reply"]["parts"]
    assert len(model.requests) == 6
    everything = json.dumps(model.requests)
    assert marker not in everything
    # The model still learns what failed, in the service's fixed words, and the shape of
    # what ran as orders of magnitude; never a full SQLSTATE, driver class or column name
    # the code displayed.
    assert '"sqlstate_class\\": \\"22\\"' in everything  # 22P02 and 22012 alike
    assert "22P02" not in everything and "InvalidTextRepresentationError" not in everything
    assert '"not_shared\\"' in everything  # the profiles of SQL are refused, in words
    assert '"error_class\\": \\"ValueError\\"' in everything
    assert '"error_class\\": \\"KeyError\\"' in everything
    assert '"tables\\": \\"1-9\\", \\"table_rows\\": \\"1-9\\"' in everything
    # The user sees everything.
    shown = json.dumps(parts)
    assert f"{marker}-0" in shown
    assert any(p["type"] == "stdout" and marker in p["text"] for p in parts)
    assert any(p["type"] == "error" and marker in p.get("text", "") for p in parts)
