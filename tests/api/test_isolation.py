"""Owners are isolated on every route, and no secret leaves the service by any path."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute

from tests.api.conftest import Api
from tests.conftest import logged_text, require_service

pytestmark = pytest.mark.api

SOURCES = "/api/v1/datasources"

# How to call each route that names a source: a request that would succeed for its owner.
CALLS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/datasources/{source_id}"): {},
    ("PATCH", "/api/v1/datasources/{source_id}"): {"json": {"description": "pwned"}},
    ("DELETE", "/api/v1/datasources/{source_id}"): {},
    ("POST", "/api/v1/datasources/{source_id}/test"): {},
    ("GET", "/api/v1/datasources/{source_id}/items"): {"params": {"prefix": ""}},
    ("GET", "/api/v1/datasources/{source_id}/metadata"): {"params": {"path": "a.csv"}},
    ("GET", "/api/v1/datasources/{source_id}/schema"): {},
    ("POST", "/api/v1/datasources/{source_id}/query"): {"json": {"sql": "SELECT 1"}},
    ("GET", "/api/v1/datasources/{source_id}/download"): {"params": {"path": "a.csv"}},
    ("GET", "/api/v1/datasources/{source_id}/preview"): {"params": {"path": "a.csv"}},
    ("POST", "/api/v1/datasources/{source_id}/upload"): {
        "files": {"file": ("f.txt", b"pwned")},
        "data": {"path": "pwned.txt", "overwrite": "true"},
    },
}


CHAT_CALLS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/v1/chats/{chat_id}"): {},
    ("PATCH", "/api/v1/chats/{chat_id}"): {"json": {"title": "pwned"}},
    ("DELETE", "/api/v1/chats/{chat_id}"): {},
    ("GET", "/api/v1/chats/{chat_id}/messages"): {},
    ("POST", "/api/v1/chats/{chat_id}/messages"): {"json": {"content": "```python\n1\n```"}},
    ("POST", "/api/v1/chats/{chat_id}/execute"): {"json": {"code": "open('x','w')"}},
    ("GET", "/api/v1/chats/{chat_id}/files"): {},
    ("GET", "/api/v1/chats/{chat_id}/files/{path:path}"): {},
}


def api_routes(routes: list[Any], prefix: str = "") -> list[APIRoute]:
    """Every APIRoute under ``routes``, through included routers (FastAPI keeps them nested)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found += api_routes(route.original_router.routes)
    return found


def _source_routes(api: Api) -> list[tuple[str, str]]:
    routes = []
    # The workbench's pages (/sources/{source_id}…) serve one app shell whatever the id:
    # they read nothing of any owner, so only the API's routes are walked here.
    for route in api_routes(api.app.routes):
        if "{source_id}" in route.path and route.path.startswith("/api/"):
            routes += [(method, route.path) for method in sorted(route.methods or ())]
    return routes


def _normalised(response: httpx.Response, source_id: str) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["code"], body["detail"].replace(source_id, "<id>")


async def test_another_owners_source_is_a_missing_one_on_every_route(api: Api) -> None:
    alice_source = await api.add_folder_source("files", api.alice)
    before = (await api.request("GET", f"{SOURCES}/{alice_source}")).json()
    routes = _source_routes(api)
    assert set(routes) == set(CALLS), "a route that names a source is missing from CALLS"
    for method, path in routes:
        kwargs = CALLS[method, path]
        as_bob = await api.request(method, path.format(source_id=alice_source), api.bob, **kwargs)
        missing = await api.request(method, path.format(source_id="no-such-id"), api.bob, **kwargs)
        assert as_bob.status_code == 404, (method, path, as_bob.text)
        assert _normalised(as_bob, alice_source) == _normalised(missing, "no-such-id"), path
        # And the owner still reaches it (the 404 is about ownership, not the request).
        if method == "GET" and path.endswith("{source_id}"):
            mine = await api.request(method, path.format(source_id=alice_source), api.alice)
            assert mine.status_code == 200
    after = (await api.request("GET", f"{SOURCES}/{alice_source}")).json()
    assert after == before
    assert not (api.folder / "pwned.txt").exists()
    # Listing and creating are per owner too: bob sees nothing, and may reuse the name.
    assert (await api.request("GET", SOURCES, api.bob)).json()["items"] == []
    assert (await api.add_folder_source("files", api.bob)) == "files"
    assert len((await api.request("GET", SOURCES, api.alice)).json()["items"]) == 1


async def test_another_owners_chat_is_a_missing_one_on_every_route(api: Api) -> None:
    created = await api.request("POST", "/api/v1/chats", api.alice, json={"title": "mine"})
    chat = created.json()["id"]
    (api.settings.workspaces_dir / chat / "outputs" / "r.txt").write_text("private")
    routes = []
    for route in api_routes(api.app.routes):
        if "{chat_id}" in route.path and route.path.startswith("/api/"):
            routes += [(method, route.path) for method in sorted(route.methods or ())]
    assert set(routes) == set(CHAT_CALLS), "a route that names a chat is missing from CHAT_CALLS"
    for method, path in routes:
        kwargs = CHAT_CALLS[method, path]
        url = path.replace("{path:path}", "outputs/r.txt")
        as_bob = await api.request(method, url.format(chat_id=chat), api.bob, **kwargs)
        missing = await api.request(method, url.format(chat_id="f" * 24), api.bob, **kwargs)
        assert as_bob.status_code == 404, (method, path, as_bob.text)
        assert _normalised(as_bob, chat) == _normalised(missing, "f" * 24), path
    mine = await api.request("GET", f"/api/v1/chats/{chat}", api.alice)
    assert mine.status_code == 200 and mine.json()["title"] == "mine"
    assert (api.settings.workspaces_dir / chat / "outputs" / "r.txt").read_text() == "private"
    assert (await api.request("GET", "/api/v1/chats", api.bob)).json()["items"] == []


async def test_keys_of_one_owner_share_its_sources(api: Api) -> None:
    await api.add_folder_source("shared", api.alice)
    second = await api.app.state.keys.create("alice-laptop", owner=api.alice.owner)
    response = await api.request("GET", f"{SOURCES}/shared", second)
    assert response.status_code == 200


@pytest.fixture
def secrets_everywhere(api: Api, canary: str, postgres_reader: str) -> dict[str, Any]:
    """Sources whose secrets are the canary, on reachable and unreachable targets."""
    azure = require_service("DATASOURCES_TEST_AZURITE_URL")
    # A least-privilege role (a superuser source is refused at registration).
    role, host_port_db = postgres_reader.split("://", 1)[1].split("@", 1)
    account_key = base64.b64encode(canary.encode()).decode()
    return {
        "canary": canary,
        "forms": [canary, account_key],
        "sources": [
            {
                "name": "pg-ok",
                "type": "postgresql",
                "config": {"dsn": f"postgresql://{role}:{canary}@{host_port_db}"},
            },
            {
                "name": "pg-down",
                "type": "postgresql",
                "config": {
                    "host": "127.0.0.1",
                    "port": 1,
                    "database": "x",
                    "user": "u",
                    "password": canary,
                    "connect_timeout": 2,
                },
            },
            {
                "name": "azure-wrong-key",
                "type": "azure_blob",
                "config": {
                    "connection_string": (
                        "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
                        f"AccountKey={account_key};BlobEndpoint={azure};"
                    ),
                    "container_name": "nothere",
                    "timeout": 5,
                },
            },
            {
                "name": "azure-sas",
                "type": "azure_blob",
                "config": {
                    "account_url": azure,
                    "sas_token": f"sv=2024-01-01&sp=rl&sig={canary}",
                    "container_name": "nothere",
                    "timeout": 5,
                },
            },
        ],
    }


async def test_no_secret_in_any_response_header_log_or_the_openapi_document(
    api: Api, secrets_everywhere: dict[str, Any], all_logs: pytest.LogCaptureFixture
) -> None:
    forms: list[str] = secrets_everywhere["forms"]
    seen: list[str] = []

    def record(response: httpx.Response) -> httpx.Response:
        seen.append(f"{response.status_code} {dict(response.headers)} {response.text}")
        return response

    ids = []
    for body in secrets_everywhere["sources"]:
        created = record(await api.request("POST", SOURCES, json=body))
        assert created.status_code == 201, created.text
        assert created.json()["config"].get("password", "********") == "********"
        ids.append(created.json()["id"])
    # A bad registration echoes nothing either.
    bad = dict(secrets_everywhere["sources"][1])
    bad["config"] = {**bad["config"], "options": f"-c x={forms[0]}"}
    record(await api.request("POST", SOURCES, json={**bad, "name": "bad"}))
    for source in ids:
        for (method, path), kwargs in CALLS.items():
            if method == "DELETE":
                continue
            record(await api.request(method, path.format(source_id=source), **kwargs))
        # A masked secret sent back with a new target is refused, and says nothing.
        record(
            await api.request(
                "PATCH",
                f"{SOURCES}/{source}",
                json={"config": {"password": "********", "host": "example.invalid"}},
            )
        )
    record(await api.request("GET", SOURCES))
    record(await api.client.get("/openapi.json"))
    record(await api.client.get("/readyz"))
    statuses = {int(s.split(" ", 1)[0]) for s in seen}
    assert {201, 200, 503} <= statuses and statuses & {403, 424}, statuses
    everything = "\n".join(seen) + "\n" + logged_text(all_logs)
    for form in forms:
        assert form not in everything
    for source in ids:
        detail = (await api.request("GET", f"{SOURCES}/{source}")).json()
        assert forms[0] not in json.dumps(detail)
    assert logging.getLogger("datasources").isEnabledFor(logging.DEBUG)
