"""Code run for a reply: in the chat's sandboxed session, within one output cap.

A reply may run code many times (a model's tool calls, several ```python blocks); all of
its output spends one :class:`~datasources.sandbox.session.OutputBudget`. Once it is
spent, text is cut, tables and images are dropped (a dropped image's file is removed
too) and further code is not run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from pathlib import Path

from datasources import safefs
from datasources.errors import DataSourceError
from datasources.sandbox.manager import SandboxManager
from datasources.sandbox.session import Execution, OutputBudget, Part

__all__ = ["run_within"]


async def run_within(
    sandboxes: SandboxManager,
    chat_id: str,
    directory: Path,
    code: str,
    *,
    owner: str,
    budget: OutputBudget,
) -> Execution:
    """Run code in the chat's session, its output admitted as far as ``budget`` allows.

    The caller holds the chat's lock.
    """
    if budget.kept >= budget.cap:
        return Execution(
            ok=False,
            parts=[
                Part(
                    type="error",
                    name="OutputLimit",
                    text=f"This reply has used its output limit ({budget.cap} bytes): "
                    "the code was not run.",
                )
            ],
            elapsed_ms=0,
            truncated=True,
        )
    session, _new = await sandboxes.session(chat_id, directory, owner=owner)
    result = await session.execute(code)
    cut_before = budget.cut
    result.parts = await asyncio.to_thread(_admit, directory, budget, result.parts)
    if budget.cut and not cut_before:
        result.truncated = True
        result.parts.append(
            Part(type="text", text=f"(reply cut at its output limit, {budget.cap} bytes)")
        )
    return result


def _admit(directory: Path, budget: OutputBudget, parts: list[Part]) -> list[Part]:
    """``parts`` as far as ``budget`` allows: text cut, tables and images dropped."""
    kept: list[Part] = []
    for part in parts:
        if part.type == "image" and part.path:
            size = _display_size(directory, part.path)
            if budget.fits(size):
                budget.take(size)
                kept.append(part)
            else:
                _drop_display(directory, part.path)  # no part names it: not kept either
        elif part.type == "table":
            size = len(json.dumps(part.data, default=str))
            if budget.fits(size):
                budget.take(size)
                kept.append(part)
        elif part.text is not None:
            text = budget.cut_text(part.text, tail=part.type == "error")
            if text or part.type == "error":
                kept.append(part.model_copy(update={"text": text or None}))
        else:
            kept.append(part)
    return kept


def _display_size(directory: Path, path: str) -> int:
    """The size of a saved display (through a descriptor); 0 if it is gone."""
    try:
        anchor = safefs.open_anchor(directory)
    except DataSourceError:
        return 0
    try:
        with safefs.open_file(anchor, path) as file:
            return file.size
    except DataSourceError:
        return 0
    finally:
        os.close(anchor)


def _drop_display(directory: Path, path: str) -> None:
    """Remove a saved display (``unlinkat`` beneath the workspace's descriptor)."""
    with contextlib.suppress(DataSourceError, OSError):
        anchor = safefs.open_anchor(directory)
        try:
            safefs.remove(anchor, path)
        finally:
            os.close(anchor)
