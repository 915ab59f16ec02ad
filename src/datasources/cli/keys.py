"""``datasources keys …``: API keys of the HTTP service (shown once, stored as hashes)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from rich.table import Table

from datasources.cli.common import State, emit_json, get_state, out, run_command
from datasources.keys import ApiKeys
from datasources.registry import DataSourceRegistry

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(help="API keys of the HTTP service.", no_args_is_help=True, rich_markup_mode=None)


async def _with_keys(state: State, action: Callable[[ApiKeys], Awaitable[T]]) -> T:
    async with DataSourceRegistry.from_settings(state.settings()) as registry:
        return await action(ApiKeys(registry.store))


@app.command("create")
def keys_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="A label for the key (who or what uses it).")],
    owner: Annotated[
        str | None,
        typer.Option(help="Share an existing owner's data sources (default: a new owner)."),
    ] = None,
) -> None:
    """Create an API key and print it once: only its hash is stored."""
    state = get_state(ctx)
    created = run_command(_with_keys(state, lambda keys: keys.create(name, owner=owner)))
    if state.json:
        emit_json(
            {"id": created.id, "name": created.name, "owner": created.owner, "key": created.key}
        )
        return
    out.print(f"Created key [cyan]{created.id}[/] ({created.name}) for owner {created.owner}.")
    out.print("Store it now; it is not shown again:")
    out.print(created.key, markup=False)


@app.command("list")
def keys_list(ctx: typer.Context) -> None:
    """List API keys (ids, names, owners, state; never the keys)."""
    state = get_state(ctx)
    keys = run_command(_with_keys(state, lambda k: k.list_keys()))
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
        emit_json(rows)
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


@app.command("revoke")
def keys_revoke(
    ctx: typer.Context,
    key: Annotated[str, typer.Argument(help="The key's id (or its name, if unique).")],
) -> None:
    """Revoke an API key: it stops working at once here, within seconds in other replicas."""
    state = get_state(ctx)
    revoked = run_command(_with_keys(state, lambda keys: keys.revoke(key)))
    if state.json:
        emit_json({"id": revoked.id, "revoked": True})
    else:
        out.print(f"Revoked key {revoked.id} ({revoked.name}).")
