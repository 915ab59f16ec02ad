"""A blob replaced *during* a fetch is never stitched from two versions (real Azurite).

The fetch downloads in ranges, each asking for the version it described (``If-Match``).
Here the blob is overwritten from inside the progress callback, right after the first
bytes of the first range have landed and before the next range is asked for — a
deterministic point in the middle of the transfer. The result is one whole version (the
new one, fetched again) or, when the blob keeps changing, a clear error with nothing
partial left.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from datasources.connectors.azure_blob import AzureBlobConnector
from datasources.errors import IntegrityError
from datasources.workspace import Workspace

pytestmark = pytest.mark.integration

SIZE = 4 * 1024 * 1024
CHUNK = 256 * 1024  # the smallest range the connector allows: 16 ranges


def _versions(n: int) -> list[bytes]:
    return [bytes([ord("a") + i]) * SIZE for i in range(n)]


@pytest.fixture
def overwrite(azurite: dict[str, str], container: Any) -> Callable[[str, bytes], None]:
    """A blocking overwrite: it completes before the fetch's next range is requested."""
    from azure.storage.blob import BlobClient

    def put(name: str, data: bytes) -> None:
        client = BlobClient.from_connection_string(
            azurite["connection_string"], container.container_name, name
        )
        with client:
            client.upload_blob(data, overwrite=True)

    return put


def _connector(azurite: dict[str, str], container: Any) -> AzureBlobConnector:
    config = {
        "connection_string": azurite["connection_string"],
        "container_name": container.container_name,
        "chunk_size": CHUNK,
        "max_concurrency": 1,
    }
    return AzureBlobConnector(config, source_id="azure-test")


async def test_a_blob_replaced_mid_fetch_arrives_as_one_whole_version(
    azurite: dict[str, str],
    container: Any,
    overwrite: Callable[[str, bytes], None],
    tmp_path: Path,
) -> None:
    one, two = _versions(2)
    await container.upload_blob("v.bin", one)
    replaced_at: list[int] = []
    calls: list[int] = []

    def progress(done: int, total: int | None) -> None:
        calls.append(done)
        if done > 0 and not replaced_at:
            replaced_at.append(done)
            overwrite("v.bin", two)

    workspace = Workspace(tmp_path / "ws")
    async with _connector(azurite, container) as connector:
        local = await connector.fetch_data("v.bin", workspace, progress=progress)
        current = await connector.get_metadata("v.bin")
    # Replaced in the middle: after the first bytes, long before the end.
    assert replaced_at and 0 < replaced_at[0] <= CHUNK < SIZE
    assert calls.count(0) >= 2, "the fetch did not start again on the new version"
    data = local.read_bytes()
    assert data == two, f"stitched: {sorted(set(data))!r}"
    entry = workspace.lookup("v.bin")
    assert entry is not None and entry.etag == current.etag
    assert entry.sha256 == hashlib.sha256(two).hexdigest()
    assert not list(workspace.tmp_dir.iterdir())


async def test_a_blob_that_keeps_changing_is_a_clear_error_and_leaves_nothing(
    azurite: dict[str, str],
    container: Any,
    overwrite: Callable[[str, bytes], None],
    tmp_path: Path,
) -> None:
    versions = _versions(6)
    await container.upload_blob("v.bin", versions[0])
    replaced = 0
    overwritten_this_attempt = False

    def progress(done: int, total: int | None) -> None:
        nonlocal replaced, overwritten_this_attempt
        if done == 0:
            overwritten_this_attempt = False  # a new attempt starts
        elif not overwritten_this_attempt:
            overwritten_this_attempt = True
            replaced += 1
            overwrite("v.bin", versions[replaced])

    workspace = Workspace(tmp_path / "ws")
    async with _connector(azurite, container) as connector:
        with pytest.raises(IntegrityError) as info:
            await connector.fetch_data("v.bin", workspace, progress=progress)
    assert "changing" in info.value.message
    assert replaced >= 2
    assert list(workspace.iter_files()) == []
    assert not list(workspace.tmp_dir.iterdir())
    assert workspace.manifest() == {}


async def test_a_stream_replaced_mid_way_is_one_version_or_an_error(
    azurite: dict[str, str],
    container: Any,
    overwrite: Callable[[str, bytes], None],
) -> None:
    one, two = _versions(2)
    await container.upload_blob("v.bin", one)
    received = bytearray()
    async with _connector(azurite, container) as connector:
        stream = await connector.open_stream("v.bin")
        try:
            async for chunk in stream.chunks():
                if not received:
                    overwrite("v.bin", two)
                received += chunk
        except IntegrityError:
            assert len(received) < SIZE  # an error, never a stitched whole
            return
    assert bytes(received) in (one, two), f"stitched: {sorted(set(received))!r}"
