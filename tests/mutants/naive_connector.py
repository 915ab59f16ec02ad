# Deliberately naive, blocking file calls included.
# ruff: noqa: ASYNC230, ASYNC240
"""A deliberately unsafe connector, and the contract suite run against it.

``NaiveFolderConnector`` is what a first attempt on :class:`BaseConnector` looks like:
remote names are joined to its root and to the workspace with no checks at all. It is
not collected by the normal run (the file name does not start with ``test_``);
``tests/unit/test_contract_catches_unsafe.py`` runs the contract suite against it in a
subprocess and requires the hostile-name tests to fail. If they pass, the suite has
stopped proving anything about path safety.

Its one concession to the machine running it: it refuses to *write* outside the folder
named by ``NAIVE_JAIL`` (the subprocess's pytest temp folder), so a real traversal in
this test can never damage the host. That refusal raises ``RuntimeError``, which the
contract counts as a failure like any other escape.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, ClassVar

import pytest

from datasources.connectors.base import (
    BaseConnector,
    ConnectorConfig,
    ItemStream,
    ProgressCallback,
    listing_query,
)
from datasources.errors import AlreadyExistsError, NotFoundError
from datasources.models import ConnectionStatus, DataItem, ItemKind
from datasources.testing.contract import ConnectorContract
from datasources.workspace import ManifestEntry, Workspace


class NaiveConfig(ConnectorConfig):
    """Config of the naive folder connector."""

    root: Path


def _guard_write(target: str) -> None:
    jail = os.environ.get("NAIVE_JAIL")
    if not jail or not os.path.realpath(target).startswith(os.path.realpath(jail) + os.sep):
        raise RuntimeError(f"naive connector: refusing to write outside the test area: {target}")


def _item(path: str, st: os.stat_result) -> DataItem:
    return DataItem.trusted(
        path=path,
        name=path.rstrip("/").rsplit("/", 1)[-1],
        kind=ItemKind.FILE,
        size=st.st_size,
        last_modified=None,
        etag=f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}",
    )


class NaiveFolderConnector(BaseConnector[NaiveConfig]):
    """Joins remote names to its root and to the workspace without any check."""

    type: ClassVar[str] = "naive_folder"
    config_model = NaiveConfig

    async def connect(self) -> None:
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def test_connection(self) -> ConnectionStatus:
        return ConnectionStatus(ok=True, latency_ms=0.0, message="ok")

    def _join(self, path: str) -> str:
        return os.path.join(self.config.root, path)

    async def iter_items(
        self,
        prefix: str | None = None,
        *,
        delimiter: str | None = None,
        glob: str | None = None,
        start_after: str | None = None,
    ) -> AsyncIterator[DataItem]:
        query = listing_query(prefix, delimiter, glob)
        if query.empty:
            return
        wanted = query.prefix
        # "The items under a prefix": walk the folder the prefix names, name them after it.
        folder, stem = (wanted, "") if wanted.endswith("/") or not wanted else os.path.split(wanted)
        if folder and not folder.endswith("/"):
            folder += "/"
        found: list[DataItem] = []
        dirs_seen: set[str] = set()
        for dirpath, _dirs, files in os.walk(self._join(folder)):
            for name in files:
                full = os.path.join(dirpath, name)
                rel = folder + os.path.relpath(full, self._join(folder))
                if not rel.startswith(folder + stem):
                    continue
                if query.delimiter and "/" in rel[len(wanted) :]:
                    sub = rel[: len(wanted) + rel[len(wanted) :].index("/") + 1]
                    if query.matcher is None and sub not in dirs_seen:
                        dirs_seen.add(sub)
                        found.append(DataItem.trusted(path=sub, name=sub, kind=ItemKind.DIRECTORY))
                    continue
                item = _item(rel, os.stat(full))
                if query.accepts(item):
                    found.append(item)
        for item in sorted(found, key=lambda i: i.path):
            if start_after is None or item.path > start_after:
                yield item

    async def get_metadata(self, path: str) -> DataItem:
        try:
            return _item(path, os.stat(self._join(path)))
        except FileNotFoundError:
            raise NotFoundError(f"{path!r} does not exist.") from None

    async def open_stream(self, path: str) -> ItemStream:
        item = await self.get_metadata(path)
        full = self._join(path)

        async def chunks() -> AsyncIterator[bytes]:
            with open(full, "rb") as fh:
                while data := fh.read(65536):
                    yield data

        return ItemStream.of_file(item, chunks)

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        workspace = Workspace.of(workspace_dir)
        item = await self.get_metadata(path)
        self.check_size(path, item.size)
        target = os.path.join(workspace.root, path)
        _guard_write(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        digest = hashlib.sha256()
        done = 0
        with open(self._join(path), "rb") as src, open(target, "wb") as dst:
            while data := src.read(65536):
                dst.write(data)
                digest.update(data)
                done += len(data)
                if progress is not None:
                    progress(done, item.size)
        st = os.stat(target)
        workspace.record(
            ManifestEntry(
                path=path,
                size=st.st_size,
                sha256=digest.hexdigest(),
                mtime_ns=st.st_mtime_ns,
                **self.provenance(path, item),
            )
        )
        return Path(target)

    async def upload_data(
        self, local_path: Path | str, remote_path: str, *, overwrite: bool = False
    ) -> DataItem:
        self.require_writable()
        target = self._join(remote_path)
        if os.path.exists(target) and not overwrite:
            raise AlreadyExistsError(f"{remote_path!r} exists.")
        with open(local_path, "rb") as fh:
            data = fh.read()
        _guard_write(target)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as out:
            out.write(data)
        return _item(remote_path, os.stat(target))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "source"
    path.mkdir()
    return path


@pytest.fixture
def make_connector(root: Path) -> Callable[..., NaiveFolderConnector]:
    def make(read_only: bool = False, **overrides: Any) -> NaiveFolderConnector:
        return NaiveFolderConnector({"root": str(root), **overrides}, read_only=read_only)

    return make


@pytest.fixture
def seed(root: Path) -> Callable[[str, bytes], Any]:
    async def put(path: str, data: bytes) -> None:
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))

    return put


class TestNaiveFolderContract(ConnectorContract):
    """The contract suite, run against the naive connector: must go red."""
