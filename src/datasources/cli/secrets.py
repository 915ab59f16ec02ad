"""``datasources secrets …``: encryption keys, and re-encrypting stored secrets under them."""

from __future__ import annotations

from typing import Annotated

import typer

from datasources.cli.common import emit_json, fail, get_state, out, run_command
from datasources.credentials import (
    CredentialManager,
    generate_key,
    load_key_file,
    write_key_file,
)
from datasources.registry import DataSourceRegistry
from datasources.store import Store

__all__ = ["app"]

app = typer.Typer(
    help="Encryption keys and stored secrets.", no_args_is_help=True, rich_markup_mode=None
)


@app.command("generate-key")
def secrets_generate_key(ctx: typer.Context) -> None:
    """Print a new encryption key (for DATASOURCES_SECRET_KEYS)."""
    key = generate_key()
    if get_state(ctx).json:
        emit_json({"key": key})
    else:
        out.print(key, markup=False)


@app.command("rotate")
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
    state = get_state(ctx)
    settings = state.settings()
    env_keys = settings.key_list()
    key_file = settings.resolved_key_file
    if env_keys and (new_key or drop_old):
        fail(
            "--new-key/--drop-old-keys manage the key file; "
            "with DATASOURCES_SECRET_KEYS, edit the variable instead",
            2,
        )
    keys = env_keys or load_key_file(key_file, create=False)
    if not keys:
        fail("no encryption key is configured", 1)
    if new_key:
        keys = [generate_key(), *keys]
        write_key_file(key_file, keys)

    async def rotate() -> int:
        store = Store(settings.resolved_database_url)
        async with DataSourceRegistry(store=store, credentials=CredentialManager(keys)) as registry:
            return await registry.rotate_secrets()

    count = run_command(rotate())
    if drop_old and len(keys) > 1:
        write_key_file(key_file, keys[:1])
    if state.json:
        emit_json({"rotated": count, "keys": 1 if drop_old else len(keys)})
    else:
        out.print(
            f"Re-encrypted the secrets of {count} data source(s) under the newest key.",
            markup=False,
        )
