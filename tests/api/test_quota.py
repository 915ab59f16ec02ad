"""The chat's quota over HTTP while a file is written: a file that grows after the chat
listed it is stopped by the quota part-way through, and nothing partial is kept."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from datasources.connectors.local_folder import LocalFolderConnector
from tests.api.conftest import make_settings, served

pytestmark = [pytest.mark.api, pytest.mark.integration]

SOURCES = "/api/v1/datasources"
CHATS = "/api/v1/chats"


async def test_the_quota_stops_a_file_that_grew_after_listing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    grows = data / "grows.bin"
    grows.write_bytes(b"x" * 1000)  # listed at 1000 bytes, under the 1500-byte quota
    grown = 200 * 4096
    read: list[int] = []
    real_read = LocalFolderConnector.open_stream

    async def counting_stream(self: LocalFolderConnector, path: str) -> Any:
        if path == "grows.bin" and grows.stat().st_size == 1000:
            grows.write_bytes(b"y" * grown)  # grown after every size check, before the read
        stream = await real_read(self, path)
        inner = stream.chunks

        async def chunks() -> Any:
            async for chunk in inner():
                read.append(len(chunk))
                yield chunk

        return type(stream)(stream.item, chunks, stream.media_type, stream.size)

    monkeypatch.setattr(LocalFolderConnector, "open_stream", counting_stream)
    settings = make_settings(tmp_path)
    settings = settings.model_copy(
        update={"sandbox_limits": settings.sandbox_limits.model_copy(
            update={"workspace_quota_bytes": 1500})}
    )  # fmt: skip
    async for client, headers in served(settings):
        folder = {"name": "f", "type": "local_folder",
                  "config": {"root": str(data), "chunk_size": 4096}}  # fmt: skip
        assert (await client.post(SOURCES, json=folder, headers=headers)).status_code == 201
        chat = (await client.post(CHATS, json={}, headers=headers)).json()["id"]
        reply = await client.post(f"{CHATS}/{chat}/messages", json={"content": "@f:grows.bin"},
                                  headers=headers)  # fmt: skip
        parts = reply.json()["reply"]["parts"]
        assert parts[0]["type"] == "error" and parts[0]["name"] == "limit_exceeded", parts
        assert "1500 bytes" in parts[0]["text"]
        files = (await client.get(f"{CHATS}/{chat}/files", headers=headers)).json()["items"]
        assert files == []
        workspace = settings.workspaces_dir / chat / "data"
        left = [p for p in workspace.rglob("*") if p.is_file() and p.name != "manifest.jsonl"]
        assert left == []
    # The fetch really started (it was not refused on the listed size) and stopped early.
    assert read and sum(read) < grown / 4, sum(read)
