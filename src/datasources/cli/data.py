"""The data commands: ``ls``, ``get``, ``put`` and ``query`` on one source."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from datasources.cli.common import (
    State,
    borrow,
    emit_json,
    err,
    fail,
    get_state,
    human_size,
    item_size,
    out,
    run_command,
)
from datasources.connectors.base import BaseConnector
from datasources.connectors.sql import as_sql
from datasources.errors import AlreadyExistsError
from datasources.models import DataItem
from datasources.workspace import AsyncAtomicWriter, ManifestEntry, Workspace

__all__ = ["get", "ls", "put", "query"]


def ls(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
    prefix: Annotated[str | None, typer.Argument(help="Only paths starting with this.")] = None,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=5000)] = 1000,
    cursor: Annotated[str | None, typer.Option("--cursor", help="Continue a listing.")] = None,
    recursive: Annotated[
        bool, typer.Option("--recursive", "-r", help="No folder grouping.")
    ] = False,
    glob: Annotated[str | None, typer.Option("--glob", help="e.g. 'data/2024/*.csv'.")] = None,
) -> None:
    """List items of a source."""
    state = get_state(ctx)
    delimiter = None if recursive or glob else "/"
    page = run_command(
        borrow(
            state,
            source,
            lambda c: c.list_page(
                prefix, limit=limit, cursor=cursor, delimiter=delimiter, glob=glob
            ),
        )
    )
    if state.json:
        emit_json(page)
        return
    table = Table("path", "kind", "size", "modified")
    for item in page.items:
        modified = item.last_modified.strftime("%Y-%m-%d %H:%M") if item.last_modified else ""
        table.add_row(item.path, str(item.kind), item_size(item), modified)
    out.print(table)
    if page.next_cursor:
        err.print(f"more items: --cursor {page.next_cursor}", markup=False)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )


async def _fetch(connector: BaseConnector[Any], path: str, dest: Workspace, bar: Progress) -> Path:
    task = bar.add_task(path, total=None)

    def progress(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    return await connector.fetch_data(path, dest, progress=progress)


class CarefulWorkspace(Workspace):
    """A workspace that replaces only files it fetched itself and nobody changed since.

    ``get`` into a folder refreshes what an earlier ``get`` put there (the manifest
    knows it, and its size and mtime are as recorded); any other file in the way is
    someone's own, kept unless ``overwrite``.
    """

    def __init__(self, root: Path | str, *, overwrite: bool = False) -> None:
        super().__init__(root)
        self.overwrite = overwrite

    @contextlib.asynccontextmanager
    async def writer(self, remote_path: str, **options: Any) -> AsyncIterator[AsyncAtomicWriter]:
        if not self.overwrite:
            await asyncio.to_thread(self._refuse_clobbering, self.path_for(remote_path))
        async with super().writer(remote_path, **options) as writer:
            yield writer

    def _refuse_clobbering(self, target: Path) -> None:
        try:
            st = target.lstat()
        except FileNotFoundError:
            return
        entry = self.entry_for(target)
        if entry is not None and (st.st_size, st.st_mtime_ns) == (entry.size, entry.mtime_ns):
            return  # our own copy, unchanged: refreshing it is what get is for
        raise AlreadyExistsError(
            f"{target} already exists and is not an unchanged copy fetched here; "
            "add --overwrite to replace it."
        )


def _destination(dest: str, *, many: bool) -> tuple[Path, bool]:
    """Where ``get`` writes, by cp's rules: ``(path, is_folder)``; or a one-line error.

    - an existing folder (or a link to one): the item goes inside it, keeping its remote
      path, and the folder is a workspace (provenance in ``.datasources/``);
    - a path ending in ``/``: must be an existing folder (cp refuses a missing one too);
    - anything else names the file itself; its folder must exist.

    Many items (a prefix or a glob) need a folder: a missing one is created, as
    ``cp -r`` creates the copy of a folder; an existing file is refused.
    """
    path = Path(dest).expanduser()
    if path.is_dir():
        return path, True
    if many:
        if os.path.lexists(path):
            fail(f"{dest} is not a folder: many items are fetched into a folder")
        return path, True
    if dest.endswith(("/", os.sep)):
        fail(f"no folder at {dest}: a destination ending in '/' must be an existing folder")
    if not path.parent.is_dir():
        fail(f"no folder {path.parent} to create {path.name} in")
    return path, False


def get(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
    path: Annotated[str, typer.Argument(help="Remote path.")],
    dest: Annotated[
        str,
        typer.Argument(
            help="As for cp: an existing folder (the item keeps its remote path inside "
            "it), or the file to write; a DEST ending in '/' must be an existing folder."
        ),
    ] = ".",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a file that is in the way.")
    ] = False,
) -> None:
    """Fetch an item (or, for a PATH ending in '/' or holding * ? [, many) to DEST."""
    state = get_state(ctx)
    many = path.endswith("/") or any(c in path for c in "*?[")
    target, folder = _destination(dest, many=many)
    if many:
        _get_many(state, source, path, CarefulWorkspace(target, overwrite=overwrite), dest)
        return
    if folder:
        workspace = CarefulWorkspace(target, overwrite=overwrite)
        with _progress() as bar:
            local = run_command(borrow(state, source, lambda c: _fetch(c, path, workspace, bar)))
        entry = workspace.entry_for(local)  # a table's file is named schema/table.parquet
    else:
        local, entry = _get_file(state, source, path, target, overwrite=overwrite)
    if state.json:
        emit_json({"path": str(local), "provenance": entry})
    else:
        size = human_size(entry.size) if entry else ""
        out.print(f"{local}  {size}  sha256:{entry.sha256 if entry else '?'}", markup=False)


def _get_file(
    state: State, source: str, path: str, target: Path, *, overwrite: bool
) -> tuple[Path, ManifestEntry | None]:
    """Fetch one item to the file ``target``, never leaving a partial file there.

    The item is fetched into a hidden workspace beside ``target`` (same filesystem),
    verified there, then linked into place, which fails if something appeared at
    ``target`` meanwhile; with ``overwrite`` it is renamed over it instead.
    """
    if os.path.lexists(target) and not overwrite:
        fail(f"{target} already exists; add --overwrite to replace it")
    try:
        staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".datasources-get-"))
    except OSError as exc:
        fail(f"cannot write in {target.parent}: {exc.strerror or type(exc).__name__}")
    try:
        workspace = Workspace(staging)
        with _progress() as bar:
            local = run_command(borrow(state, source, lambda c: _fetch(c, path, workspace, bar)))
        entry = workspace.entry_for(local)
        if overwrite:
            os.replace(local, target)
        else:
            try:
                os.link(local, target)  # unlike a rename, never replaces what is there
            except FileExistsError:
                fail(f"{target} already exists; add --overwrite to replace it")
        if entry is not None:  # the file's name is the one asked for, not the remote one
            entry = entry.model_copy(update={"path": target.name})
        return target, entry
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _get_many(state: State, source: str, pattern: str, workspace: Workspace, dest: str) -> None:
    report = run_command(borrow(state, source, lambda c: c.fetch_prefix(pattern, workspace)))
    if state.json:
        emit_json(report)
    else:
        for path in report.fetched:
            out.print(path, markup=False)
        out.print(
            f"{len(report.fetched)} file(s), {human_size(report.bytes_transferred)} transferred"
            f" into {dest}",
            markup=False,
        )
    for failure in report.failed:
        err.print(f"error: {failure.path}: {failure.message}", markup=False)
    if report.failed:
        raise typer.Exit(1)


def put(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
    local: Annotated[Path, typer.Argument(help="Local file.")],
    remote: Annotated[str, typer.Argument(help="Remote path.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing item.")
    ] = False,
) -> None:
    """Upload a local file to a source."""
    state = get_state(ctx)

    async def upload(connector: BaseConnector[Any]) -> DataItem:
        try:
            return await connector.upload_data(local, remote, overwrite=overwrite)
        except AlreadyExistsError:
            raise AlreadyExistsError(
                f"{remote!r} already exists in {source!r}; add --overwrite to replace it."
            ) from None

    item = run_command(borrow(state, source, upload))
    if state.json:
        emit_json(item)
    else:
        out.print(f"Uploaded {item.path} ({human_size(item.size)}).", markup=False)


def query(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name of a database source.")],
    sql: Annotated[str, typer.Argument(help="One read-only statement.")],
    max_rows: Annotated[int, typer.Option("--max-rows", "-n", min=1, max=10_000_000)] = 100,
) -> None:
    """Run a read-only query on a database source."""
    state = get_state(ctx)

    async def run(connector: BaseConnector[Any]) -> Any:
        return await as_sql(connector, source).execute_query(sql, max_rows=max_rows)

    result = run_command(borrow(state, source, run))
    if state.json:
        emit_json(result)
        return
    table = Table(*(f"{c.name}\n[dim]{c.type}[/]" for c in result.columns))
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    more = " (truncated: raise --max-rows)" if result.truncated else ""
    err.print(f"{result.row_count} row(s) in {result.elapsed_ms:.1f} ms{more}", markup=False)
