"""Sessions per chat, a pool of pre-started ones, and culling of idle ones.

A pre-started session runs over an empty *slot* folder (``data/``, ``outputs/``). When a
chat needs one, the sandbox is made to show the chat's files — no restart, and pandas is
already imported. In ``bwrap`` mode each chat's workspace is a filesystem of its own
(the disk quota, see :mod:`datasources.sandbox.disk`), made when the chat is
(:meth:`SandboxManager.prepare`): its folders are mounted over the slot's, which the
running sandbox sees by mount propagation; a chat that has none yet keeps the slot's.
In ``process`` mode the slot's folders are renamed into the chat's workspace (renames
keep a folder's identity, and the kernel's working folder follows).

Live sessions are capped per owner (``max_sessions_per_owner``) and on the service
(``max_sessions``): beyond a cap the least recently used session that is not running
anything is closed to make room; when none can be, a start waits up to
``start_wait_seconds`` for room on the service and otherwise fails with
:class:`SessionLimitError` (HTTP 429 with Retry-After). At most ``concurrent_starts``
kernels start at once, so a burst queues instead of starving the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import shutil
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from datasources.config import SandboxLimits
from datasources.sandbox.disk import FOLDERS, Volumes, move_entries, volume_problem
from datasources.sandbox.replies import Execution
from datasources.sandbox.runtime import (
    SandboxUnavailableError,
    SessionLimitError,
    bwrap_problem,
    isolation_problem,
    sandbox_identity,
)
from datasources.sandbox.session import Session

if TYPE_CHECKING:
    pass

__all__ = ["KernelSession", "SandboxManager"]

logger = logging.getLogger(__name__)


class KernelSession(Protocol):
    """What the chat code uses of a session, whichever mode runs it."""

    slot: Path
    last_used: float

    @property
    def alive(self) -> bool: ...

    @property
    def busy(self) -> bool: ...

    async def execute(self, code: str, *, timeout: float | None = None) -> Execution: ...

    async def close(self) -> None: ...


class SandboxManager:
    """Owns every sandboxed session of the service.

    Args:
        root: Where workspaces live; slots go in ``root/.pool``.
        mode: ``bwrap`` or ``process`` (``gateway``: see :meth:`from_settings`).
        limits: Per-session limits, pool size and idle timeout.
    """

    def __init__(self, root: Path, *, mode: str, limits: SandboxLimits) -> None:
        if mode == "gateway" and type(self) is SandboxManager:
            raise ValueError("gateway mode: build the manager with sandbox.factory.sandbox_manager")
        self.root = root
        self.mode = mode
        self.limits = limits
        self.pool_dir = root / ".pool"
        self._warm: list[Session] = []
        self._sessions: dict[str, KernelSession] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._filling = 0
        self._failures = 0
        self._closed = False
        self._owners: dict[str, str | None] = {}
        """Chat -> owner, for every live session and every start in progress."""
        self._room = asyncio.Condition()
        self._starts = asyncio.Semaphore(limits.concurrent_starts)
        self._volumes: Volumes | None = None
        """Per-chat filesystems (``bwrap`` mode, once started)."""

    def problem(self) -> str | None:
        """Why code cannot run here (None when it can)."""
        if self.mode == "process":
            return None
        problem = bwrap_problem()
        if problem is not None:
            return problem
        try:
            identity = sandbox_identity(self.limits)
        except SandboxUnavailableError as exc:
            return exc.message
        problem = isolation_problem(identity, self.limits.processes, self.limits.memory_bytes)
        if problem is not None:
            return problem
        return volume_problem(self.root / ".volumes")

    def require(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise SandboxUnavailableError(
                f"Code cannot run in isolation here: {problem}. Set DATASOURCES_SANDBOX=process "
                "to run it without isolation (see docs/security.md)."
            )

    async def start(self) -> None:
        """Start the pool (if code can run here) and the idle-session culler.

        In ``bwrap`` mode, every chat's filesystem is mounted first (a workspace from before
        chats had one gets one, its files moved in), so the service sees each chat's files
        whether or not it has a session.
        """
        await asyncio.to_thread(self._clear_pool)
        self.pool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.mode == "process":
            logger.warning(
                "DATASOURCES_SANDBOX=process: code runs WITHOUT isolation — it can read what "
                "the service's user can read and reach the network; only rlimits, a cgroup "
                "where available and a scrubbed environment apply."
            )
        elif (problem := self.problem()) is not None:
            logger.warning("Code execution is refused: %s", problem)
            return
        else:
            identity = sandbox_identity(self.limits)
            self._volumes = Volumes(
                self.root / ".volumes",
                size=self.limits.workspace_quota_bytes,
                uid=identity.uid,
                gid=identity.gid,
            )
            await asyncio.to_thread(self._mount_chats, self._volumes)
        self._spawn(self._cull_forever())
        self._refill()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _refill(self) -> None:
        missing = self.limits.pool_size - len(self._warm) - self._filling
        for _ in range(max(missing, 0)):
            self._filling += 1
            self._spawn(self._add_warm())

    async def _add_warm(self) -> None:
        try:
            session = await self._new_session()
        except Exception as exc:
            logger.warning("A pre-started session failed to start: %s", type(exc).__name__)
            self._failures += 1
            # Try again later (a loaded machine recovers), backing off up to a minute.
            self._spawn(self._refill_later(min(2.0**self._failures, 60.0)))
            return
        finally:
            self._filling -= 1
        self._failures = 0
        if self._closed:
            await self._discard(session)
        else:
            self._warm.append(session)

    async def _refill_later(self, delay: float) -> None:
        await asyncio.sleep(delay)
        if not self._closed:
            self._refill()

    def _clear_pool(self) -> None:
        """Remove what a previous run left in the pool (slots, their mounts and images)."""
        for slot in self.pool_dir.glob("slot-*"):
            Volumes.release_workspace(slot)
        shutil.rmtree(self.pool_dir, ignore_errors=True)
        volumes = self.root / ".volumes"
        for image in [*volumes.glob("slot-*.ext4"), *volumes.glob("slot-*.img")]:
            image.unlink(missing_ok=True)
        for where in [*volumes.glob("mnt-*"), *volumes.glob("ro-*")]:  # a crash's
            Volumes.release(where)
            with contextlib.suppress(OSError):
                where.rmdir()

    def _mount_chats(self, volumes: Volumes) -> None:
        """Mount each chat's filesystem; give one to a workspace that has none."""
        for image in [*volumes.folder.glob("*.ext4"), *volumes.folder.glob("*.img")]:
            name = image.name.split(".")[0]
            if not name.startswith(("slot-", "probe-")) and not (self.root / name).is_dir():
                image.unlink(missing_ok=True)  # its chat was deleted
        for workspace in self.root.iterdir():
            if workspace.name.startswith(".") or not workspace.is_dir():
                continue
            try:
                self._settle(volumes, workspace.name, workspace)
            except OSError as exc:
                logger.warning("The files of chat %s could not be mounted: %s", workspace.name, exc)

    @staticmethod
    def _settle(volumes: Volumes, key: str, workspace: Path) -> None:
        """Mount the chat's filesystem at ``workspace``, made first if it has none."""
        if os.path.ismount(workspace / "data"):
            return
        if volumes.image(key).exists():
            volumes.mount(key, workspace)
            return
        volumes.create(key)
        try:
            volumes.mount(key, workspace, keep=True)
        except OSError:
            Volumes.release_workspace(workspace)
            volumes.image(key).unlink(missing_ok=True)
            raise

    async def prepare(self, key: str, workspace: Path) -> None:
        """Give a new chat its filesystem (``bwrap`` mode; plain folders otherwise).

        Made before anything is fetched, so a pre-started session takes the chat by a
        mount, never by copying its files.
        """
        volumes = self._volumes
        if volumes is None:
            for sub in FOLDERS:
                await asyncio.to_thread((workspace / sub).mkdir, parents=True, exist_ok=True)
            return
        async with self.lock(key):
            try:
                await asyncio.to_thread(self._settle, volumes, key, workspace)
            except OSError as exc:
                # Still usable: the first session moves its files onto the slot's.
                logger.warning("Chat %s got no filesystem of its own yet: %s", key, exc)

    async def _new_session(self) -> Session:
        slot = self.pool_dir / f"slot-{secrets.token_hex(6)}"
        session = Session(slot, mode=self.mode, limits=self.limits)
        volumes = self._volumes
        if volumes is not None:
            # Shared: the chat's folders, mounted over these later, reach the sandbox.
            await asyncio.to_thread(volumes.create, slot.name)
            session.mount_slot = slot
            try:
                await asyncio.to_thread(volumes.mount, slot.name, slot, shared=True)
            except BaseException:
                await self._discard(session)
                raise
        try:
            async with self._starts:
                await session.start()
        except BaseException:
            await self._discard(session)
            raise
        return session

    async def _discard(self, session: KernelSession) -> None:
        await session.close()
        if isinstance(session, Session):
            await asyncio.to_thread(self._release_slot, session)

    def _release_slot(self, session: Session) -> None:
        """Unmount and remove a session's slot (and its image, if no chat took it)."""
        slot = session.mount_slot
        if slot is None:
            if session.slot.is_relative_to(self.pool_dir):
                shutil.rmtree(session.slot, ignore_errors=True)
            return
        session.mount_slot = None
        Volumes.release_workspace(slot)
        if self._volumes is not None:
            self._volumes.delete(slot.name)  # gone already when a chat took it
        shutil.rmtree(slot, ignore_errors=True)

    def lock(self, key: str) -> asyncio.Lock:
        """One lock per chat: fetches and executions of a chat take turns."""
        return self._locks.setdefault(key, asyncio.Lock())

    async def session(
        self, key: str, workspace: Path, *, owner: str | None = None
    ) -> tuple[KernelSession, bool]:
        """The chat's live session, or a warm one moved onto its workspace; (session, new).

        Raises:
            SandboxUnavailableError: code cannot run here.
            SessionLimitError: the owner's or the service's cap on live sessions is reached
                and no session can be closed to make room in time.
        """
        self.require()
        current = self._sessions.get(key)
        if current is not None and current.alive:
            return current, False
        if current is not None:
            await self._drop(key)  # dead; the caller holds the chat's lock: keep it
        await self._admit(key, owner)
        try:
            return await self._open(key, workspace)
        except BaseException:
            self._owners.pop(key, None)
            await self._notify_room()
            raise

    async def _admit(self, key: str, owner: str | None) -> None:
        """Reserve room for one more session of ``owner``: evict, wait, or refuse."""
        deadline = time.monotonic() + self.limits.start_wait_seconds
        while True:
            mine = [k for k, o in self._owners.items() if owner is not None and o == owner]
            if len(mine) >= self.limits.max_sessions_per_owner:
                if await self._evict(owner):
                    continue
                raise SessionLimitError(
                    f"This key already has {len(mine)} live Python sessions (the most "
                    "allowed), all busy: try again when one finishes.",
                    details={"retry_after": self._retry_after(), "limit": len(mine)},
                )
            if len(self._owners) < self.limits.max_sessions:
                self._owners[key] = owner
                return
            if await self._evict(None):
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                raise SessionLimitError(
                    "The service is running as many Python sessions as it may, all busy: "
                    "try again shortly.",
                    details={"retry_after": self._retry_after()},
                )
            async with self._room:
                # Woken when a session ends; and a few times a second, since a session
                # that finishes running becomes evictable without ending.
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._room.wait(), timeout=min(left, 0.25))

    async def _evict(self, owner: str | None) -> bool:
        """Close the least recently used idle session (of ``owner``, or anyone's)."""
        idle = [
            (session.last_used, key)
            for key, session in self._sessions.items()
            if (owner is None or self._owners.get(key) == owner)
            and not self.lock(key).locked()
            and not session.busy
        ]
        if not idle:
            return False
        _, key = min(idle)
        logger.info("Closing the idle session of chat %s to make room.", key)
        await self.end(key)
        return True

    def _retry_after(self) -> int:
        """Seconds after which a session is likely to have finished (Retry-After)."""
        return max(1, math.ceil(min(self.limits.timeout, self.limits.start_wait_seconds or 5)))

    async def _notify_room(self) -> None:
        async with self._room:
            self._room.notify_all()

    async def _open(self, key: str, workspace: Path) -> tuple[KernelSession, bool]:
        session = None
        while self._warm:
            candidate = self._warm.pop(0)
            if candidate.alive:
                session = candidate
                break
            await self._discard(candidate)
        self._refill()
        if session is None:
            session = await self._new_session()
        try:
            await asyncio.to_thread(_adopt, session, workspace, key, self._volumes)
        except BaseException:
            await self._discard(session)
            raise
        if self.mode == "process":
            # No mount namespace: the kernel's folder was the slot, now gone; follow it.
            await session.execute(f"import os as _os; _os.chdir({str(workspace)!r}); del _os")
        self._sessions[key] = session
        return session, True

    async def end(self, key: str) -> None:
        """Close a chat's session (its workspace stays)."""
        self._locks.pop(key, None)
        await self._drop(key)

    async def _drop(self, key: str) -> None:
        """Close the chat's session and give its room back (its lock stays)."""
        session = self._sessions.pop(key, None)
        if session is not None:
            await self._discard(session)
        if key in self._owners or session is not None:
            self._owners.pop(key, None)
            await self._notify_room()

    async def _cull_forever(self) -> None:
        while not self._closed:
            await asyncio.sleep(min(30.0, self.limits.idle_seconds / 2))
            await self.cull()

    def _idle(self) -> list[str]:
        """Chats whose session is idle longer than ``idle_seconds`` and not in use."""
        now = time.monotonic()
        return [
            key
            for key, session in self._sessions.items()
            if now - session.last_used > self.limits.idle_seconds and not self.lock(key).locked()
        ]

    async def cull(self) -> int:
        """Close sessions idle longer than ``idle_seconds``; how many."""
        idle = self._idle()
        for key in idle:
            logger.info("Closing the idle session of chat %s.", key)
            await self.end(key)
        return len(idle)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for session in [*self._warm, *self._sessions.values()]:
            await self._discard(session)
        self._warm.clear()
        self._sessions.clear()
        volumes, self._volumes = self._volumes, None
        if volumes is not None:
            await asyncio.to_thread(self._unmount_chats, volumes)
        await asyncio.to_thread(self._clear_pool)

    def _unmount_chats(self, volumes: Volumes) -> None:
        for image in volumes.folder.glob("*.ext4"):
            Volumes.release_workspace(self.root / image.name.removesuffix(".ext4"))

    async def discard(self, key: str, workspace: Path) -> None:
        """Close a chat's session and free its filesystem (the chat is deleted).

        The caller removes the workspace afterwards.
        """
        await self.end(key)
        volumes = self._volumes
        if volumes is not None:
            await asyncio.to_thread(Volumes.release_workspace, workspace)
            await asyncio.to_thread(volumes.delete, key)


def _adopt(session: Session, workspace: Path, key: str, volumes: Volumes | None) -> None:
    """Make the session's bound folders show the chat's ``data/`` and ``outputs/``."""
    slot = session.slot
    if slot == workspace:
        return
    workspace.mkdir(parents=True, exist_ok=True)
    if volumes is None:
        for name in FOLDERS:
            ours, theirs = slot / name, workspace / name
            if theirs.is_dir():
                move_entries(theirs, ours)
                theirs.rmdir()
            os.rename(ours, theirs)
        with contextlib.suppress(OSError):
            slot.rmdir()
    elif volumes.image(key).exists():
        SandboxManager._settle(volumes, key, workspace)
        # Over the slot's (shared) mounts: the running sandbox sees the chat's files;
        # data/ read-only from the first moment it shows there.
        volumes.bind(workspace / "data", slot / "data", read_only=True)
        volumes.bind(workspace / "outputs", slot / "outputs")
    else:
        # A chat with no filesystem yet takes the slot's (files it has move onto it).
        for name in FOLDERS:
            theirs = workspace / name
            if theirs.is_dir():
                move_entries(theirs, slot / name)
                Volumes.release(theirs)
        volumes.rename(slot.name, key)
        for name in FOLDERS:
            volumes.bind(slot / name, workspace / name)
    session.slot = workspace
