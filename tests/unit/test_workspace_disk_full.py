"""A workspace whose filesystem is full: the write stops with the user's limit, not a crash.

A chat's workspace is its own small filesystem, and code in the sandbox can fill it. These
tests use a real tmpfs of a few pages (root mounts it, as CI runs) and check that a fetch
meeting a full disk raises :class:`LimitExceededError`, leaves no temp file and no target, and
that a manifest append that meets a full disk neither keeps a file without provenance nor
leaves a torn line that would swallow the next entry.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from datasources.errors import LimitExceededError
from datasources.workspace import RESERVED_DIR, Workspace
from tests.conftest import IN_CI

PAGE = os.sysconf("SC_PAGE_SIZE")
PROVENANCE = {"source_id": "s", "source_type": "local_folder", "remote_path": "x"}


@contextlib.contextmanager
def _tmpfs(tmp_path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs with ``options`` (root mounts it, as CI runs)."""
    if os.geteuid() != 0:
        if IN_CI:
            pytest.fail("CI runs as root: the full-disk tests need to mount a tmpfs")
        pytest.skip("mounting a tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path, f"size={16 * PAGE}") as mount:
        yield mount


def _fill(path: Path) -> int:
    """Write ``path`` until the disk is full; the number of bytes it holds."""
    written = 0
    with open(path, "wb", buffering=0) as fh:
        try:
            while True:
                written += fh.write(b"f" * PAGE)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return written


def _leftovers(workspace: Workspace) -> list[str]:
    return sorted(p.name for p in workspace.tmp_dir.iterdir())


async def test_a_file_larger_than_the_free_space_is_a_limit_and_leaves_nothing(
    small_disk: Path,
) -> None:
    workspace = Workspace(small_disk / "ws")
    with pytest.raises(LimitExceededError) as caught:
        async with workspace.writer("big.bin", provenance=PROVENANCE) as out:
            for _ in range(32):
                await out.write(b"b" * PAGE)
    assert caught.value.details == {"reason": "disk_full"}
    assert "disk is full" in str(caught.value)
    assert not (small_disk / "ws" / "big.bin").exists()
    assert _leftovers(workspace) == []
    assert workspace.manifest() == {}


async def test_a_manifest_append_on_a_full_disk_keeps_no_file_and_no_torn_line(
    small_disk: Path,
) -> None:
    workspace = Workspace(small_disk / "ws")
    async with workspace.writer("first.csv", provenance=PROVENANCE) as out:
        await out.write(b"a,b\n")
    manifest = small_disk / "ws" / RESERVED_DIR / "manifest.jsonl"
    before = manifest.read_bytes()
    # Fill the disk, then free exactly two pages: the next file fits, its manifest line
    # would need a page more (the manifest's first page is full of padding below).
    manifest.write_bytes(before + b"\n" * (PAGE - len(before)))  # blank lines are ignored
    padded = manifest.read_bytes()
    filler = small_disk / "filler"
    _fill(filler)
    os.truncate(filler, filler.stat().st_size - 2 * PAGE)
    with pytest.raises(LimitExceededError):
        async with workspace.writer("second.csv", provenance=PROVENANCE) as out:
            await out.write(b"s" * (2 * PAGE))
    assert not (small_disk / "ws" / "second.csv").exists()  # no file without provenance
    assert manifest.read_bytes() == padded  # nothing torn left behind
    assert _leftovers(workspace) == []
    # Room again: the next entry is whole and readable, and the first is still there.
    filler.unlink()
    async with workspace.writer("third.csv", provenance=PROVENANCE) as out:
        await out.write(b"t\n")
    assert set(Workspace(small_disk / "ws").manifest()) == {"first.csv", "third.csv"}


@pytest.fixture
def few_inodes(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path, f"size={64 * PAGE},nr_inodes=32") as mount:
        yield mount


async def test_a_new_folder_on_a_disk_without_inodes_is_a_limit(few_inodes: Path) -> None:
    """Found by review: the target's folder was made outside the full-disk guard, so a
    fetch into a new folder (``sub/x.csv``) on a filesystem out of inodes (which sandboxed
    code can cause with empty files) was a raw ``ENOSPC``, a 500."""
    workspace = Workspace(few_inodes / "ws")
    n = 0
    with pytest.raises(OSError) as full:
        while True:  # use up every inode, as code in the sandbox can
            (few_inodes / f"empty-{n}").touch()
            n += 1
    assert full.value.errno == errno.ENOSPC
    with pytest.raises(LimitExceededError) as caught:
        async with workspace.writer("sub/x.csv", provenance=PROVENANCE) as out:
            await out.write(b"x\n")
    assert caught.value.details == {"reason": "disk_full"}
    assert not (few_inodes / "ws" / "sub").exists()
