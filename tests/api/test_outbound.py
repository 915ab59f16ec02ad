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
    body = {"name": "az", "type": "azure_blob", "config": {"container_name": "ccc", **config}}
    if "container_sas_url" in config:
        body["config"].pop("container_name")
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
        other = _pg("localhost", int(port or 5432))  # same machine, another name: refused
        assert (await client.post(SOURCES, json=other, headers=auth)).status_code == 403
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
