"""Chats' kernels on a gateway (``DATASOURCES_SANDBOX=gateway``), with the same caps.

The manager's admission rules (sessions per owner and on the service, eviction of idle
ones, the per-chat lock) are :class:`SandboxManager`'s; what differs is where a kernel
lives. It lives in the gateway, not in this process, so:

- a chat's kernel id is recorded (``<workspaces>/.kernels/<chat>``, written atomically):
  a later request — on this replica after a restart, or on another replica sharing the
  workspace root — attaches to the same kernel, with its variables;
- closing the service only disconnects: kernels go on for whichever replica comes next;
- an idle session is closed (its kernel shut down) only when the gateway too has seen no
  activity on it for ``idle_seconds`` (another replica may be using it); otherwise this
  replica just lets go of its connection;
- deleting a chat shuts its kernel down wherever it was started.

There is no pool of pre-started kernels: a kernel's working folder is the chat's
workspace (``KERNEL_WORKING_DIR`` in the start request), known only once a chat asks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from pathlib import Path

from datasources.config import GatewaySettings, SandboxLimits
from datasources.sandbox.disk import FOLDERS
from datasources.sandbox.gateway import GatewaySession
from datasources.sandbox.gateway_client import GatewayClient
from datasources.sandbox.manager import KernelSession, SandboxManager
from datasources.sandbox.replies import max_message_bytes
from datasources.sandbox.runtime import DEFAULT_SANDBOX_ID, Identity, SandboxUnavailableError

__all__ = ["GatewayManager", "KernelRecords"]

logger = logging.getLogger(__name__)

_RECORDED = re.compile(r"^[A-Za-z0-9-]{1,64}$")


def kernel_identity(limits: SandboxLimits) -> Identity:
    """The uid and gid a chat's kernel is asked to run as (``KERNEL_UID``/``KERNEL_GID``).

    The configured sandbox identity, else 2000000000, *whether or not the service runs as
    root*: never root, and never the service's own uid or one of its groups. A kernel with
    the service's identity would own what the service owns on the shared workspace volume
    (``data/``, the manifests, ``displays/``, the kernel records of ``.kernels/``), so
    that code in one chat could make another chat's next turn attach to its kernel.

    Raises:
        SandboxUnavailableError: the identity is root's or the service's.
    """
    uid = DEFAULT_SANDBOX_ID if limits.uid is None else limits.uid
    gid = uid if limits.gid is None else limits.gid
    if 0 in (uid, gid):
        raise SandboxUnavailableError(
            "Kernels cannot run as root: set DATASOURCES_SANDBOX_UID and "
            "DATASOURCES_SANDBOX_GID to an unprivileged uid and gid."
        )
    if uid == os.getuid() or gid in {os.getgid(), *os.getgroups()}:
        raise SandboxUnavailableError(
            "Kernels cannot run as the service's own user or group (they would own its "
            "files on the workspace volume): set DATASOURCES_SANDBOX_UID and "
            "DATASOURCES_SANDBOX_GID to a uid and gid of their own."
        )
    return Identity(uid, gid)


class KernelRecords:
    """Chat -> kernel id, one small file per chat in a folder only the service reads.

    On the workspace root, so every replica that shares the root shares the records.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def get(self, key: str) -> str | None:
        try:
            value = (self.folder / key).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return value if _RECORDED.match(value) else None

    def put(self, key: str, kernel_id: str) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        temporary = self.folder / f".{key}.{secrets.token_hex(4)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, kernel_id.encode("ascii"))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, self.folder / key)

    def forget(self, key: str, kernel_id: str | None = None) -> None:
        """Remove the record (only if it still names ``kernel_id``, when given)."""
        if kernel_id is not None and self.get(key) != kernel_id:
            return
        with contextlib.suppress(FileNotFoundError):
            (self.folder / key).unlink()


class GatewayManager(SandboxManager):
    """Every chat's kernel on one gateway.

    Args:
        root: Where workspaces live (the kernels' working folders, on a volume the
            gateway's kernels mount at the same path).
        limits: The output cap, timeouts, caps on live sessions, the idle time.
        gateway: The gateway's settings; None: code is refused with the reason.
    """

    def __init__(
        self, root: Path, *, limits: SandboxLimits, gateway: GatewaySettings | None
    ) -> None:
        super().__init__(root, mode="gateway", limits=limits)
        self.gateway = gateway
        self.kernels = KernelRecords(root / ".kernels")
        self._client: GatewayClient | None = None

    def problem(self) -> str | None:
        if self.gateway is None:
            return "DATASOURCES_SANDBOX=gateway needs DATASOURCES_GATEWAY_URL"
        try:
            kernel_identity(self.limits)
        except SandboxUnavailableError as exc:
            return exc.message.rstrip(".")
        return None

    def require(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise SandboxUnavailableError(f"Code cannot run here: {problem}.")

    def _gateway(self) -> GatewayClient:
        self.require()
        client = self._client
        if client is None:
            raise SandboxUnavailableError("Code cannot run: the service is not started.")
        return client

    async def start(self) -> None:
        """Check the gateway (a problem is logged: it may come up later) and start culling."""
        await asyncio.to_thread(self.root.mkdir, parents=True, exist_ok=True)
        if self.gateway is None:
            logger.warning("Code execution is refused: %s", self.problem())
            return
        self._client = GatewayClient(self.gateway, max_message=max_message_bytes(self.limits))
        logger.warning(
            "DATASOURCES_SANDBOX=gateway: code runs in kernels of the gateway at %s; their "
            "isolation is the gateway's (see docs/security.md).",
            self.gateway.url,
        )
        try:
            await self._client.check()
        except SandboxUnavailableError as exc:
            logger.warning("The kernel gateway is not usable yet: %s", exc.message)
        self._spawn(self._cull_forever())

    async def prepare(self, key: str, workspace: Path) -> None:
        await asyncio.to_thread(self._ready, workspace)

    def _ready(self, workspace: Path) -> None:
        """The chat's folders, as the kernel needs them: ``data/`` readable, ``outputs/``
        its own to write, everything else (``displays/``, the manifest) the service's.

        A service that is root gives ``outputs/`` to the kernel's identity. One that is not
        cannot, and opens that folder alone to every uid (sticky: nobody removes another's
        files); only the chat's own kernel reaches it when kernels mount just their chat's
        folder, as they must (docs/security.md, deploy/base).
        """
        for sub in FOLDERS:
            (workspace / sub).mkdir(parents=True, exist_ok=True)
        # Through a descriptor of the folder itself: a link in its place is refused.
        fd = os.open(workspace / "outputs", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if os.geteuid() == 0:
                identity = kernel_identity(self.limits)
                os.fchown(fd, identity.uid, identity.gid)
            else:
                os.fchmod(fd, 0o1777)
        finally:
            os.close(fd)

    def _kernel_env(self, workspace: Path) -> dict[str, str]:
        """What the start request tells the gateway (only ``KERNEL_*`` names pass it)."""
        identity = kernel_identity(self.limits)
        return {
            "KERNEL_WORKING_DIR": str(workspace),
            # Enterprise Gateway runs container kernels as this uid and gid, and refuses 0.
            "KERNEL_UID": str(identity.uid),
            "KERNEL_GID": str(identity.gid),
        }

    async def session(
        self, key: str, workspace: Path, *, owner: str | None = None
    ) -> tuple[KernelSession, bool]:
        """As :meth:`SandboxManager.session`; a kernel the gateway no longer has (culled,
        shut down by another replica, its pod gone) is replaced before the turn runs."""
        current = self._sessions.get(key)
        if isinstance(current, GatewaySession) and current.alive and not current.busy:
            await current.refresh()
        return await super().session(key, workspace, owner=owner)

    async def _open(self, key: str, workspace: Path) -> tuple[KernelSession, bool]:
        client = self._gateway()
        await asyncio.to_thread(self._ready, workspace)
        session = GatewaySession(client, workspace, self.limits)
        recorded = await asyncio.to_thread(self.kernels.get, key)
        if recorded is not None and await session.attach(recorded):
            self._sessions[key] = session
            return session, False
        async with self._starts:
            await session.start(self._kernel_env(workspace))
        assert session.kernel_id is not None
        try:
            await asyncio.to_thread(self.kernels.put, key, session.kernel_id)
        except BaseException:
            await session.close()
            raise
        if recorded is not None:
            logger.info("Chat %s's kernel %s was gone; it has a new one.", key, recorded)
        self._sessions[key] = session
        return session, True

    async def _drop(self, key: str) -> None:
        """Shut the chat's kernel down and forget it (its lock stays)."""
        session = self._sessions.get(key)
        kernel_id = session.kernel_id if isinstance(session, GatewaySession) else None
        await super()._drop(key)
        if kernel_id is not None:
            await asyncio.to_thread(self.kernels.forget, key, kernel_id)

    async def _let_go(self, key: str) -> None:
        """Close this replica's connection to the chat's kernel; the kernel stays."""
        session = self._sessions.pop(key, None)
        if isinstance(session, GatewaySession):
            await session.detach()
        self._owners.pop(key, None)
        await self._notify_room()

    async def cull(self) -> int:
        """Shut down kernels idle here and in the gateway; let go of those used elsewhere."""
        idle = self._idle()
        closed = 0
        for key in idle:
            session = self._sessions.get(key)
            if not isinstance(session, GatewaySession):
                continue
            elsewhere = await session.idle_seconds()
            if elsewhere is not None and elsewhere < self.limits.idle_seconds:
                logger.info("Chat %s's kernel is in use elsewhere: letting go of it.", key)
                await self._let_go(key)
                continue
            logger.info("Closing the idle session of chat %s.", key)
            await self.end(key)
            closed += 1
        return closed

    async def close(self) -> None:
        """Disconnect from every kernel; the kernels go on in the gateway."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for session in self._sessions.values():
            if isinstance(session, GatewaySession):
                await session.detach()
        self._sessions.clear()
        self._owners.clear()
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    async def discard(self, key: str, workspace: Path) -> None:
        """Shut the chat's kernel down, wherever it was started (the chat is deleted)."""
        await self.end(key)
        recorded = await asyncio.to_thread(self.kernels.get, key)
        if recorded is None:
            return
        client = self._client
        if client is not None:
            try:
                await client.shutdown(recorded)
            except SandboxUnavailableError as exc:
                # The gateway's own culler ends it later; the chat is deleted regardless.
                logger.warning("Kernel %s could not be shut down: %s", recorded, exc.message)
        await asyncio.to_thread(self.kernels.forget, key, recorded)
