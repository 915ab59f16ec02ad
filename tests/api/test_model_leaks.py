"""Covert channels from a non-sharing source to the model (issue 10 §7, attack F1 and F1b).

Each test replays what an attacker's model did on the real service (real sandbox, real
PostgreSQL through a least-privilege role, a scripted model on loopback that records
every request) and checks that what reached the model is only the service's own fixed
vocabulary: no string the sandboxed code or the SQL chose, no exact count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.api.test_assistant import ScriptedModel, _app_with_model

pytestmark = [pytest.mark.api, pytest.mark.integration]

SSN = "SSN-123-45-6789"
PASSWORD = "hunter2-pw"


def _tool_results(model: ScriptedModel) -> list[str]:
    return [m["content"] for m in model.requests[-1]["messages"] if m["role"] == "tool"]


def _body(result: str) -> Any:
    return json.loads(result[result.index(">") + 1 : result.rindex("</data>")])


@pytest.mark.sandbox
async def test_code_cannot_smuggle_a_cell_through_names_classes_or_lengths(
    tmp_path: Path, live_server_factory: Any
) -> None:
    """F1: a table whose column name is the cell, an exception class named after it and
    'x' * ord(c) printed: the model sees none of the cell, nor an exact length."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "people.csv").write_text(f"name,ssn\nann,{SSN}\n")
    code = (
        "import pandas as pd\nfrom IPython.display import display\n"
        "v = str(pd.read_csv('data/private/people.csv').ssn[0])\n"
        "display({'application/vnd.datasources.table+json': {'columns': [v], 'rows': []}},"
        " raw=True)\n"
        "print('x' * ord(v[0]))\n"
        "raise type('E_' + v.replace('-', '_'), (Exception,), {})()\n"
    )
    model = ScriptedModel([
        {"calls": [("fetch", {"source": "private", "path": "people.csv"})]},
        {"calls": [("run_python", {"code": code}),
                   ("run_python", {"code": "raise KeyError(v)"})]},
        {"content": "done"},
    ])  # fmt: skip
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server):
        body = {"name": "private", "type": "local_folder", "config": {"root": str(folder)}}
        r = await client.post("/api/v1/datasources", headers=auth, json=body)
        assert r.status_code == 201, r.text  # share_samples_with_llm defaults to False
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        r = await client.post(
            f"/api/v1/chats/{chat}/messages", headers=auth, json={"content": "look"}
        )
        assert r.status_code == 200, r.text
        parts = r.json()["reply"]["parts"]
    seen = json.dumps(model.requests)
    for piece in (SSN, SSN.replace("-", "_"), "123", "6789"):
        assert piece not in seen
    crafted, builtin = (_body(r) for r in _tool_results(model)[1:])
    # A made-up class name becomes "Exception"; a builtin one is kept (the model fixes code).
    assert crafted["error_class"] == "Exception" and builtin["error_class"] == "KeyError"
    assert not {"columns", "parts", "chars"} & set(crafted)
    output = crafted["output"]
    assert output == {"text_chars": "10-99", "tables": "1-9", "table_rows": "0", "images": "0"}
    assert set(output.values()) <= {"0", "1-9", "10-99", "100-999", "1000+"}
    # The user sees all of it.
    shown = json.dumps(parts)
    assert SSN in shown and "E_SSN_123_45_6789" in shown and "x" * ord("S") in shown


async def test_run_sql_row_counts_are_orders_of_magnitude(
    tmp_path: Path, live_server_factory: Any, postgres_database: str, postgres_reader: str
) -> None:
    """F1b: generate_series(1, ascii(substr(pw, i, 1))) made row_count the i-th character's
    code; now the model gets a bucket, and at most ``llm_max_steps`` calls per message."""
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            f"CREATE TABLE t (id int, pw text); INSERT INTO t VALUES (1, '{PASSWORD}')"
        )
    finally:
        await conn.close()
    calls = [
        ("run_sql", {"source": "warehouse",
                     "sql": f"SELECT generate_series(1, ascii(substr(pw, {i}, 1))) AS n FROM t"})
        for i in range(1, len(PASSWORD) + 1)
    ]  # fmt: skip
    model = ScriptedModel([{"calls": calls}, {"content": "ok"}])
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server):
        body = {"name": "warehouse", "type": "postgresql", "config": {"dsn": postgres_reader}}
        r = await client.post("/api/v1/datasources", headers=auth, json=body)
        assert r.status_code == 201, r.text
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        r = await client.post(
            f"/api/v1/chats/{chat}/messages", headers=auth, json={"content": "hi"}
        )
        assert r.status_code == 200, r.text
    results = _tool_results(model)
    assert len(results) == len(PASSWORD)  # every call is answered ...
    ran, refused = results[:8], results[8:]  # ... but only llm_max_steps (8) of them run
    counts = []
    for text in ran:
        body = _body(text)
        assert body["columns"] == [{"name": "n", "type": "int4"}]  # the SQL's, not the data's
        assert body["rows"].startswith("withheld") and set(body) == {"columns", "row_count", "rows"}
        counts.append(body["row_count"])
    # "hunter2-": letters are "100+", '2' (50) and '-' (45) are "10-99": where the exact
    # count told every character apart, now two answers remain.
    assert counts == ["100+"] * 6 + ["10-99"] * 2
    assert all(json.loads(text)["error"] == "limit_exceeded" for text in refused)
    assert '"truncated"' not in json.dumps(model.requests)


async def test_sql_profiles_and_sqlstates_are_no_oracle(
    tmp_path: Path, live_server_factory: Any, postgres_database: str, postgres_reader: str
) -> None:
    """A profile of model-written SQL (counts, fractions of whatever it computes) is refused
    with a message the model reads; a table's profile is still given; SQL errors say only
    the SQLSTATE's class, which no choice of failing expression can widen."""
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            f"CREATE TABLE t (id int, pw text); INSERT INTO t VALUES (1, '{PASSWORD}')"
        )
    finally:
        await conn.close()
    by_char = "SELECT generate_series(1, ascii(substr(pw, 1, 1))) AS n FROM t"
    model = ScriptedModel([
        {"calls": [("profile", {"source": "warehouse", "table_or_sql": by_char}),
                   ("profile", {"source": "warehouse", "table_or_sql": "public.t"}),
                   ("run_sql", {"source": "warehouse", "sql": "SELECT pw::int FROM t"}),
                   ("run_sql", {"source": "warehouse", "sql": "SELECT 1 / (id - 1) FROM t"})]},
        {"content": "ok"},
    ])  # fmt: skip
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server):
        body = {"name": "warehouse", "type": "postgresql", "config": {"dsn": postgres_reader}}
        r = await client.post("/api/v1/datasources", headers=auth, json=body)
        assert r.status_code == 201, r.text
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        r = await client.post(
            f"/api/v1/chats/{chat}/messages", headers=auth, json={"content": "hi"}
        )
        assert r.status_code == 200, r.text
    sql_profile, table_profile, cast, division = _tool_results(model)
    refusal = json.loads(sql_profile)
    assert refusal["error"] == "not_shared" and "table" in refusal["message"]
    assert str(ord(PASSWORD[0])) not in sql_profile
    table = _body(table_profile)
    assert [c["name"] for c in table["columns"]] == ["id", "pw"]
    for text in (cast, division):
        body = json.loads(text)
        # 22P02 and 22012 are both "22": the expression chosen cannot pick the answer.
        assert body["sqlstate_class"] == "22" and body["sqlstate_class_means"] == "data exception"
        assert "sqlstate" not in body and "error_class" not in body
    seen = json.dumps(model.requests)
    assert PASSWORD not in seen and "22P02" not in seen and "22012" not in seen


def test_the_error_vocabulary_is_fixed() -> None:
    """The names the model may see are builtins and the session's own, decided here."""
    from datasources.chat.disclosure import ERROR_CLASSES

    assert {"KeyError", "ValueError", "ZeroDivisionError", "Timeout"} <= ERROR_CLASSES
    assert "E_SSN_123_45_6789" not in ERROR_CLASSES and len(ERROR_CLASSES) < 100


@pytest.mark.sandbox
async def test_the_services_notes_on_code_output_do_not_reach_the_next_message(
    tmp_path: Path, live_server_factory: Any
) -> None:
    """The session's own notes ("(N leftover process(es) were stopped)", "output cut at ...:
    M more bytes") are reply text parts with an exact number the code chose; the next
    message's history carries only what the model itself wrote."""
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "people.csv").write_text(f"name,ssn\nann,{SSN}\n")
    code = (
        "import pandas as pd\n"
        "v = str(pd.read_csv('data/private/people.csv').ssn[0])\n"
        "import subprocess\n"
        "kept = [subprocess.Popen(['sleep', '60']) for _ in range(ord(v[0]) % 7 + 1)]\n"
    )
    model = ScriptedModel([
        {"calls": [("fetch", {"source": "private", "path": "people.csv"})]},
        {"calls": [("run_python", {"code": code})]},
        {"content": "first answer"},
        {"content": "second answer"},
    ])  # fmt: skip
    server = live_server_factory(model.app)
    async for client, auth in _app_with_model(tmp_path, model, server):
        body = {"name": "private", "type": "local_folder", "config": {"root": str(folder)}}
        r = await client.post("/api/v1/datasources", headers=auth, json=body)
        assert r.status_code == 201, r.text
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        for content in ("look", "and then?"):
            r = await client.post(
                f"/api/v1/chats/{chat}/messages", headers=auth, json={"content": content}
            )
            assert r.status_code == 200, r.text
            parts = r.json()["reply"]["parts"]
            if content == "look":
                notes = [p["text"] for p in parts if p["type"] == "text"][:-1]
                assert "(7 leftover process(es) were stopped)" in notes, parts  # the user sees it
    history = [m for m in model.requests[-1]["messages"] if m["role"] == "assistant"]
    assert history == [{"role": "assistant", "content": "first answer"}]
    assert "leftover" not in json.dumps(model.requests)


@pytest.mark.parametrize(
    ("n", "top", "label"),
    [(0, 1000, "0"), (1, 1000, "1-9"), (9, 1000, "1-9"), (10, 1000, "10-99"),
     (999, 1000, "100-999"), (1000, 1000, "1000+"), (10**9, 1000, "1000+"),
     (99, 100, "10-99"), (100, 100, "100+"), (200, 100, "100+")],
)  # fmt: skip
def test_buckets_are_orders_of_magnitude(n: int, top: int, label: str) -> None:
    from datasources.chat.disclosure import bucket

    assert bucket(n, top=top) == label
