"""One live connector per source: opened once, shared, closed on change, removal and close."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, ClassVar

import pytest

from datasources import DataSourceRegistry
from datasources.config import PoolSettings
from datasources.connectors.local_folder import LocalFolderConnector
from datasources.credentials import CredentialManager
from datasources.store import Store
from tests.waiting import eventually


class CountingFolder(LocalFolderConnector):
    """A local folder that counts how often it is connected and closed."""

    type: ClassVar[str] = "counting_folder"
    connects: ClassVar[int] = 0
    disconnects: ClassVar[int] = 0

    async def connect(self) -> None:
        await asyncio.sleep(0.01)  # a connect that yields, as a network one does
        type(self).connects += 1
        await super().connect()

    async def disconnect(self) -> None:
        if self.connected:
            type(self).disconnects += 1
        await super().disconnect()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    (path / "a.csv").write_text("x\n1\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.csv").write_text("y\n2\n")
    return path


@pytest.fixture
async def registry(folder: Path) -> Any:
    CountingFolder.connects = CountingFolder.disconnects = 0
    async with DataSourceRegistry() as registry:
        registry.register_connector_class("counting_folder", CountingFolder)
        await registry.register_data_source(
            {"id": "f", "name": "F", "type": "counting_folder", "config": {"root": str(folder)}}
        )
        yield registry


async def test_concurrent_first_uses_open_one_connector(registry: DataSourceRegistry) -> None:
    async def use(ref: str) -> int:
        async with registry.get_connector(ref) as connector:
            await connector.list_items()
            return id(connector)

    seen = await asyncio.gather(*(use("f" if i % 2 else "F") for i in range(50)))
    handed = await asyncio.gather(*(registry.get_connector("f") for _ in range(10)))
    assert len(set(seen) | {id(c) for c in handed}) == 1
    assert CountingFolder.connects == 1
    stats = registry.pool_stats()["local/f"]
    assert stats.acquisitions == 60 and stats.in_use == 0 and stats.type == "counting_folder"


async def test_a_user_cannot_close_the_shared_connector(registry: DataSourceRegistry) -> None:
    shared = await registry.get_connector("f")
    await shared.disconnect()
    async with shared:  # connect() and disconnect() by a user: both harmless
        pass
    assert shared.connected and CountingFolder.disconnects == 0
    async with registry.get_connector("f") as borrowed:
        assert borrowed is shared and [i.path for i in await borrowed.list_items()] == ["a.csv"]
    # A connector built by hand is its caller's, and disconnect() closes it.
    own = CountingFolder({"root": str(shared.config.root)})
    await own.connect()
    await own.disconnect()
    assert not own.connected and not own.shared


async def test_an_update_closes_the_old_connector_after_its_borrowers(
    registry: DataSourceRegistry, folder: Path
) -> None:
    other = folder.parent / "other"
    async with registry.get_connector("f") as old:
        await registry.update_data_source("f", {"config": {"root": str(other)}})
        # The borrower in flight finishes on the connector it has.
        assert old.connected and [i.path for i in await old.list_items()] == ["a.csv"]
        async with registry.get_connector("f") as new:
            assert new is not old and [i.path for i in await new.list_items()] == ["b.csv"]
        assert old.connected
    assert not old.connected and CountingFolder.disconnects == 1
    assert list(registry.pool_stats()) == ["local/f"]


async def test_removal_closes_at_once_when_nobody_borrows(registry: DataSourceRegistry) -> None:
    connector = await registry.get_connector("f")
    await registry.remove_data_source("f")
    assert not connector.connected and registry.pool_stats() == {}


async def test_closing_the_registry_lets_a_borrower_finish(registry: DataSourceRegistry) -> None:
    entered = asyncio.Event()
    release = asyncio.Event()

    async def borrower() -> list[str]:
        async with registry.get_connector("f") as connector:
            entered.set()
            await release.wait()
            return [i.path for i in await connector.list_items()]

    task = asyncio.create_task(borrower())
    await entered.wait()
    closing = asyncio.create_task(registry.close())
    await asyncio.sleep(0)  # close() is waiting for the borrower now
    assert not closing.done()
    release.set()
    assert await task == ["a.csv"]
    await closing
    assert CountingFolder.disconnects == 1


async def test_a_change_in_another_replica_replaces_the_connector(
    tmp_path: Path, folder: Path
) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'shared.db'}"
    key = CredentialManager.ephemeral()
    settings = PoolSettings(revalidate_after=0)  # every borrow asks the store
    here = DataSourceRegistry(store=Store(url), credentials=key, pool_settings=settings)
    there = DataSourceRegistry(store=Store(url), credentials=key, pool_settings=settings)
    async with here, there:
        await here.register_data_source(
            {"id": "f", "name": "F", "type": "local_folder", "config": {"root": str(folder)}}
        )
        first = await here.get_connector("f")
        await there.update_data_source("f", {"config": {"root": str(folder.parent / "other")}})
        async with here.get_connector("F") as second:
            assert second is not first
            assert [i.path for i in await second.list_items()] == ["b.csv"]
        await eventually(lambda: not first.connected, what="the outdated connector closes")
