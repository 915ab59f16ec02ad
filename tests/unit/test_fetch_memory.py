"""A fetch streams into the workspace and never holds the file whole (README: "Data is
streamed into a workspace, never held whole in memory"). The peak is measured from a
reset (tests/memory.py), so an earlier test's peak in this process cannot hide it."""

from __future__ import annotations

import os
from pathlib import Path

from datasources.connectors.local_folder import LocalFolderConnector
from datasources.workspace import Workspace
from tests.memory import PeakGrowth

SIZE = 192 * 1024 * 1024


async def test_a_fetch_streams_and_never_holds_the_file_whole(tmp_path: Path) -> None:
    source = tmp_path / "source"
    source.mkdir()
    os.truncate(_create(source / "big.bin"), SIZE)  # sparse: zeros when read, no disk used
    workspace = Workspace(tmp_path / "ws", durable=False)
    async with LocalFolderConnector({"root": str(source), "max_download_bytes": None}) as connector:
        with PeakGrowth() as peak:
            local = await connector.fetch_data("big.bin", workspace)
    assert local.stat().st_size == SIZE
    assert peak.mib < 48, f"peak RSS grew by {peak.mib:.0f} MiB for a {SIZE >> 20} MiB fetch"


def _create(path: Path) -> Path:
    path.touch()
    return path
