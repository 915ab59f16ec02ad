"""The outbound-target policy, as the service applies it to user-registered sources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from datasources.config import ApiSettings, SandboxLimits, Settings
from tests.api.conftest import served
from tests.conftest import require_service

pytestmark = pytest.mark.api

SOURCES = "/api/v1/datasources"


@pytest.fixture
async def strict(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """The service's default: no internal addresses, no local folders."""
    settings = Settings(
        home=tmp_path / "home",
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0),
    )
    async for pair in served(settings):
        yield pair


def _pg(host: str, port: int = 5432) -> dict[str, Any]:
    return {
        "name": f"pg-{host}".replace(":", "-").replace("[", "").replace("]", "")[:60],
        "type": "postgresql",
        "config": {"host": host, "port": port, "database": "x", "user": "u", "connect_timeout": 2},
    }


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "169.254.169.254",
        "10.1.2.3",
        "192.168.0.1",
        "172.16.5.5",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "[::1]",
        "::ffff:127.0.0.1",
        "fe80::1",
        "/var/run/postgresql",
    ],
)
async def test_internal_database_hosts_are_refused(
    strict: tuple[httpx.AsyncClient, dict[str, str]], host: str
) -> None:
    client, auth = strict
    response = await client.post(SOURCES, json=_pg(host), headers=auth)
    assert response.status_code == 403, response.text
    assert response.json()["code"] == "permission_denied"
    assert "DATASOURCES_ALLOWED_HOSTS" in response.json()["detail"] or "local" in response.text
    assert (await client.get(SOURCES, headers=auth)).json()["items"] == []


@pytest.mark.parametrize(
    "config",
    [
        {"account_url": "http://127.0.0.1:10000/devstoreaccount1", "anonymous": True},
        {"account_url": "http://169.254.169.254/metadata", "anonymous": True},
        {
            "connection_string": "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;"
            "BlobEndpoint=http://169.254.169.254/latest;"
        },
        {"container_sas_url": "http://10.0.0.8/acct/ccc?sv=2024-01-01&sp=rl&sig=x"},
    ],
)
async def test_internal_storage_endpoints_are_refused(
    strict: tuple[httpx.AsyncClient, dict[str, str]], config: dict[str, Any]
) -> None:
    client, auth = strict
    source_config = {"container_name": "ccc", **config}
    if "container_sas_url" in config:
        source_config.pop("container_name")
    body = {"name": "az", "type": "azure_blob", "config": source_config}
    response = await client.post(SOURCES, json=body, headers=auth)
    assert response.status_code == 403, response.text


async def test_local_folders_need_an_operator_root(
    strict: tuple[httpx.AsyncClient, dict[str, str]], tmp_path: Path
) -> None:
    client, auth = strict
    for root in ("/", "/etc", str(tmp_path)):
        response = await client.post(
            SOURCES, json={"name": "f", "type": "local_folder", "config": {"root": root}},
            headers=auth,
        )  # fmt: skip
        assert response.status_code == 403, root


async def test_allowed_hosts_and_roots_open_exactly_what_they_name(tmp_path: Path) -> None:
    dsn = require_service("DATASOURCES_TEST_POSTGRES_DSN")
    host_port = dsn.split("@", 1)[1].split("/", 1)[0]
    host, _, port = host_port.partition(":")
    (tmp_path / "allowed" / "sub").mkdir(parents=True)
    settings = Settings(
        home=tmp_path / "home",
        allowed_hosts=[host],
        allow_privileged_database_roles=True,  # the test server's DSN is its superuser
        local_folder_roots=[tmp_path / "allowed"],
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0),
    )
    async for client, auth in served(settings):
        pg = {"name": "pg", "type": "postgresql", "config": {"dsn": dsn}}
        created = await client.post(SOURCES, json=pg, headers=auth)
        assert created.status_code == 201, created.text
        query = await client.post(
            f"{SOURCES}/pg/query", json={"sql": "SELECT 1 AS one"}, headers=auth
        )
        assert query.status_code == 200 and query.json()["rows"] == [[1]]
        # An address entry allows that address whatever name leads there, and no other.
        other = _pg("127.0.0.2", int(port or 5432))
        assert (await client.post(SOURCES, json=other, headers=auth)).status_code == 403
        same = _pg("localhost", int(port or 5432)) | {"name": "pg-by-name"}
        assert (await client.post(SOURCES, json=same, headers=auth)).status_code == 201
        ok = {
            "name": "f",
            "type": "local_folder",
            "config": {"root": str(tmp_path / "allowed" / "sub")},
        }
        assert (await client.post(SOURCES, json=ok, headers=auth)).status_code == 201
        escape = {"name": "g", "type": "local_folder",
                  "config": {"root": str(tmp_path / "allowed" / ".." / "home")}}  # fmt: skip
        assert (await client.post(SOURCES, json=escape, headers=auth)).status_code == 403
        # Moving an allowed source somewhere refused is refused too.
        moved = await client.patch(
            f"{SOURCES}/pg", json={"config": {"dsn": None, "host": "10.0.0.1", "port": 5432,
                                              "database": "x", "user": "u"}},
            headers=auth,
        )  # fmt: skip
        assert moved.status_code == 403, moved.text


# -- redirects: a permitted endpoint cannot hand a request on ----------------------------

MARKER = "internal-body-that-must-not-reach-the-caller"


def _serve(app: Any, host: str) -> tuple[str, Any]:
    """A real uvicorn server on ``host`` in a thread; its base URL and a stop function."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as sock:
        sock.bind((host, 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(app, host=host, port=port, log_config=None, lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        threading.Event().wait(0.01)
    assert server.started

    def stop() -> None:
        server.should_exit = True
        thread.join(10)

    return f"http://{host}:{port}", stop


def _blob_headers(content_type: str, size: int) -> dict[str, str]:
    return {
        "Content-Length": str(size),
        "Content-Type": content_type,
        "ETag": '"0x8D0000000000001"',
        "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT",
        "x-ms-blob-type": "BlockBlob",
        "x-ms-version": "2024-08-04",
        "x-ms-creation-time": "Mon, 01 Jan 2024 00:00:00 GMT",
    }


def _internal_app() -> Any:
    """What an internal service would answer: every body and header carries the marker."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    listing = (
        '<?xml version="1.0" encoding="utf-8"?><EnumerationResults><Blobs><Blob>'
        f"<Name>{MARKER}.csv</Name><Properties><Content-Length>{len(MARKER)}</Content-Length>"
        "<Last-Modified>Mon, 01 Jan 2024 00:00:00 GMT</Last-Modified></Properties>"
        "</Blob></Blobs><NextMarker /></EnumerationResults>"
    )

    async def anything(request: Request) -> Response:
        headers = _blob_headers(f"text/{MARKER}", len(MARKER))
        if request.method == "HEAD":
            return Response(b"", headers=headers)
        if request.query_params.get("comp") == "list":
            return Response(listing.encode(), media_type="application/xml")
        return Response(MARKER.encode(), headers=headers)

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "HEAD", "PUT"])])


def _redirecting_app(status: int, target: str, *, redirect_head: bool) -> Any:
    """A storage endpoint the policy allows, which sends every request to ``target``."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def anything(request: Request) -> Response:
        if request.method == "HEAD" and not redirect_head:
            return Response(b"", headers=_blob_headers("text/plain", len(MARKER)))
        location = f"{target}{request.url.path}"
        if request.url.query:
            location += f"?{request.url.query}"
        return Response(b"", status_code=status, headers={"Location": location})

    return Starlette(routes=[Route("/{path:path}", anything, methods=["GET", "HEAD", "PUT"])])


@pytest.mark.parametrize("status", [301, 302, 307, 308])
@pytest.mark.parametrize("redirect_head", [False, True], ids=["get", "head-too"])
async def test_redirects_from_an_allowed_endpoint_are_not_followed(
    tmp_path: Path, status: int, redirect_head: bool
) -> None:
    # The internal service listens on 127.0.0.2, which the policy does not allow; the
    # storage endpoint on 127.0.0.1 is allowed by its address.
    internal, stop_internal = _serve(_internal_app(), "127.0.0.2")
    endpoint, stop_endpoint = _serve(
        _redirecting_app(status, internal, redirect_head=redirect_head), "127.0.0.1"
    )
    settings = Settings(
        home=tmp_path / "home",
        allowed_hosts=["127.0.0.1"],
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0),
    )
    try:
        async for client, auth in served(settings):
            body = {
                "name": "az",
                "type": "azure_blob",
                "config": {
                    "account_url": f"{endpoint}/acct",
                    "anonymous": True,
                    "container_name": "ccc",
                },
            }
            created = await client.post(SOURCES, json=body, headers=auth)
            assert created.status_code == 201, created.text
            responses = [
                await client.get(f"{SOURCES}/az/items", headers=auth),
                await client.get(f"{SOURCES}/az/items?glob=**", headers=auth),
                await client.get(f"{SOURCES}/az/metadata?path=blob.csv", headers=auth),
                await client.get(f"{SOURCES}/az/download?path=blob.csv", headers=auth),
                await client.post(f"{SOURCES}/az/test", headers=auth),
            ]
            for response in responses:
                assert MARKER not in response.text, (response.request.url, response.text)
                assert MARKER not in str(response.headers)
            refused = responses[:4] if redirect_head else [*responses[:2], responses[3]]
            for response in refused:
                assert response.status_code == 403, (response.request.url, response.text)
                assert "redirect" in response.json()["detail"]
            assert responses[4].json()["ok"] is False
            # Ranged GETs into a chat's workspace (fetch_data) stop at the redirect too.
            chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
            message = {
                "content": "look",
                "data_source_refs": [{"data_source_id": "az", "path": "blob.csv"}],
            }
            posted = await client.post(f"/api/v1/chats/{chat}/messages", json=message, headers=auth)
            assert MARKER not in posted.text
            assert "redirect" in posted.text, posted.text
            files = await client.get(f"/api/v1/chats/{chat}/files", headers=auth)
            assert files.status_code == 200 and MARKER not in files.text
            assert files.json()["items"] == []
    finally:
        stop_endpoint()
        stop_internal()


# -- ambient identity: the operator's, not an API user's ---------------------------------


async def test_the_services_own_identity_is_refused_over_the_api(tmp_path: Path) -> None:
    allowed_account = "https://20.60.1.1/acct"  # an address: no DNS needed here
    settings = Settings(
        home=tmp_path / "home",
        ambient_identity_accounts=[allowed_account + "/"],
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0),
    )

    def body(name: str, account_url: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "azure_blob",
            "config": {
                "account_url": account_url,
                "use_default_credential": True,
                "container_name": "abc",
            },
        }

    async for client, auth in served(settings):
        refused = await client.post(SOURCES, json=body("a", "https://20.60.9.9"), headers=auth)
        assert refused.status_code == 403, refused.text
        assert "DATASOURCES_AMBIENT_IDENTITY_ACCOUNTS" in refused.json()["detail"]
        named = await client.post(SOURCES, json=body("b", allowed_account), headers=auth)
        assert named.status_code == 201, named.text
        # Moving an allowed source to another account is a new request for the identity.
        moved = await client.patch(
            f"{SOURCES}/b", json={"config": {"account_url": "https://20.60.9.9"}}, headers=auth
        )
        assert moved.status_code == 403, moved.text
        # A source that had a key cannot switch to the ambient identity either.
        keyed = {
            "name": "c",
            "type": "azure_blob",
            "config": {
                "account_url": "https://20.60.9.9",
                "account_key": "a2V5",
                "container_name": "abc",
            },
        }
        assert (await client.post(SOURCES, json=keyed, headers=auth)).status_code == 201
        switched = await client.patch(
            f"{SOURCES}/c",
            json={"config": {"account_key": None, "use_default_credential": True}},
            headers=auth,
        )
        assert switched.status_code == 403, switched.text
    without = Settings(
        home=tmp_path / "home2",
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0),
        allow_private_networks=True,  # opening the network does not open the identity
    )
    async for client, auth in served(without):
        refused = await client.post(SOURCES, json=body("a", allowed_account), headers=auth)
        assert refused.status_code == 403, refused.text


# -- allow-list entries: names by pattern, addresses by address ---------------------------


async def test_a_name_pattern_does_not_open_loopback(tmp_path: Path) -> None:
    dsn = require_service("DATASOURCES_TEST_POSTGRES_DSN")
    port = int(dsn.split("@", 1)[1].split("/", 1)[0].partition(":")[2] or 5432)
    settings = Settings(
        home=tmp_path / "home",
        allowed_hosts=["local*"],  # matches "localhost", which resolves to 127.0.0.1
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0),
    )
    async for client, auth in served(settings):
        response = await client.post(SOURCES, json=_pg("localhost", port), headers=auth)
        assert response.status_code == 403, response.text
        assert "loopback" in response.json()["detail"]


async def test_the_azure_session_refuses_redirects_even_where_a_call_forgets_to() -> None:
    """The session-wide backstop: a request sent with aiohttp's default
    (allow_redirects=True) still stops at the first redirect."""
    from datasources.connectors.azure_blob import AzureBlobConnector
    from datasources.errors import PermissionDeniedError
    from datasources.netpolicy import OutboundPolicy

    internal, stop_internal = _serve(_internal_app(), "127.0.0.2")
    endpoint, stop_endpoint = _serve(
        _redirecting_app(302, internal, redirect_head=True), "127.0.0.1"
    )
    connector = AzureBlobConnector(
        {"account_url": f"{endpoint}/acct", "anonymous": True, "container_name": "ccc"},
        outbound=OutboundPolicy(allowed_hosts=["127.0.0.1"]),
    )
    try:
        async with connector:
            with pytest.raises(PermissionDeniedError, match="redirect"):
                async with connector._session.get(f"{endpoint}/acct/ccc/x") as response:
                    await response.read()
    finally:
        stop_endpoint()
        stop_internal()
