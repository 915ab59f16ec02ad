"""Each chat's ``outputs/`` is a filesystem of its own: the disk quota the kernel enforces.

A chat's ``outputs/`` is an ext4 image (sparse, ``workspace_quota_bytes`` large, no
journal) loop-mounted ``nosuid,nodev,noatime`` on the host at the chat's
``outputs/``. When it is full, writes fail with ``ENOSPC`` for as long as the session
lives: during an execution, after it (a thread left writing), across executions. Set-id
bits and device files mean nothing there on the host, and inside the sandbox the mount
shows ``/`` as its root, not a host path.

A pre-started session gets a fresh image of its own, mounted at its slot's ``outputs/``
as a *shared* mount: the sandbox's view of it is a slave of that mount, so a mount the
service later makes over the slot's ``outputs/`` on the host appears inside the running
sandbox too. That is how a pre-started session takes a chat: a new chat keeps the
slot's image (renamed to the chat's and bound at the chat's ``outputs/``); a chat that
has one binds it over the slot's, and the sandbox sees the chat's files at once.

Mounting needs root (``CAP_SYS_ADMIN``) and loop devices; :func:`volume_problem` says
when they are missing, and ``bwrap`` mode then refuses to run code.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["MIN_VOLUME_BYTES", "Volumes", "volume_problem"]

MIN_VOLUME_BYTES = 2 * 1024**2
"""The smallest image (ext4 needs room for its own tables)."""

_MS_BIND, _MS_SHARED = 4096, 1 << 20
_MNT_DETACH = 2


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]  # fmt: skip
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    return libc


def _mount(source: Path | None, target: Path, flags: int) -> None:
    src = bytes(source) if source is not None else None
    if _libc().mount(src, bytes(target), None, flags, None) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"mount: {os.strerror(number)}", str(target))


def unmount(target: Path) -> None:
    """Detach the mount at ``target`` (lazily: open files keep it until closed)."""
    if _libc().umount2(bytes(target), _MNT_DETACH) != 0:
        number = ctypes.get_errno()
        raise OSError(number, f"umount: {os.strerror(number)}", str(target))


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, timeout=60, check=False)
    if done.returncode != 0:
        detail = done.stderr.decode("utf-8", "replace").strip()[:200]
        raise OSError(f"{argv[0]} failed: {detail}")


class Volumes:
    """The images of one service's chats, in ``folder`` (``<workspaces>/.volumes``).

    Args:
        folder: Where the images live (0700, never inside a workspace).
        size: Bytes of each image: the chat's quota for ``outputs/``.
        uid: Owner of each image's root folder (the sandbox's host uid).
        gid: Its group.
    """

    def __init__(self, folder: Path, *, size: int, uid: int, gid: int) -> None:
        self.folder = folder
        self.size = max(size, MIN_VOLUME_BYTES)
        self.uid, self.gid = uid, gid

    def image(self, name: str) -> Path:
        """The image file called ``name`` (a chat id or a slot's name)."""
        return self.folder / f"{name}.img"

    def create(self, name: str) -> Path:
        """A new, empty image (sparse: it takes the disk its files take)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        image = self.image(name)
        fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        try:
            _run([
                shutil.which("mkfs.ext4") or "/usr/sbin/mkfs.ext4", "-q", "-F",
                "-O", "^has_journal", "-m", "0",
                "-E", f"root_owner={self.uid}:{self.gid},lazy_itable_init=1",
                str(image),
            ])  # fmt: skip
        except OSError:
            image.unlink(missing_ok=True)
            raise
        return image

    def mount(self, name: str, target: Path, *, shared: bool = False, fresh: bool = False) -> None:
        """Loop-mount image ``name`` at ``target`` (``nosuid,nodev,noatime``).

        ``shared``: later mounts over ``target`` propagate to copies of it (a slot's).
        ``fresh``: a new image: its ``lost+found`` goes (the folder is the chat's).
        """
        target.mkdir(parents=True, exist_ok=True)
        _run([
            shutil.which("mount") or "/usr/bin/mount",
            "-t", "ext4", "-o", "loop,nosuid,nodev,noatime",
            str(self.image(name)), str(target),
        ])  # fmt: skip
        if fresh:
            with contextlib.suppress(OSError):
                (target / "lost+found").rmdir()
        if shared:
            _mount(None, target, _MS_SHARED)

    @staticmethod
    def bind(source: Path, target: Path) -> None:
        """Show the filesystem mounted at ``source`` at ``target`` too."""
        target.mkdir(parents=True, exist_ok=True)
        _mount(source, target, _MS_BIND)

    @staticmethod
    def release(target: Path) -> None:
        """Unmount everything stacked at ``target`` (nothing if nothing is)."""
        for _ in range(8):
            if not os.path.ismount(target):
                return
            try:
                unmount(target)
            except OSError:
                return

    def rename(self, old: str, new: str) -> None:
        """Image ``old`` becomes ``new`` (mounted or not: the loop device keeps it open)."""
        os.rename(self.image(old), self.image(new))

    def delete(self, name: str) -> None:
        """Remove image ``name`` (once nothing mounts it, its space is free)."""
        self.image(name).unlink(missing_ok=True)


@functools.cache
def volume_problem(folder: Path) -> str | None:
    """Why per-chat filesystems cannot be made here (in ``folder``), or None."""
    if os.geteuid() != 0:
        return (
            "per-chat filesystems (the disk quota) need the service to run as root, to "
            "loop-mount them"
        )
    for tool in ("mkfs.ext4", "mount"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is missing (Debian: e2fsprogs, mount)"
    try:
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        volumes = Volumes(folder, size=MIN_VOLUME_BYTES, uid=1, gid=1)
        name = f"probe-{os.getpid()}"
        volumes.delete(name)
        volumes.create(name)
        with tempfile.TemporaryDirectory(dir=folder) as where:
            try:
                volumes.mount(name, Path(where) / "m", shared=True)
            finally:
                Volumes.release(Path(where) / "m")
        volumes.delete(name)
    except OSError as exc:
        return f"a per-chat filesystem cannot be loop-mounted here ({exc}); loop devices needed"
    return None
