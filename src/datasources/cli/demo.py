"""``datasources demo``: the bundled sample folder registered, listed and fetched."""

from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import typer
from rich.table import Table

from datasources.cli.common import get_state, human_size, out, run_command, with_registry
from datasources.config import Settings
from datasources.errors import DataSourceError, NotFoundError
from datasources.models import DataSourceConfig
from datasources.registry import DataSourceRegistry
from datasources.workspace import Workspace

__all__ = ["copy_samples", "demo"]


def copy_samples(settings: Settings) -> Path:
    """The bundled sample files, copied under ``<home>/demo/samples``; that folder."""
    samples = settings.home / "demo" / "samples"
    bundled = resources.files("datasources.demo") / "samples"
    with resources.as_file(bundled) as bundled_path:
        shutil.copytree(bundled_path, samples, dirs_exist_ok=True)
    return samples


class _Meter:
    """A progress callback that remembers the bytes moved."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, done: int, total: int | None) -> None:
        self.done = done


def demo(ctx: typer.Context) -> None:
    """Register the bundled sample folder, list it and fetch files into a workspace."""
    state = get_state(ctx)
    settings = state.settings()
    home = settings.home
    samples = copy_samples(settings)
    workspace_dir = home / "workspaces" / "demo"
    say = out.print

    async def run(registry: DataSourceRegistry) -> None:
        say(f"[bold]datasources demo[/] — state in {home}")
        try:
            source = await registry.get_data_source("samples")
            say(f"1. Source [cyan]samples[/] is already registered ({source.type}, read-only).")
        except NotFoundError:
            source = await registry.register_data_source(
                DataSourceConfig(
                    name="samples",
                    type="local_folder",
                    description="Sample CSV and Parquet files bundled with datasources",
                    config={"root": str(samples)},
                    read_only=True,
                    tags=["demo"],
                )
            )
            say(f"1. Registered [cyan]samples[/] → {samples} (local_folder, read-only).")
        status = await registry.test_data_source("samples")
        say(
            f"2. Connection test: {'ok' if status.ok else 'FAILED'} "
            f"in {status.latency_ms or 0:.2f} ms."
        )
        async with registry.get_connector("samples") as connector:
            items = await connector.list_items()
            table = Table("path", "size", "content type", title="3. Items in samples")
            for item in items:
                table.add_row(item.path, human_size(item.size), item.content_type or "")
            say(table)
            workspace = Workspace(workspace_dir)
            say(f"4. Fetching into the workspace {workspace_dir}:")
            for path in ("sales.csv", "customers.parquet", "reference/regions.csv"):
                meter = _Meter()
                local = await connector.fetch_data(path, workspace, progress=meter)
                entry = workspace.lookup(path)
                transferred = meter.done
                note = (
                    "unchanged, reused (0 bytes transferred)"
                    if transferred == 0
                    else (f"{transferred} bytes transferred")
                )
                say(
                    f"   {path} → {local.relative_to(workspace.root)}: {note}; "
                    f"sha256 {entry.sha256[:16] if entry else '?'}…"
                )
            try:
                await connector.upload_data(samples / "sales.csv", "copy.csv")
            except DataSourceError as exc:
                say(f"5. Upload refused, as it should be: {exc.message}")
        say(f"6. Provenance manifest: {workspace_dir / '.datasources' / 'manifest.jsonl'}")
        say("Run it again: unchanged files are reused from the workspace.")

    run_command(with_registry(state, run))
