"""The local-folder connector: the contract suite plus what only a real folder can do."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from datasources.connectors.local_folder import LocalFolderConfig, LocalFolderConnector
from datasources.errors import (
    ConfigurationError,
    IntegrityError,
    InvalidInputError,
    UnavailableError,
    UnsafePathError,
)
from datasources.testing.contract import ConnectorContract


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "source"
    path.mkdir()
    return path


@pytest.fixture
def make_connector(root: Path) -> Callable[..., LocalFolderConnector]:
    def make(read_only: bool = False, **overrides: Any) -> LocalFolderConnector:
        return LocalFolderConnector(
            {"root": str(root), **overrides}, source_id="local-test", read_only=read_only
        )

    return make


@pytest.fixture
def seed(root: Path) -> Callable[[str, bytes], Awaitable[None]]:
    async def put(path: str, data: bytes) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        # Make a same-size rewrite visible to mtime-based etags on coarse clocks.
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    return put


class TestLocalFolderContract(ConnectorContract):
    pass


async def test_symlink_pointing_out_is_neither_listed_nor_fetched(
    root: Path, tmp_path: Path, make_connector: Callable[..., LocalFolderConnector]
) -> None:
    secret = tmp_path / "outside.txt"
    secret.write_text("top secret")
    (root / "link.txt").symlink_to(secret)
    (root / "linkdir").symlink_to(tmp_path)
    (root / "inside.txt").write_text("ok")
    (root / "alias.txt").symlink_to(root / "inside.txt")
    async with make_connector() as connector:
        paths = [i.path for i in await connector.list_items()]
        assert paths == ["alias.txt", "inside.txt"]
        for name in ("link.txt", "linkdir/outside.txt"):
            with pytest.raises(UnsafePathError):
                await connector.fetch_data(name, tmp_path / "ws")
            with pytest.raises(UnsafePathError):
                await connector.get_metadata(name)
        with pytest.raises(UnsafePathError):
            await connector.upload_data(root / "inside.txt", "linkdir/new.txt")
        fetched = await connector.fetch_data("alias.txt", tmp_path / "ws")
        assert fetched.read_text() == "ok"
    assert not (tmp_path / "new.txt").exists()


async def test_special_files_are_skipped(
    root: Path, make_connector: Callable[..., LocalFolderConnector]
) -> None:
    os.mkfifo(root / "pipe")
    (root / "f.txt").write_text("x")
    async with make_connector() as connector:
        assert [i.path for i in await connector.list_items()] == ["f.txt"]


async def test_fetching_a_folder_is_refused(
    root: Path, tmp_path: Path, make_connector: Callable[..., LocalFolderConnector]
) -> None:
    (root / "d").mkdir()
    async with make_connector() as connector:
        with pytest.raises(InvalidInputError):
            await connector.fetch_data("d", tmp_path / "ws")
        item = await connector.get_metadata("d")
        assert item.kind == "directory"


async def test_metadata_has_sha256_on_demand(
    root: Path, make_connector: Callable[..., LocalFolderConnector]
) -> None:
    (root / "f.txt").write_bytes(b"abc")
    async with make_connector() as connector:
        listed = (await connector.list_items())[0]
        item = await connector.get_metadata("f.txt")
    assert listed.checksum is None
    assert (
        item.checksum == "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )


async def test_a_file_that_changes_during_fetch_leaves_nothing(
    root: Path, tmp_path: Path, make_connector: Callable[..., LocalFolderConnector]
) -> None:
    target = root / "growing.bin"
    target.write_bytes(b"x" * 10_000)
    grown = False

    def progress(done: int, total: int | None) -> None:
        nonlocal grown
        if done and not grown:
            grown = True
            with open(target, "ab") as fh:
                fh.write(b"y" * 5000)

    async with make_connector(chunk_size=4096) as connector:
        with pytest.raises(IntegrityError):
            await connector.fetch_data("growing.bin", tmp_path / "ws", progress=progress)
    assert not (tmp_path / "ws" / "growing.bin").exists()
    assert not list((tmp_path / "ws" / ".datasources" / "tmp").iterdir())


async def test_missing_root(tmp_path: Path) -> None:
    config = LocalFolderConnector.validate_config({"root": str(tmp_path / "gone")})
    assert isinstance(config, LocalFolderConfig)
    with pytest.raises(ConfigurationError) as info:
        await LocalFolderConnector.check_config(config)
    assert "root" in info.value.message
    connector = LocalFolderConnector(config)
    with pytest.raises(UnavailableError):
        await connector.connect()
    status = await connector.test_connection()
    assert not status.ok


def test_config_errors_name_every_field() -> None:
    with pytest.raises(ConfigurationError) as info:
        LocalFolderConnector.validate_config({"root": "", "chunk_size": "big", "colour": "red"})
    message = info.value.message
    for field in ("root", "chunk_size", "colour"):
        assert field in message
    assert {f["field"] for f in info.value.details["fields"]} == {"root", "chunk_size", "colour"}


def test_relative_root_is_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = LocalFolderConnector.validate_config({"root": "data"})
    assert isinstance(config, LocalFolderConfig) and config.root == tmp_path / "data"
