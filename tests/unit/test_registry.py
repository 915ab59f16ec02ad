"""The registry on its in-memory store: registration, secrets, updates, connectors, plugins."""

from __future__ import annotations

from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

import pytest

from datasources import (
    AlreadyExistsError,
    ConfigurationError,
    DataSourceConfig,
    DataSourceRegistry,
    MissingDependencyError,
    MissingKeyError,
    NotFoundError,
    UnknownDataSourceTypeError,
)
from datasources.connectors.local_folder import LocalFolderConnector
from datasources.credentials import MASK, CredentialManager
from datasources.store import Store
from tests.plugins import TokenFolderConnector
from tests.waiting import eventually


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    (path / "a.csv").write_text("x\n1\n")
    return path


@pytest.fixture
async def registry() -> Any:
    async with DataSourceRegistry() as registry:
        registry.register_connector_class("token_folder", TokenFolderConnector)
        yield registry


def token_source(folder: Path, token: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "Tokened",
        "type": "token_folder",
        "config": {"root": str(folder), "token": token, "host": "a.example"},
        **extra,
    }


async def test_register_list_get(registry: DataSourceRegistry, folder: Path) -> None:
    created = await registry.register_data_source(
        DataSourceConfig(name="Sales Data (EU)", type="local_folder", config={"root": str(folder)})
    )
    assert created.id == "sales-data-eu"
    assert [s.id for s in await registry.list_data_sources()] == ["sales-data-eu"]
    assert (await registry.get_data_source("Sales Data (EU)")).id == "sales-data-eu"
    with pytest.raises(NotFoundError):
        await registry.get_data_source("nope")


async def test_secrets_are_masked_everywhere_but_on_request(
    registry: DataSourceRegistry, folder: Path, canary: str
) -> None:
    token = "valid-" + canary
    created = await registry.register_data_source(token_source(folder, token))
    assert created.config["token"] == MASK
    assert canary not in repr(created) + created.model_dump_json()
    listed = await registry.list_data_sources()
    assert canary not in str(listed)
    plain = await registry.get_data_source(created.id, sanitize=False)
    assert plain.config["token"] == token
    assert canary not in repr(plain)
    stored = await registry.store.get("local", created.id)
    assert (
        stored is not None
        and canary not in str(stored.secrets)
        and canary not in str(stored.config)
    )


async def test_bad_input_names_every_field(registry: DataSourceRegistry, folder: Path) -> None:
    with pytest.raises(ConfigurationError) as info:
        await registry.register_data_source({"name": "", "type": "Bad Type!", "id": "../x"})
    message = info.value.message
    for field in ("name", "type", "id"):
        assert field in message
    with pytest.raises(ConfigurationError) as info:
        await registry.register_data_source(
            {"name": "x", "type": "token_folder", "config": {"root": str(folder), "extra": 1}}
        )
    assert "token" in info.value.message and "extra" in info.value.message
    with pytest.raises(ConfigurationError):
        await registry.register_data_source(token_source(folder, MASK))
    with pytest.raises(ConfigurationError) as info:
        await registry.register_data_source(
            {"name": "x", "type": "local_folder", "config": {"root": str(folder / "missing")}}
        )
    assert "root" in info.value.message
    assert await registry.list_data_sources() == []


async def test_unknown_types(registry: DataSourceRegistry) -> None:
    with pytest.raises(UnknownDataSourceTypeError) as info:
        await registry.register_data_source({"name": "x", "type": "ftp"})
    assert "local_folder" in info.value.message
    assert {"azure_blob", "local_folder", "postgresql"} <= set(registry.available_types())


async def test_duplicates(registry: DataSourceRegistry, folder: Path) -> None:
    await registry.register_data_source(
        {"name": "one", "type": "local_folder", "config": {"root": str(folder)}}
    )
    with pytest.raises(AlreadyExistsError):
        await registry.register_data_source(
            {"name": "two", "id": "one", "type": "local_folder", "config": {"root": str(folder)}}
        )
    with pytest.raises(AlreadyExistsError):
        await registry.register_data_source(
            {"name": "one", "id": "other", "type": "local_folder", "config": {"root": str(folder)}}
        )
    assert len(await registry.list_data_sources()) == 1


async def test_masked_secret_survives_only_while_the_target_is_unchanged(
    registry: DataSourceRegistry, folder: Path, tmp_path: Path, canary: str
) -> None:
    token = "valid-" + canary
    created = await registry.register_data_source(token_source(folder, token))
    # Same target, masked secret sent back: kept.
    updated = await registry.update_data_source(
        created.id, {"description": "new", "config": {"token": MASK, "host": "a.example"}}
    )
    assert updated.description == "new"
    assert (await registry.get_data_source(created.id, sanitize=False)).config["token"] == token
    # Changed host with the masked secret: refused, nothing stored changes.
    with pytest.raises(ConfigurationError) as info:
        await registry.update_data_source(
            created.id, {"config": {"host": "evil.example", "token": MASK}}
        )
    assert "host" in info.value.message and "token" in info.value.message
    with pytest.raises(ConfigurationError):
        await registry.update_data_source(created.id, {"config": {"host": "evil.example"}})
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(ConfigurationError):
        await registry.update_data_source(created.id, {"config": {"root": str(other)}})
    current = await registry.get_data_source(created.id, sanitize=False)
    assert current.config["host"] == "a.example" and current.config["token"] == token
    # Changed host with the secret sent again: accepted.
    await registry.update_data_source(
        created.id, {"config": {"host": "b.example", "token": "valid-new"}}
    )
    current = await registry.get_data_source(created.id, sanitize=False)
    assert current.config["host"] == "b.example" and current.config["token"] == "valid-new"


async def test_update_rules(registry: DataSourceRegistry, folder: Path) -> None:
    await registry.register_data_source(
        {"name": "a", "type": "local_folder", "config": {"root": str(folder)}}
    )
    await registry.register_data_source(
        {"name": "b", "type": "local_folder", "config": {"root": str(folder)}}
    )
    with pytest.raises(ConfigurationError):
        await registry.update_data_source("a", {"id": "c", "owner": "someone"})
    with pytest.raises(AlreadyExistsError):
        await registry.update_data_source("a", {"name": "b"})
    with pytest.raises(ConfigurationError):
        await registry.update_data_source("a", {"name": ""})
    with pytest.raises(ConfigurationError):
        await registry.update_data_source("a", {"config": {"chunk_size": -1}})
    updated = await registry.update_data_source(
        "a", {"name": "a2", "tags": ["x"], "read_only": True}
    )
    assert (updated.name, updated.tags, updated.read_only) == ("a2", ["x"], True)


async def test_borrowed_and_awaited_connectors_are_the_one_live_connector(
    registry: DataSourceRegistry, folder: Path
) -> None:
    await registry.register_data_source(
        {"name": "f", "type": "local_folder", "config": {"root": str(folder)}}
    )
    async with registry.get_connector("f") as connector:
        assert isinstance(connector, LocalFolderConnector) and connector.connected
        assert [i.path for i in await connector.list_items()] == ["a.csv"]
    stats = registry.pool_stats()["local/f"]
    assert stats.in_use == 0 and stats.acquisitions == 1
    owned = await registry.get_connector("f")
    assert owned is connector and owned.shared
    await owned.disconnect()  # the seed's habit: harmless, the registry owns it
    assert owned.connected
    async with registry.get_connector("f") as again:
        assert again is connector
    await registry.remove_data_source("f")
    assert "local/f" not in registry.pool_stats() and not connector.connected
    await registry.register_data_source(
        {"name": "g", "type": "local_folder", "config": {"root": str(folder)}}
    )
    async with registry.get_connector("g") as g:
        pass
    await registry.close()
    assert not g.connected and registry.pool_stats() == {}
    await registry.open()
    with pytest.raises(NotFoundError):
        async with registry.get_connector("f"):
            pass


async def test_read_only_flag_reaches_the_connector(
    registry: DataSourceRegistry, folder: Path
) -> None:
    from datasources import ReadOnlyError

    await registry.register_data_source(
        {"name": "ro", "type": "local_folder", "config": {"root": str(folder)}, "read_only": True}
    )
    async with registry.get_connector("ro") as connector:
        with pytest.raises(ReadOnlyError):
            await connector.upload_data(folder / "a.csv", "b.csv")
    assert not (folder / "b.csv").exists()


async def test_test_data_source_reports_without_secrets(
    registry: DataSourceRegistry, folder: Path, canary: str
) -> None:
    good = await registry.register_data_source(token_source(folder, "valid-" + canary))
    status = await registry.test_data_source(good.id)
    assert status.ok and "token expires soon" in status.warnings
    bad = await registry.register_data_source(token_source(folder, "wrong-" + canary, name="Bad"))
    status = await registry.test_data_source(bad.id)
    assert not status.ok and "rejected" in status.message
    assert canary not in status.model_dump_json()


async def test_owners_are_isolated(registry: DataSourceRegistry, folder: Path) -> None:
    await registry.register_data_source(
        {"name": "mine", "type": "local_folder", "config": {"root": str(folder)}}
    )
    alice = registry.scoped("alice")
    assert await alice.list_data_sources() == []
    with pytest.raises(NotFoundError):
        await alice.get_data_source("mine")
    with pytest.raises(NotFoundError):
        await alice.remove_data_source("mine")
    await alice.register_data_source(
        {"name": "mine", "type": "local_folder", "config": {"root": str(folder)}}
    )
    assert len(await registry.list_data_sources()) == 1


async def test_persistent_store_without_key_refuses_secrets(folder: Path) -> None:
    async with DataSourceRegistry(
        store=Store.memory(), credentials=CredentialManager()
    ) as registry:
        registry.register_connector_class("token_folder", TokenFolderConnector)
        with pytest.raises(MissingKeyError):
            await registry.register_data_source(token_source(folder, "valid-x"))
        assert await registry.list_data_sources() == []
        await registry.register_data_source(
            {"name": "plain", "type": "local_folder", "config": {"root": str(folder)}}
        )


async def test_entry_point_plugins_and_missing_dependencies(
    monkeypatch: pytest.MonkeyPatch, folder: Path
) -> None:
    group = "datasources.connectors"
    eps = [
        EntryPoint(name="token_folder", value="tests.plugins:TokenFolderConnector", group=group),
        EntryPoint(name="needs_sdk", value="tests.plugin_missing_dep:Connector", group=group),
        EntryPoint(name="not_a_connector", value="tests.plugins:TokenFolderConfig", group=group),
    ]
    monkeypatch.setattr("datasources.sources.core.entry_points", lambda group: eps)
    async with DataSourceRegistry() as registry:
        assert {"token_folder", "needs_sdk", "local_folder"} <= set(registry.available_types())
        assert registry.connector_class("token_folder") is TokenFolderConnector
        with pytest.raises(MissingDependencyError) as info:
            registry.connector_class("needs_sdk")
        assert "pip install nonexistent_sdk_for_tests" in info.value.message
        with pytest.raises(UnknownDataSourceTypeError):
            registry.connector_class("not_a_connector")
        with pytest.raises(ConfigurationError):
            registry.register_connector_class("x", object)  # type: ignore[arg-type]


async def test_listing_cache_is_fresh_after_local_writes_and_bounded_for_others(
    tmp_path: Path, folder: Path
) -> None:
    """Two registries on one store stand for two replicas."""

    from datasources.config import PoolSettings

    url = f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    key = CredentialManager.ephemeral()
    settings = PoolSettings(listing_cache_seconds=0.3)
    here = DataSourceRegistry(store=Store(url), credentials=key, pool_settings=settings)
    there = DataSourceRegistry(store=Store(url), credentials=key, pool_settings=settings)
    async with here, there:
        assert await here.list_data_sources() == []
        await here.register_data_source({"name": "a", "type": "local_folder",
                                         "config": {"root": str(folder)}})  # fmt: skip
        assert [s.id for s in await here.list_data_sources()] == ["a"]  # own write: at once
        assert [s.id for s in await there.list_data_sources()] == ["a"]
        await here.register_data_source({"name": "b", "type": "local_folder",
                                         "config": {"root": str(folder)}})  # fmt: skip

        # Another registry's cached page goes stale for at most listing_cache_seconds.
        async def fresh() -> bool:
            return [s.id for s in await there.list_data_sources()] == ["a", "b"]

        await eventually(fresh, what="the other registry sees 'b'")
        page = await here.list_data_sources(limit=1, after="a")
        assert [s.id for s in page] == ["b"]
        page[0].config["root"] = "/elsewhere"  # a caller editing its copy...
        again = await here.list_data_sources(limit=1, after="a")
        assert again[0].config["root"] == str(folder)  # ...does not change the cache
        documents = await here.list_data_sources_json(limit=5)
        assert [d.startswith(b"{") for d in documents] == [True, True]
        await here.remove_data_source("a")
        assert [s.id for s in await here.list_data_sources()] == ["b"]
