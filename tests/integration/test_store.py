"""The persistent registry on real stores: a SQLite file and a real PostgreSQL database."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import text

import datasources.store
from datasources import (
    CredentialsUnreadableError,
    DataSourceRegistry,
    MissingKeyError,
    NotFoundError,
    Settings,
)
from datasources.credentials import CredentialManager, generate_key
from datasources.store import Store
from datasources.store.models import Base
from tests.plugins import TokenFolderConnector

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'store.db'}"
    database: str = request.getfixturevalue("postgres_database")
    return database.replace("postgresql://", "postgresql+asyncpg://", 1)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    (path / "a.csv").write_text("x\n1\n")
    return path


def registry_for(url: str, keys: list[str] | None) -> DataSourceRegistry:
    registry = DataSourceRegistry(store=Store(url), credentials=CredentialManager(keys))
    registry.register_connector_class("token_folder", TokenFolderConnector)
    return registry


def token_source(folder: Path, token: str, name: str = "tok") -> dict[str, Any]:
    return {"name": name, "type": "token_folder", "config": {"root": str(folder), "token": token}}


async def raw_dump(url: str) -> str:
    """Every stored byte of the data_sources table as text (what an attacker with the DB sees)."""
    if url.startswith("sqlite"):
        data = await asyncio.to_thread(Path(url.split("///", 1)[1]).read_bytes)
        return data.decode("latin-1")
    conn = await asyncpg.connect(url.replace("postgresql+asyncpg://", "postgresql://", 1))
    try:
        rows = await conn.fetch("SELECT row_to_json(t)::text AS j FROM data_sources t")
    finally:
        await conn.close()
    return "\n".join(r["j"] for r in rows)


async def test_sources_persist_and_secrets_are_only_tokens(
    store_url: str, folder: Path, canary: str
) -> None:
    key = generate_key()
    async with registry_for(store_url, [key]) as registry:
        await registry.register_data_source(token_source(folder, "valid-" + canary))
        await registry.register_data_source(
            {"name": "plain", "type": "local_folder", "config": {"root": str(folder)}}
        )
    dump = await raw_dump(store_url)
    assert canary not in dump
    assert "gAAAAA" in dump  # a Fernet token is what is stored
    assert str(folder) in dump  # non-secret fields stay plain and queryable
    async with registry_for(store_url, [key]) as again:
        assert [s.id for s in await again.list_data_sources()] == ["plain", "tok"]
        assert (await again.get_data_source("tok", sanitize=False)).config[
            "token"
        ] == "valid-" + canary
        async with again.get_connector("tok") as connector:
            assert [i.path for i in await connector.list_items()] == ["a.csv"]


async def test_wrong_key_is_a_clear_error_and_other_sources_still_work(
    store_url: str, folder: Path, canary: str
) -> None:
    async with registry_for(store_url, [generate_key()]) as registry:
        await registry.register_data_source(token_source(folder, "valid-" + canary))
        await registry.register_data_source(
            {"name": "plain", "type": "local_folder", "config": {"root": str(folder)}}
        )
    before = await raw_dump(store_url)
    async with registry_for(store_url, [generate_key()]) as wrong:
        with pytest.raises(CredentialsUnreadableError) as info:
            async with wrong.get_connector("tok"):
                pass
        assert canary not in info.value.message
        status = await wrong.test_data_source("tok")
        assert not status.ok and "cannot be decrypted" in status.message
        async with wrong.get_connector("plain") as connector:
            assert await connector.list_items()
        assert len(await wrong.list_data_sources()) == 2
        with pytest.raises(CredentialsUnreadableError):
            await wrong.rotate_secrets()
    async with registry_for(store_url, None) as keyless:
        with pytest.raises(MissingKeyError):
            async with keyless.get_connector("tok"):
                pass
    assert await raw_dump(store_url) == before, "nothing stored was overwritten"


async def test_rotation_is_all_or_nothing(store_url: str, folder: Path) -> None:
    old, new, stranger = generate_key(), generate_key(), generate_key()
    async with registry_for(store_url, [old]) as registry:
        for i in range(3):
            await registry.register_data_source(token_source(folder, f"valid-{i}", name=f"t{i}"))
    async with registry_for(store_url, [stranger]) as other:
        await other.register_data_source(token_source(folder, "valid-x", name="foreign"))
    before = await raw_dump(store_url)
    async with registry_for(store_url, [new, old]) as both:
        with pytest.raises(CredentialsUnreadableError) as info:
            await both.rotate_secrets()
        assert "foreign" in info.value.message
    assert await raw_dump(store_url) == before
    async with registry_for(store_url, [stranger]) as other:
        await other.remove_data_source("foreign")
    async with registry_for(store_url, [new, old]) as both:
        assert await both.rotate_secrets() == 3
        assert await both.rotate_secrets() == 3  # idempotent
    async with registry_for(store_url, [new]) as only_new:
        for i in range(3):
            assert (await only_new.get_data_source(f"t{i}", sanitize=False)).config[
                "token"
            ] == f"valid-{i}"


async def test_two_replicas_share_one_store(store_url: str, folder: Path) -> None:
    key = generate_key()
    async with registry_for(store_url, [key]) as a, registry_for(store_url, [key]) as b:
        await a.register_data_source(token_source(folder, "valid-1"))
        assert [s.id for s in await b.list_data_sources()] == ["tok"]
        await b.update_data_source("tok", {"description": "from b"})
        assert (await a.get_data_source("tok")).description == "from b"
        await b.remove_data_source("tok")
        with pytest.raises(NotFoundError):
            await a.get_data_source("tok")


async def test_concurrent_first_opens_migrate_once(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="alembic")
    stores = [Store(store_url) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    for s in stores:
        assert await s.ping()
        await s.close()
    # Each migration ran once in all, not once per store that opened the database.
    versions = Path(datasources.store.__file__).parent / "migrations" / "versions"
    revisions = sorted(p.stem.split("_", 1)[0] for p in versions.glob("[0-9]*.py"))
    ran = [r.getMessage() for r in caplog.records if "Running upgrade" in r.getMessage()]
    assert len(ran) == len(revisions) >= 3, ran
    assert len(set(ran)) == len(ran), ran


async def test_migrations_match_the_models(store_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    store = Store(store_url)
    await store.open()
    try:
        engine = store._engine
        assert engine is not None
        async with engine.connect() as conn:

            def diff(sync_conn: Any) -> list[Any]:
                context = MigrationContext.configure(sync_conn)
                return list(compare_metadata(context, Base.metadata))

            assert await conn.run_sync(diff) == []
            version = (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()
            assert version == "0004"
    finally:
        await store.close()


async def test_from_settings_on_postgresql(
    postgres_database: str, folder: Path, tmp_path: Path
) -> None:
    settings = Settings(
        home=tmp_path / "home", database_url=postgres_database, secret_keys=generate_key()
    )
    assert "postgresql+asyncpg://" in settings.resolved_database_url
    assert postgres_database not in repr(settings)
    async with DataSourceRegistry.from_settings(settings) as registry:
        await registry.register_data_source(
            {"name": "f", "type": "local_folder", "config": {"root": str(folder)}}
        )
        assert registry.store.dialect == "postgresql"
    assert not (tmp_path / "home" / "secret.key").exists()


async def test_unreachable_store_is_unavailable(tmp_path: Path) -> None:
    from datasources import UnavailableError

    store = Store("postgresql+asyncpg://nobody:canary-pw@127.0.0.1:1/none")
    with pytest.raises(UnavailableError) as info:
        await store.open()
    assert "canary-pw" not in info.value.message
    assert "canary-pw" not in repr(store)


async def test_pools_follow_changes_made_by_another_replica(
    store_url: str, folder: Path, tmp_path: Path
) -> None:
    from datasources import PoolSettings

    other = tmp_path / "other"
    other.mkdir()
    (other / "b.csv").write_text("b\n")
    settings = PoolSettings(revalidate_after=0, min_size=0)
    key = generate_key()
    a = DataSourceRegistry(
        store=Store(store_url), credentials=CredentialManager([key]), pool_settings=settings
    )
    b = DataSourceRegistry(store=Store(store_url), credentials=CredentialManager([key]))
    async with a, b:
        await a.register_data_source(
            {"name": "f", "type": "local_folder", "config": {"root": str(folder)}}
        )
        async with a.get_connector("f") as connector:
            assert [i.path for i in await connector.list_items()] == ["a.csv"]
        await b.update_data_source("f", {"config": {"root": str(other)}})
        async with a.get_connector("f") as connector:
            assert [i.path for i in await connector.list_items()] == ["b.csv"]
        await b.remove_data_source("f")
        with pytest.raises(NotFoundError):
            async with a.get_connector("f"):
                pass
