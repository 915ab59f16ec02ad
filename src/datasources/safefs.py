"""Files under folders the sandbox can write, reached without following a name it controls.

Code in the sandbox can create, rename and swap entries in its writable folders at any
moment, so a path checked by the service and opened later may, by then, lead through a
symlink to any file of the host. Every service-side operation under such a folder goes
through this module, which never resolves a symlink and never reopens a name:

* a folder the service owns (a chat's workspace) is opened once, as an *anchor*
  descriptor, and everything below is reached relative to it;
* :func:`open_beneath` opens a relative path with ``openat2(2)`` and
  ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``: the kernel refuses a
  symlink at *any* component and any step out of the anchor, atomically with the open.
  Where ``openat2`` is missing (Linux before 5.6, or a seccomp profile that refuses it),
  the same guarantee comes from walking the path one component at a time, each opened
  ``O_NOFOLLOW`` relative to the descriptor of the folder before it (``..`` is never a
  component);
* what was opened is checked on its descriptor (``fstat``: a regular file, its size), and
  read from that same descriptor — never opened again by path;
* new files are created ``O_CREAT | O_EXCL | O_NOFOLLOW`` relative to a folder
  descriptor, so a name planted in advance (a symlink, dangling or not, a fifo) makes the
  write fail instead of going where it points; replacement is by ``renameat`` of a new
  file, which replaces a link rather than following it;
* listing is ``scandir`` on a descriptor with ``lstat`` semantics, and removal is
  ``unlinkat`` relative to the folder's descriptor.

Opening never blocks on a fifo (``O_NONBLOCK``) and refuses anything that is not a regular
file or folder.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import platform
import secrets
import stat
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from datasources.errors import NotFoundError, UnsafePathError

__all__ = [
    "SafeFile",
    "create_file",
    "files",
    "listing",
    "mechanism",
    "open_anchor",
    "open_beneath",
    "open_dir",
    "open_file",
    "read_file",
    "remove",
    "replace_file",
    "split",
    "usage",
]

_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | _CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | _CLOEXEC

# linux/openat2.h
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_RESOLVE = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
# openat2 has the same number on every architecture with the unified syscall table
# (x86_64, aarch64, arm, riscv, i386: 437); elsewhere the walk is used.
_SYS_OPENAT2 = 437 if platform.machine() in ("x86_64", "aarch64", "arm64", "riscv64") else None


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64),
        ("mode", ctypes.c_uint64),
        ("resolve", ctypes.c_uint64),
    ]


def _load_syscall() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    if _SYS_OPENAT2 is None:
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    except OSError:
        return None
    call = libc.syscall
    call.restype = ctypes.c_long
    return call


_syscall = _load_syscall()
_use_openat2: bool | None = None  # decided by the first call: None means not tried yet


def _openat2(dir_fd: int, path: str, flags: int, mode: int) -> int:
    assert _syscall is not None and _SYS_OPENAT2 is not None
    how = _OpenHow(flags, mode if flags & os.O_CREAT else 0, _RESOLVE)
    raw = os.fsencode(path)
    for _ in range(16):
        fd = int(
            _syscall(
                ctypes.c_long(_SYS_OPENAT2),
                ctypes.c_int(dir_fd),
                ctypes.c_char_p(raw),
                ctypes.byref(how),
                ctypes.c_size_t(ctypes.sizeof(how)),
            )
        )
        if fd >= 0:
            return fd
        code = ctypes.get_errno()
        if code not in (errno.EAGAIN, errno.EINTR):  # a concurrent rename: just try again
            raise OSError(code, os.strerror(code), path)
    raise OSError(errno.EAGAIN, os.strerror(errno.EAGAIN), path)


def _openat2_works() -> bool:
    global _use_openat2
    if _use_openat2 is None:
        if _syscall is None:
            _use_openat2 = False
        else:
            root = os.open("/", _DIR_FLAGS)
            try:
                os.close(_openat2(root, ".", _DIR_FLAGS, 0))
            except OSError:
                # ENOSYS: an old kernel; EPERM: a seccomp profile that does not know it;
                # anything else: not usable either. The walk is as safe, only slower.
                _use_openat2 = False
            else:
                _use_openat2 = True
            finally:
                os.close(root)
    return _use_openat2


def mechanism() -> str:
    """How paths are opened here: ``"openat2"`` or ``"O_NOFOLLOW walk"`` (for logs)."""
    return "openat2" if _openat2_works() else "O_NOFOLLOW walk"


def _force_walk(value: bool) -> None:
    """Use the per-component walk even where ``openat2`` exists (tests prove both)."""
    global _use_openat2
    _use_openat2 = None if not value else False
    if not value:
        _openat2_works()


def split(relative: str | PurePosixPath) -> list[str]:
    """The components of a relative path, or :class:`UnsafePathError`.

    This is a shape check, not the boundary: the boundary is that nothing below is ever
    opened through a symlink. It refuses what can never name an entry beneath a folder:
    absolute paths, ``.``/``..``/empty components, NUL, text that is not UTF-8.
    """
    text = relative.as_posix() if isinstance(relative, PurePosixPath) else relative
    if not isinstance(text, str) or not text or "\0" in text or text.startswith("/"):
        raise UnsafePathError("The path is not a relative path.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafePathError("The path is not valid UTF-8 text.") from None
    parts = text.split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise UnsafePathError("The path has an empty, '.' or '..' component.")
    return parts


def _walk(dir_fd: int, parts: list[str], flags: int, mode: int) -> int:
    current = dir_fd
    try:
        for name in parts[:-1]:
            try:
                following = os.open(name, _DIR_FLAGS, dir_fd=current)
            except NotADirectoryError:
                # O_NOFOLLOW | O_DIRECTORY on a link says ENOTDIR: tell it apart, as
                # openat2 does, so both mechanisms refuse a link the same way.
                st = os.stat(name, dir_fd=current, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), name) from None
                raise
            if current != dir_fd:
                os.close(current)
            current = following
        return os.open(parts[-1], flags | os.O_NOFOLLOW | _CLOEXEC, mode, dir_fd=current)
    finally:
        if current != dir_fd:
            os.close(current)


def open_beneath(dir_fd: int, relative: str | PurePosixPath, flags: int, mode: int = 0o600) -> int:
    """``open`` ``relative`` beneath ``dir_fd``, following no symlink anywhere on the way.

    Raises:
        UnsafePathError: the path's shape, or a symlink (or a step outside) on the way.
        OSError: anything else (``ENOENT``, ``ENOTDIR``, ``EEXIST`` …), for the caller.
    """
    parts = split(relative)
    try:
        if _openat2_works():
            return _openat2(dir_fd, "/".join(parts), flags | _CLOEXEC, mode)
        return _walk(dir_fd, parts, flags, mode)
    except OSError as exc:
        # ELOOP: a symlink where O_NOFOLLOW/RESOLVE_NO_SYMLINKS forbids one; EXDEV: a
        # step out of the anchor. Both are the sandbox's doing, never a normal miss.
        if exc.errno in (errno.ELOOP, errno.EXDEV):
            raise UnsafePathError("The path leads through a link; it is not followed.") from None
        raise


def open_anchor(path: Path) -> int:
    """A descriptor of a folder the service owns (a chat's workspace), its last name
    not followed if it is a link."""
    try:
        return os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        raise NotFoundError("The folder does not exist.") from None
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError("The folder is a link or not a folder.") from None
        raise


def open_dir(dir_fd: int, relative: str | PurePosixPath, *, create: bool = False) -> int:
    """A descriptor of the folder ``relative`` beneath ``dir_fd`` (made first if asked).

    Only the last folder is created, ``mkdirat`` relative to its parent's descriptor, so
    an existing link of that name is left alone and then refused.
    """
    parts = split(relative)
    if create:
        parent = open_dir(dir_fd, "/".join(parts[:-1])) if len(parts) > 1 else dir_fd
        try:
            with contextlib.suppress(FileExistsError):
                os.mkdir(parts[-1], 0o700, dir_fd=parent)
            return open_beneath(parent, parts[-1], _DIR_FLAGS)
        finally:
            if parent != dir_fd:
                os.close(parent)
    return open_beneath(dir_fd, "/".join(parts), _DIR_FLAGS)


@dataclass
class SafeFile:
    """A regular file opened beneath an anchor: its descriptor and the ``fstat`` of it."""

    fd: int
    size: int
    mtime: float
    name: str

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def __del__(self) -> None:
        self.close()  # a response that was never sent must not leak its descriptor

    def __enter__(self) -> SafeFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chunks(
        self, size: int = 1024 * 1024, *, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The bytes ``[start, end)`` (default: all, up to the size it had when opened),
        read from this descriptor."""
        offset, stop = start, self.size if end is None else min(end, self.size)
        while offset < stop:
            data = os.pread(self.fd, min(size, stop - offset), offset)
            if not data:
                return  # shrunk since it was opened: what is there
            offset += len(data)
            yield data


def open_file(dir_fd: int, relative: str | PurePosixPath) -> SafeFile:
    """Open an existing regular file beneath ``dir_fd`` for reading.

    Raises:
        NotFoundError: missing, or not a regular file (a folder, fifo, device, socket).
        UnsafePathError: a link on the way.
    """
    try:
        fd = open_beneath(dir_fd, relative, _READ_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise NotFoundError("No such file.") from None
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, "?")
        raise NotFoundError(f"The file cannot be opened ({reason}).") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise NotFoundError("Not a regular file.")
    return SafeFile(fd, st.st_size, st.st_mtime, split(relative)[-1])


def read_file(dir_fd: int, relative: str | PurePosixPath, *, limit: int) -> bytes:
    """A regular file's bytes (at most ``limit``), read through :func:`open_file`."""
    with open_file(dir_fd, relative) as file:
        return os.pread(file.fd, limit, 0)


def create_file(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Write a **new** file ``name`` in the folder ``dir_fd``; an existing name of any kind
    (a planted link included) makes it fail with ``FileExistsError``."""
    if "/" in name:
        raise UnsafePathError("A new file is named within one folder.")
    split(name)
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | _CLOEXEC, mode,
                 dir_fd=dir_fd)  # fmt: skip
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(name, dir_fd=dir_fd)
        raise
    os.close(fd)


def replace_file(dir_fd: int, name: str, data: bytes, *, mode: int = 0o644) -> None:
    """Atomically set ``name`` in ``dir_fd`` to ``data``: a new temp file, then ``renameat``
    (which replaces whatever is at ``name`` — a link too — without following it)."""
    split(name)
    tmp = f".tmp-{secrets.token_hex(8)}"
    create_file(dir_fd, tmp, data, mode=mode)
    try:
        os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise


MAX_DEPTH = 64
"""Folders deeper than this below the walked folder are not entered (nor listed)."""
MAX_ENTRIES = 200_000
"""Entries (files and folders) a walk looks at before it stops."""


def listing(
    dir_fd: int,
    *,
    skip: frozenset[str] = frozenset(),
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> Generator[tuple[str, int], None, None]:
    """Every regular file beneath ``dir_fd`` as (relative path, size), sorted by name.

    Folders are entered through descriptors opened without following links; links,
    fifos, sockets and devices are not listed. Names in ``skip`` are left out at the top.
    The walk is bounded (see :func:`files`): what is beyond the caps is not listed.
    """
    for path, st in files(dir_fd, skip=skip, max_depth=max_depth, max_entries=max_entries):
        yield path, st.st_size


def files(
    dir_fd: int,
    *,
    skip: frozenset[str] = frozenset(),
    max_depth: int = MAX_DEPTH,
    max_entries: int = MAX_ENTRIES,
) -> Generator[tuple[str, os.stat_result], None, bool]:
    """Like :func:`listing`, with each file's ``lstat`` (sizes, blocks, times).

    What a watchdog needs to count or prune a sandbox-writable folder: e.g. remove what
    changed since a moment with ``remove(dir_fd, path)`` for each path whose ``st_mtime``
    is newer — every step relative to descriptors, none through a link.

    The tree is the sandbox's to shape, so the walk is iterative (no recursion to
    exhaust), holds one descriptor at a time (each folder is opened from ``dir_fd`` by its
    path of names, listed and closed before the next), enters no folder deeper than
    ``max_depth`` and looks at no more than ``max_entries`` entries. The generator's
    return value says whether the walk was complete (nothing left out by a cap).
    """
    # A stack of folders still to list, each with the entries of its parent that come
    # after it: depth-first in name order, as a recursive walk would yield. Entries are
    # counted as they are read, so what the walk holds is bounded by ``max_entries``.
    stack: list[tuple[str, int, list[tuple[str, os.stat_result]]]] = []
    found, complete = _entries(dir_fd, skip, max_entries)
    left = max_entries - len(found)
    prefix, depth = "", 0
    while True:
        while found:
            name, st = found.pop()
            if stat.S_ISREG(st.st_mode):
                yield prefix + name, st
            elif stat.S_ISDIR(st.st_mode):
                if depth + 1 > max_depth:
                    complete = False
                    continue
                try:
                    sub = open_beneath(dir_fd, prefix + name, _DIR_FLAGS)
                except (OSError, UnsafePathError) as exc:
                    # Gone, or swapped for a non-folder since it was listed: skipped.
                    # Anything else (no permission, a name too long) left something
                    # uncounted, and the walk says it is incomplete.
                    if getattr(exc, "errno", None) not in (errno.ENOENT, errno.ENOTDIR) and not (
                        isinstance(exc, UnsafePathError)
                    ):
                        complete = False
                    continue
                try:
                    inner, whole = _entries(sub, frozenset(), left)
                finally:
                    os.close(sub)
                left -= len(inner)
                complete = complete and whole
                stack.append((prefix, depth, found))
                found, prefix, depth = inner, f"{prefix}{name}/", depth + 1
        if not stack:
            return complete
        prefix, depth, found = stack.pop()


def _entries(
    dir_fd: int, skip: frozenset[str], limit: int
) -> tuple[list[tuple[str, os.stat_result]], bool]:
    """At most ``limit`` of a folder's entries with their ``lstat``, last name first (so
    they pop in name order), and whether that was all of them."""
    found: list[tuple[str, os.stat_result]] = []
    whole = True
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            if entry.name in skip:
                continue
            if len(found) >= limit:
                whole = False
                break
            found.append((entry.name, entry.stat(follow_symlinks=False)))
    found.sort(reverse=True)
    return found, whole


def usage(dir_fd: int, *, skip: frozenset[str] = frozenset()) -> tuple[int, bool]:
    """Bytes of regular files beneath ``dir_fd`` and whether the walk saw everything."""
    total = 0
    walk = files(dir_fd, skip=skip)
    while True:
        try:
            _path, st = next(walk)
        except StopIteration as stop:
            return total, bool(stop.value)
        total += st.st_size


def remove(dir_fd: int, relative: str | PurePosixPath) -> None:
    """Remove the file (or link, or whole folder) ``relative`` beneath ``dir_fd``.

    The parent is reached without following links, and the entry is removed with
    ``unlinkat`` — a link is removed itself, never its target; a folder is removed by
    ``shutil.rmtree`` on descriptors, which does not follow links either.
    """
    import shutil

    parts = split(relative)
    parent = open_dir(dir_fd, "/".join(parts[:-1])) if len(parts) > 1 else dir_fd
    try:
        st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(parts[-1], dir_fd=parent)
        else:
            os.unlink(parts[-1], dir_fd=parent)
    finally:
        if parent != dir_fd:
            os.close(parent)
