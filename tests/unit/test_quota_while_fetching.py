"""Limits hold *while* a file is written, not only against the size a source announced.

A source can list a file smaller than it turns out to be (it grew after listing, or the
source lies). The chat's byte budget and a source's ``max_download_bytes`` are checked
before a fetch against the listed size; these tests use a fake source whose listed size
is far below what it streams, and prove the write is stopped part-way through the
stream, with nothing partial left behind. (A fake connector: this is a unit test.)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from datasources.connectors.base import BaseConnector, ConnectorConfig, ProgressCallback
from datasources.errors import LimitExceededError
from datasources.models import ConnectionStatus, DataItem, ItemKind
from datasources.workspace import Workspace

CHUNK = 1000
CHUNKS = 50  # 50 kB really streamed


class UnderstatingSource(BaseConnector[ConnectorConfig]):
    """Lists every file as 10 bytes, then streams ``CHUNKS`` chunks of ``CHUNK`` bytes."""

    type: ClassVar[str] = "understating"
    config_model = ConnectorConfig

    def __init__(self, **config: Any) -> None:
        super().__init__(config)
        self.pulled = 0

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def test_connection(self) -> ConnectionStatus:
        return ConnectionStatus(ok=True)

    async def iter_items(self, *args: Any, **kwargs: Any) -> AsyncIterator[DataItem]:
        yield await self.get_metadata("big.bin")

    async def get_metadata(self, path: str) -> DataItem:
        return DataItem.trusted(path=path, name=path, kind=ItemKind.FILE, size=10, etag="e1")

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        item = await self.get_metadata(path)

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(CHUNKS):
                self.pulled += 1
                yield b"x" * CHUNK

        return await self.stream_into_workspace(
            path, workspace_dir, item=item, chunks=chunks, progress=progress
        )

    async def upload_data(self, *args: Any, **kwargs: Any) -> DataItem:
        raise NotImplementedError


def _assert_nothing_left(workspace: Workspace) -> None:
    assert list(workspace.iter_files()) == []
    assert list(workspace.tmp_dir.iterdir()) == []
    assert workspace.manifest() == {}


async def test_the_chat_budget_stops_a_file_larger_than_listed_mid_way(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    workspace.byte_budget = 3500
    source = UnderstatingSource()
    async with source:
        item = await source.get_metadata("big.bin")
        assert item.size is not None and item.size <= workspace.byte_budget  # passes before
        with pytest.raises(LimitExceededError) as info:
            await source.fetch_data("big.bin", workspace)
    assert info.value.details["limit_bytes"] == 3500
    # Stopped at the chunk that crossed the budget (plus the one read ahead), not at the end.
    assert 4 <= source.pulled <= 5 < CHUNKS
    _assert_nothing_left(workspace)
    assert workspace.byte_budget == 3500  # a refused file spends nothing


async def test_the_source_limit_stops_a_file_larger_than_listed_mid_way(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    source = UnderstatingSource(max_download_bytes=2500)
    async with source:
        with pytest.raises(LimitExceededError):
            await source.fetch_data("big.bin", workspace)
    assert 3 <= source.pulled <= 4 < CHUNKS
    _assert_nothing_left(workspace)
