"""What an execution produced, made from the kernel's messages the same way in every mode.

A session (a bubblewrap sandbox, a plain process, or a kernel on a gateway) hands each
message of its execution to a :class:`Collector`, which turns it into typed parts within
the output cap (:class:`OutputBudget`) and says when the execution is over; the session
decides only what to do about time (interrupt, restart) and transport. So the reply
parts, the cap and its notes, and the timeout's error read the same whichever mode ran
the code.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import re
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from datasources import safefs
from datasources.config import SandboxLimits
from datasources.errors import DataSourceError

__all__ = [
    "DISPLAYS",
    "INTERRUPT_GRACE",
    "Collector",
    "Escalation",
    "Execution",
    "OutputBudget",
    "Part",
    "gone",
    "max_message_bytes",
]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

INTERRUPT_GRACE = 3.0
"""Seconds code has to stop after an interrupt before its kernel is ended (or restarted)."""


class Escalation:
    """An execution's timeout in two steps, the same in every mode: at the deadline the
    code is interrupted; if it has not stopped ``INTERRUPT_GRACE`` seconds later, the
    session gives up on it (ends or restarts the kernel). Output without end is
    interrupted early through :meth:`interrupt_now`."""

    def __init__(self, timeout: float) -> None:
        self.deadline = time.monotonic() + timeout
        self.interrupted_at: float | None = None
        self.timed_out = False

    def remaining(self) -> float:
        """Seconds until the next step is due (zero or less: take it now)."""
        if self.interrupted_at is not None:
            return self.interrupted_at + INTERRUPT_GRACE - time.monotonic()
        return self.deadline - time.monotonic()

    def step(self) -> Literal["interrupt", "give_up"]:
        """The step due now: interrupt first (the execution has timed out), then give up."""
        if self.interrupted_at is None:
            self.timed_out = True
            self.interrupted_at = time.monotonic()
            return "interrupt"
        return "give_up"

    def interrupt_now(self) -> bool:
        """Start the grace now (runaway output); False if an interrupt was already sent."""
        if self.interrupted_at is not None:
            return False
        self.interrupted_at = time.monotonic()
        return True


DISPLAYS = "displays"
"""The workspace folder, never bound into the sandbox, where display images are kept."""


class Part(BaseModel):
    """One piece of a reply: text, code, stdout/stderr, a table, an image, a file, an error."""

    type: str = Field(
        description="text | code | stdout | stderr | result | table | image | file | error"
    )
    text: str | None = None
    data: Any = None
    path: str | None = Field(default=None, description="A workspace file (images, files).")
    name: str | None = None


class Execution(BaseModel):
    """What one piece of code produced."""

    ok: bool
    parts: list[Part]
    elapsed_ms: float
    timed_out: bool = False
    restarted: bool = Field(default=False, description="The session was killed and is gone.")
    truncated: bool = False


def gone() -> Execution:
    """The reply of a session that has ended (the next turn starts a new one)."""
    return Execution(
        ok=False,
        parts=[Part(type="error", name="SessionGone", text="The session has ended.")],
        elapsed_ms=0,
        restarted=True,
    )


class Collector:
    """One execution's parts, from its kernel messages, within the output cap.

    Args:
        workspace: The chat's workspace: display images are saved in its ``displays/``.
        cap: Bytes of output kept (``SandboxLimits.output_bytes``).
    """

    def __init__(self, workspace: Path, cap: int) -> None:
        self.workspace = workspace
        self.budget = OutputBudget(cap)
        self.parts: list[Part] = []
        self.ok = True

    @property
    def runaway(self) -> bool:
        """Output without end: the session should interrupt the code."""
        return self.budget.runaway

    def add(self, msg: dict[str, Any]) -> bool:
        """Take one iopub message of this execution; True once the kernel is idle again."""
        kind = msg.get("msg_type")
        content = msg.get("content")
        if not isinstance(content, dict):
            # The code holds the kernel's key and can publish anything: a message without
            # an object for content is none the kernel sends, and is dropped.
            return False
        if kind == "status":
            return content.get("execution_state") == "idle"
        budget = self.budget
        if kind == "stream":
            text = budget.cut_text(str(content.get("text", "")))
            if text:
                _append_stream(self.parts, str(content.get("name", "stdout")), text)
        elif kind in ("execute_result", "display_data"):
            data = content.get("data")
            part = self._display(data if isinstance(data, dict) else {})
            if part is not None:
                self.parts.append(part)
        elif kind == "error":
            self.ok = False
            trace = _ANSI.sub("", "\n".join(str(t) for t in content.get("traceback") or []))
            text = budget.cut_text(trace[-4000:] or str(content.get("evalue", "")), tail=True)
            name = content.get("ename")
            self.parts.append(
                Part(type="error", name=str(name) if name is not None else None, text=text or None)
            )
        return False

    def died(self, reason: str) -> None:
        """The kernel died during the execution."""
        self.ok = False
        self.parts.append(Part(type="error", name="SessionDied", text=reason))

    def note(self, text: str) -> None:
        """A note of the service's own (not the code's output)."""
        self.parts.append(Part(type="text", text=text))

    def finish(
        self, *, timeout: float, timed_out: bool, restarted: bool, start: float
    ) -> Execution:
        """The execution, with the timeout's error and the cap's note when they apply."""
        parts, budget = self.parts, self.budget
        if timed_out:
            self.ok = False
            parts.append(
                Part(
                    type="error",
                    name="Timeout",
                    text=f"The code ran past {timeout:g} s and was "
                    + ("stopped; the session was restarted." if restarted else "interrupted."),
                )
            )
        if budget.cut:
            parts.append(
                Part(
                    type="text",
                    text=f"(output cut at {budget.cap} bytes: {budget.dropped} more bytes of "
                    "text, results, tables or images were not kept)",
                )
            )
        return Execution(
            ok=self.ok and not restarted,
            parts=parts,
            elapsed_ms=(time.perf_counter() - start) * 1000,
            timed_out=timed_out,
            restarted=restarted,
            truncated=budget.cut,
        )

    def _display(self, data: dict[str, Any]) -> Part | None:
        """A display message as a part, counted against the budget (None: it did not fit).

        PNG images are saved in the workspace's ``displays/`` folder, which is never bound
        into the sandbox: the bytes arrived over the kernel protocol, so the service never
        writes where sandboxed code could have planted a name. Even so the file is created
        ``O_EXCL | O_NOFOLLOW`` relative to descriptors opened without following links.
        """
        budget = self.budget
        png = data.get("image/png")
        if isinstance(png, str):
            if not budget.fits(len(png) * 3 // 4):  # decoded size, before decoding it
                return None
            try:
                raw = base64.b64decode(png)
            except ValueError:
                return Part(type="error", name="DisplayError", text="An image could not be read.")
            name = f"figure-{secrets.token_hex(8)}.png"
            try:
                _save_display(self.workspace, name, raw)
            except (OSError, DataSourceError):
                logger.warning(
                    "A display could not be saved under %s.", self.workspace, exc_info=True
                )
                return Part(type="error", name="DisplayError", text="An image could not be saved.")
            budget.take(len(raw))
            return Part(type="image", path=f"{DISPLAYS}/{name}", name=name)
        table = data.get("application/vnd.datasources.table+json")
        if table is not None:
            try:
                size = len(json.dumps(table, default=str))
            except (TypeError, ValueError):
                return Part(type="error", name="DisplayError", text="A table could not be read.")
            if not budget.fits(size):
                return None
            budget.take(size)
            return Part(type="table", data=table)
        text = budget.cut_text(str(data.get("text/plain", "")))
        return Part(type="result", text=text) if text or not budget.cut else None


def _save_display(workspace: Path, name: str, data: bytes) -> None:
    anchor = safefs.open_anchor(workspace)
    try:
        folder = safefs.open_dir(anchor, DISPLAYS, create=True)
        try:
            safefs.create_file(folder, name, data)
        finally:
            os.close(folder)
    finally:
        os.close(anchor)


class OutputBudget:
    """How much of an execution's (or a reply's) output is kept: every part counts, in bytes.

    Stream text, results, tables (their JSON), images (their decoded bytes) and error text
    all spend the same ``cap``; text is cut to what is left, a table or image that does not
    fit is dropped whole. Past eight times the cap offered, the output is runaway.
    """

    def __init__(self, cap: int) -> None:
        """A budget of ``cap`` bytes."""
        self.cap = cap
        self.kept = 0
        self.dropped = 0
        self.cut = False

    @property
    def runaway(self) -> bool:
        """More than eight times the cap was offered: stop the code producing it."""
        return self.dropped > self.cap * 8

    def fits(self, size: int) -> bool:
        """Whether ``size`` more bytes fit (if not, they count as dropped)."""
        if self.kept + size <= self.cap:
            return True
        self.cut = True
        self.dropped += size
        return False

    def take(self, size: int) -> None:
        """Spend ``size`` bytes (after :meth:`fits` said yes)."""
        self.kept += size

    def cut_text(self, text: str, *, tail: bool = False) -> str:
        """``text`` cut to what is left (its end, with ``tail``), spent."""
        raw = text.encode("utf-8", "surrogatepass")
        room = self.cap - self.kept
        if len(raw) > room:
            self.cut = True
            self.dropped += len(raw) - max(room, 0)
            raw = raw[-room:] if tail and room > 0 else raw[: max(room, 0)]
            text = raw.decode("utf-8", "ignore")
        self.kept += len(raw)
        return text


def max_message_bytes(limits: SandboxLimits) -> int:
    """The largest kernel message the service takes: what a reply could keep, with room.

    Output past ``output_bytes`` is cut anyway; images arrive base64-encoded (4/3) in a
    JSON message. Sixteen MiB at least, so ordinary figures always fit.
    """
    return max(16 * 1024 * 1024, 4 * limits.output_bytes)


def _append_stream(parts: list[Part], name: str, text: str) -> None:
    kind = "stderr" if name == "stderr" else "stdout"
    if parts and parts[-1].type == kind and parts[-1].text is not None:
        parts[-1].text += text
    else:
        parts.append(Part(type=kind, text=text))
