"""Azure retries transient failures with a short exponential backoff
(docs/connectors/azure_blob.md: 408/429/5xx and connection errors, three retries,
0.2 s doubling, jittered). A loopback proxy in front of the real Azurite answers 503 to
the first requests of a kind and forwards the rest; it records when each arrived."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from datasources.connectors.azure_blob import AzureBlobConnector
from datasources.errors import UnavailableError

pytestmark = pytest.mark.integration


@dataclass
class FlakyProxy:
    upstream: str
    failures: dict[str, int] = field(default_factory=dict)
    """How many requests of a kind ('HEAD', 'GET range', 'GET list') to answer with 503."""
    seen: dict[str, list[float]] = field(default_factory=dict)
    port: int = 0

    @staticmethod
    def kind(request: web.Request) -> str:
        if request.method == "GET" and "comp=list" in request.query_string:
            return "GET list"
        if request.method == "GET" and "x-ms-range" in request.headers:
            return "GET range"
        return request.method

    async def handle(self, request: web.Request) -> web.StreamResponse:
        kind = self.kind(request)
        times = self.seen.setdefault(kind, [])
        times.append(time.monotonic())
        if len(times) <= self.failures.get(kind, 0):
            return web.Response(status=503, text="try again")
        headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
        # Forwarded as signed: no header added on the way (Content-Type is signed).
        async with (
            aiohttp.ClientSession(auto_decompress=False) as session,
            session.request(
                request.method,
                self.upstream + request.rel_url.raw_path_qs,
                headers=headers,
                data=(await request.read()) or None,
                allow_redirects=False,
                skip_auto_headers={"Content-Type", "Accept-Encoding", "User-Agent"},
            ) as upstream,
        ):
            body = await upstream.read()
            dropped = ["transfer-encoding", "connection"]
            if request.method != "HEAD":  # a HEAD's Content-Length is the blob's size
                dropped.append("content-length")
            out = {k: v for k, v in upstream.headers.items() if k.lower() not in dropped}
            if request.method == "HEAD":
                return web.Response(status=upstream.status, headers=out)
            return web.Response(status=upstream.status, body=body, headers=out)

    def gaps(self, kind: str) -> list[float]:
        times = self.seen.get(kind, [])
        return [b - a for a, b in itertools.pairwise(times)]


@pytest.fixture
async def proxy(azurite: dict[str, str]) -> AsyncIterator[FlakyProxy]:
    upstream = azurite["url"].rsplit("/", 1)[0]  # http://127.0.0.1:10000
    flaky = FlakyProxy(upstream)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", flaky.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    flaky.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield flaky
    finally:
        await runner.cleanup()


def _through(proxy: FlakyProxy, azurite: dict[str, str], container: Any) -> AzureBlobConnector:
    account = azurite["url"].rsplit("/", 1)[1]
    connection_string = (
        f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={azurite['key']};"
        f"BlobEndpoint=http://127.0.0.1:{proxy.port}/{account};"
    )
    config = {"connection_string": connection_string, "container_name": container.container_name,
              "chunk_size": 256 * 1024, "max_concurrency": 1}  # fmt: skip
    return AzureBlobConnector(config, source_id="flaky")


def _exponential(gaps: list[float]) -> None:
    # Lower bounds only (a loaded machine can only make a wait longer): each retry waits
    # at least 0.8 x 0.2 s x 2^i, the jitter's floor.
    assert len(gaps) >= 3, gaps
    for i, gap in enumerate(gaps[:3]):
        assert gap >= 0.8 * 0.2 * 2**i * 0.95, gaps


async def test_metadata_requests_are_retried_with_backoff(
    proxy: FlakyProxy, azurite: dict[str, str], container: Any
) -> None:
    await container.upload_blob("a.txt", b"hello")
    proxy.failures = {"HEAD": 3}
    async with _through(proxy, azurite, container) as connector:
        item = await connector.get_metadata("a.txt")
    assert item.size == 5
    assert len(proxy.seen["HEAD"]) == 4  # three 503s, then the answer
    _exponential(proxy.gaps("HEAD"))


async def test_ranges_are_retried_with_backoff(
    proxy: FlakyProxy, azurite: dict[str, str], container: Any, tmp_path: Path
) -> None:
    data = bytes(range(256)) * 4096  # 1 MiB: four ranges
    await container.upload_blob("big.bin", data)
    proxy.failures = {"GET range": 3}
    async with _through(proxy, azurite, container) as connector:
        local = await connector.fetch_data("big.bin", tmp_path / "ws")
    assert local.read_bytes() == data
    assert len(proxy.seen["GET range"]) == 4 + 3
    _exponential(proxy.gaps("GET range")[:3])


async def test_a_failure_that_outlasts_the_retries_is_a_clear_error(
    proxy: FlakyProxy, azurite: dict[str, str], container: Any, tmp_path: Path
) -> None:
    await container.upload_blob("big.bin", b"x" * 1000)
    proxy.failures = {"GET range": 100}
    async with _through(proxy, azurite, container) as connector:
        with pytest.raises(UnavailableError) as info:
            await connector.fetch_data("big.bin", tmp_path / "ws")
    assert "stopped answering" in info.value.message
    assert len(proxy.seen["GET range"]) == 4  # the first try and three retries, no more
    assert not list((tmp_path / "ws" / ".datasources" / "tmp").iterdir())
