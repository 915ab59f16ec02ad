"""The data commands: ``ls``, ``get``, ``put`` and ``query`` on one source."""

from __future__ import annotations

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
from datasources.workspace import Workspace

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


async def _fetch(connector: BaseConnector[Any], path: str, dest: Path, bar: Progress) -> Path:
    task = bar.add_task(path, total=None)

    def progress(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    return await connector.fetch_data(path, dest, progress=progress)


def get(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
    path: Annotated[str, typer.Argument(help="Remote path.")],
    dest: Annotated[
        Path, typer.Argument(help="Workspace folder (keeps the remote folders).")
    ] = Path("."),
) -> None:
    """Fetch an item (or, for a PATH ending in '/' or holding * ? [, many) into a workspace."""
    state = get_state(ctx)
    if path.endswith("/") or any(c in path for c in "*?["):
        _get_many(state, source, path, dest)
        return
    with _progress() as bar:
        local = run_command(borrow(state, source, lambda c: _fetch(c, path, dest, bar)))
    workspace = Workspace(dest)
    entry = workspace.entry_for(local)  # a table's file is named schema/table.parquet
    if state.json:
        emit_json({"path": str(local), "provenance": entry})
    else:
        size = human_size(entry.size) if entry else ""
        out.print(f"{local}  {size}  sha256:{entry.sha256 if entry else '?'}", markup=False)


def _get_many(state: State, source: str, pattern: str, dest: Path) -> None:
    report = run_command(borrow(state, source, lambda c: c.fetch_prefix(pattern, dest)))
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
