"""The root command: global options before or after a subcommand, one-line usage errors.

``--json``, ``--home``, ``-v`` and ``--create`` belong to the root command, yet people
write them after the subcommand too (``datasources sources list --json``). Click reads a
group's options only before the subcommand's name, so :func:`hoist_global_options` moves
them in front before parsing. Sub-apps and commands are attached in
:mod:`datasources.cli` (its ``__init__``), the one place that lists them.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from datasources.cli.common import State, configure_logging, err, fail

__all__ = ["GLOBAL_FLAGS", "app", "hoist_global_options"]


class _GlobalOptionsGroup(TyperGroup):
    """The root group: ``--json``, ``--home`` and ``-v`` also work after a subcommand.

    The global options are few and take no value that could look like another option,
    so they are moved in front of the subcommand before parsing; everything after ``--``
    is left as it is.
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


GLOBAL_FLAGS = frozenset({"--json", "--verbose", "-v", "--create"})
"""The root's options that take no value (``--home`` takes one)."""


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
        if arg in GLOBAL_FLAGS or arg.startswith("--home="):
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
        fail(f"no state folder at {state.home}: check the path, or add --create to start one", 2)
    try:
        level = state.settings().log_level
    except Exception:  # settings errors surface in the command itself
        level = "WARNING"
    configure_logging(verbose, level)
