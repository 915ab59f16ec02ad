"""The behaviour every connector must show, as a pytest class to subclass.

A connector's test module subclasses :class:`ConnectorContract` and provides two
fixtures:

* ``make_connector(read_only=False, **config_overrides)`` → a new, *unconnected*
  connector over an empty, isolated area of the source (a temp folder, a fresh
  container, a fresh schema), with ``config_overrides`` applied to its config;
* ``seed(path, data)`` → an async callable that puts ``data`` at ``path`` directly in
  the backing store, bypassing the connector.

Optionally ``secret_values`` (a list of the secrets in the config) to prove that no repr,
status or error shows them. Everything runs against the real service: no mocks here.

Length: a test suite (one class per contract, one method per behaviour), read one
test at a time, and shipped as one module that connector authors subclass.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import typing
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr

from datasources.connectors.base import BaseConnector, ConnectorConfig
from datasources.connectors.sql import as_sql
from datasources.errors import (
    AlreadyExistsError,
    DataSourceError,
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
    PermissionDeniedError,
    ReadOnlyError,
    UnsafePathError,
)
from datasources.models import ItemKind, Page
from datasources.workspace import ManifestEntry, Workspace, safe_relative_path

__all__ = [
    "HOSTILE_NAMES",
    "HOSTILE_PREFIXES",
    "CommonContract",
    "ConnectorContract",
    "DatabaseContract",
]

MakeConnector = Callable[..., BaseConnector[Any]]
Seed = Callable[[str, bytes], Awaitable[None]]

HOSTILE_NAMES = [
    "../x",
    "a/../../x",
    "/etc/passwd",
    "..\\x",
    "a\\..\\..\\x",
    "a/../../chat10/x",
    "x\x00.csv",
    "./../x",
    "a//../x",
    "C:\\Windows\\x",
    "",
    "a/",
    "../" * 40 + "etc/passwd",
    "n" * 300,
    ".datasources/manifest.jsonl",
]
"""Remote names every file-like connector refuses with :class:`UnsafePathError`
(``.datasources/manifest.jsonl`` is a legal remote name that no workspace accepts)."""

MANIFEST_NAME = ".datasources/manifest.jsonl"
_REFUSED_NAMES = [name for name in HOSTILE_NAMES if name != MANIFEST_NAME]
"""Refused by the connector itself; the manifest's name has a test of its own."""

HOSTILE_PREFIXES = ["../", "a/../../", "..\\", "./../", "a//../../", "a/../../chat1/"]
"""Listing prefixes that lead out of a source's root if joined to it naively."""

_MARK = b"planted by the contract suite: a traversal found me "


def _lax(name: str) -> str | None:
    """Where a connector that "cleans up" ``name`` instead of refusing it would look."""
    text = name.split("\x00", 1)[0].replace("\\", "/")
    if len(text) > 1 and text[1] == ":":
        text = text[2:]
    text = posixpath.normpath("/" + text).lstrip("/")
    try:
        safe_relative_path(text, allow_reserved=True)
    except DataSourceError:
        return None
    return text if text != name else None


def _escape_target(base: Path, name: str, fence: Path) -> Path | None:
    """Where joining ``name`` to ``base`` without checks lands, if inside ``fence``
    (the test's own folder) and outside ``base``: a place to plant a file."""
    joined = Path(os.path.normpath(os.path.join(base, name.split("\x00", 1)[0])))
    if not joined.is_relative_to(fence) or joined.is_relative_to(base) or joined == fence:
        return None
    return joined


async def _plant_escape_targets(
    name: str, seed: Seed, source_root: Path | None, fence: Path, workspace_root: Path | None
) -> set[str]:
    """Put a real file wherever ``name`` could lead; the lax names seeded in the source."""
    seeded: set[str] = set()
    lax = _lax(name)
    if lax is not None:
        await seed(lax, _MARK + name.encode("utf-8", "replace"))
        seeded.add(lax)
    for base in (source_root, workspace_root):
        if base is None:
            continue
        for spelling in {name, name.replace("\\", "/")}:
            target = _escape_target(base, spelling, fence)
            if target is None or target.is_dir():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(_MARK + name.encode("utf-8", "replace"))
    sibling = fence / "chat10" / "x"
    sibling.parent.mkdir(parents=True, exist_ok=True)
    sibling.write_bytes(_MARK)
    return seeded


def _snapshot(root: Path) -> dict[str, tuple[str, int, str, int]]:
    """Every entry under ``root``: kind, size, content hash, mtime (links not followed)."""
    seen: dict[str, tuple[str, int, str, int]] = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs:
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            seen[rel] = ("dir", 0, "", 0)
        for name in files:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            digest = ""
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
            seen[os.path.relpath(path, root)] = ("file", st.st_size, digest, st.st_mtime_ns)
    return seen


def _tree(root: Path) -> set[str]:
    found: set[str] = set()
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            found.add(os.path.relpath(os.path.join(dirpath, name), root))
    return found


class _Meter:
    def __init__(self) -> None:
        self.calls: list[tuple[int, int | None]] = []

    def __call__(self, done: int, total: int | None) -> None:
        self.calls.append((done, total))

    @property
    def moved(self) -> int:
        return self.calls[-1][0] if self.calls else 0


class CommonContract:
    """What every connector shows, files or tables: declaration, lifecycle, status."""

    @pytest.fixture
    def secret_values(self) -> list[str]:
        """Secrets in the connector's config; override to have them checked."""
        return []

    # -- declaration -------------------------------------------------------------------

    def test_declares_type_config_and_secrets(self, make_connector: MakeConnector) -> None:
        connector = make_connector()
        cls = type(connector)
        assert isinstance(cls.type, str) and cls.type
        assert issubclass(cls.config_model, ConnectorConfig)
        fields = cls.config_model.model_fields
        assert cls.secret_fields <= set(fields), "secret fields must be config fields"
        assert cls.target_fields <= set(fields), "target fields must be config fields"
        for name in cls.secret_fields:
            annotation = fields[name].annotation
            assert SecretStr in (annotation, *typing.get_args(annotation)), (
                f"secret field {name} must be a SecretStr so it never shows in a repr"
            )

    def test_unknown_config_key_is_refused(self, make_connector: MakeConnector) -> None:
        connector = make_connector()
        raw = connector.config.model_dump()
        raw["no_such_option"] = 1
        with pytest.raises(DataSourceError) as info:
            type(connector).validate_config(raw)
        assert "no_such_option" in info.value.message

    async def test_async_context_manager_connects_and_disconnects(
        self, make_connector: MakeConnector
    ) -> None:
        connector = make_connector()
        assert not connector.connected
        async with connector as entered:
            assert entered is connector
            assert connector.connected
            assert await connector.ping()
        assert not connector.connected
        await connector.disconnect()  # twice is fine

    async def test_connection_status(
        self, make_connector: MakeConnector, secret_values: list[str]
    ) -> None:
        async with make_connector() as connector:
            status = await connector.test_connection()
        assert status.ok, status.message
        assert status.latency_ms is not None and status.latency_ms >= 0
        shown = status.model_dump_json() + repr(connector) + repr(connector.config)
        for secret in secret_values:
            assert secret not in shown


class ConnectorContract(CommonContract):
    """File-like sources: subclass me and provide ``make_connector`` and ``seed`` fixtures.

    A connector whose config has a ``root`` folder (a folder on this machine) gets real
    files planted beside that folder, where a traversal out of it would land; override
    the ``source_root`` fixture to name another folder, or ``None`` for none.
    """

    @pytest.fixture
    def source_root(self, make_connector: MakeConnector) -> Path | None:
        """The local folder the source's items live in, if it has one."""
        root = getattr(make_connector().config, "root", None)
        return Path(root) if isinstance(root, str | Path) else None

    # -- listing -----------------------------------------------------------------------

    async def test_lists_seeded_items_with_metadata(
        self, make_connector: MakeConnector, seed: Seed
    ) -> None:
        await seed("a.csv", b"x,y\n1,2\n")
        await seed("dir/b.bin", b"\x00\x01\x02")
        async with make_connector() as connector:
            items = await connector.list_items()
        by_path = {item.path: item for item in items}
        assert {"a.csv", "dir/b.bin"} <= set(by_path)
        a = by_path["a.csv"]
        assert a.name == "a.csv" and a.kind == ItemKind.FILE and a.size == 8
        assert a.last_modified is not None and a.etag
        assert by_path["dir/b.bin"].name == "b.bin"

    async def test_listing_is_sorted_prefixed_and_limited(
        self, make_connector: MakeConnector, seed: Seed
    ) -> None:
        for name in ("b/2.txt", "a-1.txt", "a/1.txt", "b/1.txt", "c.txt"):
            await seed(name, name.encode())
        async with make_connector() as connector:
            paths = [i.path for i in await connector.list_items()]
            assert paths == sorted(paths)
            assert [i.path for i in await connector.list_items("b/")] == ["b/1.txt", "b/2.txt"]
            assert [i.path for i in await connector.list_items("a")] == ["a-1.txt", "a/1.txt"]
            assert len(await connector.list_items(limit=2)) == 2
            assert await connector.list_items(limit=0) == []
            with pytest.raises(InvalidInputError):
                await connector.list_items(limit=-1)

    async def test_delimiter_gives_virtual_directories(
        self, make_connector: MakeConnector, seed: Seed
    ) -> None:
        for name in ("top.txt", "d1/x.txt", "d1/sub/y.txt", "d2/z.txt"):
            await seed(name, b"1")
        async with make_connector() as connector:
            level = await connector.list_items(delimiter="/")
            assert [(i.path, i.kind) for i in level] == [
                ("d1/", ItemKind.DIRECTORY),
                ("d2/", ItemKind.DIRECTORY),
                ("top.txt", ItemKind.FILE),
            ]
            inner = await connector.list_items("d1/", delimiter="/")
            assert [i.path for i in inner] == ["d1/sub/", "d1/x.txt"]

    async def test_glob(self, make_connector: MakeConnector, seed: Seed) -> None:
        for name in ("data/2024/a.csv", "data/2024/b.json", "data/2024/x/c.csv", "data/2025/d.csv"):
            await seed(name, b"1")
        async with make_connector() as connector:
            flat = [i.path for i in await connector.list_items(glob="data/2024/*.csv")]
            deep = [i.path for i in await connector.list_items(glob="data/**/*.csv")]
        assert flat == ["data/2024/a.csv"]
        assert deep == ["data/2024/a.csv", "data/2024/x/c.csv", "data/2025/d.csv"]

    async def test_pages_visit_every_item_once(
        self, make_connector: MakeConnector, seed: Seed
    ) -> None:
        names = [f"p/{i:02d}.txt" for i in range(7)] + ["p/sub/a.txt", "p-z.txt"]
        for name in names:
            await seed(name, b"x")
        async with make_connector() as connector:
            seen: list[str] = []
            cursor = None
            pages = 0
            while True:
                page = await connector.list_page(limit=3, cursor=cursor)
                seen.extend(i.path for i in page.items)
                pages += 1
                cursor = page.next_cursor
                if cursor is None:
                    break
                assert pages < 10
            assert seen == sorted(names)
            assert pages == 3
            with pytest.raises(InvalidInputError):
                await connector.list_page(cursor="not a cursor!")
            with pytest.raises(InvalidInputError):
                await connector.list_page(limit=0)

    async def test_iter_items_can_stop_after_the_first_item(
        self, make_connector: MakeConnector, seed: Seed
    ) -> None:
        # That listing is lazy (read from the source page by page as it is consumed) is
        # each connector's own test: it depends on its page size (test_local_folder_lazy,
        # test_iteration_holds_one_page_at_a_time for Azure).
        for i in range(5):
            await seed(f"lazy/{i}.txt", b"x")
        async with make_connector() as connector:
            iterator = connector.iter_items("lazy/")
            first = await anext(iterator)
            await iterator.aclose()  # type: ignore[attr-defined]
        assert first.path == "lazy/0.txt"

    async def test_metadata(self, make_connector: MakeConnector, seed: Seed) -> None:
        await seed("meta/file.csv", b"abc")
        async with make_connector() as connector:
            item = await connector.get_metadata("meta/file.csv")
            assert item.path == "meta/file.csv" and item.size == 3 and item.etag
            with pytest.raises(NotFoundError):
                await connector.get_metadata("meta/missing.csv")

    # -- fetch -------------------------------------------------------------------------

    async def test_fetch_round_trip_preserves_structure_and_records_provenance(
        self, make_connector: MakeConnector, seed: Seed, tmp_path: Path
    ) -> None:
        data = bytes(range(256)) * 1000
        await seed("deep/er/file.name.bin", data)
        await seed("empty.txt", b"")
        workspace = Workspace(tmp_path / "ws")
        async with make_connector() as connector:
            meter = _Meter()
            local = await connector.fetch_data("deep/er/file.name.bin", workspace, progress=meter)
            empty = await connector.fetch_data("empty.txt", workspace)
        assert local == workspace.root / "deep" / "er" / "file.name.bin"
        assert local.read_bytes() == data
        assert empty.read_bytes() == b""
        assert meter.moved == len(data) and meter.calls[-1][1] == len(data)
        entry = workspace.lookup("deep/er/file.name.bin")
        assert entry is not None
        assert entry.source_id == connector.source_id
        assert entry.remote_path == "deep/er/file.name.bin"
        assert entry.size == len(data) and entry.etag
        assert entry.sha256 == hashlib.sha256(data).hexdigest()
        assert not list(workspace.tmp_dir.iterdir()), "no temp file may remain"

    async def test_fetch_unchanged_item_transfers_nothing(
        self, make_connector: MakeConnector, seed: Seed, tmp_path: Path
    ) -> None:
        await seed("same.txt", b"hello")
        async with make_connector() as connector:
            await connector.fetch_data("same.txt", tmp_path)
            meter = _Meter()
            local = await connector.fetch_data("same.txt", tmp_path, progress=meter)
            assert meter.moved == 0
            assert local.read_bytes() == b"hello"
            await seed("same.txt", b"changed!")
            meter = _Meter()
            local = await connector.fetch_data("same.txt", tmp_path, progress=meter)
            assert meter.moved == len(b"changed!")
            assert local.read_bytes() == b"changed!"

    async def test_fetch_missing_item(self, make_connector: MakeConnector, tmp_path: Path) -> None:
        async with make_connector() as connector:
            with pytest.raises(NotFoundError):
                await connector.fetch_data("nope/missing.csv", tmp_path / "ws")
        assert not (tmp_path / "ws" / "nope").exists()

    async def test_fetch_over_the_size_limit_writes_nothing(
        self, make_connector: MakeConnector, seed: Seed, tmp_path: Path
    ) -> None:
        await seed("big.bin", b"x" * 100)
        async with make_connector(max_download_bytes=10) as connector:
            with pytest.raises(LimitExceededError):
                await connector.fetch_data("big.bin", tmp_path / "ws")
        assert _tree(tmp_path / "ws") <= {".datasources/manifest.jsonl"}

    # -- hostile names ---------------------------------------------------------------
    #
    # Each hostile name must be *refused* (UnsafePathError), not merely "not found": a
    # connector that walks out of its root and finds nothing there would otherwise pass.
    # So a real file is planted wherever a traversal could land (beside the source's
    # folder when it has one, beside and inside the workspace's parents, and at the
    # name's lax normalisation inside the source), and the whole parent folder is
    # compared before and after: nothing created, changed or removed anywhere.

    @pytest.mark.parametrize("name", _REFUSED_NAMES)
    async def test_fetch_hostile_names_never_escape(
        self,
        make_connector: MakeConnector,
        seed: Seed,
        source_root: Path | None,
        tmp_path: Path,
        name: str,
    ) -> None:
        workspace = Workspace(tmp_path / "chat1" / "ws")
        await _plant_escape_targets(name, seed, source_root, tmp_path, workspace.root)
        before = _snapshot(tmp_path)
        async with make_connector() as connector:
            with pytest.raises(UnsafePathError):
                await connector.fetch_data(name, workspace)
            try:
                report = await connector.fetch_prefix(name, workspace)
            except UnsafePathError:
                pass
            else:
                assert report.fetched == [], (name, report)
        assert _snapshot(tmp_path) == before, f"{name!r} changed files outside the source"

    @pytest.mark.parametrize("name", _REFUSED_NAMES)
    async def test_metadata_and_streams_refuse_hostile_names(
        self,
        make_connector: MakeConnector,
        seed: Seed,
        source_root: Path | None,
        tmp_path: Path,
        name: str,
    ) -> None:
        await _plant_escape_targets(name, seed, source_root, tmp_path, None)
        before = _snapshot(tmp_path)
        async with make_connector() as connector:
            with pytest.raises(UnsafePathError):
                await connector.get_metadata(name)
            with pytest.raises(UnsafePathError):
                stream = await connector.open_stream(name)
                async for _chunk in stream.chunks():  # pragma: no cover - a failure
                    pass
        assert _snapshot(tmp_path) == before

    @pytest.mark.parametrize("name", HOSTILE_NAMES)
    async def test_uploads_refuse_hostile_names(
        self,
        make_connector: MakeConnector,
        seed: Seed,
        source_root: Path | None,
        tmp_path: Path,
        name: str,
    ) -> None:
        local = tmp_path / "upload-me.txt"
        local.write_bytes(b"uploaded " + _MARK)
        await _plant_escape_targets(name, seed, source_root, tmp_path, None)
        before = _snapshot(tmp_path)
        async with make_connector() as connector:
            with pytest.raises(UnsafePathError):
                await connector.upload_data(local, name)
            with pytest.raises(UnsafePathError):
                await connector.upload_data(local, name, overwrite=True)
            inside = {i.path for i in await connector.list_items()}
        assert _snapshot(tmp_path) == before
        assert not any(p.endswith("upload-me.txt") for p in inside)

    @pytest.mark.parametrize("prefix", HOSTILE_PREFIXES)
    async def test_listings_never_leave_the_source(
        self,
        make_connector: MakeConnector,
        seed: Seed,
        source_root: Path | None,
        tmp_path: Path,
        prefix: str,
    ) -> None:
        await seed("inside/kept.txt", b"kept")
        await seed("a/kept.txt", b"kept")  # so that "a/.." exists to walk through
        await _plant_escape_targets(prefix + "x", seed, source_root, tmp_path, None)
        await _plant_escape_targets(prefix + "sub/x", seed, source_root, tmp_path, None)
        before = _snapshot(tmp_path)
        async with make_connector() as connector:
            everything = {i.path for i in await connector.list_items()}
            for call in (
                lambda: connector.list_items(prefix),
                lambda: connector.list_items(prefix, delimiter="/"),
                lambda: connector.list_items(glob=prefix + "*"),
                lambda: connector.list_items(glob=prefix + "**"),
                lambda: connector.list_page(prefix, limit=10),
            ):
                try:
                    result = await call()
                except UnsafePathError:
                    continue
                items = result.items if isinstance(result, Page) else result
                # Whatever is listed is an item of the source itself, never a planted file.
                for item in items:
                    assert item.path in everything or any(
                        p.startswith(item.path) for p in everything
                    ), (prefix, item.path)
        assert _snapshot(tmp_path) == before

    async def test_source_holding_the_manifest_name(
        self, make_connector: MakeConnector, seed: Seed, tmp_path: Path
    ) -> None:
        # A source may hold anything, including the workspace's own bookkeeping names;
        # fetching them must never overwrite the workspace's manifest or temp files.
        forged = ManifestEntry(
            path="good.csv", source_id="forged", source_type="forged", size=1, sha256="0" * 64
        )
        await seed(MANIFEST_NAME, forged.model_dump_json().encode() + b"\n")
        await seed(".datasources/tmp/x.part", b"forged temp")
        await seed("good.csv", b"g")
        workspace = Workspace(tmp_path / "ws")
        async with make_connector() as connector:
            with pytest.raises(UnsafePathError):
                await connector.fetch_data(MANIFEST_NAME, workspace)
            with pytest.raises(UnsafePathError):
                await connector.fetch_data(".datasources/tmp/x.part", workspace)
            report = await connector.fetch_prefix("", workspace)
        assert report.fetched == ["good.csv"]
        assert {(f.path, f.error) for f in report.failed} == {
            (MANIFEST_NAME, "unsafe_path"),
            (".datasources/tmp/x.part", "unsafe_path"),
        }
        entries = workspace.manifest()
        assert set(entries) == {"good.csv"}
        assert entries["good.csv"].source_id == connector.source_id
        assert b"forged" not in workspace.manifest_path.read_bytes()
        assert not list(workspace.tmp_dir.iterdir())

    async def test_fetch_prefix_reports_each_failure_and_completes_the_rest(
        self, make_connector: MakeConnector, seed: Seed, tmp_path: Path
    ) -> None:
        await seed("bulk/a.csv", b"a")
        await seed("bulk/deep/b.csv", b"bb")
        await seed("bulk/deep/c.json", b"{}")
        await seed("bulk/huge.csv", b"x" * 50)
        await seed("other.csv", b"o")
        async with make_connector(max_download_bytes=10) as connector:
            report = await connector.fetch_prefix("bulk/", tmp_path / "ws", concurrency=2)
            assert report.fetched == ["bulk/a.csv", "bulk/deep/b.csv", "bulk/deep/c.json"]
            assert [(f.path, f.error) for f in report.failed] == [
                ("bulk/huge.csv", "limit_exceeded")
            ]
            assert report.bytes_transferred == 5
            by_glob = await connector.fetch_prefix("bulk/**/*.csv", tmp_path / "ws2")
            assert by_glob.fetched == ["bulk/a.csv", "bulk/deep/b.csv"]
            again = await connector.fetch_prefix("bulk/", tmp_path / "ws", concurrency=2)
            assert again.bytes_transferred == 0
            with pytest.raises(InvalidInputError):
                await connector.fetch_prefix("bulk/", tmp_path / "ws", concurrency=0)
        assert (tmp_path / "ws" / "bulk" / "deep" / "b.csv").read_bytes() == b"bb"
        assert not (tmp_path / "ws" / "bulk" / "huge.csv").exists()

    # -- upload ------------------------------------------------------------------------

    async def test_upload_rules(self, make_connector: MakeConnector, tmp_path: Path) -> None:
        local = tmp_path / "up.csv"
        local.write_bytes(b"a,b\n1,2\n")
        async with make_connector() as connector:
            item = await connector.upload_data(local, "uploads/up.csv")
            assert item.path == "uploads/up.csv" and item.size == 8
            with pytest.raises(AlreadyExistsError):
                await connector.upload_data(local, "uploads/up.csv")
            local.write_bytes(b"new")
            item = await connector.upload_data(local, "uploads/up.csv", overwrite=True)
            assert item.size == 3
            fetched = await connector.fetch_data("uploads/up.csv", tmp_path / "ws")
            assert fetched.read_bytes() == b"new"
            with pytest.raises(NotFoundError):
                await connector.upload_data(tmp_path / "missing", "uploads/x")
            for hostile in ("../x", "/etc/x", "a/../../x", "..\\x", "x\x00y"):
                with pytest.raises(UnsafePathError):
                    await connector.upload_data(local, hostile)

    async def test_read_only_source_refuses_uploads(
        self, make_connector: MakeConnector, tmp_path: Path
    ) -> None:
        local = tmp_path / "f.txt"
        local.write_bytes(b"x")
        async with make_connector(read_only=True) as connector:
            with pytest.raises(ReadOnlyError):
                await connector.upload_data(local, "f.txt")
            assert await connector.list_items() == []


MakeTable = Callable[[str, int], Awaitable[None]]


class DatabaseContract(CommonContract):
    """Database sources: provide ``make_connector`` (over an isolated schema named by the
    ``schema`` fixture) and ``make_table(name, rows)``, which creates ``schema.name``
    with columns ``id int`` and ``v text`` and ``rows`` rows, bypassing the connector.
    """

    async def test_lists_tables_in_order_and_pages_through_them(
        self, make_connector: MakeConnector, make_table: MakeTable, schema: str
    ) -> None:
        for name in ("b_table", "a_table", "c_table", "a_other"):
            await make_table(name, 3)
        async with make_connector() as connector:
            paths = [i.path for i in await connector.list_items(f"{schema}.")]
            assert (
                paths
                == sorted(paths)
                == [
                    f"{schema}.a_other",
                    f"{schema}.a_table",
                    f"{schema}.b_table",
                    f"{schema}.c_table",
                ]
            )
            assert [i.path for i in await connector.list_items(f"{schema}.a_")] == paths[:2]
            seen: list[str] = []
            cursor = None
            while True:
                page = await connector.list_page(f"{schema}.", limit=3, cursor=cursor)
                seen.extend(i.path for i in page.items)
                if page.next_cursor is None:
                    break
                cursor = page.next_cursor
            assert seen == paths
            with pytest.raises(InvalidInputError):
                await connector.list_page(cursor="not a cursor!")

    async def test_metadata_names_the_columns(
        self, make_connector: MakeConnector, make_table: MakeTable, schema: str
    ) -> None:
        await make_table("described", 2)
        async with make_connector() as connector:
            item = await connector.get_metadata(f"{schema}.described")
            assert [c["name"] for c in item.metadata["columns"]] == ["id", "v"]
            with pytest.raises(NotFoundError):
                await connector.get_metadata(f"{schema}.missing")

    async def test_fetch_exports_the_rows_with_provenance(
        self, make_connector: MakeConnector, make_table: MakeTable, schema: str, tmp_path: Path
    ) -> None:
        await make_table("exported", 25)
        workspace = Workspace(tmp_path / "ws")
        async with make_connector() as connector:
            local = await connector.fetch_data(f"{schema}.exported", workspace)
        assert local.is_relative_to(workspace.root) and local.stat().st_size > 0
        entry = workspace.manifest()[workspace.relative(local)]
        assert entry.source_id == connector.source_id and entry.remote_path == f"{schema}.exported"
        assert not list(workspace.tmp_dir.iterdir())

    @pytest.mark.parametrize(
        "name", ["../x", "a.b.c", "/etc/passwd", "x\x00y", "no_dot", "", "..", "../x.y"]
    )
    async def test_hostile_table_names(
        self, make_connector: MakeConnector, tmp_path: Path, name: str
    ) -> None:
        # Refused as malformed, not looked up and "not found".
        async with make_connector() as connector:
            with pytest.raises(InvalidInputError):
                await connector.fetch_data(name, tmp_path / "ws")
            with pytest.raises(InvalidInputError):
                await connector.get_metadata(name)
        assert not [p for p in _tree(tmp_path) if ".datasources" not in Path(p).parts]

    async def test_names_are_identifiers_never_sql(
        self, make_connector: MakeConnector, make_table: MakeTable, schema: str, tmp_path: Path
    ) -> None:
        # A well-formed name holding SQL is one quoted identifier: looked up, not run.
        await make_table("kept", 3)
        async with make_connector() as connector:
            for name in (f"{schema}.kept; DROP TABLE kept", f'{schema}.kept" --'):
                with pytest.raises(NotFoundError):
                    await connector.get_metadata(name)
                with pytest.raises(NotFoundError):
                    await connector.fetch_data(name, tmp_path / "ws")
            item = await connector.get_metadata(f"{schema}.kept")
        assert [c["name"] for c in item.metadata["columns"]] == ["id", "v"]

    async def test_writes_are_refused(
        self, make_connector: MakeConnector, make_table: MakeTable, schema: str, tmp_path: Path
    ) -> None:
        await make_table("kept", 5)
        local = tmp_path / "f.csv"
        local.write_text("id,v\n1,x\n")
        async with make_connector() as connector:
            with pytest.raises(PermissionDeniedError):
                await connector.upload_data(local, f"{schema}.kept")
            database = as_sql(connector)  # a database source runs SQL, read-only
            with pytest.raises(InvalidInputError):
                await database.execute_query(f"DELETE FROM {schema}.kept")
            result = await database.execute_query(f"SELECT count(*) FROM {schema}.kept")
            assert result.rows == [[5]]
