"""What every command shares: the consoles, the global options, one-line errors, JSON.

Human output goes to :data:`out`, notes and errors to :data:`err`. A command reads the
global options (``--home``, ``--json``, ``-v``) from :func:`get_state`, runs its async work
through :func:`run_command` (every failure becomes one line on stderr and an exit code) and
prints either a table or :func:`emit_json`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import typer
from pydantic import BaseModel, ValidationError
from rich.console import Console

from datasources.config import Settings
from datasources.connectors.base import BaseConnector
from datasources.credentials import RedactingFilter, install_log_redaction, redact
from datasources.errors import DataSourceError
from datasources.models import DataItem
from datasources.registry import DataSourceRegistry

__all__ = [
    "State",
    "borrow",
    "configure_logging",
    "emit_json",
    "err",
    "fail",
    "first_error",
    "get_state",
    "human_size",
    "item_size",
    "out",
    "run_command",
    "with_registry",
]

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

logger = logging.getLogger("datasources.cli")


@dataclass
class State:
    """Options given before (or after) the command."""

    home: Path | None = None
    json: bool = False
    verbose: bool = False

    def settings(self) -> Settings:
        settings = Settings(home=self.home) if self.home is not None else Settings()
        # A one-shot command needs no warm connectors in the background.
        return settings.model_copy(
            update={"pool": settings.pool.model_copy(update={"min_size": 0})}
        )


def get_state(ctx: typer.Context) -> State:
    """The global options of this invocation (defaults when there was no root callback)."""
    found = ctx.obj
    if not isinstance(found, State):
        found = State()
        ctx.obj = found
    return found


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr (secrets redacted), then exit with ``code``."""
    err.print(f"error: {redact(message)}", markup=False)
    raise typer.Exit(code)


def first_error(exc: Exception) -> str:
    """A validation error's problems on one line (never the input values)."""
    if isinstance(exc, ValidationError):
        problems = exc.errors(include_url=False, include_input=False, include_context=False)
        return "; ".join(f"{'.'.join(map(str, p['loc']))}: {p['msg']}" for p in problems)
    return "invalid input"


def run_command(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's async work; any failure is one line on stderr and an exit code."""
    try:
        return asyncio.run(coro)
    except DataSourceError as exc:
        fail(exc.message)
    except KeyboardInterrupt:
        fail("interrupted", 130)
    except ValidationError as exc:  # settings read from the environment
        fail(f"invalid setting: {first_error(exc)}", 2)
    except OSError as exc:
        logger.debug("Command failed", exc_info=True)
        fail(f"{exc.strerror or type(exc).__name__}: {exc.filename or ''}".rstrip(": "))
    except Exception as exc:  # one line for the user; the traceback goes to -v logs
        logger.debug("Command failed", exc_info=True)
        fail(f"internal error ({type(exc).__name__}); run with -v for details")


def configure_logging(verbose: bool, level_name: str) -> None:
    """Log to stderr through the redacting filter; ``-v`` means debug."""
    install_log_redaction()
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RedactingFilter())
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    level = logging.DEBUG if verbose else getattr(logging, level_name.upper(), logging.WARNING)
    root.setLevel(level)


def emit_json(data: Any) -> None:
    """``data`` as indented JSON on stdout (models dumped, paths and the rest as strings)."""

    def default(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return value.model_dump(mode="json")
        return str(value)

    out.print(json.dumps(data, default=default, indent=2), markup=False)


def human_size(size: int | None) -> str:
    """``1.5 KiB`` and the like; empty for an unknown size."""
    if size is None:
        return ""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)


def item_size(item: DataItem) -> str:
    """A file's size; a table's estimated rows (its on-disk size says little, often 0)."""
    if str(item.kind) in ("table", "view"):
        rows = item.metadata.get("estimated_rows")
        return f"~{rows:,} rows" if isinstance(rows, int) else ""
    return human_size(item.size)


async def with_registry(current: State, action: Callable[[DataSourceRegistry], Awaitable[T]]) -> T:
    """Open the registry of ``current``'s state folder, run ``action``, close it."""
    async with DataSourceRegistry.from_settings(current.settings()) as registry:
        return await action(registry)


async def borrow(
    current: State, source: str, action: Callable[[BaseConnector[Any]], Awaitable[T]]
) -> T:
    """Run ``action`` with the connector of ``source`` (id or name), then give it back."""

    async def use(registry: DataSourceRegistry) -> T:
        async with registry.get_connector(source) as connector:
            return await action(connector)

    return await with_registry(current, use)
