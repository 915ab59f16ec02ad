"""``datasources sources …``: register, change, list, show, test and remove data sources."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from datasources.cli.common import (
    emit_json,
    err,
    fail,
    first_error,
    get_state,
    out,
    run_command,
    with_registry,
)
from datasources.config import Settings
from datasources.errors import ConfigurationError, PermissionDeniedError
from datasources.models import ConnectionStatus, DataSourceConfig
from datasources.registry import DataSourceRegistry

__all__ = ["app"]

app = typer.Typer(
    help="Register and manage data sources.", no_args_is_help=True, rich_markup_mode=None
)


def _parse_pairs(pairs: list[str], what: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            fail(f"{what} expects key=value, got {key or pair[:20]!r}", 2)
        parsed[key] = value
    return parsed


def _source_row(source: DataSourceConfig) -> dict[str, Any]:
    return source.model_dump(mode="json")


@app.command("add")
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
    state = get_state(ctx)
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
            raise ConfigurationError(first_error(exc)) from None
        registered = await registry.register_data_source(source)
        await _warn_if_the_service_refuses(registry, type_, values, state.settings())
        if run_test:
            status = await registry.test_data_source(registered.id)
        return registered

    source = run_command(with_registry(state, add))
    if state.json:
        row = _source_row(source)
        if status is not None:
            row["test"] = status.model_dump(mode="json")
        emit_json(row)
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
            fail(f"cannot read {config_file}: {type(exc).__name__}", 2)
        if not isinstance(loaded, dict):
            fail(f"{config_file} must hold a JSON object", 2)
        values.update(loaded)
    inline = _parse_pairs(config or [], "--config")
    values.update(inline)
    for key, var in _parse_pairs(config_env or [], "--config-env").items():
        if var not in os.environ:
            fail(f"environment variable {var!r} (for {key!r}) is not set", 2)
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


@app.command("update")
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
    state = get_state(ctx)
    values, inline = _collect_config(None, config, config_env, prompt)
    changes: dict[str, Any] = {}
    removed = dict.fromkeys(unset or [])
    if clash := sorted(set(removed) & set(values)):
        fail(f"{clash[0]!r} is both set and unset", 2)
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
        fail("nothing to change: give -c, --config-env, --prompt, --unset or another option", 2)

    async def update(registry: DataSourceRegistry) -> DataSourceConfig:
        found = await registry.get_data_source(source)
        _warn_inline_secrets(inline, registry.connector_class(found.type).secret_fields)
        return await registry.update_data_source(found.id, changes)

    updated = run_command(with_registry(state, update))
    if state.json:
        emit_json(_source_row(updated))
    else:
        out.print(f"Updated {updated.name!r} ({updated.id}).", markup=False)


@app.command("list")
def sources_list(ctx: typer.Context) -> None:
    """List registered data sources."""
    state = get_state(ctx)
    sources = run_command(with_registry(state, lambda r: r.list_data_sources()))
    if state.json:
        emit_json([_source_row(s) for s in sources])
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


@app.command("show")
def sources_show(
    ctx: typer.Context, source: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Show one data source (secrets masked)."""
    state = get_state(ctx)
    found = run_command(with_registry(state, lambda r: r.get_data_source(source)))
    if state.json:
        emit_json(_source_row(found))
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


@app.command("remove")
def sources_remove(
    ctx: typer.Context,
    source: Annotated[str, typer.Argument(help="Id or name.")],
) -> None:
    """Remove a data source (its remote data is not touched)."""
    state = get_state(ctx)

    async def remove(registry: DataSourceRegistry) -> str:
        found = await registry.get_data_source(source)
        await registry.remove_data_source(found.id)
        return found.id

    removed = run_command(with_registry(state, remove))
    if state.json:
        emit_json({"removed": removed})
    else:
        out.print(f"Removed {removed}.", markup=False)


@app.command("test")
def sources_test(
    ctx: typer.Context, source: Annotated[str, typer.Argument(help="Id or name.")]
) -> None:
    """Check that a source is reachable with its credentials."""
    state = get_state(ctx)
    status = run_command(with_registry(state, lambda r: r.test_data_source(source)))
    if state.json:
        emit_json(status)
    else:
        mark = "ok" if status.ok else "FAILED"
        latency = f" ({status.latency_ms:.1f} ms)" if status.latency_ms is not None else ""
        out.print(f"{mark}{latency}: {status.message}", markup=False)
        for warning in status.warnings:
            out.print(f"warning: {warning}", markup=False)
    if not status.ok:
        raise typer.Exit(1)
