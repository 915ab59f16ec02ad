"""Faults on the wire, made by a loopback proxy (tests/faults.py) between us and a server.

Each case breaks a transfer while it runs and checks what the caller sees (a clear
error), what is left on disk (nothing partial) and that the next call succeeds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from datasources.connectors.azure_blob import AzureBlobConnector
from datasources.errors import DataSourceError
from tests.faults import FaultProxy

pytestmark = pytest.mark.integration

SIZE = 24 * 1024 * 1024


def _through(proxy: FaultProxy, azurite: dict[str, str]) -> str:
    url = azurite["url"]
    parts = urlsplit(url)
    proxied = url.replace(parts.netloc, f"{proxy.host}:{proxy.port}")
    return azurite["connection_string"].replace(url, proxied)


@pytest.fixture
async def big_blob(container: Any) -> bytes:
    payload = os.urandom(SIZE)
    await container.upload_blob("big.bin", payload, overwrite=True, max_concurrency=4)
    return payload


def _left_behind(workspace: Path) -> list[str]:
    tmp = workspace / ".datasources" / "tmp"
    names = [p.name for p in tmp.iterdir()] if tmp.exists() else []
    return names + (["big.bin"] if (workspace / "big.bin").exists() else [])


@contextlib.asynccontextmanager
async def _proxied_fetch(
    azurite: dict[str, str], container: Any, workspace: Path, *, timeout: float
) -> AsyncIterator[tuple[FaultProxy, AzureBlobConnector, asyncio.Task[Path]]]:
    """A connector behind a throttled proxy, its fetch of big.bin under way (2 MiB in)."""
    host, port = urlsplit(azurite["url"]).netloc.split(":")
    async with FaultProxy(host, int(port)) as proxy:
        proxy.throttle(8 * 1024 * 1024)  # slow enough to break it half-way
        config = {
            "connection_string": _through(proxy, azurite),
            "container_name": container.container_name,
            "chunk_size": 4 * 1024 * 1024,
            "max_concurrency": 2,
            "timeout": timeout,
        }
        async with AzureBlobConnector(config, source_id="faulty") as connector:
            fetch = asyncio.create_task(connector.fetch_data("big.bin", workspace))
            await proxy.wait_for_bytes(down=2 * 1024 * 1024)
            yield proxy, connector, fetch


async def _fails_cleanly(fetch: asyncio.Task[Path], workspace: Path) -> None:
    with pytest.raises(DataSourceError) as info:
        # Bounded by the source's own timeout and retries, not by this one.
        async with asyncio.timeout(120):
            await fetch
    assert info.value.transient, info.value
    assert _left_behind(workspace) == []


@pytest.mark.parametrize("fault", ["reset", "cut"])
async def test_azure_connection_broken_mid_download(
    fault: str, azurite: dict[str, str], container: Any, big_blob: bytes, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    async with _proxied_fetch(azurite, container, workspace, timeout=5) as (proxy, conn, fetch):
        proxy.refuse()  # retries find nobody either
        proxy.reset() if fault == "reset" else proxy.cut()
        await _fails_cleanly(fetch, workspace)
        proxy.heal()
        local = await conn.fetch_data("big.bin", workspace)
        assert local.read_bytes() == big_blob


async def test_azure_stalled_mid_download_times_out(
    azurite: dict[str, str], container: Any, big_blob: bytes, tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    async with _proxied_fetch(azurite, container, workspace, timeout=2) as (proxy, conn, fetch):
        proxy.stall()
        await _fails_cleanly(fetch, workspace)
        proxy.cut()
        proxy.heal()
        local = await conn.fetch_data("big.bin", workspace)
        assert local.read_bytes() == big_blob


async def test_azurite_restarted_under_an_open_source(tmp_path: Path) -> None:
    """The emulator stops and starts again while a source's connector (and its HTTP
    session's kept-alive connections) stays open: the next listing and fetch just work."""
    from azure.storage.blob.aio import BlobServiceClient

    from datasources import DataSourceRegistry
    from tests.servers import private_azurite

    payload = os.urandom(3 * 1024 * 1024)
    async with private_azurite() as server:

        async def seed() -> None:
            service = BlobServiceClient.from_connection_string(server.connection_string)
            async with service:
                container = service.get_container_client("lake")
                if not await container.exists():
                    await container.create_container()
                for name in ("a.csv", "big.bin"):
                    blob = container.get_blob_client(name)
                    if not await blob.exists():
                        data = b"x,y\n1,2\n" if name == "a.csv" else payload
                        await blob.upload_blob(data)

        await seed()
        registry = DataSourceRegistry()
        await registry.register_data_source(
            {
                "id": "lake",
                "name": "lake",
                "type": "azure_blob",
                "config": {
                    "connection_string": server.connection_string,
                    "container_name": "lake",
                    "chunk_size": 1024 * 1024,
                    "timeout": 5,
                },
            }
        )
        try:
            connector = await registry.get_connector("lake")  # the seed's way
            assert [i.path for i in await connector.list_items()] == ["a.csv", "big.bin"]
            await connector.fetch_data("big.bin", tmp_path / "before")

            await server.restart()
            await seed()  # whatever the emulator did not keep on disk

            assert [i.path for i in await connector.list_items()] == ["a.csv", "big.bin"]
            local = await connector.fetch_data("big.bin", tmp_path / "after")
            assert local.read_bytes() == payload
            async with registry.get_connector("lake") as borrowed:
                assert borrowed is connector
                assert (await borrowed.get_metadata("a.csv")).size == 8
        finally:
            await registry.close()
