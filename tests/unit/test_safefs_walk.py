"""The descriptor walk of sandbox-writable folders is bounded whatever tree it meets.

Sandboxed code shapes ``outputs/`` at will: a chain of 1,500 folders broke a recursive
walk (RecursionError: every listing and quota count of the chat answered 500) and held one
descriptor per level. The walk is iterative, holds one descriptor at a time, enters no
folder deeper than its cap and says when a cap left something out.
"""

from __future__ import annotations

import os
from pathlib import Path

from datasources import safefs


def _chain(root: Path, depth: int, *, file_at: int | None = None) -> None:
    """``depth`` nested folders ``d/d/d…`` made through descriptors (no path grows)."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for level in range(depth):
            if level == file_at:
                with open(os.open("f.txt", os.O_WRONLY | os.O_CREAT, 0o600, dir_fd=fd), "wb") as fh:
                    fh.write(b"abc")
            os.mkdir("d", dir_fd=fd)
            following = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = following
    finally:
        os.close(fd)


def _unchain(root: Path) -> None:
    """Remove a chain without recursion (pytest's own clean-up of tmp_path recurses)."""
    while (root / "d" / "d").is_dir():
        os.rename(root / "d" / "d", root / "next")
        for entry in (root / "d").iterdir():
            entry.unlink()
        (root / "d").rmdir()
        os.rename(root / "next", root / "d")


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_deep_chain_is_listed_without_recursion(tmp_path: Path) -> None:
    (tmp_path / "top.txt").write_bytes(b"12345")
    _chain(tmp_path, 1500, file_at=3)
    anchor = safefs.open_anchor(tmp_path)
    try:
        listed = list(safefs.listing(anchor))
    finally:
        os.close(anchor)
        _unchain(tmp_path)
    assert listed == [("d/d/d/f.txt", 3), ("top.txt", 5)]


def test_the_walk_holds_one_descriptor_at_a_time(tmp_path: Path) -> None:
    _chain(tmp_path, 60, file_at=59)  # below the depth cap: the file is listed
    anchor = safefs.open_anchor(tmp_path)
    try:
        before = _open_fds()
        walk = safefs.listing(anchor)
        path, size = next(walk)  # suspended at the deepest level
        held = _open_fds() - before
        walk.close()
    finally:
        os.close(anchor)
    assert (path, size) == ("d/" * 59 + "f.txt", 3)
    assert held <= 1, f"{held} descriptors held at depth 60"


def test_usage_says_when_a_cap_left_something_out(tmp_path: Path) -> None:
    (tmp_path / "a.bin").write_bytes(b"x" * 10)
    anchor = safefs.open_anchor(tmp_path)
    try:
        assert safefs.usage(anchor) == (10, True)
        _chain(tmp_path, safefs.MAX_DEPTH + 5)
        assert safefs.usage(anchor) == (10, False)  # deeper than the cap: not entered
        for i in range(5):
            (tmp_path / f"m{i}").write_bytes(b"y")
        names = [p for p, _ in safefs.listing(anchor, max_entries=3)]
        assert len(names) <= 3
        walk = safefs.files(anchor, max_entries=3)
        while True:
            try:
                next(walk)
            except StopIteration as stop:
                assert stop.value is False
                break
    finally:
        os.close(anchor)
