"""The one place that turns a remote path into a local path, and writes there safely.

* :func:`safe_relative_path` normalises ``\\`` to ``/`` and rejects absolute paths, ``..``
  and ``.`` segments, empty segments, NUL and control characters, text that is not UTF-8
  and over-long names.
* :func:`resolve_inside` resolves symlinks and proves containment with
  :meth:`Path.is_relative_to` on resolved paths (never a string prefix test).
* :class:`AtomicFile` writes to a temp file (``O_EXCL | O_NOFOLLOW``), hashes as it goes,
  checks size and checksums, fsyncs, then renames into place; any failure leaves no file.
* :class:`Workspace` is a folder that fetched data is streamed into. It keeps a
  provenance manifest (``.datasources/manifest.jsonl``, append-only, one JSON object a
  line, last line per path wins) and its temp files under ``.datasources/tmp``, so a
  half-written file never appears among the data.

Length: :class:`AtomicFile` and :class:`Workspace` hold one guarantee together (no
partial, unverified or out-of-place file is ever visible, and every file has its
provenance); the next split would give :class:`AtomicFile` a module of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import errno
import fcntl
import hashlib
import os
import secrets
import stat
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from datasources.errors import (
    IntegrityError,
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    UnsafePathError,
)

__all__ = [
    "MAX_PATH_BYTES",
    "MAX_SEGMENT_BYTES",
    "RESERVED_DIR",
    "AtomicFile",
    "ManifestEntry",
    "Workspace",
    "resolve_inside",
    "safe_relative_path",
]

MAX_SEGMENT_BYTES = 255
MAX_PATH_BYTES = 4096
RESERVED_DIR = ".datasources"
"""The workspace's own folder (manifest, temp files); no remote path may land in it."""

_COPY_CHUNK = 1024 * 1024
_WRITEBACK_EVERY = 32 * 1024 * 1024


def _describe(path: str) -> str:
    shown = path if len(path) <= 120 else path[:117] + "..."
    return repr(shown)


def safe_relative_path(path: str, *, allow_reserved: bool = False) -> PurePosixPath:
    """Validate a remote name and return it as a safe relative POSIX path.

    Raises:
        UnsafePathError: absolute, traversal, empty, control characters, over-long,
            or (unless ``allow_reserved``) inside the workspace's reserved folder.
    """
    if not isinstance(path, str):
        raise UnsafePathError("The path must be text.")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise UnsafePathError(f"The path {_describe(path)} contains a NUL or control character.")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no file system name, no JSON string
        raise UnsafePathError("The path is not valid UTF-8 text.") from None
    normalised = path.replace("\\", "/")
    if not normalised.strip("/"):
        raise UnsafePathError("The path is empty.")
    if normalised.startswith("/") or (len(normalised) > 1 and normalised[1] == ":"):
        raise UnsafePathError(f"The path {_describe(path)} is absolute; use a relative path.")
    if len(normalised.encode("utf-8", "surrogatepass")) > MAX_PATH_BYTES:
        raise UnsafePathError(f"The path is longer than {MAX_PATH_BYTES} bytes.")
    segments = normalised.split("/")
    if segments[-1] == "":
        raise UnsafePathError(f"The path {_describe(path)} names a folder, not a file.")
    for segment in segments:
        if segment in ("", ".", ".."):
            raise UnsafePathError(f"The path {_describe(path)} has an empty, '.' or '..' segment.")
        if len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES:
            raise UnsafePathError(f"A name in the path is longer than {MAX_SEGMENT_BYTES} bytes.")
    if not allow_reserved and segments[0] == RESERVED_DIR:
        raise UnsafePathError(f"The folder {RESERVED_DIR!r} is reserved.")
    return PurePosixPath(*segments)


def resolve_inside(root: Path, relative: PurePosixPath | str) -> Path:
    """Join ``relative`` to ``root`` and prove the result stays inside, symlinks resolved.

    The returned path is the *resolved* target, so a symlink anywhere on the way that
    points out of ``root`` is refused, not followed.
    """
    rel = relative if isinstance(relative, PurePosixPath) else safe_relative_path(relative)
    root_resolved = root.resolve()
    candidate = root_resolved.joinpath(*rel.parts)
    resolved = candidate.resolve(strict=False)
    if not resolved.is_relative_to(root_resolved) or resolved == root_resolved:
        raise UnsafePathError(f"The path {_describe(str(rel))} leads outside its root.")
    return resolved


_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


@contextlib.contextmanager
def _disk_full_is_a_limit() -> Iterator[None]:
    """Turn "no space left" from the workspace's filesystem into a :class:`LimitExceededError`.

    A chat's workspace is its own filesystem, which code in the sandbox can fill; a write
    that meets a full disk is the user's limit being reached, not a fault of the service.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        raise LimitExceededError(
            "The workspace's disk is full: delete files from it (e.g. in outputs/) and retry.",
            details={"reason": "disk_full"},
        ) from None


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class AtomicFile:
    """A file that appears at ``target`` whole and verified, or not at all.

    Sequential :meth:`write` calls are hashed as they go; :meth:`pwrite` (positional,
    for concurrent ranged downloads) is allowed too, in which case the digests are
    computed by reading the file back at :meth:`commit`.

    Args:
        target: Final path (its parent is created).
        tmp_dir: Where the temp file lives; must be on the same filesystem as ``target``.
        max_bytes: Refuse to write more than this.
        expected_size: Checked at commit.
        expected_md5: Raw 16-byte digest (Azure's Content-MD5), checked at commit; MD5 is
            only computed when given.
        expected_sha256: Hex digest, checked at commit.
        overwrite: If false, commit fails with ``FileExistsError`` when ``target`` exists.
        durable: fsync the file and its folder before and after the rename (the default);
            without it the file is atomic but may not survive a crash of the machine.
    """

    def __init__(
        self,
        target: Path,
        *,
        tmp_dir: Path | None = None,
        max_bytes: int | None = None,
        expected_size: int | None = None,
        expected_md5: bytes | None = None,
        expected_sha256: str | None = None,
        overwrite: bool = True,
        durable: bool = True,
    ) -> None:
        self.target = target
        self.durable = durable
        self.max_bytes = max_bytes
        self.expected_size = expected_size
        self.expected_md5 = expected_md5
        self.expected_sha256 = expected_sha256
        self.overwrite = overwrite
        self.bytes_written = 0
        self._extent = 0
        self._flushed = 0
        self._sequential = True
        self._hashed = 0  # positional writes: digests cover [0, _hashed)
        self._pending: dict[int, int] = {}
        self._rehash = False
        self._hash_lock = threading.Lock()
        # MD5 only when there is a Content-MD5 to check: it is half as fast as SHA-256.
        self._md5 = hashlib.md5(usedforsecurity=False) if expected_md5 is not None else None
        self._sha256 = hashlib.sha256()
        self._lock = threading.Lock()
        directory = tmp_dir or target.parent
        self.tmp_path = directory / f".{secrets.token_hex(8)}.part"
        # Read access too: positional transfers hash pieces back from the page cache.
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        with _disk_full_is_a_limit():  # no inode left (for a folder or the file) is a full disk
            target.parent.mkdir(parents=True, exist_ok=True)
            directory.mkdir(parents=True, exist_ok=True)
            self._fd: int | None = os.open(self.tmp_path, flags, 0o644)
        self.sha256: str | None = None
        self.md5: bytes | None = None

    def _check_limit(self, end: int) -> None:
        if self.max_bytes is not None and end > self.max_bytes:
            raise LimitExceededError(
                f"The file is larger than the limit of {self.max_bytes} bytes.",
                details={"limit_bytes": self.max_bytes},
            )

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data`` (the normal, hashed-as-it-goes path)."""
        if self._fd is None:
            raise ValueError("The file is closed.")
        self._check_limit(self._extent + len(data))
        view = memoryview(data)
        with _disk_full_is_a_limit():
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        self._update_digests(data)
        self._extent += len(data)
        self.bytes_written += len(data)
        self._start_writeback()

    def _start_writeback(self) -> None:
        if self._extent - self._flushed >= _WRITEBACK_EVERY:
            self._kick_writeback(self._extent)

    def _kick_writeback(self, upto: int) -> None:
        # Ask the kernel to start writing back [flushed, upto) now, without waiting, so
        # the fsync at commit has little left to do and the disk works while we receive.
        # Only bytes already hashed are passed: their pages may leave the cache.
        if self._fd is None:
            return
        with contextlib.suppress(OSError, AttributeError):
            os.posix_fadvise(self._fd, self._flushed, upto - self._flushed, os.POSIX_FADV_DONTNEED)
        self._flushed = upto

    def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``; thread-safe, for concurrent ranged transfers.

        Digests still advance during the transfer: pieces that extend the contiguous
        prefix are hashed at once (from ``data``, or read back from the page cache for
        pieces that arrived early), so :meth:`commit` has little left to hash.
        """
        if self._fd is None:
            raise ValueError("The file is closed.")
        end = offset + len(data)
        self._check_limit(end)
        view = memoryview(data)
        position = offset
        with _disk_full_is_a_limit():
            while view:
                written = os.pwrite(self._fd, view, position)
                view = view[written:]
                position += written
        with self._lock:
            self._sequential = False
            self._extent = max(self._extent, end)
            self.bytes_written += len(data)
            if offset < self._hashed:
                self._rehash = True  # a rewrite (a retried range): hash the file at commit
            else:
                self._pending[offset] = end
        self._advance_hash(data, offset, wait=False)

    def _advance_hash(self, data: bytes | memoryview | None, offset: int, *, wait: bool) -> None:
        if not self._hash_lock.acquire(blocking=wait):
            return  # another thread is hashing; it or commit will pick this piece up
        try:
            while True:
                with self._lock:
                    start = self._hashed
                    end = self._pending.pop(start, None)
                if end is None or self._rehash:
                    return
                if data is not None and offset == start and start + len(data) == end:
                    self._update_digests(data)
                else:
                    self._update_from_file(start, end)
                data = None
                with self._lock:
                    self._hashed = end
                if end - self._flushed >= _WRITEBACK_EVERY:
                    self._kick_writeback(end)
        finally:
            self._hash_lock.release()

    def _update_digests(self, data: bytes | memoryview) -> None:
        if self._md5 is not None:
            self._md5.update(data)
        self._sha256.update(data)

    def _update_from_file(self, start: int, end: int) -> None:
        assert self._fd is not None
        position = start
        while position < end:
            chunk = os.pread(self._fd, min(_COPY_CHUNK, end - position), position)
            if not chunk:
                raise IntegrityError("The file is shorter than what was written to it.")
            self._update_digests(chunk)
            position += len(chunk)

    def _digest_back(self) -> None:
        md5 = hashlib.md5(usedforsecurity=False) if self._md5 is not None else None
        sha = hashlib.sha256()
        with open(self.tmp_path, "rb") as fh:
            while chunk := fh.read(_COPY_CHUNK):
                if md5 is not None:
                    md5.update(chunk)
                sha.update(chunk)
        self._md5, self._sha256 = md5, sha

    def commit(self) -> Path:
        """Verify, fsync and rename into place; on any failure the temp file is removed."""
        if self._fd is None:
            raise ValueError("The file is closed.")
        with _disk_full_is_a_limit():  # fsync reports space the filesystem could not find
            return self._commit()

    def _commit(self) -> Path:
        assert self._fd is not None
        try:
            if not self._sequential and not self._rehash:
                self._advance_hash(None, -1, wait=True)
            if self.durable:
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None
            size = os.stat(self.tmp_path).st_size
            if self.expected_size is not None and size != self.expected_size:
                raise IntegrityError(
                    f"Transfer incomplete: got {size} bytes, expected {self.expected_size}.",
                    details={"received_bytes": size, "expected_bytes": self.expected_size},
                )
            if not self._sequential and (self._rehash or self._hashed != size):
                self._digest_back()
            self.md5 = self._md5.digest() if self._md5 is not None else None
            self.sha256 = self._sha256.hexdigest()
            if self.expected_md5 is not None and self.md5 != self.expected_md5:
                raise IntegrityError("Transfer corrupted: the MD5 checksum does not match.")
            if self.expected_sha256 is not None and self.sha256 != self.expected_sha256.lower():
                raise IntegrityError("Transfer corrupted: the SHA-256 checksum does not match.")
            if self.overwrite:
                os.replace(self.tmp_path, self.target)
            else:
                # link() fails if the target exists: an atomic no-clobber rename.
                os.link(self.tmp_path, self.target)
                os.unlink(self.tmp_path)
            if self.durable:
                _fsync_dir(self.target.parent)
            return self.target
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and delete the temp file. Safe to call more than once."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp_path)

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


class ManifestEntry(BaseModel):
    """Where one workspace file came from."""

    model_config = ConfigDict(extra="forbid")

    path: str = Field(description="Relative path inside the workspace.")
    source_id: str
    source_type: str
    remote_path: str | None = None
    query: str | None = None
    etag: str | None = None
    version: str | None = None
    size: int
    sha256: str
    mtime_ns: int = 0
    fetched_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    boot_id: str | None = Field(
        default=None, description="Set for non-durable writes: valid only until a reboot."
    )
    extra: dict[str, Any] = Field(default_factory=dict)


class AsyncAtomicWriter:
    """The async face of :class:`AtomicFile`: disk calls run in a worker thread."""

    def __init__(self, file: AtomicFile) -> None:
        self._file = file

    @property
    def path(self) -> Path:
        """The final path."""
        return self._file.target

    @property
    def bytes_written(self) -> int:
        """Bytes written so far."""
        return self._file.bytes_written

    async def write(self, data: bytes | memoryview) -> None:
        """Append ``data``."""
        await asyncio.to_thread(self._file.write, data)

    async def pwrite(self, data: bytes | memoryview, offset: int) -> None:
        """Write ``data`` at ``offset``."""
        await asyncio.to_thread(self._file.pwrite, data, offset)

    @property
    def file(self) -> AtomicFile:
        """The underlying synchronous file."""
        return self._file


class Workspace:
    """A folder that data is fetched into, with a provenance manifest.

    Args:
        root: The folder (created if missing).
        durable: fsync every file before it appears (the default). Without it writes are
            still atomic and verified, and about a third faster on large files, but a file
            is only reused as "unchanged" within the same boot of the machine.
    """

    def __init__(self, root: Path | str, *, durable: bool = True) -> None:
        self.durable = durable
        self.root = Path(root).expanduser().resolve()
        self._state = self.root / RESERVED_DIR
        self.tmp_dir = self._state / "tmp"
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # The reserved folders one at a time, each checked with lstat: a link planted at
            # '.datasources' must be refused, not have mkdir(parents=True) make folders
            # wherever it points.
            for folder in (self._state, self.tmp_dir):
                with contextlib.suppress(FileExistsError):
                    folder.mkdir()
                if not stat.S_ISDIR(os.lstat(folder).st_mode):
                    raise UnsafePathError(
                        f"The workspace's {RESERVED_DIR!r} folder is a link or not a folder."
                    )
        except (FileExistsError, NotADirectoryError):
            raise InvalidInputError(f"The workspace {str(root)!r} is not a folder.") from None
        except PermissionError:
            raise PermissionDeniedError(f"The workspace {str(root)!r} is not writable.") from None
        self.manifest_path = self._state / "manifest.jsonl"
        self.byte_budget: int | None = None
        """Bytes left for files written from now on (a chat's quota); each file is capped at
        it, besides the connector's own ``max_download_bytes``, and spends it."""
        self._entries: dict[str, ManifestEntry] = {}
        self._offset = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @classmethod
    def of(cls, workspace: Workspace | Path | str) -> Workspace:
        """``workspace`` itself, or a (durable) workspace at that folder."""
        return workspace if isinstance(workspace, Workspace) else cls(workspace)

    def path_for(self, remote_path: str) -> Path:
        """The local path a remote name maps to (validated, inside the workspace)."""
        return resolve_inside(self.root, safe_relative_path(remote_path))

    def relative(self, local: Path) -> str:
        """``local`` as a workspace-relative POSIX path."""
        return local.relative_to(self.root).as_posix()

    @contextlib.asynccontextmanager
    async def writer(
        self,
        remote_path: str,
        *,
        max_bytes: int | None = None,
        expected_size: int | None = None,
        expected_md5: bytes | None = None,
        expected_sha256: str | None = None,
        provenance: dict[str, Any] | None = None,
    ) -> AsyncIterator[AsyncAtomicWriter]:
        """Write one file atomically; on success its provenance is appended to the manifest.

        ``provenance`` holds the :class:`ManifestEntry` fields other than path, size,
        sha256 and mtime (which are measured here). Without it no entry is recorded.
        """
        target = self.path_for(remote_path)
        if target.is_dir() and not target.is_symlink():
            raise UnsafePathError(f"{remote_path!r} is a folder in the workspace.")
        if self.byte_budget is not None:
            max_bytes = self.byte_budget if max_bytes is None else min(max_bytes, self.byte_budget)
        # The temp file is made in a worker thread; a cancellation that lands meanwhile must
        # not leave it behind, so the thread is waited for and its file removed.
        creating = asyncio.ensure_future(
            asyncio.to_thread(
                AtomicFile,
                target,
                tmp_dir=self.tmp_dir,
                max_bytes=max_bytes,
                expected_size=expected_size,
                expected_md5=expected_md5,
                expected_sha256=expected_sha256,
                durable=self.durable,
            )
        )
        try:
            file = await asyncio.shield(creating)
        except asyncio.CancelledError:
            await _finish_quietly(creating, lambda made: made.abort())
            raise
        try:
            yield AsyncAtomicWriter(file)
        except BaseException:
            # Shielded: the temp file is gone before the error (or cancellation) goes on.
            aborting = asyncio.ensure_future(asyncio.to_thread(file.abort))
            try:
                await asyncio.shield(aborting)
            except asyncio.CancelledError:
                await _finish_quietly(aborting, lambda _done: None)
            raise
        await asyncio.to_thread(file.commit)
        if self.byte_budget is not None:  # what this file took is no longer left
            self.byte_budget = max(self.byte_budget - file.bytes_written, 0)
        if provenance is not None:
            st = target.stat()
            entry = ManifestEntry(
                path=self.relative(target),
                size=st.st_size,
                sha256=file.sha256 or "",
                mtime_ns=st.st_mtime_ns,
                boot_id=None if self.durable else _boot_id(),
                **provenance,
            )
            try:
                await asyncio.to_thread(self.record, entry)
            except BaseException:
                # Every file in a workspace knows where it came from: one whose provenance
                # could not be recorded does not stay.
                with contextlib.suppress(OSError):
                    target.unlink()
                raise

    def record(self, entry: ManifestEntry) -> None:
        """Append one provenance entry (locked across processes, fsynced).

        On a failed append (a full disk) the manifest is cut back to where it was: a torn
        line would otherwise swallow the next entry appended after it.
        """
        line = (entry.model_dump_json() + "\n").encode()
        # O_NOFOLLOW: a link planted at the manifest's name is refused, never appended through.
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        with self._lock:
            fd = os.open(self.manifest_path, flags, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                start = os.fstat(fd).st_size
                try:
                    with _disk_full_is_a_limit():
                        view = memoryview(line)
                        while view:
                            view = view[os.write(fd, view) :]
                        os.fsync(fd)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
            finally:
                os.close(fd)  # also releases the lock

    def _load(self) -> None:
        try:
            st = self.manifest_path.lstat()
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):  # missing, or a link: no entries
            self._entries, self._offset = {}, 0
            return
        size = st.st_size
        if size < self._offset:  # truncated or replaced: read again from the start
            self._entries, self._offset = {}, 0
        if size == self._offset:
            return
        with open(os.open(self.manifest_path, os.O_RDONLY | os.O_NOFOLLOW), "rb") as fh:
            fh.seek(self._offset)
            data = fh.read()
        complete = data.rfind(b"\n") + 1  # a line still being appended is read next time
        for raw in data[:complete].splitlines():
            try:
                entry = ManifestEntry.model_validate_json(raw)
            except ValueError:
                continue  # a damaged line loses only its own entry
            self._entries[entry.path] = entry
        self._offset += complete

    def manifest(self) -> dict[str, ManifestEntry]:
        """The current provenance of every recorded file whose file still exists."""
        with self._lock:
            self._load()
            entries = dict(self._entries)
        return {p: e for p, e in entries.items() if (self.root / p).is_file()}

    def entry_for(self, local: Path) -> ManifestEntry | None:
        """The provenance of the workspace file ``local`` (however its remote was named)."""
        try:
            rel = self.relative(local)
        except ValueError:
            return None
        with self._lock:
            self._load()
            return self._entries.get(rel)

    def lookup(self, remote_path: str) -> ManifestEntry | None:
        """The provenance of the file ``remote_path`` maps to, if recorded."""
        rel = self.relative(self.path_for(remote_path))
        with self._lock:
            self._load()
            return self._entries.get(rel)

    def is_current(self, remote_path: str, *, source_id: str, etag: str | None) -> Path | None:
        """The local file if it was fetched from the same source and etag and is unchanged."""
        if not etag:
            return None
        entry = self.lookup(remote_path)
        if entry is None or entry.source_id != source_id or entry.etag != etag:
            return None
        if entry.remote_path not in (None, remote_path):
            return None
        if entry.boot_id is not None and entry.boot_id != _boot_id():
            return None  # written without fsync before a reboot: its bytes may be lost
        local = self.path_for(remote_path)
        try:
            st = local.lstat()
        except FileNotFoundError:
            return None
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_size != entry.size
            or st.st_mtime_ns != entry.mtime_ns
        ):
            return None
        return local

    def open_local(self, remote_path: str) -> Path:
        """An existing regular file of the workspace, or :class:`NotFoundError`."""
        local = self.path_for(remote_path)
        if not local.is_file():
            raise NotFoundError(f"{remote_path!r} is not in the workspace.")
        return local

    def iter_files(self) -> Iterator[Path]:
        """Every data file, the reserved folder excluded."""
        for dirpath, dirnames, filenames in os.walk(self.root):
            if Path(dirpath) == self.root and RESERVED_DIR in dirnames:
                dirnames.remove(RESERVED_DIR)
            dirnames.sort()
            for name in sorted(filenames):
                yield Path(dirpath) / name


def _boot_id() -> str:
    """This boot's id (Linux); a non-durable file is trusted only within the same boot."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return f"pid-{os.getpid()}"  # elsewhere: trusted only by this process


def md5_from_base64(value: str | None) -> bytes | None:
    """Decode a Content-MD5 header value; ``None`` for missing or malformed."""
    if not value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return raw if len(raw) == 16 else None


async def _finish_quietly(work: asyncio.Future[Any], then: Callable[[Any], None]) -> None:
    """Wait for ``work`` even through further cancellations; run ``then`` on its result."""
    while not work.done():
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(work)
    if not work.cancelled() and work.exception() is None:
        await asyncio.to_thread(then, work.result())
