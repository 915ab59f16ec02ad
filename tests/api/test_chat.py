"""Chats over HTTP: references, workspaces with provenance, code in the sandbox, SSE."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from datasources.api import create_app
from tests.api.conftest import Api, make_settings, served

pytestmark = [pytest.mark.api, pytest.mark.integration]

SOURCES = "/api/v1/datasources"
CHATS = "/api/v1/chats"

SALES_CSV = b"region,units\nnorth,10\nsouth,5\nnorth,7\neast,1\n"


@pytest.fixture
async def chat_api(tmp_path: Path) -> AsyncIterator[Api]:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "local.csv").write_bytes(b"a,b\n1,x\n2,\n3,z\n")
    settings = make_settings(tmp_path, pool_size=1)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=120
        ) as client:
            alice = await app.state.keys.create("alice")
            bob = await app.state.keys.create("bob")
            yield Api(app, client, alice, bob, settings, folder)


async def _chat(api: Api) -> str:
    response = await api.request("POST", CHATS, json={"title": "t"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def _say(api: Api, chat: str, content: str, refs: list[dict[str, Any]] | None = None) -> Any:
    body = {"content": content, "data_source_refs": refs or []}
    response = await api.request("POST", f"{CHATS}/{chat}/messages", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_a_blob_and_a_table_joined_in_one_message(
    chat_api: Api,
    azurite: dict[str, str],
    container: Any,
    postgres_database: str,
    postgres_reader: str,
) -> None:
    api = chat_api
    await container.upload_blob("sales/2026.csv", SALES_CSV)
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            "CREATE TABLE regions (region text PRIMARY KEY, manager text, target numeric(8,2));"
            "INSERT INTO regions VALUES ('north', 'Ana', 20), ('south', 'Bo', 4), "
            "('east', 'Cy', 2.5);"
        )
    finally:
        await conn.close()
    lake = {"connection_string": azurite["connection_string"],
            "container_name": container.container_name}  # fmt: skip
    for body in (
        {"name": "lake", "type": "azure_blob", "config": lake},
        {"name": "warehouse", "type": "postgresql", "config": {"dsn": postgres_reader}},
    ):
        assert (await api.request("POST", SOURCES, json=body)).status_code == 201
    chat = await _chat(api)
    code = (
        "import pandas as pd\n"
        "sales = pd.read_csv('data/lake/sales/2026.csv')\n"
        "regions = pd.read_parquet('data/warehouse/public/regions.parquet')\n"
        "joined = sales.groupby('region', as_index=False).units.sum().merge(regions)\n"
        "joined['ratio'] = joined.units / joined.target.astype(float)\n"
        "print(joined.sort_values('region').to_json(orient='records'))\n"
    )
    reply = await _say(
        api,
        chat,
        f"Join @lake:sales/2026.csv with the regions table.\n```python\n{code}```",
        [{"data_source_id": "warehouse", "table": "public.regions"}],
    )
    parts = reply["reply"]["parts"]
    assert parts[0] == {"type": "code", "text": code}
    stdout = next(p["text"] for p in parts if p["type"] == "stdout")
    got = {row["region"]: row for row in json.loads(stdout)}
    # The same numbers, computed here independently of the sandbox.
    units: dict[str, int] = {}
    for line in SALES_CSV.decode().splitlines()[1:]:
        region, count = line.split(",")
        units[region] = units.get(region, 0) + int(count)
    targets = {"north": 20.0, "south": 4.0, "east": 2.5}
    assert {r: got[r]["units"] for r in got} == units
    assert {r: round(got[r]["ratio"], 6) for r in got} == {
        r: round(units[r] / targets[r], 6) for r in units
    }
    files = {
        f["path"]: f for f in (await api.request("GET", f"{CHATS}/{chat}/files")).json()["items"]
    }
    blob = files["data/lake/sales/2026.csv"]
    table = files["data/warehouse/public/regions.parquet"]
    assert blob["source_id"] == "lake" and blob["remote"] == "sales/2026.csv" and blob["etag"]
    assert blob["bytes"] == len(SALES_CSV) and len(blob["sha256"]) == 64
    assert blob["message_id"] == reply["message"]["id"]
    assert table["source_id"] == "warehouse" and table["kind"] == "table"
    manifest = await api.request("GET", f"{CHATS}/{chat}/files/manifest.json")
    assert "data/lake/sales/2026.csv" in manifest.json()["files"]
    # Referencing the unchanged blob again moves no bytes: the same file, untouched.
    before = (api.settings.workspaces_dir / chat / "data/lake/sales/2026.csv").stat().st_mtime_ns
    await _say(api, chat, "again @lake:sales/2026.csv")
    after = (api.settings.workspaces_dir / chat / "data/lake/sales/2026.csv").stat().st_mtime_ns
    assert before == after
    # Offline mode: /sql on the referenced database.
    sql = await _say(api, chat, "/sql SELECT count(*) AS n FROM regions", [
        {"data_source_id": "warehouse", "table": "public.regions"}])  # fmt: skip
    table_part = sql["reply"]["parts"][0]
    assert table_part["type"] == "table" and table_part["data"]["rows"] == [[3]]

    # /sql with a table mention: the query runs in the database and only its result
    # lands in the workspace (no copy of the table).
    fresh = await _chat(api)
    asked = await _say(
        api, fresh, "/sql SELECT manager FROM @warehouse:public.regions WHERE target > 3 ORDER BY 1"
    )
    part = asked["reply"]["parts"][0]
    assert part["type"] == "table", asked["reply"]["parts"]
    assert part["data"]["rows"] == [["Ana"], ["Bo"]] and part["data"]["row_count"] == 2
    listed = (await api.request("GET", f"{CHATS}/{fresh}/files")).json()["items"]
    assert [f["path"].rsplit("/", 1)[0] for f in listed] == ["data/warehouse/queries"]
    assert listed[0]["kind"] == "query"
    for bad, code in (
        ("/sql SELECT 1 FROM @lake:sales/2026.csv", "invalid_input"),
        ("/sql DELETE FROM @warehouse:public.regions", "read_only_violation"),
        ("/sql SELECT 1", "invalid_input"),
    ):
        refused = await api.request("POST", f"{CHATS}/{fresh}/messages", json={"content": bad})
        assert refused.status_code == 400 and refused.json()["code"] == code, refused.text
    conn = await asyncpg.connect(postgres_database)
    try:
        assert await conn.fetchval("SELECT count(*) FROM regions") == 3
    finally:
        await conn.close()


async def test_briefs_state_images_and_files(chat_api: Api) -> None:
    api = chat_api
    await api.add_folder_source("files")
    chat = await _chat(api)
    brief = await _say(api, chat, "What is in @files:local.csv?")
    table = next(p for p in brief["reply"]["parts"] if p["type"] == "table")["data"]
    assert table["rows"] == 3 and [c["name"] for c in table["columns"]] == ["a", "b"]
    b = table["columns"][1]
    assert b["null_fraction"] == pytest.approx(1 / 3, abs=1e-3) and b["distinct"] == 2
    assert table["preview"]["rows"][0] == [1, "x"]
    run = await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": "x = 20"})
    assert run.json()["ok"] is True
    run = await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": "x * 2 + 2"})
    assert run.json()["parts"] == [{"type": "result", "text": "42"}]
    plot = await api.request(
        "POST",
        f"{CHATS}/{chat}/execute",
        json={"code": "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()"},
    )
    image = next(p for p in plot.json()["parts"] if p["type"] == "image")
    png = await api.request("GET", f"{CHATS}/{chat}/files/{image['path']}")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    wrote = await api.request(
        "POST", f"{CHATS}/{chat}/execute",
        json={"code": "open('outputs/result.txt', 'w').write('done')"},
    )  # fmt: skip
    assert wrote.json()["ok"] is True
    got = await api.request("GET", f"{CHATS}/{chat}/files/outputs/result.txt")
    assert got.text == "done"
    for bad in ("../../home/secret.key", "%2e%2e/%2e%2e/etc/passwd", "data/../../x", "/etc/passwd"):
        response = await api.request("GET", f"{CHATS}/{chat}/files/{bad}")
        assert response.status_code in (400, 404), bad
    history = (await api.request("GET", f"{CHATS}/{chat}/messages")).json()["items"]
    # Each /execute is in the history like a message: its code, then its output.
    assert [m["role"] for m in history] == ["user", "assistant"] + ["execution"] * 4
    assert history[3]["parts"] == [
        {"type": "code", "text": "x * 2 + 2"},
        {"type": "result", "text": "42"},
    ]
    assert history[4]["parts"][0]["text"].startswith("import matplotlib")
    assert image in history[4]["parts"]
    # What a model is told of the chat leaves them out (their output is the data's).
    told = await api.app.state.chats.history(chat)
    assert "42" not in str(told) and "x * 2" not in str(told)
    help_text = await _say(api, chat, "hello")
    assert "```python" in help_text["reply"]["parts"][0]["text"]


async def test_events_stream_as_server_sent_events(chat_api: Api) -> None:
    api = chat_api
    await api.add_folder_source("files")
    chat = await _chat(api)
    code = "print(len(open('data/files/local.csv').read()))"
    body = {"content": f"@files:local.csv\n```python\n{code}\n```"}
    async with api.client.stream(
        "POST", f"{CHATS}/{chat}/messages", json=body,
        headers={**api.auth(), "Accept": "text/event-stream"},
    ) as response:  # fmt: skip
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join([chunk async for chunk in response.aiter_text()])
    events = [block.split("\n")[0].removeprefix("event: ") for block in text.strip().split("\n\n")]
    assert events[:2] == ["fetch_progress", "fetch_done"]
    assert "code" in events and "output" in events and events[-1] == "done"


async def test_bad_references_are_refused_before_anything_is_fetched(chat_api: Api) -> None:
    api = chat_api
    (api.folder / "dir").mkdir()
    (api.folder / "dir" / "in.csv").write_bytes(b"a\n1\n")
    await api.add_folder_source("files")
    chat = await _chat(api)
    bob_source = await api.add_folder_source("bobs", api.bob)
    cases = [
        ("see @nosuch:x.csv", [], 404),
        ("see @bobs:local.csv", [], 404),  # another owner's source is a missing one
        ("x", [{"data_source_id": bob_source, "path": "local.csv"}], 404),
        ("see @files:../etc/passwd", [], 400),
        ("x", [{"data_source_id": "files", "path": "a", "prefix": "b/"}], 422),
        ("x", [{"data_source_id": "files", "query": "SELECT 1"}], 400),
        ("x", [{"data_source_id": "files", "path": "/etc/passwd"}], 400),
        ("see @files:local.csv and @files:missing.csv", [], 404),  # local.csv not fetched either
        ("see @files:dir", [], 400),  # a folder named like a file
        (" ".join(f"@files:f{i}.csv" for i in range(3000)), [], 400),  # at most 50 refs
    ]
    for content, refs, status in cases:
        body = {"content": content, "data_source_refs": refs}
        response = await api.request("POST", f"{CHATS}/{chat}/messages", json=body)
        assert response.status_code == status, (content, refs, response.text)
    assert not list((api.settings.workspaces_dir / chat / "data").iterdir())
    assert (await api.request("GET", f"{CHATS}/{chat}/messages")).json()["items"] == []


async def _quota_chat(
    tmp_path: Path, quota: int
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], str]]:
    """A service whose chats have ``quota`` bytes, a folder source ``f`` and one chat."""
    settings = make_settings(tmp_path)
    settings = settings.model_copy(
        update={"sandbox_limits": settings.sandbox_limits.model_copy(
            update={"workspace_quota_bytes": quota})}
    )  # fmt: skip
    async for client, headers in served(settings):
        folder = {"name": "f", "type": "local_folder", "config": {"root": str(tmp_path / "data")}}
        assert (await client.post(SOURCES, json=folder, headers=headers)).status_code == 201
        chat = (await client.post(CHATS, json={}, headers=headers)).json()["id"]
        yield client, headers, chat


async def test_the_quota_is_checked_before_fetching(tmp_path: Path) -> None:
    # Refused on the listed size, before a byte is read (the message names that size);
    # while fetching: tests/api/test_quota.py and tests/unit/test_quota_while_fetching.py.
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "big.bin").write_bytes(b"x" * 2000)
    (tmp_path / "data" / "small.bin").write_bytes(b"x" * 1000)
    async for client, headers, chat in _quota_chat(tmp_path, 1500):
        big = await client.post(f"{CHATS}/{chat}/messages", json={"content": "@f:big.bin"},
                                headers=headers)  # fmt: skip
        reply = big.json()["reply"]["parts"]
        assert reply[0]["type"] == "error" and reply[0]["name"] == "limit_exceeded"
        assert "is 2000 bytes" in reply[0]["text"], reply
        ok = await client.post(f"{CHATS}/{chat}/messages", json={"content": "@f:small.bin"},
                               headers=headers)  # fmt: skip
        assert ok.json()["reply"]["parts"][0]["type"] != "error"
        files = (await client.get(f"{CHATS}/{chat}/files", headers=headers)).json()["items"]
        assert [f["path"] for f in files] == ["data/f/small.bin"]


async def test_deleting_a_chat_deletes_its_workspace_and_session(chat_api: Api) -> None:
    api = chat_api
    chat = await _chat(api)
    await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": "1"})
    directory = api.settings.workspaces_dir / chat
    assert directory.exists() and chat in api.app.state.chats.sandboxes._sessions
    assert (await api.request("DELETE", f"{CHATS}/{chat}")).status_code == 204
    assert not directory.exists() and chat not in api.app.state.chats.sandboxes._sessions
    assert (await api.request("GET", f"{CHATS}/{chat}")).status_code == 404
    listed = await api.request("GET", CHATS)
    assert listed.json()["items"] == []


async def test_old_chats_expire_with_their_workspaces(chat_api: Api) -> None:
    api = chat_api
    chat = await _chat(api)
    chats = api.app.state.chats
    assert await chats.expire() == 0  # a fresh chat stays
    chats.settings = chats.settings.model_copy(
        update={"sandbox_limits": chats.settings.sandbox_limits.model_copy(
            update={"workspace_max_age_days": 1e-9})}
    )  # fmt: skip
    assert await chats.expire() == 1
    assert not (api.settings.workspaces_dir / chat).exists()
    assert (await api.request("GET", f"{CHATS}/{chat}")).status_code == 404


async def test_a_prefix_over_the_quota_is_refused_before_fetching(tmp_path: Path) -> None:
    (tmp_path / "data" / "many").mkdir(parents=True)
    for i in range(4):  # each alone fits; together they do not
        (tmp_path / "data" / "many" / f"f{i}.bin").write_bytes(b"x" * 1000)
    async for client, headers, chat in _quota_chat(tmp_path, 2500):
        reply = await client.post(f"{CHATS}/{chat}/messages", json={"content": "@f:many/"},
                                  headers=headers)  # fmt: skip
        parts = reply.json()["reply"]["parts"]
        text = parts[0]["text"]  # the listing stops as soon as it passes the quota left
        assert parts[0]["name"] == "limit_exceeded" and "2500 bytes of its quota left" in text
        files = (await client.get(f"{CHATS}/{chat}/files", headers=headers)).json()["items"]
        assert files == []


async def test_chats_per_owner_and_the_disk_floor_are_limits(tmp_path: Path) -> None:
    """Quotas are per chat, so chats per owner are capped, and a disk floor holds for all."""
    import shutil

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "f.csv").write_bytes(b"a\n1\n")
    settings = make_settings(tmp_path)
    free = shutil.disk_usage(tmp_path).free
    limits = settings.sandbox_limits.model_copy(
        update={"max_chats_per_owner": 2, "min_free_disk_bytes": free + 1024**3}
    )
    settings = settings.model_copy(update={"sandbox_limits": limits})
    async for client, headers in served(settings):
        folder = {"name": "f", "type": "local_folder", "config": {"root": str(tmp_path / "data")}}
        assert (await client.post(SOURCES, json=folder, headers=headers)).status_code == 201
        first = (await client.post(CHATS, json={}, headers=headers)).json()["id"]
        assert (await client.post(CHATS, json={}, headers=headers)).status_code == 201
        third = await client.post(CHATS, json={}, headers=headers)
        assert third.status_code == 413 and third.json()["code"] == "limit_exceeded"
        full = await client.post(f"{CHATS}/{first}/messages", json={"content": "@f:f.csv"},
                                 headers=headers)  # fmt: skip
        part = full.json()["reply"]["parts"][0]
        assert part["type"] == "error" and "disk is nearly full" in part["text"]
        listed = (await client.get(f"{CHATS}/{first}/files", headers=headers)).json()["items"]
        assert listed == []
        await client.delete(f"{CHATS}/{first}", headers=headers)
        assert (await client.post(CHATS, json={}, headers=headers)).status_code == 201
