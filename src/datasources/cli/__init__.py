"""The ``datasources`` command: a thin view over the registry and its connectors.

State lives under ``DATASOURCES_HOME`` (or ``--home``). Human output by default,
``--json`` for scripts; on failure one line on stderr and a non-zero exit code.

One module per sub-app or group of commands; :mod:`~datasources.cli.common` holds what
they share and :mod:`~datasources.cli.root` the root command with its global options.
This file is the one place where sub-apps and commands are attached to the root: a new
sub-app is a module with its own ``app = typer.Typer(...)`` and one line in
:data:`SUB_APPS`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import typer
from pydantic import ValidationError

from datasources.cli import chat, data, demo, keys, secrets, serve, sources, users
from datasources.cli.common import err, first_error
from datasources.cli.root import app, hoist_global_options
from datasources.credentials import redact
from datasources.errors import DataSourceError

__all__ = ["app", "hoist_global_options", "main"]

COMMANDS: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("ls", data.ls),
    ("get", data.get),
    ("put", data.put),
    ("query", data.query),
    ("serve", serve.serve),
    ("chat", chat.chat),
    ("demo", demo.demo),
)
"""Commands of the root itself, in the order ``--help`` lists them."""

SUB_APPS: tuple[tuple[str, typer.Typer], ...] = (
    ("sources", sources.app),
    ("secrets", secrets.app),
    ("keys", keys.app),
    ("users", users.app),
)
"""Groups of commands (``datasources NAME …``), listed after the commands."""

for _name, _command in COMMANDS:
    app.command(_name)(_command)
for _name, _sub_app in SUB_APPS:
    app.add_typer(_sub_app, name=_name)


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except DataSourceError as exc:  # raised outside run_command
        err.print(f"error: {redact(exc.message)}", markup=False)
        sys.exit(1)
    except ValidationError as exc:  # settings from the environment
        err.print(f"error: invalid setting: {first_error(exc)}", markup=False)
        sys.exit(2)
