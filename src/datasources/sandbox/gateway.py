"""One chat's kernel on a Jupyter Enterprise Gateway or Kernel Gateway, as a session.

The gateway owns the kernel (a pod on Kubernetes, a container, a YARN application, or a
local process on a test machine); :class:`~datasources.sandbox.gateway_client.
GatewayClient` starts, interrupts, restarts and shuts it down, and this module speaks the
Jupyter messaging protocol to it over the gateway's WebSocket (the JSON framing every
gateway version speaks), with messages built by ``jupyter_client``'s ``Session``.

An execution reads like one in a sandbox (:class:`~datasources.sandbox.replies.Collector`
makes the parts): past its timeout the code is interrupted, and a kernel that does not
come back within the grace is restarted (same id, variables gone). A kernel that dies is
reported as in a sandbox (``SessionDied``); one that vanishes without a word is noticed by
asking the gateway after a few quiet seconds. A frame over the size a reply could keep
closes the connection, as ZeroMQ's cap does in ``bwrap`` mode: the session reconnects
with the same session id (the gateway replays what it buffered meanwhile) and, if the end
of the execution was lost, ends it with a note once the gateway says the kernel is idle.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session as MessageFactory
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from datasources.config import SandboxLimits
from datasources.sandbox.gateway_client import GatewayClient, KernelGone
from datasources.sandbox.replies import Collector, Escalation, Execution, gone
from datasources.sandbox.runtime import SandboxUnavailableError

__all__ = ["GatewaySession"]

logger = logging.getLogger(__name__)

_DIED = "The session ended unexpectedly (a limit was reached, or the code exited)."
_PROBE_EVERY = 5.0
"""Seconds of silence during an execution after which the gateway is asked about the kernel."""
_LOST = (
    "(the connection to the kernel was lost during this execution, e.g. by a message over "
    "the size limit: some output was not received)"
)


def _decode(frame: str | bytes) -> dict[str, Any] | None:
    """A message from a channel frame (JSON text, or the binary framing with buffers).

    Binary frames (messages with buffers) are: a count ``n``, ``n`` offsets, then the JSON
    message and its buffers; buffers are not kept.
    """
    try:
        if isinstance(frame, bytes):
            (count,) = struct.unpack_from("!I", frame)
            offsets = struct.unpack_from(f"!{count}I", frame, 4)
            end = offsets[1] if count > 1 else len(frame)
            frame = frame[offsets[0] : end].decode("utf-8")
        msg = json.loads(frame)
    except (ValueError, struct.error, IndexError, RecursionError):
        return None  # not JSON, or nested deeper than the decoder goes: not a message
    return msg if isinstance(msg, dict) else None


def _parent(msg: Mapping[str, Any]) -> str | None:
    header = msg.get("parent_header")
    value = header.get("msg_id") if isinstance(header, dict) else None
    return value if isinstance(value, str) else None


def _lifecycle(msg: Mapping[str, Any]) -> str | None:
    """``restarting`` or ``dead``: what the gateway says happened to the kernel itself."""
    if msg.get("msg_type") != "status" or _parent(msg):
        return None
    content = msg.get("content")
    state = content.get("execution_state") if isinstance(content, dict) else None
    return state if state in ("restarting", "dead") else None


_CLOSED: dict[str, Any] = {}
"""Put in the inbox when the connection ends."""


class GatewaySession:
    """One chat's kernel on the gateway, as the chat code sees any session.

    Args:
        client: The gateway.
        workspace: The chat's workspace (the kernel's working folder; displays go here).
        limits: The output cap and the default timeout apply as in every mode.
    """

    def __init__(self, client: GatewayClient, workspace: Path, limits: SandboxLimits) -> None:
        self.client = client
        self.slot = workspace
        self.limits = limits
        self.kernel_id: str | None = None
        self.last_used = time.monotonic()
        self._messages = MessageFactory(username="datasources")
        self._lock = asyncio.Lock()
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        # Small: the reader waits (and the socket with it) rather than queue big messages.
        self._inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=32)
        self._waiting: str | None = None
        """The request whose messages are forwarded to the inbox."""
        self._dead = False

    @property
    def alive(self) -> bool:
        """The kernel is believed to exist (a lost connection is mended on the next use)."""
        return self.kernel_id is not None and not self._dead

    @property
    def busy(self) -> bool:
        return self._lock.locked()

    async def start(self, env: Mapping[str, str]) -> None:
        """Start a new kernel and wait until it answers."""
        self.kernel_id = await self.client.start_kernel(env)
        try:
            await self._connect()
            await self._wait_ready(self.client.settings.launch_timeout)
        except BaseException:
            await self.close()
            raise

    async def attach(self, kernel_id: str) -> bool:
        """Use a kernel the gateway already runs (started by this or another replica).

        Returns False when the gateway no longer has it.
        """
        if await self.client.kernel(kernel_id) is None:
            return False
        self.kernel_id = kernel_id
        try:
            await self._connect()
        except KernelGone:
            self.kernel_id = None
            return False
        return True

    async def _connect(self) -> None:
        assert self.kernel_id is not None
        ws = await self.client.channels(self.kernel_id, self._messages.session)
        self._ws = ws
        self._reader = asyncio.ensure_future(self._read(ws))

    async def _read(self, ws: ClientConnection) -> None:
        """Forward the messages of the request being waited for; note the kernel's fate."""
        try:
            async for frame in ws:
                msg = _decode(frame)
                if msg is None:
                    continue
                fate = _lifecycle(msg)
                if fate == "dead":
                    self._dead = True
                waiting = self._waiting
                if waiting is not None and (fate is not None or _parent(msg) == waiting):
                    await self._inbox.put(msg)
        except ConnectionClosed as exc:
            logger.info("The channel to kernel %s closed: %s", self.kernel_id, exc)
        finally:
            if self._ws is ws:
                self._ws = None
        if self._waiting is not None:
            await self._inbox.put(_CLOSED)

    async def _reconnect(self) -> bool:
        """Mend a lost channel (the gateway replays what it buffered); False: kernel gone."""
        if self.kernel_id is None or await self.client.kernel(self.kernel_id) is None:
            self._dead = True
            return False
        await self._disconnect()
        try:
            await self._connect()
        except KernelGone:
            self._dead = True
            return False
        return True

    async def _send(self, msg_type: str, content: dict[str, Any]) -> str:
        """Send a shell request; its id (its replies are forwarded from now on)."""
        msg = self._messages.msg(msg_type, content)
        msg["channel"] = "shell"
        msg_id: str = msg["header"]["msg_id"]
        self._waiting = msg_id
        ws = self._ws
        if ws is None:
            raise ConnectionClosed(None, None)
        await ws.send(json.dumps(msg, default=json_default))
        return msg_id

    def _drain(self) -> None:
        while not self._inbox.empty():
            self._inbox.get_nowait()

    async def _wait_ready(self, timeout: float) -> None:
        """A kernel_info round trip: the kernel runs and its channels are connected."""
        deadline = time.monotonic() + timeout
        try:
            await self._send("kernel_info_request", {})
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SandboxUnavailableError(
                        f"The kernel did not answer within {timeout:g} s of starting."
                    )
                try:
                    msg = await asyncio.wait_for(self._inbox.get(), timeout=min(left, 1.0))
                except TimeoutError:
                    # A request sent while the kernel was still coming up can be lost (its
                    # channels were not connected yet): ask again, as jupyter_client does.
                    await self._send("kernel_info_request", {})
                    continue
                if msg is _CLOSED or _lifecycle(msg) == "dead":
                    raise SandboxUnavailableError(
                        "The kernel ended as it started; the gateway's log says why."
                    )
                if msg.get("msg_type") == "kernel_info_reply":
                    return
        except ConnectionClosed:
            raise SandboxUnavailableError(
                "The kernel's channel closed as it started; the gateway's log says why."
            ) from None
        finally:
            self._waiting = None
            self._drain()

    async def _settle(self) -> None:
        """Wait until a kernel the gateway is restarting answers (it is dead if it never does)."""
        try:
            await self._wait_ready(self.client.settings.launch_timeout)
        except (SandboxUnavailableError, ConnectionClosed) as exc:
            logger.warning("Kernel %s did not come back: %s", self.kernel_id, exc)
            self._dead = True

    async def execute(self, code: str, *, timeout: float | None = None) -> Execution:
        """Run ``code``; parts in order. One execution at a time per session."""
        async with self._lock:
            self.last_used = time.monotonic()
            try:
                return await self._execute(code, timeout or self.limits.timeout)
            finally:
                self.last_used = time.monotonic()

    async def _execute(self, code: str, timeout: float) -> Execution:
        start = time.perf_counter()
        self._drain()
        if not self.alive or (self._ws is None and not await self._reconnect()):
            return gone()
        collector = Collector(self.slot, self.limits.output_bytes)
        restarted = False
        clock = Escalation(timeout)
        lost = False
        probe_at = time.monotonic() + _PROBE_EVERY
        content = {"code": code, "silent": False, "store_history": True,
                   "user_expressions": {}, "allow_stdin": False, "stop_on_error": True}  # fmt: skip
        try:
            try:
                await self._send("execute_request", content)
            except ConnectionClosed:
                if not await self._reconnect():
                    return gone()
                await self._send("execute_request", content)
            while True:
                wait = clock.remaining()
                if wait <= 0:
                    if clock.step() == "interrupt":
                        await self.interrupt()
                        continue
                    # The code ignored the interrupt: a fresh kernel (same id).
                    await self.restart()
                    restarted = True
                    break
                try:
                    msg = await asyncio.wait_for(self._inbox.get(), timeout=min(wait, 1.0))
                except TimeoutError:
                    if not (self._dead or lost or time.monotonic() >= probe_at):
                        continue
                    # Quiet: ask the gateway whether the kernel is still there (a pod can
                    # vanish without a word on the channel), or done, after a lost channel.
                    probe_at = time.monotonic() + _PROBE_EVERY
                    state = None if self._dead else await self._state()
                    if state is None:
                        self._dead = True
                        collector.died(_DIED)
                        restarted = True
                        break
                    if lost and state == "idle":
                        # What the kernel sent while the channel was down is gone (the
                        # gateway replays only what it buffered); the kernel is done.
                        break
                    continue
                if msg is _CLOSED:
                    try:
                        mended = await self._reconnect()
                    except SandboxUnavailableError as exc:
                        collector.died(exc.message)
                        break
                    if mended:
                        lost = True
                        continue
                    collector.died(_DIED)
                    restarted = True
                    break
                fate = _lifecycle(msg)
                if fate is not None:
                    collector.died(_DIED)
                    restarted = True
                    if fate == "restarting":
                        await self._settle()  # the next turn finds the new kernel ready
                    break
                if msg.get("channel", "iopub") != "iopub":
                    continue  # the shell's execute_reply: the parts come from iopub
                if collector.add(msg):
                    break
                if collector.runaway and clock.interrupt_now():
                    # Output without end (printing, displaying): stop it, don't read gigabytes.
                    await self.interrupt()
        finally:
            self._waiting = None
            self._drain()
        if lost:
            collector.note(_LOST)
        return collector.finish(
            timeout=timeout, timed_out=clock.timed_out, restarted=restarted, start=start
        )

    async def _state(self) -> str | None:
        """The kernel's execution state as the gateway knows it; None: it is gone."""
        if self.kernel_id is None:
            return None
        try:
            model = await self.client.kernel(self.kernel_id)
        except SandboxUnavailableError:
            return "unknown"  # the gateway did not answer: not a verdict on the kernel
        if model is None:
            return None
        return str(model.get("execution_state", "unknown"))

    async def refresh(self) -> None:
        """Ask the gateway whether the kernel still exists (it may have been culled).

        Raises:
            SandboxUnavailableError: the gateway cannot be reached.
        """
        if self.kernel_id is not None and await self.client.kernel(self.kernel_id) is None:
            self._dead = True

    async def interrupt(self) -> None:
        """Interrupt the running code (through the gateway: a signal, or a control message)."""
        if self.kernel_id is None:
            return
        try:
            if not await self.client.interrupt(self.kernel_id):
                self._dead = True
        except SandboxUnavailableError as exc:
            logger.warning("Kernel %s could not be interrupted: %s", self.kernel_id, exc.message)

    async def restart(self) -> None:
        """Restart the kernel: same id, fresh state; if that fails, it is shut down."""
        if self.kernel_id is None:
            return
        try:
            if await self.client.restart(self.kernel_id):
                # A fresh channel to the new kernel (the old one may still be wired to the
                # ended process's sockets), and the next turn's request must find the
                # kernel listening, not be lost while it starts.
                await self._disconnect()
                try:
                    await self._connect()
                except KernelGone:
                    self._dead = True
                    return
                await self._settle()
                return
        except SandboxUnavailableError as exc:
            logger.warning("Kernel %s could not be restarted: %s", self.kernel_id, exc.message)
        await self.close()

    async def _disconnect(self) -> None:
        ws, self._ws = self._ws, None
        reader, self._reader = self._reader, None
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader

    async def detach(self) -> None:
        """Close the connection; the kernel goes on in the gateway (another replica's now)."""
        await self._disconnect()

    async def close(self) -> None:
        """Shut the kernel down in the gateway (a gateway out of reach is logged, not raised)."""
        await self._disconnect()
        kernel_id, self._dead = self.kernel_id, True
        if kernel_id is None:
            return
        try:
            await self.client.shutdown(kernel_id)
        except SandboxUnavailableError as exc:
            logger.warning("Kernel %s could not be shut down: %s", kernel_id, exc.message)

    async def idle_seconds(self) -> float | None:
        """How long the gateway has seen no activity on the kernel (any replica's); None:
        unknown (the gateway is out of reach, or does not say)."""
        if self.kernel_id is None:
            return None
        try:
            model = await self.client.kernel(self.kernel_id)
        except SandboxUnavailableError:
            return None
        if model is None:
            self._dead = True
            return None
        last = model.get("last_activity")
        if not isinstance(last, str):
            return None
        try:
            when = datetime.fromisoformat(last.replace("Z", "+00:00"))
        except ValueError:
            return None
        return (datetime.now(UTC) - when).total_seconds()
