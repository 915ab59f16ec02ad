"""The ``datasources`` command: a thin view over the registry and its connectors.

State lives under ``DATASOURCES_HOME`` (or ``--home``). Human output by default,
``--json`` for scripts; on failure one line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from typer.core import TyperGroup
from typer.exceptions import TyperException

from datasources.cli_users import users_app
from datasources.config import Settings
from datasources.connectors.base import BaseConnector
from datasources.connectors.sql import as_sql
from datasources.credentials import (
    CredentialManager,
    RedactingFilter,
    generate_key,
    install_log_redaction,
    load_key_file,
    redact,
    write_key_file,
)
from datasources.errors import (
    AlreadyExistsError,
    ConfigurationError,
    DataSourceError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)
from datasources.keys import ApiKeys
from datasources.models import ConnectionStatus, DataItem, DataSourceConfig
from datasources.registry import DataSourceRegistry
from datasources.store import Store
from datasources.workspace import Workspace

__all__ = ["app", "main"]

T = TypeVar("T")


class _GlobalOptionsGroup(TyperGroup):
    """The root command: ``--json``, ``--home`` and ``-v`` also work after a subcommand.

    Click reads a group's options only before the subcommand's name. The global options
    are few and take no value that could look like another option, so they are moved in
    front of the subcommand before parsing; everything after ``--`` is left as it is.
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        return super().parse_args(ctx, hoist_global_options(args))

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        """Usage errors as one line on stderr (exit 2), like every other failure."""

        def run(standalone: bool) -> Any:
            return super(_GlobalOptionsGroup, self).main(
                args, prog_name, complete_var, standalone, windows_expand_args, **extra
            )

        if not standalone_mode:
            return run(False)
        try:
            result = run(False)
        except TyperException as exc:
            message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
            context = getattr(exc, "ctx", None)
            hint = f" (see '{context.command_path} --help')" if context is not None else ""
            err.print(f"error: {message}{hint}", markup=False)
            sys.exit(int(getattr(exc, "exit_code", 2)))
        except typer.Abort:
            err.print("error: aborted", markup=False)
            sys.exit(1)
        sys.exit(result if isinstance(result, int) else 0)


_GLOBAL_FLAGS = frozenset({"--json", "--verbose", "-v", "--create"})


def hoist_global_options(args: list[str]) -> list[str]:
    """``args`` with the global options (wherever they stand) first, in their order."""
    hoisted: list[str] = []
    rest: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg == "--":
            rest += args[index:]
            break
        if arg in _GLOBAL_FLAGS or arg.startswith("--home="):
            hoisted.append(arg)
        elif arg == "--home" and index + 1 < len(args):
            hoisted += args[index : index + 2]
            index += 1
        else:
            rest.append(arg)
        index += 1
    return hoisted + rest


app = typer.Typer(
    cls=_GlobalOptionsGroup,
    name="datasources",
    help="Uniform, safe access to external data: register sources, list, fetch, upload.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: flags shown as flags, not as "<bool>"
)
sources_app = typer.Typer(
    help="Register and manage data sources.", no_args_is_help=True, rich_markup_mode=None
)
secrets_app = typer.Typer(
    help="Encryption keys and stored secrets.", no_args_is_help=True, rich_markup_mode=None
)
keys_app = typer.Typer(
    help="API keys of the HTTP service.", no_args_is_help=True, rich_markup_mode=None
)
app.add_typer(sources_app, name="sources")
app.add_typer(secrets_app, name="secrets")
app.add_typer(keys_app, name="keys")
app.add_typer(users_app, name="users")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class State:
    """Options given before the command."""

    home: Path | None = None
    json: bool = False
    verbose: bool = False

    def settings(self) -> Settings:
        settings = Settings(home=self.home) if self.home is not None else Settings()
        # A one-shot command needs no warm connectors in the background.
        return settings.model_copy(
            update={"pool": settings.pool.model_copy(update={"min_size": 0})}
        )


def _state(ctx: typer.Context) -> State:
    state = ctx.obj
    if not isinstance(state, State):
        state = State()
        ctx.obj = state
    return state


def _fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"error: {redact(message)}", markup=False)
    raise typer.Exit(code)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except DataSourceError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except ValidationError as exc:  # settings read from the environment
        _fail(f"invalid setting: {_first_error(exc)}", 2)
    except OSError as exc:
        logging.getLogger(__name__).debug("Command failed", exc_info=True)
        _fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "))
    except Exception as exc:  # one line for the user; the traceback goes to -v logs
        logging.getLogger(__name__).debug("Command failed", exc_info=True)
        _fail(f"internal error ({type(exc).__name__}); run with -v for details")


def _configure_logging(verbose: bool, level_name: str) -> None:
    install_log_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.DEBUG if verbose else getattr(logging, level_name.upper(), logging.WARNING)
    root.setLevel(level)


def _emit_json(data: Any) -> None:
    def default(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        if isinstance(value, Path):
            return str(value)
        return str(value)

    out.print(json.dumps(data, default=default, indent=2), markup=False)


def _item_size(item: DataItem) -> str:
    """A file's size; a table's estimated rows (its on-disk size says little, often 0)."""
    if str(item.kind) in ("table", "view"):
        rows = item.metadata.get("estimated_rows")
        return f"~{rows:,} rows" if isinstance(rows, int) else ""
    return _human_size(item.size)


def _human_size(size: int | None) -> str:
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


async def _with_registry(state: State, action: Callable[[DataSourceRegistry], Awaitable[T]]) -> T:
    async with DataSourceRegistry.from_settings(state.settings()) as registry:
        return await action(registry)


@app.callback()
def _main(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", help="State folder (default: DATASOURCES_HOME or the user data dir)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Debug logging on stderr.")
    ] = False,
    create: Annotated[
        bool, typer.Option("--create", help="Start a new state folder where --home points.")
    ] = False,
) -> None:
    state = State(home=home.expanduser().resolve() if home else None, json=as_json, verbose=verbose)
    ctx.obj = state
    if state.home is not None and not state.home.exists() and not create:
        # A mistyped --home would otherwise start a new, empty store without a word.
        _fail(f"no state folder at {state.home}: check the path, or add --create to start one", 2)
    try:
        level = state.settings().log_level
    except Exception:  # settings errors surface in the command itself
        level = "WARNING"
    _configure_logging(verbose, level)


# -- sources ------------------------------------------------------------------------------


def _parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"{what} expects key=value, got {key or pair[:20]!r}", 2)
        parsed[key] = value
    return parsed


def _source_row(source: DataSourceConfig) -> dict[str, Any]:
    return source.model_dump(mode="json")


@sources_app.command("add")
def sources_add(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A unique, human name.")],
    type_: Annotated[str, typer.Option("--type", "-t", help="Connector type, e.g. local_folder.")],
    config: Annotated[
        list[str] | None, typer.Option("--config", "-c", help="key=value (repeatable).")
    ] = None,
    config_file: Annotated[
        Path | None, typer.Option("--config-file", help="A JSON file with the config object.")
    ] = None,
    config_env: Annotated[
        list[str] | None,
        typer.Option(
            "--config-env", help="key=ENV_VAR: take a (secret) value from the environment."
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="Ask for this key's value (hidden).")
    ] = None,
    source_id: Annotated[
        str | None, typer.Option("--id", help="Default: a slug of the name.")
    ] = None,
    description: Annotated[str, typer.Option("--description", "-d")] = "",
    tag: Annotated[list[str] | None, typer.Option("--tag", help="Repeatable.")] = None,
    read_only: Annotated[bool, typer.Option("--read-only", help="Refuse every write.")] = False,
    test: Annotated[
        bool | None,
        typer.Option(
            "--test/--no-test",
            help="Test the connection once registered (default: on in a terminal).",
        ),
    ] = None,
) -> None:
    """Register a data source."""
    state = _state(ctx)
    values, inline = _collect_config(config_file, config, config_env, prompt)
    run_test = sys.stdin.isatty() and not state.json if test is None else test
    status: ConnectionStatus | None = None

    async def add(registry: DataSourceRegistry) -> DataSourceConfig:
        nonlocal status
        _warn_inline_secrets(inline, registry.connector_class(type_).secret_fields)
        try:
            source = DataSourceConfig(
                id=source_id or "",
                type=type_,
                name=name,
                description=description,
                config=values,
                read_only=read_only,
                tags=tag or [],
            )
        except ValueError as exc:
            raise ConfigurationError(_first_error(exc)) from None
        registered = await registry.register_data_source(source)
        await _warn_if_the_service_refuses(registry, type_, values, state.settings())
        if run_test:
            status = await registry.test_data_source(registered.id)
        return registered

    source = _run(_with_registry(state, add))
    if state.json:
        row = _source_row(source)
        if status is not None:
            row["test"] = status.model_dump(mode="json")
        _emit_json(row)
    else:
        out.print(f"Registered {source.name!r} as {source.id} ({source.type}).", markup=False)
        if status is not None:
            mark = "ok" if status.ok else "FAILED"
            out.print(f"Connection test: {mark}: {status.message}", markup=False)
            for warning in status.warnings:
                out.print(f"warning: {warning}", markup=False)
    if status is not None and not status.ok and test:
        raise typer.Exit(1)  # asked for explicitly: a failed test fails the command


def _collect_config(
    config_file: Path | None,
    config: list[str] | None,
    config_env: list[str] | None,
    prompt: list[str] | None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """Config values from a file, ``-c``, the environment and prompts; and the inline ones."""
    values: dict[str, Any] = {}
    if config_file is not None:
        try:
            loaded = json.loads(config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {config_file}: {type(exc).__name__}", 2)
        if not isinstance(loaded, dict):
            _fail(f"{config_file} must hold a JSON object", 2)
        values.update(loaded)
    inline = _parse_pairs(config or [], "--config")
    values.update(inline)
    for key, var in _parse_pairs(config_env or [], "--config-env").items():
        if var not in os.environ:
            _fail(f"environment variable {var!r} (for {key!r}) is not set", 2)
        values[key] = os.environ[var]
    for key in prompt or []:
        values[key] = typer.prompt(key, hide_input=True)
    return values, inline


async def _warn_if_the_service_refuses(
    registry: DataSourceRegistry, type_: str, values: Mapping[str, Any], settings: Settings
) -> None:
    """Say so now when ``datasources serve`` would refuse to connect this source.

    Sources are checked against the outbound-target policy whenever the HTTP service
    connects them, whoever added them; the CLI does not apply it, so without this note a
    folder added here works in the terminal and answers 403 over HTTP.
    """
    cls = registry.connector_class(type_)
    policy = settings.outbound_policy()
    try:
        model = cls.validate_config(dict(values))
        await cls.check_targets(model, policy)
    except PermissionDeniedError as exc:
        roots = ", ".join(str(r) for r in policy.local_folder_roots) or "none"
        err.print(
            f"note: the HTTP service will refuse this source as configured now: {exc.message} "
            f"(allowed folder roots: {roots}; private networks "
            f"{'allowed' if policy.allow_private_networks else 'refused'}; "
            "see DATASOURCES_LOCAL_FOLDER_ROOTS and DATASOURCES_ALLOW_PRIVATE_NETWORKS).",
            markup=False,
        )
    except Exception:  # a config the connector cannot judge alone: nothing to say
        logging.getLogger(__name__).debug("Policy pre-check skipped", exc_info=True)


def _warn_inline_secrets(inline: Mapping[str, str], secret_fields: frozenset[str]) -> None:
    for key in sorted(set(inline) & secret_fields):
        err.print(
            f"warning: {key!r} was given on the command line, where shell history and "
            f"process listings can see it; prefer --config-env {key}=VAR or --prompt {key}.",
            markup=False,
        )


@sources_app.command("update")
def sources_update(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
    config: Annotated[
        list[str] | None,
        typer.Option("--config", "-c", metavar="KEY=VALUE", help="Set a config key (repeatable)."),
    ] = None,
    config_env: Annotated[
        list[str] | None,
        typer.Option(
            "--config-env", metavar="KEY=ENV_VAR", help="Set a (secret) key from the environment."
        ),
    ] = None,
    prompt: Annotated[
        list[str] | None,
        typer.Option("--prompt", metavar="KEY", help="Ask for this key's new value (hidden)."),
    ] = None,
    unset: Annotated[
        list[str] | None,
        typer.Option("--unset", metavar="KEY", help="Remove a config key (back to its default)."),
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="A new name.")] = None,
    description: Annotated[str | None, typer.Option("--description", "-d")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Replace the tags (repeatable).")
    ] = None,
    read_only: Annotated[
        bool | None, typer.Option("--read-only/--writable", help="Refuse or allow writes.")
    ] = None,
) -> None:
    """Change a source's config, name, description, tags or read-only flag.

    Only the keys given change; stored secrets stay unless given again. A secret stays
    only while the connection target (host, account, root…) is unchanged: changing the
    target needs the secret again (--config-env or --prompt).
    """
    state = _state(ctx)
    values, inline = _collect_config(None, config, config_env, prompt)
    changes: dict[str, Any] = {}
    removed = dict.fromkeys(unset or [])
    if clash := sorted(set(removed) & set(values)):
        _fail(f"{clash[0]!r} is both set and unset", 2)
    if values or removed:
        changes["config"] = {**values, **removed}
    for key, value in (
        ("name", name),
        ("description", description),
        ("tags", tag),
        ("read_only", read_only),
    ):
        if value is not None:
            changes[key] = value
    if not changes:
        _fail("nothing to change: give -c, --config-env, --prompt, --unset or another option", 2)

    async def update(registry: DataSourceRegistry) -> DataSourceConfig:
        found = await registry.get_data_source(source)
        _warn_inline_secrets(inline, registry.connector_class(found.type).secret_fields)
        return await registry.update_data_source(found.id, changes)

    updated = _run(_with_registry(state, update))
    if state.json:
        _emit_json(_source_row(updated))
    else:
        out.print(f"Updated {updated.name!r} ({updated.id}).", markup=False)


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        problems = exc.errors(include_url=False, include_input=False, include_context=False)
        return "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
    return "invalid input"


@sources_app.command("list")
def sources_list(ctx: typer.Context) -> None:
    """List registered data sources."""
    state = _state(ctx)
    sources = _run(_with_registry(state, lambda r: r.list_data_sources()))
    if state.json:
        _emit_json([_source_row(s) for s in sources])
        return
    if not sources:
        out.print("No data sources. Add one with: datasources sources add NAME --type TYPE ...")
        return
    table = Table("id", "name", "type", "read-only", "tags", "description")
    for s in sources:
        table.add_row(
            s.id,
            s.name,
            str(s.type),
            "yes" if s.read_only else "",
            ", ".join(s.tags),
            s.description,
        )
    out.print(table)


@sources_app.command("show")
def sources_show(
    ctx: typer.Context, source: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Show one data source (secrets masked)."""
    state = _state(ctx)
    found = _run(_with_registry(state, lambda r: r.get_data_source(source)))
    if state.json:
        _emit_json(_source_row(found))
        return
    table = Table("field", "value", show_header=False)
    for key in (
        "id",
        "name",
        "type",
        "description",
        "read_only",
        "tags",
        "created_at",
        "updated_at",
    ):
        table.add_row(key, str(getattr(found, key)))
    for key, value in found.config.items():
        table.add_row(f"config.{key}", json.dumps(value) if not isinstance(value, str) else value)
    out.print(table)


@sources_app.command("remove")
def sources_remove(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
) -> None:
    """Remove a data source (its remote data is not touched)."""
    state = _state(ctx)

    async def remove(registry: DataSourceRegistry) -> str:
        found = await registry.get_data_source(source)
        await registry.remove_data_source(found.id)
        return found.id

    removed = _run(_with_registry(state, remove))
    if state.json:
        _emit_json({"removed": removed})
    else:
        out.print(f"Removed {removed}.", markup=False)


@sources_app.command("test")
def sources_test(
    ctx: typer.Context, source: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Check that a source is reachable with its credentials."""
    state = _state(ctx)
    status = _run(_with_registry(state, lambda r: r.test_data_source(source)))
    if state.json:
        _emit_json(status)
    else:
        mark = "ok" if status.ok else "FAILED"
        latency = f" ({status.latency_ms:.1f} ms)" if status.latency_ms is not None else ""
        out.print(f"{mark}{latency}: {status.message}", markup=False)
        for warning in status.warnings:
            out.print(f"warning: {warning}", markup=False)
    if not status.ok:
        raise typer.Exit(1)


# -- data ---------------------------------------------------------------------------------


async def _borrow(
    state: State, source: str, action: Callable[[BaseConnector[Any]], Awaitable[T]]
) -> T:
    async def run(registry: DataSourceRegistry) -> T:
        async with registry.get_connector(source) as connector:
            return await action(connector)

    return await _with_registry(state, run)


@app.command("ls")
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
    state = _state(ctx)
    delimiter = None if recursive or glob else "/"
    page = _run(
        _borrow(
            state,
            source,
            lambda c: c.list_page(
                prefix, limit=limit, cursor=cursor, delimiter=delimiter, glob=glob
            ),
        )
    )
    if state.json:
        _emit_json(page)
        return
    table = Table("path", "kind", "size", "modified")
    for item in page.items:
        modified = item.last_modified.strftime("%Y-%m-%d %H:%M") if item.last_modified else ""
        table.add_row(item.path, str(item.kind), _item_size(item), modified)
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


@app.command("get")
def get(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
    path: Annotated[str, typer.Argument(help="Remote path.")],
    dest: Annotated[
        Path, typer.Argument(help="Workspace folder (keeps the remote folders).")
    ] = Path("."),
) -> None:
    """Fetch an item (or, for a PATH ending in '/' or holding * ? [, many) into a workspace."""
    state = _state(ctx)
    if path.endswith("/") or any(c in path for c in "*?["):
        _get_many(state, source, path, dest)
        return
    with _progress() as bar:
        local = _run(_borrow(state, source, lambda c: _fetch(c, path, dest, bar)))
    workspace = Workspace(dest)
    entry = workspace.entry_for(local)  # a table's file is named schema/table.parquet
    if state.json:
        _emit_json({"path": str(local), "provenance": entry})
    else:
        size = _human_size(entry.size) if entry else ""
        out.print(f"{local}  {size}  sha256:{entry.sha256 if entry else '?'}", markup=False)


def _get_many(state: State, source: str, pattern: str, dest: Path) -> None:
    report = _run(_borrow(state, source, lambda c: c.fetch_prefix(pattern, dest)))
    if state.json:
        _emit_json(report)
    else:
        for path in report.fetched:
            out.print(path, markup=False)
        out.print(
            f"{len(report.fetched)} file(s), {_human_size(report.bytes_transferred)} transferred"
            f" into {dest}",
            markup=False,
        )
    for failure in report.failed:
        err.print(f"error: {failure.path}: {failure.message}", markup=False)
    if report.failed:
        raise typer.Exit(1)


@app.command("put")
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
    state = _state(ctx)

    async def upload(connector: BaseConnector[Any]) -> DataItem:
        try:
            return await connector.upload_data(local, remote, overwrite=overwrite)
        except AlreadyExistsError:
            raise AlreadyExistsError(
                f"{remote!r} already exists in {source!r}; add --overwrite to replace it."
            ) from None

    item = _run(_borrow(state, source, upload))
    if state.json:
        _emit_json(item)
    else:
        out.print(f"Uploaded {item.path} ({_human_size(item.size)}).", markup=False)


@app.command("query")
def query(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name of a database source.")],
    sql: Annotated[str, typer.Argument(help="One read-only statement.")],
    max_rows: Annotated[int, typer.Option("--max-rows", "-n", min=1, max=10_000_000)] = 100,
) -> None:
    """Run a read-only query on a database source."""
    state = _state(ctx)

    async def run(connector: BaseConnector[Any]) -> Any:
        return await as_sql(connector, source).execute_query(sql, max_rows=max_rows)

    result = _run(_borrow(state, source, run))
    if state.json:
        _emit_json(result)
        return
    table = Table(*(f"{c.name}\n[dim]{c.type}[/]" for c in result.columns))
    for row in result.rows:
        table.add_row(*("NULL" if v is None else str(v) for v in row))
    out.print(table)
    more = " (truncated: raise --max-rows)" if result.truncated else ""
    err.print(f"{result.row_count} row(s) in {result.elapsed_ms:.1f} ms{more}", markup=False)


# -- secrets ------------------------------------------------------------------------------


@secrets_app.command("generate-key")
def secrets_generate_key(ctx: typer.Context) -> None:
    """Print a new encryption key (for DATASOURCES_SECRET_KEYS)."""
    key = generate_key()
    if _state(ctx).json:
        _emit_json({"key": key})
    else:
        out.print(key, markup=False)


@secrets_app.command("rotate")
def secrets_rotate(
    ctx: typer.Context,
    new_key: Annotated[
        bool, typer.Option("--new-key", help="Key file only: add a new newest key first.")
    ] = False,
    drop_old: Annotated[
        bool, typer.Option("--drop-old-keys", help="Key file only: keep just the newest key after.")
    ] = False,
) -> None:
    """Re-encrypt every stored secret under the newest key (all or nothing).

    With DATASOURCES_SECRET_KEYS: put the new key first, run this, then remove the old key.
    With the key file: --new-key adds a key and rotates; --drop-old-keys retires the rest.
    """
    state = _state(ctx)
    settings = state.settings()
    env_keys = settings.key_list()
    key_file = settings.resolved_key_file
    if env_keys and (new_key or drop_old):
        _fail(
            "--new-key/--drop-old-keys manage the key file; "
            "with DATASOURCES_SECRET_KEYS, edit the variable instead",
            2,
        )
    keys = env_keys or load_key_file(key_file, create=False)
    if not keys:
        _fail("no encryption key is configured", 1)
    if new_key:
        keys = [generate_key(), *keys]
        write_key_file(key_file, keys)

    async def rotate() -> int:
        store = Store(settings.resolved_database_url)
        async with DataSourceRegistry(store=store, credentials=CredentialManager(keys)) as registry:
            return await registry.rotate_secrets()

    count = _run(rotate())
    if drop_old and len(keys) > 1:
        write_key_file(key_file, keys[:1])
    if state.json:
        _emit_json({"rotated": count, "keys": 1 if drop_old else len(keys)})
    else:
        out.print(
            f"Re-encrypted the secrets of {count} data source(s) under the newest key.",
            markup=False,
        )


# -- demo ---------------------------------------------------------------------------------


class _Meter:
    """A progress callback that remembers the bytes moved."""

    def __init__(self) -> None:
        self.done = 0

    def __call__(self, done: int, total: int | None) -> None:
        self.done = done


# -- API keys and the service -------------------------------------------------------------


async def _with_keys(state: State, action: Callable[[ApiKeys], Awaitable[T]]) -> T:
    async with DataSourceRegistry.from_settings(state.settings()) as registry:
        return await action(ApiKeys(registry.store))


@keys_app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")],
    owner: Annotated[
        str | None,
        typer.Option(help="Share an existing owner's data sources (default: a new owner)."),
    ] = None,
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    state = _state(ctx)
    created = _run(_with_keys(state, lambda keys: keys.create(name, owner=owner)))
    if state.json:
        _emit_json(
            {"id": created.id, "name": created.name, "owner": created.owner, "key": created.key}
        )
        return
    out.print(f"Created key [cyan]{created.id}[/] ({created.name}) for owner {created.owner}.")
    out.print("Store it now; it is not shown again:")
    out.print(created.key, markup=False)


@keys_app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List API keys (ids, names, owners, state; never the keys)."""
    state = _state(ctx)
    keys = _run(_with_keys(state, lambda k: k.list_keys()))
    rows = [
        {
            "id": k.id,
            "name": k.name,
            "owner": k.owner,
            "created_at": k.created_at.isoformat(),
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
        }
        for k in keys
    ]
    if state.json:
        _emit_json(rows)
        return
    table = Table("id", "name", "owner", "created", "state")
    for k in keys:
        table.add_row(
            k.id,
            k.name,
            k.owner,
            f"{k.created_at:%Y-%m-%d %H:%M}",
            "revoked" if k.revoked_at else "active",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id (or its name, if unique).")],
) -> None:
    """Revoke an API key: it stops working at once here, within seconds in other replicas."""
    state = _state(ctx)
    revoked = _run(_with_keys(state, lambda keys: keys.revoke(key)))
    if state.json:
        _emit_json({"id": revoked.id, "revoked": True})
    else:
        out.print(f"Revoked key {revoked.id} ({revoked.name}).")


def _demo_source(settings: Settings) -> Path:
    samples = settings.home / "demo" / "samples"
    bundled = resources.files("datasources.demo") / "samples"
    with resources.as_file(bundled) as bundled_path:
        shutil.copytree(bundled_path, samples, dirs_exist_ok=True)
    return samples


async def _prepare_demo(settings: Settings, *, new_key: bool = False) -> str:
    """Register the sample folder; the demo key, kept across runs (a new one if asked).

    The key itself is kept in ``<home>/demo.key`` (0600) beside the store and the
    encryption key, so that scripts written against one ``make run`` keep working after
    the next; the store holds only its hash, as for every key. A missing, unreadable or
    revoked key, or ``new_key``, mints a fresh one and revokes the older demo keys.
    """
    samples = _demo_source(settings)
    async with DataSourceRegistry.from_settings(settings) as registry:
        try:
            await registry.get_data_source("samples")
        except NotFoundError:
            await registry.register_data_source(
                DataSourceConfig(
                    name="samples",
                    type="local_folder",
                    description="Sample CSV and Parquet files bundled with datasources",
                    config={"root": str(samples)},
                    read_only=True,
                    tags=["demo"],
                )
            )
        keys = ApiKeys(registry.store, cache_seconds=0)
        kept_file = settings.home / "demo.key"
        if not new_key:
            kept = await asyncio.to_thread(_read_demo_key, kept_file)
            if kept is not None and await keys.authenticate(kept) is not None:
                return kept
        for old in await keys.list_keys(owner=settings.owner):
            if old.name == "demo" and old.revoked_at is None:
                await keys.revoke(old.id)
        created = await keys.create("demo", owner=settings.owner)
        await asyncio.to_thread(_write_private, kept_file, created.key + "\n")
        return created.key


def _read_demo_key(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd, encoding="utf-8") as handle:
        if os.fstat(handle.fileno()).st_mode & 0o077:
            return None  # readable by others: not trusted, replaced by a new key
        text = handle.read(256).strip()
    return text or None


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` as a 0600 file, atomically (a new file renamed over)."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise


@app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="Interface (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (default 1).")] = None,
    demo_mode: Annotated[
        bool,
        typer.Option(
            "--demo",
            help="Embedded default: register the sample folder, allow loopback sources and "
            "print the demo API key (kept across runs in <home>/demo.key).",
        ),
    ] = False,
    new_key: Annotated[
        bool, typer.Option("--new-key", help="With --demo: revoke the demo key, make a new one.")
    ] = False,
) -> None:
    """Run the HTTP service (FastAPI on uvicorn)."""
    import uvicorn

    state = _state(ctx)
    settings = state.settings()
    api = settings.api.model_copy(
        update={
            k: v
            for k, v in {"host": host, "port": port, "workers": workers}.items()
            if v is not None
        }
    )
    settings = settings.model_copy(update={"api": api})
    if demo_mode:
        # The embedded default on one machine: sources on loopback (a local PostgreSQL,
        # Azurite) and the sample folder are allowed; say so, since a shared service
        # must not do this.
        roots = [*settings.local_folder_roots, settings.home / "demo"]
        settings = settings.model_copy(
            update={"allow_private_networks": True, "local_folder_roots": roots}
        )
        key = _run(_prepare_demo(settings, new_key=new_key))
        base = f"http://{api.host}:{api.port}"
        out.print(
            "[bold]datasources[/] — embedded default (SQLite store and key file in "
            f"{settings.home}); loopback sources allowed."
        )
        out.print(
            "Local folders allowed under: "
            + ", ".join(str(r) for r in settings.local_folder_roots)
            + " (add more with DATASOURCES_LOCAL_FOLDER_ROOTS).",
            markup=False,
        )
        out.print(
            f"API key (owner local; kept in {settings.home / 'demo.key'} across runs, "
            "--new-key for a fresh one):"
        )
        out.print(key, markup=False)
        out.print("Try:", markup=False)
        out.print(
            f'  curl -H "Authorization: Bearer {key}" {base}/api/v1/datasources', markup=False
        )
        out.print(
            f'  curl -H "Authorization: Bearer {key}" "{base}/api/v1/datasources/samples/items"',
            markup=False,
        )
        out.print(f"  API docs in a browser: {base}/docs", markup=False)
    else:
        err.print(
            f"datasources: serving http://{api.host}:{api.port} (API docs at /docs); "
            f"state in {settings.home}. Ctrl-C stops it.",
            markup=False,
        )
    level = "debug" if state.verbose else settings.log_level.lower()
    logging.getLogger("datasources.access").setLevel(logging.INFO)
    if api.workers > 1:
        # Each worker builds its own app from the environment: hand the settings over.
        os.environ["DATASOURCES_HOME"] = str(settings.home)
        os.environ["DATASOURCES_ALLOW_PRIVATE_NETWORKS"] = str(settings.allow_private_networks)
        os.environ["DATASOURCES_LOCAL_FOLDER_ROOTS"] = ",".join(
            str(r) for r in settings.local_folder_roots
        )
        uvicorn.run(
            "datasources.api.app:create_app",
            factory=True,
            host=api.host,
            port=api.port,
            workers=api.workers,
            log_config=None,
            log_level=level,
            access_log=False,
        )
        return
    from datasources.api import create_app

    uvicorn.run(
        create_app(settings),
        host=api.host,
        port=api.port,
        log_config=None,
        log_level=level,
        access_log=False,
    )


# -- chat ---------------------------------------------------------------------------------


def _render_part(part: dict[str, Any], client: Any, chat_id: str, saved: Path) -> Any:
    """Print one reply part; images are downloaded into ``saved``. Returns a coroutine or None."""
    kind = part.get("type")
    if kind in ("text", "result"):
        out.print(part.get("text", ""), markup=False)
    elif kind in ("stdout", "stderr"):
        (err if kind == "stderr" else out).print(part.get("text", "").rstrip("\n"), markup=False)
    elif kind == "code":
        from rich.syntax import Syntax

        out.print(Syntax(part.get("text", ""), "python", theme="ansi_dark"))
    elif kind == "error":
        err.print(f"[red]{part.get('name') or 'error'}[/]: {part.get('text', '')}")
    elif kind == "table":
        data = part.get("data") or {}
        if "preview" in data:  # a data brief
            out.print(f"{data.get('title')}: {data.get('rows')} rows", markup=False)
            table = Table("column", "type", "nulls", "distinct", "min", "max")
            for c in data.get("columns", []):
                table.add_row(
                    str(c["name"]),
                    str(c["type"]),
                    f"{c['null_fraction']:.1%}",
                    str(c["distinct"]),
                    str(c.get("min", "")),
                    str(c.get("max", "")),
                )
            out.print(table)
        else:
            table = Table(*[str(c) for c in data.get("columns", [])])
            for row in data.get("rows", [])[:50]:
                table.add_row(*["" if v is None else str(v) for v in row])
            out.print(table)
    elif kind == "image" and part.get("path"):
        return _save_image(client, chat_id, str(part["path"]), saved)
    return None


async def _save_image(client: Any, chat_id: str, path: str, saved: Path) -> None:
    response = await client.get(f"/api/v1/chats/{chat_id}/files/{path}")
    if response.status_code == 200:
        await asyncio.to_thread(saved.mkdir, parents=True, exist_ok=True)
        target = saved / Path(path).name
        await asyncio.to_thread(target.write_bytes, response.content)
        out.print(f"(image saved to {target})", markup=False)


def fence_open(text: str) -> bool:
    """Whether ``text`` stops inside a ```` ``` ```` block (an odd number of fences)."""
    return text.count("```") % 2 == 1


def piped_messages(lines: Iterable[str]) -> Iterator[str]:
    """Messages from lines of text: one line each, a ```` ``` ```` block whole."""
    pending: list[str] = []
    for raw in lines:
        pending.append(raw.rstrip("\r\n"))
        text = "\n".join(pending)
        if not fence_open(text):
            yield text
            pending = []
    if pending:  # a block never closed: send what there is
        yield "\n".join(pending)


class _MessageReader:
    """Reads chat messages: an editor in a terminal, whole blocks from a pipe.

    In a terminal, Enter sends the message unless a ```` ``` ```` block is still open
    (then it starts a new line); Esc then Enter always starts a new line, and pasted
    text keeps its line breaks. From a pipe, each line is a message and a fenced block
    is one message.
    """

    def __init__(self) -> None:
        self._session: Any = None
        self._piped: Iterator[str] | None = None
        if sys.stdin.isatty() and sys.stdout.isatty():
            from prompt_toolkit import PromptSession
            from prompt_toolkit.key_binding import KeyBindings

            bindings = KeyBindings()

            @bindings.add("enter")
            def _enter(event: Any) -> None:
                buffer = event.current_buffer
                if fence_open(buffer.text):
                    buffer.insert_text("\n")
                else:
                    buffer.validate_and_handle()

            @bindings.add("escape", "enter")
            def _newline(event: Any) -> None:
                event.current_buffer.insert_text("\n")

            self._session = PromptSession(
                multiline=True, key_bindings=bindings, prompt_continuation="...> "
            )
            self.hint = (
                "Enter sends. Inside a ```python block Enter starts a new line until the "
                "closing ```; Esc then Enter adds a line anywhere; pasting keeps lines."
            )
        else:
            self._piped = piped_messages(iter(sys.stdin.readline, ""))
            self.hint = "Reading messages from standard input: a line each, a ``` block whole."

    async def read(self) -> str:
        if self._session is not None:
            try:
                text: str = await self._session.prompt_async("you> ")
            except KeyboardInterrupt:
                return ""
            return text
        assert self._piped is not None
        message = await asyncio.to_thread(next, self._piped, None)
        if message is None:
            raise EOFError
        return message


@app.command("chat")
def chat(
    ctx: typer.Context,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Chat about these sources only (repeatable; id or name)."),
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="A remote service; default the local embedded one.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(envvar="DATASOURCES_API_KEY", help="The key for --url (or the env var)."),
    ] = None,
    save_to: Annotated[Path, typer.Option(help="Where images are saved.")] = Path("chat-images"),
) -> None:
    """Chat with your data in the terminal: @source:path references, ```python, /sql."""
    import httpx

    state = _state(ctx)

    async def converse(client: Any) -> None:
        from datasources.chat.refs import parse_mentions

        listed = (await client.get("/api/v1/datasources", params={"limit": 200})).json()
        names = {s["name"]: s for s in listed.get("items", [])} | {
            s["id"]: s for s in listed.get("items", [])
        }
        for wanted in source or []:
            if wanted not in names:
                raise NotFoundError(f"Data source {wanted!r} not found.")
        # With --source, the chat is about those sources only; without, about all of them.
        chosen = (
            {names[w]["id"]: names[w] for w in source}
            if source
            else {s["id"]: s for s in names.values()}
        )
        allowed = set(chosen) | {s["name"] for s in chosen.values()}
        created = await client.post("/api/v1/chats", json={"title": "terminal"})
        if created.status_code != 201:
            raise DataSourceError(created.json().get("detail", "could not start a chat"))
        chat_id = created.json()["id"]
        shown = (
            ", ".join(
                f"@{sid}" + (f" ({item['name']})" if item["name"] != sid else "")
                for sid, item in sorted(chosen.items())
            )
            or "none"
        )
        reader = _MessageReader()
        out.print(
            f"Chat {chat_id}. Sources: {shown}. Refer to data as @source:path; /quit to leave.",
            markup=False,
        )
        out.print(reader.hint, markup=False)
        while True:
            try:
                line = await reader.read()
            except EOFError:
                break
            if line.strip() in ("/quit", "/exit"):
                break
            if not line.strip():
                continue
            others = sorted({m.source for m in parse_mentions(line)} - allowed)
            if others:
                err.print(
                    f"error: @{others[0]} is not one of this chat's sources ({shown})",
                    markup=False,
                )
                continue
            response = await client.post(
                f"/api/v1/chats/{chat_id}/messages", json={"content": line}, timeout=600
            )
            if response.status_code != 200:
                err.print(f"error: {response.json().get('detail', response.text)}", markup=False)
                continue
            for part in response.json()["reply"]["parts"]:
                pending = _render_part(part, client, chat_id, save_to)
                if pending is not None:
                    await pending

    async def local() -> None:
        from datasources.api import create_app

        settings = state.settings()
        registry = DataSourceRegistry.from_settings(settings)
        app_ = create_app(settings, registry=registry)
        async with app_.router.lifespan_context(app_):
            keys: ApiKeys = app_.state.keys
            key = await keys.create("terminal-chat", owner=settings.owner, new_owner=True)
            try:
                transport = httpx.ASGITransport(app=app_)
                async with httpx.AsyncClient(
                    transport=transport,
                    base_url="http://local",
                    headers={"Authorization": f"Bearer {key.key}"},
                    timeout=600,
                ) as client:
                    await converse(client)
            finally:
                await keys.revoke(key.id)
        await registry.close()

    async def remote() -> None:
        if not api_key:
            raise ConfigurationError("--url needs --api-key (or DATASOURCES_API_KEY).")
        try:
            async with httpx.AsyncClient(
                base_url=str(url), headers={"Authorization": f"Bearer {api_key}"}, timeout=600
            ) as client:
                await converse(client)
        except httpx.TransportError:
            raise UnavailableError(f"The service at {url} cannot be reached.") from None

    _run(remote() if url else local())


@app.command("demo")
def demo(ctx: typer.Context) -> None:
    """Register the bundled sample folder, list it and fetch files into a workspace."""
    state = _state(ctx)
    settings = state.settings()
    home = settings.home
    samples = home / "demo" / "samples"
    workspace_dir = home / "workspaces" / "demo"
    bundled = resources.files("datasources.demo") / "samples"
    with resources.as_file(bundled) as bundled_path:
        shutil.copytree(bundled_path, samples, dirs_exist_ok=True)
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
                table.add_row(item.path, _human_size(item.size), item.content_type or "")
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

    _run(_with_registry(state, run))


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DataSourceError as exc:  # raised outside _run
        err.print(f"error: {redact(exc.message)}", markup=False)
        sys.exit(1)
    except ValidationError as exc:  # settings from the environment
        err.print(f"error: invalid setting: {_first_error(exc)}", markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
