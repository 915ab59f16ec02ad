"""One stateful Python session: a Jupyter kernel in a sandbox, spoken to over ipc sockets.

The kernel's sockets are Unix sockets in a folder bound into the sandbox (a kernel in
its own network namespace cannot reach the host's loopback). An execution collects the
kernel's messages into typed parts; a wall-clock timeout interrupts the code, and if
the kernel does not come back, kills the whole sandbox. Every process of a session is in
its cgroup: between executions all but bubblewrap and the kernel (known by pid from the
start, never by name) are killed, and closing the session kills the cgroup as a unit.

Length: :class:`Session` is one state machine over the kernel's channels (start,
execute, interrupt, kill, reap); its transitions read best in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio

from datasources.config import SandboxLimits
from datasources.sandbox.replies import (
    DISPLAYS,
    Collector,
    Escalation,
    Execution,
    OutputBudget,
    Part,
    gone,
    max_message_bytes,
)
from datasources.sandbox.runtime import (
    LaunchPlan,
    SandboxUnavailableError,
    plan_launch,
    sandbox_identity,
)

__all__ = ["DISPLAYS", "Execution", "OutputBudget", "Part", "Session"]

logger = logging.getLogger(__name__)

_WARMUP = "import pandas, pyarrow, duckdb, matplotlib.pyplot"


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
        self.mount_slot: Path | None = None
        """The pool slot whose ``outputs/`` mount the sandbox was started on."""
        self._kernel_pid: int | None = None
        self._keep: set[int] = set()

    @property
    def alive(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def busy(self) -> bool:
        """An execution is running (or waiting its turn)."""
        return self._lock.locked()

    async def start(self, *, warm: bool = True) -> None:
        """Start the kernel and wait until it answers (and has pandas & co. imported)."""
        from jupyter_client.asynchronous import AsyncKernelClient  # type: ignore[attr-defined]

        for sub in ("data", "outputs"):
            (self.slot / sub).mkdir(parents=True, exist_ok=True)
        if self.mode == "bwrap" and os.geteuid() == 0:
            # The slot is ours and new: its outputs/ becomes the sandbox user's to write.
            identity = sandbox_identity(self.limits)
            os.chown(self.slot / "outputs", identity.uid, identity.gid)
        self.sockets.mkdir(mode=0o700, exist_ok=True)  # again, if an earlier start removed it
        key = secrets.token_hex(32)
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
        plan = plan_launch(self.mode, self.slot, self.sockets, self.limits, info)
        self._plan = plan
        try:
            self._process = subprocess.Popen(  # noqa: ASYNC220 - returns at once, never waits
                plan.argv,
                env=plan.env,
                cwd=plan.cwd,
                preexec_fn=plan.preexec,
                pass_fds=plan.pass_fds,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        except (OSError, subprocess.SubprocessError) as exc:
            logger.warning("A Python session did not start: %s", exc)
            await self.close()
            raise SandboxUnavailableError(
                "The Python session did not start; the service log says why."
            ) from None
        finally:
            plan.close_fds()
        # A context of the session's own, whose sockets refuse any message over a cap:
        # the kernel (the code, which holds the HMAC key) could otherwise make the service
        # receive and parse hundreds of megabytes on its event loop. A larger message drops
        # that connection (ZeroMQ reconnects); the reply then misses it, and a reply that
        # never completes ends in the usual timeout.
        context = zmq.asyncio.Context()
        context.setsockopt(zmq.MAXMSGSIZE, max_message_bytes(self.limits))
        client = AsyncKernelClient(context=context)
        where = plan.host_socket_dir(self._process.pid, self.sockets)
        client.load_connection_info({**info, "ip": str(where / "k")})  # type: ignore[typeddict-item]
        client.start_channels()
        self._client = client
        try:
            await self._wait_ready(client, timeout=120)
        except Exception as exc:
            detail = self._stderr_tail()
            await self.close()
            logger.warning("A Python session did not start: %s (%s)", detail, exc)
            raise SandboxUnavailableError(
                "The Python session did not start; the service log says why."
            ) from None
        if plan.staged:
            await asyncio.to_thread(_seal, where)
        await asyncio.to_thread(self._find_kernel)
        if warm:
            await self.execute(_WARMUP, timeout=120)
        self.last_used = time.monotonic()

    async def _wait_ready(self, client: Any, *, timeout: float) -> None:
        """Wait for the kernel's first answer on shell *and* iopub, while it is alive.

        jupyter_client's own wait judges liveness by heartbeats, which a kernel still
        importing on a loaded machine has not sent yet: it gave up ("did not start")
        after about a second. Here the process itself says whether it is alive.
        """
        deadline = time.monotonic() + timeout
        while True:
            client.kernel_info()
            try:
                msg = await client.get_shell_msg(timeout=1)
            except Exception:
                msg = None
            if msg is not None and msg.get("msg_type") == "kernel_info_reply":
                try:
                    await client.get_iopub_msg(timeout=0.5)
                except Exception:
                    pass  # iopub not connected yet: ask again
                else:
                    break
            if not self.alive:
                raise RuntimeError("the kernel exited")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no answer in {timeout:g} s")
        while True:  # drain iopub
            try:
                await client.get_iopub_msg(timeout=0.2)
            except Exception:
                break

    def _family(self) -> dict[int, int]:
        """pid -> parent pid of every process in the sandbox's cgroup."""
        cgroup = self._plan.cgroup if self._plan is not None else None
        info: dict[int, int] = {}
        for pid in cgroup.pids() if cgroup is not None else []:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            for line in status.splitlines():
                if line.startswith("PPid:"):
                    info[pid] = int(line.split()[1])
        return info

    def _find_kernel(self) -> None:
        """Note the pids that make up the sandbox: bubblewrap, its init, the kernel.

        Right after start they are the only processes in the cgroup, a chain from the
        process we started. Processes are known by pid and parentage from then on, never
        by name: code can call a process anything.
        """
        process = self._process
        if process is None:
            return
        family = self._family()
        chain = [process.pid]
        while len(chain) < 3:
            children = [pid for pid, parent in family.items() if parent == chain[-1]]
            if len(children) != 1:
                break
            chain.append(children[0])
        self._keep = set(chain)
        self._kernel_pid = chain[-1] if len(chain) == 3 else None

    def _reap_strays(self) -> int:
        """Kill every process in the sandbox but bubblewrap and the kernel; how many.

        What code forks or starts (a fork bomb's copies, a grandchild left running past
        a timeout) must not outlive the execution that made it. The cgroup holds every
        process the sandbox has (however it is named or re-parented); all but the pids
        noted at start are killed, and passes repeat until nothing new appears.
        """
        if self._kernel_pid is None:
            return 0
        killed = 0
        for _ in range(50):
            strays = [pid for pid in self._family() if pid not in self._keep]
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

    async def _execute(self, code: str, timeout: float) -> Execution:
        # The disk quota needs no watching: outputs/ is a filesystem of the quota's size.
        return await self._execute_watched(code, timeout, time.perf_counter())

    async def _execute_watched(self, code: str, timeout: float, start: float) -> Execution:
        client = self._client
        if client is None or not self.alive:
            return gone()
        msg_id = client.execute(code, store_history=True, allow_stdin=False)
        collector = Collector(self.slot, self.limits.output_bytes)
        restarted = False
        clock = Escalation(timeout)
        while True:
            wait = clock.remaining()
            if wait <= 0:
                if clock.step() == "interrupt":
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
                    collector.died(self._death_reason())
                    await self.close()
                    break
                continue
            parent = msg.get("parent_header")
            if not isinstance(parent, dict) or parent.get("msg_id") != msg_id:
                continue  # another request's, or forged by the code without a header
            if collector.add(msg):
                break
            if collector.runaway and clock.interrupt_now():
                # Output without end (printing, displaying): stop it rather than read gigabytes.
                await self._interrupt()
        if not restarted and self.mode == "bwrap":
            strays = await asyncio.to_thread(self._reap_strays)
            if strays:
                collector.note(f"({strays} leftover process(es) were stopped)")
        return collector.finish(
            timeout=timeout, timed_out=clock.timed_out, restarted=restarted, start=start
        )

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
            with contextlib.suppress(Exception):
                client.context.destroy(linger=0)
        process, self._process = self._process, None
        cgroup = self._plan.cgroup if self._plan is not None else None
        if cgroup is not None:
            # Every process of the session at once, whatever it forked or called itself.
            await asyncio.to_thread(cgroup.kill)
        if process is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                await asyncio.to_thread(process.wait, 10)
            if process.stderr is not None:
                process.stderr.close()
        if cgroup is not None:
            for _ in range(50):  # processes leave a cgroup a moment after they die
                cgroup.remove()
                if not any(path.exists() for path in cgroup.paths.values()):
                    break
                await asyncio.sleep(0.02)
        shutil.rmtree(self.sockets, ignore_errors=True)


def _seal(sockets: Path) -> None:
    """Make the socket folder the kernel has bound its sockets in read-only to the sandbox.

    The service connects to those sockets by name (and ZeroMQ reconnects by name): code
    that replaced one with a link would send the service's connections elsewhere.
    """
    fd = os.open(sockets, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, 0o755)
    finally:
        os.close(fd)
