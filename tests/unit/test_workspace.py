"""workspace.py: the one place remote names become local paths, and atomic writes."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from datasources.errors import IntegrityError, LimitExceededError, UnsafePathError
from datasources.testing.contract import HOSTILE_NAMES
from datasources.workspace import (
    AtomicFile,
    ManifestEntry,
    Workspace,
    md5_from_base64,
    resolve_inside,
    safe_relative_path,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a.csv", "a.csv"),
        ("dir/sub/a.csv", "dir/sub/a.csv"),
        ("dir\\sub\\a.csv", "dir/sub/a.csv"),
        ("ünïcødé/文件.csv", "ünïcødé/文件.csv"),
        ("..hidden/...dots", "..hidden/...dots"),
        (".env", ".env"),
    ],
)
def test_safe_names_are_kept(raw: str, expected: str) -> None:
    assert safe_relative_path(raw).as_posix() == expected


@pytest.mark.parametrize(
    "name", [*HOSTILE_NAMES, "a/./b", "a\x1fb", "x\x7f", "/", "\\\\server\\share"]
)
def test_hostile_names_are_rejected(name: str) -> None:
    with pytest.raises(UnsafePathError) as info:
        safe_relative_path(name)
    assert "\x00" not in info.value.message


def test_long_names() -> None:
    safe_relative_path("a" * 255)
    with pytest.raises(UnsafePathError):
        safe_relative_path("a" * 256)
    with pytest.raises(UnsafePathError):
        safe_relative_path("/".join(["abcdefgh"] * 600))
    with pytest.raises(UnsafePathError):
        safe_relative_path(123)  # type: ignore[arg-type]


def test_reserved_folder() -> None:
    with pytest.raises(UnsafePathError):
        safe_relative_path(".datasources/x")
    assert safe_relative_path(".datasources/x", allow_reserved=True).as_posix() == ".datasources/x"


def test_resolve_inside_refuses_symlinks_out(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "chat10").mkdir()
    (root / "out").symlink_to(tmp_path / "chat10")
    (root / "file-out").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafePathError):
        resolve_inside(root, safe_relative_path("out/x"))
    with pytest.raises(UnsafePathError):
        resolve_inside(root, safe_relative_path("file-out"))
    assert resolve_inside(root, "a/b") == root.resolve() / "a" / "b"


def test_atomic_file_commit_and_digests(tmp_path: Path) -> None:
    data = os.urandom(100_000)
    target = tmp_path / "d" / "f.bin"
    with AtomicFile(
        target,
        expected_size=len(data),
        expected_md5=hashlib.md5(data).digest(),
        expected_sha256=hashlib.sha256(data).hexdigest(),
    ) as file:
        file.write(data[:50_000])
        file.write(data[50_000:])
    assert target.read_bytes() == data
    assert file.sha256 == hashlib.sha256(data).hexdigest()
    assert [p.name for p in target.parent.iterdir()] == ["f.bin"]


def test_atomic_file_positional_writes(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    file = AtomicFile(tmp_path / "f", expected_sha256=hashlib.sha256(data).hexdigest())
    file.pwrite(data[5000:], 5000)
    file.pwrite(data[:5000], 0)
    file.commit()
    assert (tmp_path / "f").read_bytes() == data


@pytest.mark.parametrize(
    "kwargs",
    [
        {"expected_size": 11},
        {"expected_md5": b"\x00" * 16},
        {"expected_sha256": "0" * 64},
    ],
)
def test_atomic_file_verification_failure_leaves_nothing(
    tmp_path: Path, kwargs: dict[str, Any]
) -> None:
    target = tmp_path / "f"
    target.write_bytes(b"old content")
    file = AtomicFile(target, tmp_dir=tmp_path / "tmp", **kwargs)
    file.write(b"new content!")
    with pytest.raises(IntegrityError):
        file.commit()
    assert target.read_bytes() == b"old content"
    assert not list((tmp_path / "tmp").iterdir())


def test_atomic_file_limit_and_exception(tmp_path: Path) -> None:
    with pytest.raises(LimitExceededError), AtomicFile(tmp_path / "f", max_bytes=5) as file:
        file.write(b"1234")
        file.write(b"56")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RuntimeError), AtomicFile(tmp_path / "g") as file:
        file.write(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_file_no_clobber(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"keep")
    file = AtomicFile(tmp_path / "f", overwrite=False)
    file.write(b"other")
    with pytest.raises(FileExistsError):
        file.commit()
    assert (tmp_path / "f").read_bytes() == b"keep"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]


async def test_workspace_writer_records_provenance(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    async with workspace.writer(
        "data/a.csv", provenance={"source_id": "s", "source_type": "t", "etag": "e1"}
    ) as writer:
        await writer.write(b"a,b\n")
    entry = workspace.lookup("data/a.csv")
    assert entry is not None and entry.size == 4 and entry.etag == "e1"
    assert entry.sha256 == hashlib.sha256(b"a,b\n").hexdigest()
    assert workspace.is_current("data/a.csv", source_id="s", etag="e1") == writer.path
    assert workspace.is_current("data/a.csv", source_id="s", etag="e2") is None
    assert workspace.is_current("data/a.csv", source_id="other", etag="e1") is None
    # A local edit invalidates the cache even with the same etag.
    writer.path.write_bytes(b"edited")
    assert workspace.is_current("data/a.csv", source_id="s", etag="e1") is None
    assert [p.name for p in workspace.iter_files()] == ["a.csv"]


async def test_workspace_writer_failure_leaves_no_file_and_no_entry(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "ws")
    with pytest.raises(ConnectionError):
        async with workspace.writer(
            "a.bin", provenance={"source_id": "s", "source_type": "t"}
        ) as w:
            await w.write(b"partial")
            raise ConnectionError("network went away")
    assert not (workspace.root / "a.bin").exists()
    assert list(workspace.tmp_dir.iterdir()) == []
    assert workspace.lookup("a.bin") is None


async def test_workspace_refuses_escapes(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path / "chat1")
    for name in ("../chat10/x", "a/../../chat10/x", "/etc/passwd", ".datasources/manifest.jsonl"):
        with pytest.raises(UnsafePathError):
            async with workspace.writer(name) as w:
                await w.write(b"x")
    assert not (tmp_path / "chat10").exists()


def test_manifest_survives_a_damaged_line(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    (tmp_path / "a").write_text("a")
    entry = ManifestEntry(path="a", source_id="s", source_type="t", size=1, sha256="x")
    workspace.record(entry)
    with open(workspace.manifest_path, "a") as fh:
        fh.write("{not json}\n")
    workspace.record(entry.model_copy(update={"etag": "2"}))
    fresh = Workspace(tmp_path)
    assert fresh.manifest()["a"].etag == "2"


def test_md5_header_parsing() -> None:
    digest = hashlib.md5(b"x").digest()
    assert md5_from_base64(base64.b64encode(digest).decode()) == digest
    assert md5_from_base64("not base64!") is None
    assert md5_from_base64(None) is None
    assert md5_from_base64(base64.b64encode(b"short").decode()) is None


def test_positional_writes_hash_during_the_transfer(tmp_path: Path) -> None:
    import random

    data = os.urandom(64 * 1024 + 123)
    pieces = [(o, data[o : o + 4096]) for o in range(0, len(data), 4096)]
    random.Random(7).shuffle(pieces)
    file = AtomicFile(
        tmp_path / "f",
        expected_md5=hashlib.md5(data).digest(),
        expected_sha256=hashlib.sha256(data).hexdigest(),
    )
    for offset, piece in pieces:
        file.pwrite(piece, offset)
    assert file._hashed == len(data)  # all hashed before commit, in order
    file.commit()
    assert (tmp_path / "f").read_bytes() == data


def test_a_rewritten_range_is_hashed_from_the_file(tmp_path: Path) -> None:
    data = os.urandom(10_000)
    file = AtomicFile(tmp_path / "f", expected_sha256=hashlib.sha256(data).hexdigest())
    file.pwrite(b"\x00" * 5000, 0)  # a first attempt that is later retried
    file.pwrite(data[:5000], 0)
    file.pwrite(data[5000:], 5000)
    file.commit()
    assert (tmp_path / "f").read_bytes() == data


async def test_non_durable_files_are_trusted_only_within_one_boot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import datasources.workspace as module

    workspace = Workspace(tmp_path / "ws", durable=False)
    fsyncs: list[int] = []
    monkeypatch.setattr(os, "fsync", lambda fd: fsyncs.append(fd))  # the module's os
    async with workspace.writer(
        "a.csv", provenance={"source_id": "s", "source_type": "t", "etag": "e"}
    ) as w:
        await w.write(b"data")
    entry = workspace.lookup("a.csv")
    assert entry is not None and entry.boot_id == module._boot_id()
    assert len(fsyncs) == 1  # the manifest line only, not the data
    assert workspace.is_current("a.csv", source_id="s", etag="e") is not None
    monkeypatch.setattr(module, "_boot_id", lambda: "another-boot")
    assert workspace.is_current("a.csv", source_id="s", etag="e") is None
