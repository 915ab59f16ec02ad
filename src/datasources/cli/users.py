"""``datasources users …``: the people who sign in to the workbench.

A user is an owner: signed in, they see what their owner's API keys see. Passwords come
from a hidden prompt (typed twice) or, for scripts, one line on standard input
(``--password-stdin``); never from the command line, where ``ps`` and shell history
would keep them.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table

from datasources.cli.common import State, emit_json, fail, get_state, out, run_command
from datasources.registry import DataSourceRegistry
from datasources.store import StoredUser
from datasources.users import MAX_PASSWORD_CHARS, Users

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(
    help="Users of the web workbench (each is an owner).",
    no_args_is_help=True,
    rich_markup_mode=None,
)


async def _with_users(state: State, action: Callable[[Users], Awaitable[T]]) -> T:
    async with DataSourceRegistry.from_settings(state.settings()) as registry:
        return await action(Users(registry.store))


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        line = sys.stdin.readline(MAX_PASSWORD_CHARS + 2)
        password = line.rstrip("\r\n")
        if not password:
            fail("nothing was read from standard input (--password-stdin)", 2)
        return password
    if not sys.stdin.isatty():
        fail("no terminal to prompt on; give --password-stdin", 2)
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


def _done(state: State, user: StoredUser, message: str) -> None:
    if state.json:
        emit_json(_row(user))
    else:
        out.print(message, markup=False)


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="Read the password from one line of standard input."),
]
UserRef = Annotated[str, typer.Argument(help="The user's name or id.")]


@app.command("create")
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
    state = get_state(ctx)
    password = _read_password(password_stdin)
    user = run_command(_with_users(state, lambda users: users.create(name, password, owner=owner)))
    _done(state, user, f"Created user {user.name} ({user.id}) for owner {user.owner}.")


@app.command("list")
def users_list(ctx: typer.Context) -> None:
    """List users (never their password hashes)."""
    state = get_state(ctx)
    users = run_command(_with_users(state, lambda u: u.list_users()))
    if state.json:
        emit_json([_row(u) for u in users])
        return
    table = Table("id", "name", "owner", "created", "state")
    for u in users:
        status = "disabled" if u.disabled_at else "active"
        table.add_row(u.id, u.name, u.owner, f"{u.created_at:%Y-%m-%d %H:%M}", status)
    out.print(table)


@app.command("disable")
def users_disable(ctx: typer.Context, user: UserRef) -> None:
    """Stop a user signing in; their sessions end at once."""
    state = get_state(ctx)
    done = run_command(_with_users(state, lambda u: u.disable(user)))
    _done(state, done, f"Disabled user {done.name} ({done.id}); their sessions ended.")


@app.command("enable")
def users_enable(ctx: typer.Context, user: UserRef) -> None:
    """Let a disabled user sign in again."""
    state = get_state(ctx)
    done = run_command(_with_users(state, lambda u: u.enable(user)))
    _done(state, done, f"Enabled user {done.name} ({done.id}).")


@app.command("passwd")
def users_passwd(ctx: typer.Context, user: UserRef, password_stdin: PasswordStdin = False) -> None:
    """Set a user's password; their sessions end (they sign in again)."""
    state = get_state(ctx)
    password = _read_password(password_stdin)
    done = run_command(_with_users(state, lambda u: u.set_password(user, password)))
    _done(state, done, f"Changed the password of {done.name}; their sessions ended.")
