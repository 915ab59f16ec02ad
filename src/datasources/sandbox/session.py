"""One stateful Python session: a Jupyter kernel in a sandbox, spoken to over ipc sockets.

The kernel's sockets are Unix sockets in a folder bound into the sandbox (a kernel in
its own network namespace cannot reach the host's loopback). An execution collects the
kernel's messages into typed parts; a wall-clock timeout interrupts the code, and if
the kernel does not come back, kills the whole sandbox (its process group and PID
namespace), so a grandchild cannot outlive it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from datasources import safefs
from datasources.config import SandboxLimits
from datasources.errors import DataSourceError
from datasources.sandbox.runtime import LaunchPlan, SandboxUnavailableError, plan_launch

__all__ = ["Execution", "OutputBudget", "Part", "Session"]

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_WARMUP = "import pandas, pyarrow, duckdb, matplotlib.pyplot"


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


class Session:
    """A kernel in a sandbox over ``slot`` (a folder with ``data/`` and ``outputs/``)."""

    def __init__(self, slot: Path, *, mode: str, limits: SandboxLimits) -> None:
        self.slot = slot
        self.mode = mode
        self.limits = limits
        # Unix socket paths are limited to ~107 bytes: the sockets get a short private folder.
        self.sockets = Path(tempfile.mkdtemp(prefix="ds-k-", dir="/tmp"))
        self._process: subprocess.Popen[bytes] | None = None
        self._client: Any = None
        self._plan: LaunchPlan | None = None
        self._lock = asyncio.Lock()
        self.last_used = time.monotonic()
        self._figures = 0
        self.disk_budget: Callable[[], int] | None = None
        """Returns how many bytes the code may write now (the chat's quota left)."""
        self.disk_exceeded = False
        self._kernel_pid: int | None = None

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    async def start(self, *, warm: bool = True) -> None:
        """Start the kernel and wait until it answers (and has pandas & co. imported)."""
        from jupyter_client.asynchronous import AsyncKernelClient  # type: ignore[attr-defined]

        for sub in ("data", "outputs"):
            (self.slot / sub).mkdir(parents=True, exist_ok=True)
        self.sockets.mkdir(mode=0o700, exist_ok=True)  # again, if an earlier start removed it
        key = secrets.token_hex(32)
        host_file = self.sockets / "kernel.json"
        info = {
            "transport": "ipc",
            "ip": "",
            "shell_port": 1,
            "iopub_port": 2,
            "stdin_port": 3,
            "control_port": 4,
            "hb_port": 5,
            "key": key,
            "signature_scheme": "hmac-sha256",
            "kernel_name": "python3",
        }
        plan = plan_launch(self.mode, self.slot, self.sockets, self.limits, str(host_file))
        inside = {**info, "ip": f"{plan.socket_dir_inside}/k"}
        # Inside, the code's user maps to the service's own user (without any capability),
        # so the owner's permissions are the ones that count: 0600 keeps others out.
        host_file.write_text(json.dumps(inside))
        host_file.chmod(0o600)
        self._plan = plan
        self._process = subprocess.Popen(  # noqa: ASYNC220 - returns at once, never waits
            plan.argv,
            env=plan.env,
            cwd=plan.cwd,
            preexec_fn=plan.preexec,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        client = AsyncKernelClient()
        host_info: dict[str, Any] = {**info, "ip": str(self.sockets / "k")}
        client.load_connection_info(host_info)  # type: ignore[arg-type]
        client.start_channels()
        self._client = client
        try:
            await client.wait_for_ready(timeout=60)
        except Exception:
            detail = self._stderr_tail()
            await self.close()
            logger.warning("A Python session did not start: %s", detail)
            raise SandboxUnavailableError(
                "The Python session did not start; the service log says why."
            ) from None
        await asyncio.to_thread(self._find_kernel)
        if warm:
            await self.execute(_WARMUP, timeout=120)
        self.last_used = time.monotonic()

    def _processes(self) -> dict[int, tuple[int, str]]:
        """pid -> (parent pid, command line) of every process in the sandbox's cgroup."""
        cgroup = self._plan.cgroup if self._plan is not None else None
        info: dict[int, tuple[int, str]] = {}
        for pid in cgroup.pids() if cgroup is not None else []:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
            except OSError:
                continue
            ppid = next(
                int(line.split()[1]) for line in status.splitlines() if line.startswith("PPid:")
            )
            info[pid] = (ppid, cmdline.decode("utf-8", "replace"))
        return info

    def _find_kernel(self) -> None:
        """Remember which process is the kernel (right after start, it is the only one)."""
        info = self._processes()
        bwraps = {pid for pid, (_, cmd) in info.items() if "bwrap" in cmd.split(" ", 1)[0]}
        kernels = [
            p
            for p, (pp, cmd) in info.items()
            if pp in bwraps and p not in bwraps and "ipykernel" in cmd
        ]
        self._kernel_pid = kernels[0] if len(kernels) == 1 else None

    def _reap_strays(self) -> int:
        """Kill every process in the sandbox but bubblewrap and the kernel; how many.

        What code forks or starts (a fork bomb's copies, a grandchild left running past
        a timeout) must not outlive the execution that made it. Orphans are re-parented to
        bubblewrap's init, so the kernel is known by the pid noted at start, and passes
        repeat until nothing new appears.
        """
        if self._kernel_pid is None:
            return 0
        killed = 0
        for _ in range(50):
            info = self._processes()
            keep = {p for p, (_, cmd) in info.items() if "bwrap" in cmd.split(" ", 1)[0]}
            keep.add(self._kernel_pid)
            strays = [pid for pid in info if pid not in keep]
            if not strays:
                break
            for pid in strays:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
                    killed += 1
            time.sleep(0.01)
        return killed

    def _stderr_tail(self) -> str:
        process = self._process
        if process is None or process.stderr is None or process.poll() is None:
            return "still starting"
        return process.stderr.read()[-300:].decode("utf-8", "replace")

    async def execute(self, code: str, *, timeout: float | None = None) -> Execution:
        """Run ``code``; parts in order. One execution at a time per session."""
        async with self._lock:
            self.last_used = time.monotonic()
            try:
                return await self._execute(code, timeout or self.limits.timeout)
            finally:
                self.last_used = time.monotonic()

    def _written_bytes(self) -> int:
        """Bytes in the folders the code can write to on the host's disk."""
        total = 0
        for folder in (self.slot / "outputs", self.sockets):
            for base, _dirs, files in os.walk(folder):
                for name in files:
                    with contextlib.suppress(OSError):
                        total += os.lstat(os.path.join(base, name)).st_blocks * 512
        return total

    async def _watch_disk(self, limit: int, started: float) -> None:
        """Stop the session the moment its writes pass ``limit``; drop what it just wrote."""
        while True:
            await asyncio.sleep(0.2)
            used = await asyncio.to_thread(self._written_bytes)
            if used <= limit:
                continue
            self.disk_exceeded = True
            await self.close()
            return

    def _remove_newer_than(self, started: float) -> None:
        for base, _dirs, files in os.walk(self.slot / "outputs"):
            for name in files:
                path = os.path.join(base, name)
                with contextlib.suppress(OSError):
                    if os.lstat(path).st_mtime >= started - 1:
                        os.unlink(path)

    async def _execute(self, code: str, timeout: float) -> Execution:
        start = time.perf_counter()
        self.disk_exceeded = False
        limit = self.disk_budget() if self.disk_budget is not None else None
        started = time.time()
        watchdog = (
            asyncio.create_task(self._watch_disk(limit, started)) if limit is not None else None
        )
        try:
            result = await self._execute_watched(code, timeout, start)
        finally:
            if watchdog is not None:
                watchdog.cancel()
                with contextlib.suppress(BaseException):
                    await watchdog
        if self.disk_exceeded:
            await self.close()  # again: the watchdog may have been stopped half-way
            await asyncio.to_thread(self._remove_newer_than, started)
            result.ok = False
            result.restarted = True
            result.parts.append(
                Part(
                    type="error",
                    name="QuotaExceeded",
                    text="The code wrote more than the chat's quota allows: what it wrote was "
                    "removed and the session was restarted.",
                )
            )
        return result

    async def _execute_watched(self, code: str, timeout: float, start: float) -> Execution:
        client = self._client
        if client is None or not self.alive:
            return Execution(
                ok=False,
                parts=[Part(type="error", name="SessionGone", text="The session has ended.")],
                elapsed_ms=0,
                restarted=True,
            )
        msg_id = client.execute(code, store_history=True, allow_stdin=False)
        parts: list[Part] = []
        budget = OutputBudget(self.limits.output_bytes)
        ok = True
        timed_out = False
        restarted = False
        deadline = time.monotonic() + timeout
        interrupted_at: float | None = None
        while True:
            wait = deadline - time.monotonic()
            if interrupted_at is not None:
                wait = interrupted_at + 3 - time.monotonic()
            if wait <= 0:
                if interrupted_at is None:
                    timed_out = True
                    interrupted_at = time.monotonic()
                    await self._interrupt()
                    continue
                # The code ignored the interrupt: end the whole sandbox.
                await self.close()
                restarted = True
                break
            try:
                msg = await client.get_iopub_msg(timeout=min(wait, 1.0))
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # we are being cancelled, not just our socket
                msg = None
            except Exception:
                msg = None
            if msg is None:
                if not self.alive:
                    restarted = True
                    ok = False
                    parts.append(Part(type="error", name="SessionDied", text=self._death_reason()))
                    await self.close()
                    break
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["msg_type"]
            content = msg["content"]
            if kind == "status" and content.get("execution_state") == "idle":
                break
            if kind == "stream":
                text = budget.cut_text(content.get("text", ""))
                if text:
                    _append_stream(parts, content.get("name", "stdout"), text)
            elif kind in ("execute_result", "display_data"):
                part = self._display(content.get("data", {}), budget)
                if part is not None:
                    parts.append(part)
            elif kind == "error":
                ok = False
                trace = _ANSI.sub("", "\n".join(content.get("traceback", [])))
                text = budget.cut_text(trace[-4000:] or str(content.get("evalue", "")), tail=True)
                parts.append(Part(type="error", name=content.get("ename"), text=text or None))
            if budget.runaway and interrupted_at is None:
                # Output without end (printing, displaying): stop it rather than read gigabytes.
                interrupted_at = time.monotonic()
                await self._interrupt()
        if not restarted and self.mode == "bwrap":
            strays = await asyncio.to_thread(self._reap_strays)
            if strays:
                parts.append(
                    Part(type="text", text=f"({strays} leftover process(es) were stopped)")
                )
        if timed_out:
            ok = False
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
            ok=ok and not restarted,
            parts=parts,
            elapsed_ms=(time.perf_counter() - start) * 1000,
            timed_out=timed_out,
            restarted=restarted,
            truncated=budget.cut,
        )

    def _display(self, data: dict[str, Any], budget: OutputBudget) -> Part | None:
        """A display message as a part, counted against ``budget`` (None: it did not fit).

        PNG images are saved in the workspace's ``displays/`` folder, which is never bound
        into the sandbox: the bytes arrived over the kernel protocol, so the service never
        writes where sandboxed code could have planted a name. Even so the file is created
        ``O_EXCL | O_NOFOLLOW`` relative to descriptors opened without following links.
        """
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
                _save_display(self.slot, name, raw)
            except (OSError, DataSourceError):
                logger.warning("A display could not be saved under %s.", self.slot, exc_info=True)
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

    def _death_reason(self) -> str:
        process = self._process
        code = process.poll() if process is not None else None
        if code is not None and code < 0:
            return f"The session was killed by signal {signal.Signals(-code).name}."
        return "The session ended unexpectedly (a limit was reached, or the code exited)."

    async def _interrupt(self) -> None:
        client = self._client
        if client is None:
            return
        with contextlib.suppress(Exception):
            message = client.session.msg("interrupt_request", {})
            client.control_channel.send(message)
        process = self._process
        if process is not None and self.mode == "process":
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGINT)

    async def close(self) -> None:
        """Stop the kernel and everything it started; remove its sockets and cgroup."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.stop_channels()
        process, self._process = self._process, None
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(process.wait, 10)
            if process.stderr is not None:
                process.stderr.close()
        if self._plan is not None and self._plan.cgroup is not None:
            cgroup = self._plan.cgroup
            for _ in range(50):  # processes leave a cgroup a moment after they die
                cgroup.remove()
                if not any(path.exists() for path in cgroup.paths):
                    break
                await asyncio.sleep(0.02)
        shutil.rmtree(self.sockets, ignore_errors=True)


DISPLAYS = "displays"
"""The workspace folder, never bound into the sandbox, where display images are kept."""


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


def _append_stream(parts: list[Part], name: str, text: str) -> None:
    kind = "stderr" if name == "stderr" else "stdout"
    if parts and parts[-1].type == kind and parts[-1].text is not None:
        parts[-1].text += text
    else:
        parts.append(Part(type=kind, text=text))
