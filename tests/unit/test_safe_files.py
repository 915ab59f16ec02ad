"""safefs and the workspace path functions against hostile names, planted links and races.

Property tests build random trees of folders, files, links (out of the anchor, inside it,
dangling), fifos and device nodes, then open, list, create and remove hostile paths in
them — with ``openat2`` and with the per-component ``O_NOFOLLOW`` walk — and check one
thing: nothing outside the anchor, and nothing reached through a link, is ever touched.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import os
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from datasources import safefs
from datasources.errors import DataSourceError, NotFoundError, UnsafePathError
from datasources.sandbox.session import OutputBudget
from datasources.workspace import (
    RESERVED_DIR,
    ManifestEntry,
    Workspace,
    resolve_inside,
    safe_relative_path,
)

MECHANISMS = ["openat2", "walk"]
SECRET = b"outside-the-anchor"
PROPERTY = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(params=MECHANISMS)
def mechanism(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "openat2" and safefs.mechanism() != "openat2":
        pytest.fail("openat2 is missing on this kernel; the walk is then the only mechanism")
    safefs._force_walk(request.param == "walk")
    yield request.param
    safefs._force_walk(False)


# -- shapes of names ---------------------------------------------------------------------

HOSTILE = [
    "..", ".", "", "/", "/etc/passwd", "a/../../etc/passwd", "a//b", "a/./b", "a\0b", "\0",
    "../" * 40 + "etc/passwd", "x" * 256, "y" * 5000, RESERVED_DIR, f"{RESERVED_DIR}/tmp/x",
    "con", "nul", "aux", "COM1", "dev/null", "\u202efig.png", "é/ü/ß", "\ud800", "a\\..\\..\\b",
    "C:/Windows", "-rf", " ", "a/", "/a",
]  # fmt: skip

names = st.one_of(
    st.sampled_from(HOSTILE),
    st.text(min_size=0, max_size=40),
    st.lists(st.sampled_from(["a", "b", "..", ".", "", "ü", "l", "d"]), max_size=6).map("/".join),
)


@given(names)
@PROPERTY
def test_split_accepts_only_components_beneath(text: str) -> None:
    try:
        parts = safefs.split(text)
    except UnsafePathError:
        return
    assert parts and "/".join(parts) == text
    assert all(p not in ("", ".", "..") and "/" not in p and "\0" not in p for p in parts)


@given(names)
@PROPERTY
def test_safe_relative_path_never_leaves_the_root(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        try:
            relative = safe_relative_path(text)
        except UnsafePathError:
            return
        assert not relative.is_absolute() and ".." not in relative.parts
        assert relative.parts[0] != RESERVED_DIR
        assert resolve_inside(root, relative).is_relative_to(root.resolve())


# -- random trees ----------------------------------------------------------------------

KINDS = ["dir", "file", "link-out-dir", "link-out-file", "link-in", "dangling", "fifo", "device"]
COMPONENTS = ["a", "b", "l", "ü", RESERVED_DIR, "x" * 255]


@st.composite
def trees(draw: st.DrawFn) -> list[tuple[str, str]]:
    entries = draw(
        st.lists(
            st.tuples(
                st.lists(st.sampled_from(COMPONENTS), min_size=1, max_size=3).map("/".join),
                st.sampled_from(KINDS),
            ),
            max_size=12,
        )
    )
    return entries


def build(anchor: Path, outside: Path, entries: list[tuple[str, str]]) -> None:
    """Make each entry where its parents are real folders (later entries may not fit)."""
    (outside / "secret").write_bytes(SECRET)
    for relative, kind in entries:
        path = anchor / relative
        parent = anchor
        for name in relative.split("/")[:-1]:
            parent = parent / name
            if not os.path.lexists(parent):
                parent.mkdir()
            elif parent.is_symlink() or not parent.is_dir():
                break  # a parent is a file, a link, a fifo: the entry cannot exist
        else:
            if not os.path.lexists(path):
                make(path, kind, relative, anchor, outside)


def make(path: Path, kind: str, relative: str, anchor: Path, outside: Path) -> None:
    if kind == "dir":
        path.mkdir()
    elif kind == "file":
        path.write_bytes(b"inside:" + relative.encode())
    elif kind == "link-out-dir":
        path.symlink_to(outside)
    elif kind == "link-out-file":
        path.symlink_to(outside / "secret")
    elif kind == "link-in":
        path.symlink_to(anchor)
    elif kind == "dangling":
        path.symlink_to(outside / f"new-{len(relative)}")
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        try:
            os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
        except PermissionError:
            os.mkfifo(path)


def real_files(anchor: Path) -> dict[tuple[int, int], str]:
    """(dev, ino) -> path of every regular file reachable from ``anchor`` without a link."""
    found = {}
    for base, _dirs, files in os.walk(anchor):  # never follows links
        for name in files:
            st_ = os.lstat(os.path.join(base, name))
            if stat.S_ISREG(st_.st_mode):
                found[(st_.st_dev, st_.st_ino)] = os.path.relpath(os.path.join(base, name), anchor)
    return found


def snapshot(outside: Path) -> dict[str, bytes | None]:
    return {
        name: (outside / name).read_bytes() if (outside / name).is_file() else None
        for name in sorted(os.listdir(outside))
    }


@given(trees(), st.lists(st.one_of(names, st.sampled_from(COMPONENTS)), max_size=8))
@PROPERTY
def test_open_reaches_only_real_files_beneath(
    mechanism: str, entries: list[tuple[str, str]], queries: list[str]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anchor, outside = Path(tmp) / "anchor", Path(tmp) / "outside"
        anchor.mkdir()
        outside.mkdir()
        build(anchor, outside, entries)
        inside = real_files(anchor)
        queries = queries + [relative for relative, _kind in entries]
        fd = safefs.open_anchor(anchor)
        try:
            for query in queries:
                for candidate in (query, query + "/secret"):
                    try:
                        file = safefs.open_file(fd, candidate)
                    except DataSourceError:
                        continue
                    with file:
                        st_ = os.fstat(file.fd)
                        assert inside.get((st_.st_dev, st_.st_ino)) == candidate
                        assert b"".join(file.chunks()) != SECRET
        finally:
            os.close(fd)
        assert snapshot(outside) == {"secret": SECRET}


@given(trees())
@PROPERTY
def test_listing_is_exactly_the_real_files(mechanism: str, entries: list[tuple[str, str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anchor, outside = Path(tmp) / "anchor", Path(tmp) / "outside"
        anchor.mkdir()
        outside.mkdir()
        build(anchor, outside, entries)
        fd = safefs.open_anchor(anchor)
        try:
            listed = dict(safefs.listing(fd))
        finally:
            os.close(fd)
        expected = {path: os.lstat(anchor / path).st_size for path in real_files(anchor).values()}
        assert listed == expected


@given(trees(), st.sampled_from(COMPONENTS), st.sampled_from(COMPONENTS))
@PROPERTY
def test_new_files_never_land_through_a_planted_name(
    mechanism: str, entries: list[tuple[str, str]], folder: str, name: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anchor, outside = Path(tmp) / "anchor", Path(tmp) / "outside"
        anchor.mkdir()
        outside.mkdir()
        build(anchor, outside, entries)
        existed = os.path.lexists(anchor / folder / name)
        fd = safefs.open_anchor(anchor)
        try:
            try:
                sub = safefs.open_dir(fd, folder, create=True)
            except (DataSourceError, OSError):
                assert os.path.lexists(anchor / folder) and (
                    (anchor / folder).is_symlink() or not (anchor / folder).is_dir()
                )
                sub = None
            if sub is not None:
                try:
                    safefs.create_file(sub, name, b"new")
                except FileExistsError:
                    assert existed
                else:
                    assert not existed and (anchor / folder / name).read_bytes() == b"new"
                finally:
                    os.close(sub)
            with pytest.raises((DataSourceError, OSError)):
                safefs.create_file(fd, f"{folder}/{name}", b"x")  # one folder at a time
        finally:
            os.close(fd)
        assert snapshot(outside) == {"secret": SECRET}


@given(trees(), st.sampled_from(COMPONENTS))
@PROPERTY
def test_remove_and_replace_never_touch_a_link_target(
    mechanism: str, entries: list[tuple[str, str]], name: str
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        anchor, outside = Path(tmp) / "anchor", Path(tmp) / "outside"
        anchor.mkdir()
        outside.mkdir()
        build(anchor, outside, entries)
        fd = safefs.open_anchor(anchor)
        try:
            safefs.replace_file(fd, "manifest.json", b"{}")
            for relative, _kind in entries:
                with contextlib.suppress(DataSourceError, OSError):
                    safefs.remove(fd, relative)
            if (anchor / name).is_dir() and not (anchor / name).is_symlink():
                with pytest.raises(IsADirectoryError):  # a folder is not replaced by a file
                    safefs.replace_file(fd, name, b"replaced")
            else:
                safefs.replace_file(fd, name, b"replaced")
                assert (anchor / name).read_bytes() == b"replaced"
                assert not (anchor / name).is_symlink()
            assert not [n for n in os.listdir(anchor) if n.startswith(".tmp-")]
        finally:
            os.close(fd)
        assert snapshot(outside) == {"secret": SECRET}


@given(trees(), st.lists(st.one_of(names, st.sampled_from(COMPONENTS)), max_size=8))
@PROPERTY
def test_workspace_paths_stay_inside_with_links_planted(
    entries: list[tuple[str, str]], queries: list[str]
) -> None:
    """``Workspace.path_for`` / ``open_local`` (the path-based layer used for ``data/``,
    which only the service writes) still never name anything outside, links or not."""
    with tempfile.TemporaryDirectory() as tmp:
        anchor, outside = Path(tmp) / "anchor", Path(tmp) / "outside"
        anchor.mkdir()
        outside.mkdir()
        build(anchor, outside, entries)
        try:
            workspace = Workspace(anchor)
        except DataSourceError:  # its reserved folder is a link, a file, a fifo: refused
            reserved = anchor / RESERVED_DIR
            assert (
                reserved.is_symlink()
                or not reserved.is_dir()
                or ((reserved / "tmp").is_symlink() or not (reserved / "tmp").is_dir())
            )
            assert snapshot(outside) == {"secret": SECRET}
            return
        for query in queries + [relative for relative, _kind in entries]:
            try:
                local = workspace.path_for(query)
            except UnsafePathError:
                continue
            assert local.is_relative_to(workspace.root) and local != workspace.root
            assert local.resolve() == local  # what is returned has no link left in it
            with contextlib.suppress(DataSourceError):
                opened = workspace.open_local(query)
                assert opened.is_relative_to(workspace.root) and opened.is_file()
        assert snapshot(outside) == {"secret": SECRET}


# -- races -----------------------------------------------------------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def _exchange(a: Path, b: Path) -> None:
    assert _libc.renameat2(-100, bytes(a), -100, bytes(b), 2) == 0, os.strerror(ctypes.get_errno())


def test_a_swapping_folder_never_leads_outside(mechanism: str, tmp_path: Path) -> None:
    anchor, outside = tmp_path / "anchor", tmp_path / "outside"
    (anchor / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (anchor / "d" / "secret").write_bytes(b"decoy")
    (anchor / "l").symlink_to(outside)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            _exchange(anchor / "d", anchor / "l")

    thread = threading.Thread(target=swap, daemon=True)
    thread.start()
    outcomes: set[str] = set()
    fd = safefs.open_anchor(anchor)
    try:
        for i in range(2000):
            for path in ("d/secret", "l/secret"):
                try:
                    with safefs.open_file(fd, path) as file:
                        assert b"".join(file.chunks()) == b"decoy"
                        outcomes.add("read")
                except UnsafePathError:
                    outcomes.add("refused")
                except NotFoundError:
                    outcomes.add("missing")
            for path, size in safefs.listing(fd):  # the decoy is 5 bytes, the secret is not
                assert path.split("/")[0] in ("d", "l") and (size == 5 or "/new-" in path)
            try:
                sub = safefs.open_dir(fd, "d")
            except (DataSourceError, OSError):
                continue
            try:
                safefs.create_file(sub, f"new-{i}", b"n")
                safefs.remove(sub, f"new-{i}")
            finally:
                os.close(sub)
    finally:
        stop.set()
        thread.join(10)
        os.close(fd)
    assert sorted(os.listdir(outside)) == ["secret"]
    assert {"read", "refused"} <= outcomes, outcomes


# -- guards one at a time ----------------------------------------------------------------


def test_the_fd_layer_refuses_without_the_shape_check(
    mechanism: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With ``split`` switched off, the kernel (openat2 / O_NOFOLLOW walk) still refuses."""
    anchor, outside = tmp_path / "anchor", tmp_path / "outside"
    (anchor / "d").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    (anchor / "l").symlink_to(outside)
    (anchor / "f").symlink_to(outside / "secret")
    monkeypatch.setattr(safefs, "split", lambda relative: str(relative).split("/"))
    fd = safefs.open_anchor(anchor)
    try:
        for hostile in ("l/secret", "f", "d/../l/secret"):
            with pytest.raises(UnsafePathError):
                safefs.open_file(fd, hostile)
        if mechanism == "openat2":  # RESOLVE_BENEATH: '..' out of the anchor, absolute
            for hostile in ("../outside/secret", "d/../../outside/secret", str(outside / "secret")):
                with pytest.raises(UnsafePathError):
                    safefs.open_file(fd, hostile)
    finally:
        os.close(fd)


def test_the_walk_refuses_what_openat2_refuses(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "l").symlink_to(tmp_path / "d")
    (tmp_path / "d" / "f").write_text("x")
    results = []
    for walk in (False, True):
        safefs._force_walk(walk)
        fd = safefs.open_anchor(tmp_path)
        try:
            row = []
            for path in ("l/f", "l", "d/f", "d/missing", "missing/f", "d/f/g"):
                try:
                    safefs.open_file(fd, path).close()
                    row.append("ok")
                except DataSourceError as exc:
                    row.append(type(exc).__name__)
            results.append(row)
        finally:
            os.close(fd)
    safefs._force_walk(False)
    assert results[0] == results[1]
    assert results[0][:3] == ["UnsafePathError", "UnsafePathError", "ok"]


def test_an_anchor_that_is_a_link_is_refused(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafePathError):
        safefs.open_anchor(tmp_path / "link")
    with pytest.raises(NotFoundError):
        safefs.open_anchor(tmp_path / "missing")


def test_a_fifo_does_not_block_and_is_not_served(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    fd = safefs.open_anchor(tmp_path)
    try:
        with pytest.raises(NotFoundError):
            safefs.open_file(fd, "fifo")
        with pytest.raises(NotFoundError):
            safefs.read_file(fd, PurePosixPath("fifo"), limit=10)
    finally:
        os.close(fd)


def test_a_file_is_read_from_its_descriptor_after_the_name_is_swapped(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"checked")
    fd = safefs.open_anchor(tmp_path)
    try:
        file = safefs.open_file(fd, "f")
    finally:
        os.close(fd)
    (tmp_path / "f").unlink()
    (tmp_path / "f").symlink_to("/etc/passwd")
    with file:
        assert b"".join(file.chunks()) == b"checked"


# -- the output budget -------------------------------------------------------------------


def test_the_output_budget_counts_every_part() -> None:
    budget = OutputBudget(100)
    assert budget.cut_text("a" * 60) == "a" * 60
    assert budget.fits(30) and not budget.cut
    budget.take(30)
    assert not budget.fits(30) and budget.cut  # an image or table that does not fit: dropped
    assert budget.cut_text("é" * 10) == "é" * 5  # 10 bytes left, cut at a character boundary
    assert budget.cut_text("more") == "" and budget.kept == 100
    assert not budget.runaway
    for _ in range(9):
        budget.fits(100)
    assert budget.runaway


@given(st.lists(st.one_of(st.text(max_size=300), st.integers(0, 400)), max_size=40))
@PROPERTY
def test_the_output_budget_never_keeps_more_than_the_cap(parts: list[str | int]) -> None:
    budget = OutputBudget(256)
    kept = 0
    for part in parts:
        if isinstance(part, str):
            kept += len(budget.cut_text(part, tail=len(part) % 2 == 0).encode())
        elif budget.fits(part):
            budget.take(part)
            kept += part
    assert kept <= 256


def test_a_workspace_refuses_links_at_its_reserved_names(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / RESERVED_DIR).symlink_to(outside)
    with pytest.raises(UnsafePathError):
        Workspace(tmp_path / "a")
    assert os.listdir(outside) == []  # no 'tmp' made where the link points
    workspace = Workspace(tmp_path / "b")
    (outside / "victim").write_text("kept")
    workspace.manifest_path.symlink_to(outside / "victim")
    entry = ManifestEntry(path="x", source_id="s", source_type="t", size=0, sha256="")
    with pytest.raises(OSError):
        workspace.record(entry)
    assert workspace.manifest() == {}
    assert (outside / "victim").read_text() == "kept"


def test_pruning_what_changed_never_removes_through_a_swapped_folder(
    mechanism: str, tmp_path: Path
) -> None:
    """What a quota watchdog does after a breach (remove every file newer than the start),
    done with ``files`` + ``remove`` while the folder is swapped with a link to a host
    folder whose files are just as new."""
    anchor, outside = tmp_path / "anchor", tmp_path / "outside"
    (anchor / "d").mkdir(parents=True)
    outside.mkdir()
    (anchor / "l").symlink_to(outside)
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            _exchange(anchor / "d", anchor / "l")

    thread = threading.Thread(target=swap, daemon=True)
    fd = safefs.open_anchor(anchor)
    thread.start()
    try:
        for round_ in range(300):
            (outside / f"host-{round_}").write_text("new and precious")
            with contextlib.suppress(OSError):
                (anchor / "d" / f"w-{round_}").write_text("written by the code")
            for path, _st in list(safefs.files(fd)):
                with contextlib.suppress(DataSourceError, OSError):
                    safefs.remove(fd, path)
    finally:
        stop.set()
        thread.join(10)
        os.close(fd)
    # (the writes by "the code" may land outside through the link: it is the code's own doing)
    assert len([n for n in os.listdir(outside) if n.startswith("host-")]) == 300


def test_without_openat2_the_walk_is_used(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A kernel without openat2 (or a seccomp profile refusing it): ENOSYS -> the walk."""

    def enosys(*_args: object) -> int:
        ctypes.set_errno(errno.ENOSYS)
        return -1

    monkeypatch.setattr(safefs, "_syscall", enosys)
    monkeypatch.setattr(safefs, "_use_openat2", None)
    assert safefs.mechanism() == "O_NOFOLLOW walk"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "l").symlink_to(tmp_path / "d")
    fd = safefs.open_anchor(tmp_path)
    try:
        with safefs.open_file(fd, "d/f") as file:
            assert file.size == 1
        with pytest.raises(UnsafePathError):
            safefs.open_file(fd, "l/f")
    finally:
        os.close(fd)
    monkeypatch.undo()
    safefs._force_walk(False)
    assert safefs.mechanism() == "openat2"
