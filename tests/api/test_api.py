"""The HTTP API over the real app and store: auth, CRUD, items, limits, errors."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from datasources.api import create_app
from tests.api.conftest import Api, make_settings

pytestmark = pytest.mark.api

SOURCES = "/api/v1/datasources"


async def test_health_needs_no_key_and_everything_else_does(api: Api) -> None:
    assert (await api.client.get("/healthz")).json() == {"status": "ok"}
    ready = await api.client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["store"] == "ok"
    for headers in (
        {},
        {"Authorization": "Bearer nope"},
        {"Authorization": f"Basic {api.alice.key}"},
        {"Authorization": f"Bearer {api.alice.key}x"},
        {"Authorization": f"Bearer {api.alice.key[:-1]}{'B' if api.alice.key[-1] == 'A' else 'A'}"},
        {"Authorization": "Bearer dsk_000000000000_" + "A" * 43},
    ):
        response = await api.client.get(SOURCES, headers=headers)
        assert response.status_code == 401, headers
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "unauthorized"
    assert (await api.request("GET", SOURCES)).status_code == 200


async def test_revoked_keys_stop_working_at_once(api: Api) -> None:
    assert (await api.request("GET", SOURCES, api.bob)).status_code == 200
    await api.app.state.keys.revoke(api.bob.id)
    assert (await api.request("GET", SOURCES, api.bob)).status_code == 401


async def test_create_get_list_update_delete(api: Api) -> None:
    created = await api.request(
        "POST",
        SOURCES,
        json={
            "name": "Sales Files",
            "type": "local_folder",
            "config": {"root": str(api.folder)},
            "description": "d",
            "tags": ["x"],
            "read_only": True,
        },
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["id"] == "sales-files" and body["read_only"] is True and body["tags"] == ["x"]
    assert set(body) == {
        "id", "name", "type", "description", "config", "read_only", "tags",
        "created_at", "updated_at",
    }  # fmt: skip
    again = await api.request("POST", SOURCES, json={**body, "id": None} | {"config": {}})
    assert again.status_code == 422  # id is not a field a request may send
    duplicate = await api.request(
        "POST", SOURCES, json={"name": "Sales Files", "type": "local_folder",
                               "config": {"root": str(api.folder)}},
    )  # fmt: skip
    assert duplicate.status_code == 409
    got = await api.request("GET", f"{SOURCES}/sales-files")
    assert got.json() == body
    patched = await api.request(
        "PATCH", f"{SOURCES}/sales-files", json={"description": "new", "tags": ["a", "b"]}
    )
    assert patched.status_code == 200 and patched.json()["description"] == "new"
    assert patched.json()["updated_at"] >= body["updated_at"]
    for field in ("owner", "id", "created_at", "secrets", "updated_at"):
        refused = await api.request("PATCH", f"{SOURCES}/sales-files", json={field: "x"})
        assert refused.status_code == 422, field
    assert (await api.request("DELETE", f"{SOURCES}/sales-files")).status_code == 204
    assert (await api.request("GET", f"{SOURCES}/sales-files")).status_code == 404
    assert (await api.request("DELETE", f"{SOURCES}/sales-files")).status_code == 404


async def test_list_is_paginated_with_a_cursor(api: Api) -> None:
    for i in range(5):
        await api.add_folder_source(f"src-{i}")
    seen: list[str] = []
    cursor = None
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await api.request("GET", SOURCES, params=params)).json()
        assert len(page["items"]) <= 2
        seen += [s["id"] for s in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [f"src-{i}" for i in range(5)]
    too_big = await api.request("GET", SOURCES, params={"limit": 10_000})
    assert too_big.status_code == 422
    bad_cursor = await api.request("GET", SOURCES, params={"cursor": "!!"})
    assert bad_cursor.status_code == 400


async def test_items_metadata_download_and_upload(api: Api) -> None:
    source = await api.add_folder_source()
    page = (await api.request("GET", f"{SOURCES}/{source}/items", params={"limit": 1})).json()
    assert [i["path"] for i in page["items"]] == ["a.csv"] and page["next_cursor"]
    rest = await api.request(
        "GET", f"{SOURCES}/{source}/items", params={"cursor": page["next_cursor"]}
    )
    assert [i["path"] for i in rest.json()["items"]] == ["dir/b.txt"]
    folders = await api.request("GET", f"{SOURCES}/{source}/items", params={"delimiter": "/"})
    assert [(i["path"], i["kind"]) for i in folders.json()["items"]] == [
        ("a.csv", "file"),
        ("dir/", "directory"),
    ]
    meta = await api.request("GET", f"{SOURCES}/{source}/metadata", params={"path": "a.csv"})
    assert meta.json()["size"] == 8
    download = await api.request("GET", f"{SOURCES}/{source}/download", params={"path": "a.csv"})
    assert download.content == b"x,y\n1,2\n"
    # The type comes from the source: the browser must neither sniff nor run the file.
    assert download.headers["x-content-type-options"] == "nosniff"
    assert download.headers["content-security-policy"] == "sandbox"
    assert download.headers["content-length"] == "8"
    assert "attachment" in download.headers["content-disposition"]
    upload = await api.request(
        "POST",
        f"{SOURCES}/{source}/upload",
        files={"file": ("u.bin", b"\x00\x01" * 1000)},
        data={"path": "up/u.bin"},
    )
    assert upload.status_code == 201, upload.text
    assert (api.folder / "up" / "u.bin").read_bytes() == b"\x00\x01" * 1000
    clash = await api.request(
        "POST", f"{SOURCES}/{source}/upload", files={"file": ("u", b"z")}, data={"path": "up/u.bin"}
    )
    assert clash.status_code == 409
    replaced = await api.request(
        "POST",
        f"{SOURCES}/{source}/upload",
        files={"file": ("u", b"z")},
        data={"path": "up/u.bin", "overwrite": "true"},
    )
    assert replaced.status_code == 201 and (api.folder / "up" / "u.bin").read_bytes() == b"z"
    assert not list((api.settings.home / "tmp").iterdir())  # no upload left behind


@pytest.mark.parametrize(
    "path", ["../secret", "/etc/passwd", "a/../../b", "x\x00y", ".datasources/manifest.jsonl"]
)
async def test_hostile_paths_are_refused(api: Api, path: str) -> None:
    (api.folder.parent / "secret").write_text("outside")
    source = await api.add_folder_source()
    for route in ("metadata", "download"):
        response = await api.request("GET", f"{SOURCES}/{source}/{route}", params={"path": path})
        assert response.status_code in (400, 404), (route, response.text)
        assert "outside" not in response.text
    upload = await api.request(
        "POST", f"{SOURCES}/{source}/upload", files={"file": ("f", b"evil")}, data={"path": path}
    )
    assert upload.status_code in (400, 404, 422)
    assert (api.folder.parent / "secret").read_text() == "outside"


async def test_read_only_sources_refuse_uploads(api: Api) -> None:
    response = await api.request(
        "POST",
        SOURCES,
        json={"name": "ro", "type": "local_folder", "config": {"root": str(api.folder)},
              "read_only": True},
    )  # fmt: skip
    assert response.status_code == 201
    upload = await api.request(
        "POST", f"{SOURCES}/ro/upload", files={"file": ("f", b"x")}, data={"path": "new.txt"}
    )
    assert upload.status_code == 403 and upload.json()["code"] == "read_only"
    assert not (api.folder / "new.txt").exists()


async def test_bad_bodies_get_problem_details_without_echoing_input(api: Api) -> None:
    cases = [
        (b"{not json", "application/json"),
        (b"[]", "application/json"),
        (json.dumps({"name": "", "type": "local_folder"}).encode(), "application/json"),
        (json.dumps({"name": "x", "type": "no_such_type"}).encode(), "application/json"),
        (json.dumps({"name": "x", "type": "local_folder", "owner": "bob"}).encode(),
         "application/json"),
        (json.dumps({"name": "x", "type": "local_folder", "config": {"root": "/nope-XYZ"}})
         .encode(), "application/json"),
        (b"name=x", "application/x-www-form-urlencoded"),
    ]  # fmt: skip
    for body, content_type in cases:
        response = await api.request(
            "POST", SOURCES, content=body, headers={"content-type": content_type}
        )
        assert 400 <= response.status_code < 500, (body, response.text)
        problem = response.json()
        assert problem["status"] == response.status_code and problem["code"]
        assert response.headers["content-type"] == "application/problem+json"
        assert "Traceback" not in response.text
        assert '"input"' not in json.dumps(problem["details"])
    unknown = await api.request("GET", "/api/v1/nothing-here")
    assert unknown.status_code == 404 and unknown.json()["code"] == "not_found"
    wrong_method = await api.request("PUT", SOURCES)
    assert wrong_method.status_code == 405


async def test_bodies_over_the_limit_get_413_before_being_read(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_body_bytes=2048, max_upload_bytes=10_000)
    (tmp_path / "data").mkdir()
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        key = await app.state.keys.create("k")
        headers = {"Authorization": f"Bearer {key.key}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            big = json.dumps({"name": "x" * 5000, "type": "local_folder"})
            response = await client.post(SOURCES, content=big, headers=headers)
            assert response.status_code == 413 and response.json()["code"] == "body_too_large"

            async def chunked() -> AsyncIterator[
                bytes
            ]:  # no Content-Length: cut off while streaming
                for _ in range(10):
                    yield b" " * 1000

            response = await client.post(
                SOURCES, content=chunked(), headers={**headers, "content-type": "application/json"}
            )
            assert response.status_code == 413
            source = await client.post(
                SOURCES,
                json={
                    "name": "f",
                    "type": "local_folder",
                    "config": {"root": str(tmp_path / "data")},
                },
                headers=headers,
            )
            assert source.status_code == 201
            upload = await client.post(
                f"{SOURCES}/f/upload",
                files={"file": ("big", b"x" * 20_000)},
                data={"path": "big"},
                headers=headers,
            )
            assert upload.status_code == 413
            assert not (tmp_path / "data" / "big").exists()
            small = await client.post(
                f"{SOURCES}/f/upload",
                files={"file": ("s", b"x" * 5000)},
                data={"path": "small"},
                headers=headers,
            )
            assert small.status_code == 201  # uploads have their own, larger limit


async def test_rate_limit_answers_429_with_retry_after(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, rate_limit_per_minute=60, rate_limit_burst=3)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        alice = await app.state.keys.create("alice")
        bob = await app.state.keys.create("bob")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            statuses = [
                (await client.get(SOURCES, headers={"Authorization": f"Bearer {alice.key}"}))
                for _ in range(5)
            ]
            assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
            assert int(statuses[-1].headers["retry-after"]) >= 1
            assert statuses[-1].json()["code"] == "rate_limited"
            other = await client.get(SOURCES, headers={"Authorization": f"Bearer {bob.key}"})
            assert other.status_code == 200  # per key


async def test_request_ids_are_returned_and_logged(
    api: Api, all_logs: pytest.LogCaptureFixture
) -> None:
    response = await api.request("GET", SOURCES, headers={"X-Request-ID": "trace-123"})
    assert response.headers["x-request-id"] == "trace-123"
    generated = await api.request("GET", SOURCES, headers={"X-Request-ID": "bad id\n!"})
    assert generated.headers["x-request-id"] != "bad id\n!"
    lines = [json.loads(r.getMessage()) for r in all_logs.records if r.name == "datasources.access"]
    entry = next(line for line in lines if line["request_id"] == "trace-123")
    assert entry["status"] == 200 and entry["path"] == SOURCES and entry["key_id"] == api.alice.id


async def test_concurrent_requests_share_one_connector(api: Api) -> None:
    source = await api.add_folder_source()
    responses = await asyncio.gather(
        *(api.request("GET", f"{SOURCES}/{source}/items") for _ in range(20))
    )
    assert {r.status_code for r in responses} == {200}
    # One live connector served all 20, rather than one per request.
    stats = [
        s for name, s in api.app.state.registry.pool_stats().items() if name.endswith("/" + source)
    ]
    assert len(stats) == 1, stats
    assert stats[0].acquisitions >= 20 and stats[0].in_use == 0, stats[0]
    ready = (await api.client.get("/readyz")).json()["pools"]
    assert ready["connectors"] >= 1 and ready["in_use"] == 0, ready


async def test_database_routes_on_a_folder_say_it_is_not_a_database(api: Api) -> None:
    source = await api.add_folder_source()
    for method, route, body in (
        ("POST", "query", {"sql": "SELECT 1"}),
        ("GET", "schema", None),
    ):
        response = await api.request(method, f"{SOURCES}/{source}/{route}", json=body)
        assert response.status_code == 400, response.text
        problem = response.json()
        assert problem["code"] == "not_a_database"
        assert "not a database" in problem["detail"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_pages_load_everything_from_this_service(api: Api, page: str) -> None:
    """No CDN: every script, style and icon the page names is served here."""
    import re

    html = await api.client.get(page)
    assert html.status_code == 200 and "text/html" in html.headers["content-type"]
    urls = re.findall(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""", html.text)
    assets = [u for u in urls if not u.startswith("/openapi.json")]
    assert assets, html.text
    for url in assets:
        assert url.startswith("/"), f"{page} loads {url} from elsewhere"
        served = await api.client.get(url)
        assert served.status_code == 200 and len(served.content) > 1000, url
    assert "fonts.googleapis" not in html.text
    outside = await api.client.get("/static/docs/../../../../etc/passwd")
    assert outside.status_code == 404
