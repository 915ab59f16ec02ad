"""A folder on this machine as a data source: the embedded default and reference connector.

Paths are POSIX-style and relative to ``root``; every one goes through
:mod:`datasources.workspace`, so nothing outside ``root`` can be read or written, symlinks
included (a symlink that points out of ``root`` is neither listed nor followed).
"""

from __future__ import annotations

import asyncio
import hashlib
import mimetypes
import os
import stat
import time
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import ClassVar

from pydantic import Field, field_validator

from datasources.connectors.base import (
    BaseConnector,
    ConnectorConfig,
    ItemStream,
    ListingQuery,
    ProgressCallback,
    listing_query,
)
from datasources.errors import (
    AlreadyExistsError,
    ConfigurationError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
    UnsafePathError,
)
from datasources.models import ConnectionStatus, DataItem, DataSourceType, ItemKind
from datasources.netpolicy import OutboundPolicy
from datasources.workspace import AtomicFile, Workspace, resolve_inside, safe_relative_path

__all__ = ["LocalFolderConfig", "LocalFolderConnector"]

_BATCH = 500


class LocalFolderConfig(ConnectorConfig):
    """Config of a ``local_folder`` source."""

    root: Path = Field(description="The folder to expose; stored as an absolute path.")
    chunk_size: int = Field(default=1024 * 1024, ge=4096, le=64 * 1024 * 1024)

    @field_validator("root", mode="before")
    @classmethod
    def _absolute(cls, value: object) -> Path:
        if not isinstance(value, str | Path) or not str(value).strip():
            raise ValueError("must be a folder path")
        if "\x00" in str(value):
            raise ValueError("must not contain a NUL character")
        return Path(os.path.abspath(Path(value).expanduser()))


def _etag(st: os.stat_result) -> str:
    return f"{st.st_ino:x}-{st.st_mtime_ns:x}-{st.st_size:x}"


def _mtime(st: os.stat_result) -> datetime:
    return datetime.fromtimestamp(st.st_mtime, tz=UTC)


@lru_cache(maxsize=1024)
def _content_type_for_suffix(suffix: str) -> str:
    guessed, _ = mimetypes.guess_type("x" + suffix, strict=False)
    return guessed or "application/octet-stream"


def _file_item(rel: str, st: os.stat_result, checksum: str | None = None) -> DataItem:
    name = rel.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    return DataItem.trusted(
        path=rel,
        name=name,
        kind=ItemKind.FILE,
        size=st.st_size,
        last_modified=_mtime(st),
        content_type=_content_type_for_suffix(name[dot:].lower() if dot > 0 else ""),
        etag=_etag(st),
        checksum=checksum,
    )


def _dir_item(rel_dir: str, st: os.stat_result | None) -> DataItem:
    return DataItem.trusted(
        path=rel_dir,
        name=rel_dir.rstrip("/").rsplit("/", 1)[-1],
        kind=ItemKind.DIRECTORY,
        last_modified=_mtime(st) if st else None,
    )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1024 * 1024):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


class LocalFolderConnector(BaseConnector[LocalFolderConfig]):
    """Lists, fetches and uploads files under one local folder."""

    type: ClassVar[str] = DataSourceType.LOCAL_FOLDER
    config_model = LocalFolderConfig
    secret_fields = frozenset()
    target_fields = frozenset({"root"})

    @classmethod
    async def check_config(cls, config: ConnectorConfig) -> None:
        assert isinstance(config, LocalFolderConfig)
        if not config.root.is_dir():
            raise ConfigurationError.from_fields(
                [("root", "is not an existing folder")],
                prefix="Invalid local_folder configuration",
            )

    @classmethod
    async def check_targets(cls, config: ConnectorConfig, policy: OutboundPolicy) -> None:
        assert isinstance(config, LocalFolderConfig)
        policy.check_folder(config.root)

    @property
    def root(self) -> Path:
        """The resolved root folder."""
        return self.config.root.resolve()

    async def connect(self) -> None:
        if self.outbound is not None:
            self.outbound.check_folder(self.config.root)
        if not await asyncio.to_thread(self.config.root.is_dir):
            raise UnavailableError(f"The folder of source {self.source_id!r} does not exist.")
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False

    async def ping(self) -> bool:
        return self._connected and await asyncio.to_thread(self.config.root.is_dir)

    async def test_connection(self) -> ConnectionStatus:
        start = time.perf_counter()
        root = self.config.root

        def probe() -> tuple[bool, bool, bool]:
            exists = root.is_dir()
            readable = exists and os.access(root, os.R_OK | os.X_OK)
            writable = exists and os.access(root, os.W_OK)
            return exists, readable, writable

        exists, readable, writable = await asyncio.to_thread(probe)
        latency = (time.perf_counter() - start) * 1000
        if not exists:
            return ConnectionStatus(
                ok=False, latency_ms=latency, message="The folder does not exist."
            )
        if not readable:
            return ConnectionStatus(
                ok=False, latency_ms=latency, message="The folder is not readable."
            )
        warnings = []
        if not self.read_only and not writable:
            warnings.append("The folder is not writable: uploads will fail.")
        return ConnectionStatus(
            ok=True, latency_ms=latency, message="Folder is reachable.", warnings=warnings
        )

    # -- paths -------------------------------------------------------------------------

    def _resolve(self, path: str) -> Path:
        return resolve_inside(self.root, safe_relative_path(path, allow_reserved=True))

    def _stat(self, path: str) -> tuple[Path, os.stat_result]:
        resolved = self._resolve(path)
        try:
            return resolved, resolved.stat()
        except FileNotFoundError:
            raise NotFoundError(f"{path!r} does not exist in source {self.source_id!r}.") from None
        except PermissionError:
            raise PermissionDeniedError(f"{path!r} is not readable.") from None

    # -- listing -----------------------------------------------------------------------

    def _walk(
        self, query: ListingQuery, start_after: str | None
    ) -> Generator[DataItem, None, None]:
        root = self.root
        prefix, delimiter, matcher = query.prefix, query.delimiter, query.matcher

        def visit(directory: Path, rel_dir: str) -> Iterator[DataItem]:
            try:
                entries = list(os.scandir(directory))
            except (PermissionError, FileNotFoundError, NotADirectoryError):
                return
            keyed: list[tuple[str, os.DirEntry[str], bool]] = []
            for entry in entries:
                rel = rel_dir + entry.name
                try:
                    if entry.is_symlink():
                        target = Path(entry.path).resolve()
                        # Followed only when it stays inside root and names a file;
                        # linked folders could loop or lead out.
                        if not target.is_relative_to(root) or not target.is_file():
                            continue
                        is_dir = False
                    else:
                        is_dir = entry.is_dir(follow_symlinks=False)
                        if not is_dir and not entry.is_file(follow_symlinks=False):
                            continue  # sockets, fifos, devices
                except OSError:
                    continue
                keyed.append((rel + "/" if is_dir else rel, entry, is_dir))
            # Sorting folders as "name/" yields full paths in byte-wise lexicographic order,
            # the order blob stores list in, so cursors work the same everywhere.
            keyed.sort(key=lambda k: k[0])
            for key, entry, is_dir in keyed:
                if is_dir:
                    if not (key.startswith(prefix) or prefix.startswith(key)):
                        continue
                    if (
                        start_after is not None
                        and key <= start_after
                        and not start_after.startswith(key)
                    ):
                        continue
                    if delimiter and key.startswith(prefix) and len(key) > len(prefix):
                        if matcher is None and (start_after is None or key > start_after):
                            try:
                                st = entry.stat(follow_symlinks=False)
                            except OSError:
                                st = None
                            yield _dir_item(key, st)
                        continue
                    yield from visit(Path(entry.path), key)
                else:
                    if not key.startswith(prefix):
                        continue
                    if start_after is not None and key <= start_after:
                        continue
                    if matcher is not None and not matcher.match(key):
                        continue
                    try:
                        st = entry.stat(follow_symlinks=True)
                    except OSError:
                        continue
                    yield _file_item(key, st)

        yield from visit(root, "")

    async def iter_items(
        self,
        prefix: str | None = None,
        *,
        delimiter: str | None = None,
        glob: str | None = None,
        start_after: str | None = None,
    ) -> AsyncIterator[DataItem]:
        query = listing_query((prefix or "").replace("\\", "/"), delimiter, glob)
        if query.prefix.startswith("/") or ".." in query.prefix.split("/"):
            raise UnsafePathError("The prefix must be relative and must not contain '..'.")
        if query.empty:
            return
        walker = self._walk(query, start_after)

        def next_batch() -> list[DataItem]:
            batch: list[DataItem] = []
            for item in walker:
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
            return batch

        try:
            while batch := await asyncio.to_thread(next_batch):
                for item in batch:
                    yield item
        finally:
            walker.close()

    async def get_metadata(self, path: str) -> DataItem:
        resolved, st = await asyncio.to_thread(self._stat, path)
        rel = safe_relative_path(path, allow_reserved=True).as_posix()
        if stat.S_ISDIR(st.st_mode):
            return _dir_item(rel + "/", st)
        if not stat.S_ISREG(st.st_mode):
            raise NotFoundError(f"{path!r} is not a regular file.")
        checksum = await asyncio.to_thread(_sha256, resolved)
        return _file_item(rel, st, checksum)

    # -- transfer ----------------------------------------------------------------------

    async def open_stream(self, path: str) -> ItemStream:
        resolved, st = await asyncio.to_thread(self._stat, path)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInputError(f"{path!r} is a folder, not a file.")
        rel = safe_relative_path(path, allow_reserved=True).as_posix()
        chunk_size = self.config.chunk_size

        async def chunks() -> AsyncIterator[bytes]:
            fd = await asyncio.to_thread(os.open, resolved, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                while data := await asyncio.to_thread(os.read, fd, chunk_size):
                    yield data
            finally:
                os.close(fd)

        item = _file_item(rel, st)
        return ItemStream.of_file(item, chunks)

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        stream = await self.open_stream(path)
        return await self.stream_into_workspace(
            stream.item.path,
            workspace_dir,
            item=stream.item,
            chunks=stream.chunks,
            progress=progress,
        )

    def _exists_error(self, rel: str) -> AlreadyExistsError:
        return AlreadyExistsError(
            f"{rel!r} already exists in source {self.source_id!r}; "
            "pass overwrite=True to replace it."
        )

    async def upload_data(
        self, local_path: Path | str, remote_path: str, *, overwrite: bool = False
    ) -> DataItem:
        self.require_writable()
        rel = safe_relative_path(remote_path).as_posix()
        target = self._resolve(rel)
        source = Path(local_path)
        chunk_size = self.config.chunk_size

        def copy() -> os.stat_result:
            try:
                src_stat = source.stat()
            except FileNotFoundError:
                raise NotFoundError(f"The local file {str(source)!r} does not exist.") from None
            if not stat.S_ISREG(src_stat.st_mode):
                raise InvalidInputError(f"{str(source)!r} is not a regular file.")
            if target.is_dir():
                raise InvalidInputError(f"{rel!r} is a folder in source {self.source_id!r}.")
            if target.exists() and not overwrite:
                raise self._exists_error(rel)
            file = AtomicFile(target, overwrite=overwrite, expected_size=src_stat.st_size)
            try:
                with open(source, "rb") as fh:
                    while data := fh.read(chunk_size):
                        file.write(data)
                file.commit()
            except FileExistsError:
                raise self._exists_error(rel) from None
            finally:
                file.abort()
            return target.stat()

        try:
            st = await asyncio.to_thread(copy)
        except PermissionError:
            raise PermissionDeniedError(
                f"Cannot write {rel!r} in source {self.source_id!r}."
            ) from None
        return _file_item(rel, st)


# Common data formats the standard table lacks.
mimetypes.add_type("application/vnd.apache.parquet", ".parquet")
mimetypes.add_type("application/x-ndjson", ".jsonl")
