"""``datasources users``: the people who sign in to the workbench.

A user is an owner: signed in, they see what their owner's API keys see. Passwords come
from a hidden prompt (typed twice) or, for scripts, one line on standard input
(``--password-stdin``); never from the command line, where ``ps`` and shell history
would keep them.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from datasources.config import Settings
from datasources.credentials import redact
from datasources.errors import DataSourceError
from datasources.registry import DataSourceRegistry
from datasources.store import StoredUser
from datasources.users import MAX_PASSWORD_CHARS, Users

__all__ = ["users_app"]

T = TypeVar("T")

users_app = typer.Typer(
    help="Users of the web workbench (each is an owner).",
    no_args_is_help=True,
    rich_markup_mode=None,
)

_out = Console(highlight=False, soft_wrap=True)
_err = Console(stderr=True, highlight=False, soft_wrap=True)


def _state(ctx: typer.Context) -> tuple[Settings, bool]:
    """The settings and --json of the root command (any object with those)."""
    state: Any = ctx.find_root().obj
    if state is not None and callable(getattr(state, "settings", None)):
        return state.settings(), bool(getattr(state, "json", False))
    return Settings(), False


def _fail(message: str, code: int = 1) -> NoReturn:
    _err.print(f"error: {redact(message)}", markup=False)
    raise typer.Exit(code)


def _run(settings: Settings, action: Callable[[Users], Awaitable[T]]) -> T:
    async def go() -> T:
        async with DataSourceRegistry.from_settings(settings) as registry:
            return await action(Users(registry.store))

    try:
        return asyncio.run(go())
    except DataSourceError as exc:
        _fail(exc.message)
    except KeyboardInterrupt:
        _fail("interrupted", 130)


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline(MAX_PASSWORD_CHARS + 2)
        password = line.rstrip("\r\n")
        if not password:
            _fail("nothing was read from standard input (--password-stdin)", 2)
        return password
    if not sys.stdin.isatty():
        _fail("no terminal to prompt on; give --password-stdin", 2)
    password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    return str(password)


def _row(user: StoredUser) -> dict[str, Any]:
    return {
        "id": user.id,
        "name": user.name,
        "owner": user.owner,
        "created_at": user.created_at.isoformat(),
        "disabled_at": user.disabled_at.isoformat() if user.disabled_at else None,
    }


def _emit(data: Any) -> None:
    _out.print(json.dumps(data, indent=2), markup=False)


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from one line of standard input."),
]


@users_app.command("create")
def users_create(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="The sign-in name (letters, digits, . _ @ -).")],
    owner: Annotated[
        str | None,
        typer.Option(help="Act for an existing owner (its keys' sources); default: a new one."),
    ] = None,
    password_stdin: PasswordStdin = False,
) -> None:
    """Create a user who can sign in to the workbench."""
    settings, as_json = _state(ctx)
    password = _read_password(password_stdin)
    user = _run(settings, lambda users: users.create(name, password, owner=owner))
    if as_json:
        _emit(_row(user))
    else:
        _out.print(f"Created user {user.name} ({user.id}) for owner {user.owner}.", markup=False)


@users_app.command("list")
def users_list(ctx: typer.Context) -> None:
    """List users (never their password hashes)."""
    settings, as_json = _state(ctx)
    users = _run(settings, lambda u: u.list_users())
    if as_json:
        _emit([_row(u) for u in users])
        return
    table = Table("id", "name", "owner", "created", "state")
    for u in users:
        state = "disabled" if u.disabled_at else "active"
        table.add_row(u.id, u.name, u.owner, f"{u.created_at:%Y-%m-%d %H:%M}", state)
    _out.print(table)


@users_app.command("disable")
def users_disable(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user's name or id.")],
) -> None:
    """Stop a user signing in; their sessions end at once."""
    settings, as_json = _state(ctx)
    done = _run(settings, lambda u: u.disable(user))
    if as_json:
        _emit(_row(done))
    else:
        _out.print(f"Disabled user {done.name} ({done.id}); their sessions ended.", markup=False)


@users_app.command("enable")
def users_enable(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user's name or id.")],
) -> None:
    """Let a disabled user sign in again."""
    settings, as_json = _state(ctx)
    done = _run(settings, lambda u: u.enable(user))
    if as_json:
        _emit(_row(done))
    else:
        _out.print(f"Enabled user {done.name} ({done.id}).", markup=False)


@users_app.command("passwd")
def users_passwd(
    ctx: typer.Context,
    user: Annotated[str, typer.Argument(help="The user's name or id.")],
    password_stdin: PasswordStdin = False,
) -> None:
    """Set a user's password; their sessions end (they sign in again)."""
    settings, as_json = _state(ctx)
    password = _read_password(password_stdin)
    done = _run(settings, lambda u: u.set_password(user, password))
    if as_json:
        _emit(_row(done))
    else:
        _out.print(f"Changed the password of {done.name}; their sessions ended.", markup=False)
