"""Server errors over a planted secret, through the HTTP API and the chat's run_sql.

The same failing statements as ``tests/integration/test_postgresql_errors.py``: the
response body of ``POST /datasources/{id}/query``, what the model reads of a sharing
source's run_sql error, the reply the user gets and every log record at INFO or above
hold no piece of the secret; a typo'd column still says which column.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.api.conftest import Api
from tests.api.test_assistant import ScriptedModel, _app_with_model
from tests.integration.test_postgresql_errors import FAILING, PIECES, SETUP

pytestmark = [pytest.mark.api, pytest.mark.integration]

SOURCES = "/api/v1/datasources"


async def _plant(database: str) -> None:
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(SETUP)
    finally:
        await conn.close()


def _assert_no_piece(text: str) -> None:
    assert not any(piece in text for piece in PIECES), text


def _assert_quiet_logs(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        if record.levelno >= logging.INFO:
            _assert_no_piece(record.getMessage())


async def test_query_endpoint_bodies_carry_no_cell(
    api: Api, postgres_database: str, postgres_reader: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await _plant(postgres_database)
    body = {"name": "pg", "type": "postgresql", "config": {"dsn": postgres_reader}}
    created = await api.request("POST", SOURCES, json=body)
    assert created.status_code == 201, created.text
    for _label, sql, sqlstate in FAILING:
        r = await api.request("POST", f"{SOURCES}/pg/query", json={"sql": sql})
        assert r.status_code in (400, 404), r.text  # 42P01 is not_found
        _assert_no_piece(r.text)
        assert f"SQLSTATE {sqlstate}" in r.text, r.text
    typo = await api.request(
        "POST", f"{SOURCES}/pg/query", json={"sql": "SELECT secrett FROM vault"}
    )
    assert typo.status_code == 400 and 'column \\"secrett\\" does not exist' in typo.text, typo.text
    _assert_quiet_logs(caplog)


async def test_run_sql_errors_of_a_sharing_source_carry_no_cell(
    tmp_path: Path,
    live_server_factory: Any,
    postgres_database: str,
    postgres_reader: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A sharing source's errors reach the model with their message: a fixed one now."""
    caplog.set_level(logging.DEBUG)
    await _plant(postgres_database)
    calls = [("run_sql", {"source": "warehouse", "sql": sql}) for _label, sql, _code in FAILING]
    model = ScriptedModel([{"calls": calls}, {"content": "ok"}])
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server, llm_max_steps=20):
        config = {"dsn": postgres_reader, "share_samples_with_llm": True}
        body = {"name": "warehouse", "type": "postgresql", "config": config}
        r = await client.post("/api/v1/datasources", headers=auth, json=body)
        assert r.status_code == 201, r.text
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        r = await client.post(
            f"/api/v1/chats/{chat}/messages", headers=auth, json={"content": "hi"}
        )
        assert r.status_code == 200, r.text
        reply = r.text
    results = [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]
    assert len(results) == len(FAILING)
    for text, (_label, _sql, sqlstate) in zip(results, FAILING, strict=True):
        assert f"SQLSTATE {sqlstate}" in json.loads(text)["message"], text
    _assert_no_piece(json.dumps(model.requests))
    _assert_no_piece(reply)
    _assert_quiet_logs(caplog)
