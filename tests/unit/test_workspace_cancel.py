"""A writer cancelled at any await (even while its temp file is being made) leaves nothing."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from datasources.workspace import Workspace


async def _write(workspace: Workspace, name: str) -> None:
    async with workspace.writer(name) as writer:
        await writer.write(b"x" * 10)
        await asyncio.sleep(10)


async def test_a_cancelled_writer_leaves_no_temp_file(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    leaks = 0
    for attempt in range(300):
        task = asyncio.create_task(_write(workspace, f"f{attempt}.bin"))
        # Cancelled after 0..6 loop turns: before, during and after the temp file is made.
        for _ in range(attempt % 7):
            await asyncio.sleep(0)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        leaks += len(list(workspace.tmp_dir.iterdir())) if workspace.tmp_dir.exists() else 0
    assert leaks == 0
