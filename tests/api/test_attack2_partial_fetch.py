"""A prefix fetch that fails on one item leaves the other files in data/<source>/ with no
manifest entry; ``workspace_private`` reads only the manifest, so the next run_python
returns the non-sharing source's data to the model verbatim."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.api.test_assistant import ScriptedModel, _app_with_model

pytestmark = [pytest.mark.api, pytest.mark.integration]

SSN = "SSN-123-45-6789"


@pytest.mark.sandbox
async def test_partial_prefix_fetch_leaks_to_model(
    tmp_path: Path, live_server_factory: Any
) -> None:
    folder = tmp_path / "data"
    (folder / "d").mkdir(parents=True)
    (folder / "d" / "people.csv").write_text(f"name,ssn\nann,{SSN}\n")
    # One item the workspace refuses (a control character in its name): the whole fetch
    # raises after the other files were already written.
    (folder / "d" / "z\x01.csv").write_text("a\n1\n")
    code = "print(open('data/private/d/people.csv').read())"
    model = ScriptedModel([
        {"calls": [("fetch", {"source": "private", "prefix": "d/"})]},
        {"calls": [("run_python", {"code": code})]},
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
    seen = json.dumps(model.requests)
    assert SSN not in seen, "non-sharing cell reached the model"
