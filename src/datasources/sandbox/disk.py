"""Each chat's workspace is a filesystem of its own: the disk quota the kernel enforces.

A chat's files (``data/``, what the service fetched, and ``outputs/``, what its code
wrote) live on one ext4 image (sparse, ``workspace_quota_bytes`` large, no journal),
loop-mounted ``nosuid,nodev,noatime``. The image's root holds the two folders; the host
sees each at the chat's ``data/`` and ``outputs/`` (bind mounts), and the service writes
``data/`` by path as before. One quota for the chat: when the image is full, writes fail
with ``ENOSPC`` for as long as the session lives, the code's and the fetches' alike.
Set-id bits and device files mean nothing there, and inside the sandbox
``/proc/self/mountinfo`` shows ``/data`` and ``/outputs`` (paths on the image) as their
roots: no host path.

A pre-started session gets a fresh image of its own, its folders bound at its slot's
``data/`` and ``outputs/`` as *shared* mounts: the sandbox's views of them are slaves of
those mounts, so a mount the service later makes over the slot's folders on the host
appears inside the running sandbox too. That is how a pre-started session takes a chat:
a chat that has no image yet takes the slot's (renamed to the chat's, its folders bound
at the chat's); a chat that has one gets its folders bound over the slot's — ``data/``
through a read-only bind made first, since a mount that propagates keeps the flags of
the mount it copies — and the sandbox sees the chat's files at once.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["FOLDERS", "MIN_VOLUME_BYTES", "Volumes", "volume_problem"]

MIN_VOLUME_BYTES = 2 * 1024**2
"""The smallest image (ext4 needs room for its own tables)."""

FOLDERS = ("data", "outputs")
"""The folders of a chat's image (its root holds nothing else)."""

# linux/mount.h and sched.h, for the libc calls below (shared with runtime.py's staging).
_MS_RDONLY, _MS_NOSUID, _MS_NODEV, _MS_REMOUNT, _MS_NOATIME = 1, 2, 4, 32, 1024
_MS_BIND, _MS_REC, _MS_PRIVATE, _MS_SLAVE, _MS_SHARED = 4096, 16384, 1 << 18, 1 << 19, 1 << 20
_MNT_DETACH = 2
_CLONE_NEWNS = 0x00020000


@functools.cache
def _libc() -> Any:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong,
                           ctypes.c_char_p]  # fmt: skip
    libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
    libc.unshare.argtypes = [ctypes.c_int]
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
        return self.folder / f"{name}.ext4"

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
                "-E", "root_owner=0:0,lazy_itable_init=1",
                str(image),
            ])  # fmt: skip
        except OSError:
            image.unlink(missing_ok=True)
            raise
        return image

    def mount(
        self, name: str, workspace: Path, *, shared: bool = False, keep: bool = False
    ) -> None:
        """Show image ``name``'s ``data/`` and ``outputs/`` at ``workspace``'s.

        The image is loop-mounted ``nosuid,nodev,noatime`` at a private folder only long
        enough to bind its two folders out (the binds keep it mounted).

        ``shared``: later mounts over those folders propagate to copies of them (a slot's).
        ``keep``: files already in the workspace's folders (plain folders, or an older
        filesystem mounted there) move onto the image first.
        """
        with self._opened(self.image(name)) as root:
            with contextlib.suppress(OSError):
                (root / "lost+found").rmdir()
            for sub in FOLDERS:
                (root / sub).mkdir(mode=0o755, exist_ok=True)
            os.chown(root / "outputs", self.uid, self.gid)
            for sub in FOLDERS:
                target = workspace / sub
                target.mkdir(parents=True, exist_ok=True)
                if keep:
                    legacy = self.legacy(name)
                    if sub == "outputs" and legacy.exists() and not os.path.ismount(target):
                        _run([
                            shutil.which("mount") or "/usr/bin/mount", "-t", "ext4",
                            "-o", "loop,nosuid,nodev,noatime", str(legacy), str(target),
                        ])  # fmt: skip
                    move_entries(target, root / sub)
                    Volumes.release(target)
                    if sub == "outputs":
                        legacy.unlink(missing_ok=True)
                _mount(root / sub, target, _MS_BIND)
                if shared:
                    _mount(None, target, _MS_SHARED)

    @contextlib.contextmanager
    def _opened(self, image: Path) -> Iterator[Path]:
        """The image mounted at a fresh private folder, unmounted after (lazily)."""
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        where = Path(tempfile.mkdtemp(prefix="mnt-", dir=self.folder))
        try:
            _run([
                shutil.which("mount") or "/usr/bin/mount",
                "-t", "ext4", "-o", "loop,nosuid,nodev,noatime", str(image), str(where),
            ])  # fmt: skip
            try:
                # Private: binds taken from it join no peer group of the host's.
                _mount(None, where, _MS_PRIVATE)
                yield where
            finally:
                unmount(where)
        finally:
            with contextlib.suppress(OSError):
                where.rmdir()

    def bind(self, source: Path, target: Path, *, read_only: bool = False) -> None:
        """Show the folder mounted at ``source`` at ``target`` too (``nosuid,nodev``).

        ``read_only``: the mount made at ``target`` is read-only from the start, so every
        copy of it that propagates (into a running sandbox) is too: the bind is made
        read-only at a private folder first, then bound at ``target``.
        """
        target.mkdir(parents=True, exist_ok=True)
        if not read_only:
            _mount(source, target, _MS_BIND)
            return
        where = Path(tempfile.mkdtemp(prefix="ro-", dir=self.folder))
        try:
            _mount(source, where, _MS_BIND)
            try:
                _mount(None, where, _MS_PRIVATE)
                flags = _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | _MS_NOATIME
                _mount(None, where, flags)
                _mount(where, target, _MS_BIND)
            finally:
                unmount(where)
        finally:
            with contextlib.suppress(OSError):
                where.rmdir()

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

    @staticmethod
    def release_workspace(workspace: Path) -> None:
        """Unmount the folders of a workspace (its image is freed with the last one)."""
        for sub in FOLDERS:
            Volumes.release(workspace / sub)

    def rename(self, old: str, new: str) -> None:
        """Image ``old`` becomes ``new`` (mounted or not: the loop device keeps it open)."""
        os.rename(self.image(old), self.image(new))

    def delete(self, name: str) -> None:
        """Remove image ``name`` (once nothing mounts it, its space is free)."""
        self.image(name).unlink(missing_ok=True)
        self.legacy(name).unlink(missing_ok=True)

    def legacy(self, name: str) -> Path:
        """Where an image of ``outputs/`` alone was kept (before ``data/`` had one)."""
        return self.folder / f"{name}.img"


def move_entries(source: Path, target: Path) -> None:
    """Move every entry of ``source`` into ``target`` (the target's clash loses).

    Links are moved as links, never followed (the sandbox wrote these folders).
    """
    for entry in list(source.iterdir()):
        clash = target / entry.name
        if clash.is_dir() and not clash.is_symlink():
            shutil.rmtree(clash)  # the fresh slot's own (a cache): the chat's wins
        elif clash.exists() or clash.is_symlink():
            clash.unlink()
        try:
            os.rename(entry, clash)
        except OSError:  # another filesystem
            shutil.move(str(entry), str(clash))


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
                volumes.mount(name, Path(where), shared=True)
            finally:
                Volumes.release_workspace(Path(where))
        volumes.delete(name)
    except OSError as exc:
        return f"a per-chat filesystem cannot be loop-mounted here ({exc}); loop devices needed"
    return None
