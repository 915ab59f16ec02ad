"""A borrow that read a source just before it changed must not bring the old one back.

Found by review: a first borrow reads the source from the store, and while it waits for
the source's lock (or connects) an update or a removal runs to its end. The borrow then
opened a connector from the record it had read — the old host, credentials, root or
``read_only`` — and put it in the map as freshly checked, so every borrower for the next
``revalidate_after`` seconds got the configuration the update had just replaced; a
removed source's connector stayed open for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from datasources import DataSourceRegistry
from datasources.store import StoredSource


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "old.csv").write_text("x\n1\n")
    (new / "new.csv").write_text("y\n2\n")
    return old, new


@pytest.fixture
async def registry(folders: tuple[Path, Path]) -> AsyncIterator[DataSourceRegistry]:
    async with DataSourceRegistry() as registry:
        await registry.register_data_source(
            {"id": "f", "name": "F", "type": "local_folder", "config": {"root": str(folders[0])}}
        )
        yield registry


def hold_next_read(registry: DataSourceRegistry) -> tuple[asyncio.Event, asyncio.Event]:
    """Make the next store read by id pause after reading, until ``go`` is set."""
    store = registry.store
    original = store.get
    read, go = asyncio.Event(), asyncio.Event()
    held = False

    async def get(owner: str, source_id: str) -> StoredSource | None:
        nonlocal held
        record = await original(owner, source_id)
        if not held:
            held = True
            read.set()
            await go.wait()
        return record

    store.get = get  # type: ignore[method-assign]
    return read, go


async def listed(registry: DataSourceRegistry) -> list[str]:
    async with registry.get_connector("f") as connector:
        return [item.path for item in await connector.list_items()]


async def test_an_update_is_not_undone_by_a_borrow_that_read_before_it(
    registry: DataSourceRegistry, folders: tuple[Path, Path]
) -> None:
    read, go = hold_next_read(registry)
    early = asyncio.create_task(listed(registry))
    await read.wait()  # it has the old record in hand
    await registry.update_data_source("f", {"config": {"root": str(folders[1])}})
    go.set()
    await early  # it began before the update: either answer is fair for it
    # Everyone after the update sees the new configuration, at once.
    assert await listed(registry) == ["new.csv"]
    stats = registry.pool_stats()
    assert list(stats) == ["local/f"]


async def test_a_removed_source_keeps_no_connector(registry: DataSourceRegistry) -> None:
    read, go = hold_next_read(registry)
    early: asyncio.Task[Any] = asyncio.create_task(listed(registry))
    await read.wait()
    await registry.remove_data_source("f")
    go.set()
    await asyncio.gather(early, return_exceptions=True)
    assert registry.pool_stats() == {}, "a connector of a removed source is still open"
