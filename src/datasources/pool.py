"""A small generic async connection pool.

Opened and closed explicitly (``await pool.open()`` / ``await pool.close()`` or
``async with``), always borrowed through a context manager::

    async with ConnectionPool(factory, close=close, check=check) as pool:
        async with pool.connection() as conn:
            ...

Limits are keyword-only with the seed's defaults (max 10, min 2, idle 300 s, lifetime
3600 s). A connection is health-checked on acquire once it has been idle for
``check_after`` seconds, replaced when it fails the check, and discarded instead of
returned when the borrowing block raised a transient error.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from datasources.errors import DataSourceError, TimeoutError, UnavailableError

__all__ = ["ConnectionPool", "PoolClosedError", "PoolStats"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PoolClosedError(UnavailableError):
    """The pool was closed."""

    code = "pool_closed"
    default_message = "The connection pool is closed."
    transient = False


@dataclass(frozen=True, slots=True)
class PoolStats:
    """A snapshot of a pool's state and counters."""

    name: str
    min_size: int
    max_size: int
    size: int
    idle: int
    in_use: int
    opening: int
    waiting: int
    connections_created: int
    connections_closed: int
    acquisitions: int
    acquire_timeouts: int
    failed_checks: int
    closed: bool


@dataclass(slots=True)
class _Slot(Generic[T]):
    conn: T
    created_at: float
    last_used: float


class ConnectionPool(Generic[T]):
    """A bounded pool of connections of any kind.

    Args:
        factory: Creates one connected connection.
        close: Closes one connection; errors are logged, never raised.
        check: Returns whether a connection is healthy; called on acquire.
        name: Shown in stats and logs.
        min_size: Connections kept open (filled in the background).
        max_size: Upper bound of open connections.
        acquire_timeout: Seconds to wait for a connection before ``TimeoutError``.
        idle_timeout: Idle connections above ``min_size`` are closed after this.
        max_lifetime: Connections are replaced after this many seconds.
        check_after: Only check connections idle at least this long (0: always).
    """

    def __init__(
        self,
        factory: Callable[[], Awaitable[T]],
        *,
        close: Callable[[T], Awaitable[None]],
        check: Callable[[T], Awaitable[bool]] | None = None,
        name: str = "pool",
        min_size: int = 2,
        max_size: int = 10,
        acquire_timeout: float = 30.0,
        idle_timeout: float = 300.0,
        max_lifetime: float = 3600.0,
        check_after: float = 0.0,
    ) -> None:
        if max_size < 1 or min_size < 0 or min_size > max_size:
            raise ValueError("need 0 <= min_size <= max_size and max_size >= 1")
        self._factory = factory
        self._close_conn = close
        self._check = check
        self.name = name
        self.min_size = min_size
        self.max_size = max_size
        self.acquire_timeout = acquire_timeout
        self.idle_timeout = idle_timeout
        self.max_lifetime = max_lifetime
        self.check_after = check_after
        self._idle: deque[_Slot[T]] = deque()
        self._in_use = 0
        self._opening = 0
        self._waiting = 0
        self._cond: asyncio.Condition | None = None
        self._opened = False
        self._closed = False
        self._maintainer: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self._counters = {"created": 0, "closed": 0, "acquired": 0, "timeouts": 0, "checks": 0}

    def __repr__(self) -> str:
        return f"ConnectionPool(name={self.name!r}, size={self._size()}, max_size={self.max_size})"

    # -- lifecycle -------------------------------------------------------------------

    async def open(self, *, wait: bool = False) -> None:
        """Start the pool; with ``wait``, return once ``min_size`` connections are open."""
        if self._closed:
            raise PoolClosedError()
        if self._opened:
            return
        self._cond = asyncio.Condition()
        self._opened = True
        if wait:
            await asyncio.gather(*(self._add_idle() for _ in range(self.min_size)))
        self._maintainer = asyncio.create_task(self._maintain(), name=f"{self.name}-maintenance")

    async def close(self) -> None:
        """Close every idle connection now and every borrowed one when it comes back."""
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._maintainer, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        cond = self._cond
        if cond is not None:
            async with cond:
                slots = list(self._idle)
                self._idle.clear()
                cond.notify_all()
        else:
            slots = list(self._idle)
            self._idle.clear()
        for slot in slots:
            await self._discard(slot.conn)

    async def __aenter__(self) -> ConnectionPool[T]:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return self._closed

    # -- borrowing -------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def connection(self, timeout: float | None = None) -> AsyncIterator[T]:
        """Borrow a connection for the ``async with`` block."""
        slot = await self._acquire(self.acquire_timeout if timeout is None else timeout)
        broken = False
        try:
            yield slot.conn
        except DataSourceError as exc:
            broken = exc.transient
            raise
        except (OSError, asyncio.CancelledError):
            broken = True
            raise
        finally:
            await self._release(slot, broken=broken)

    def stats(self) -> PoolStats:
        """Current sizes and lifetime counters."""
        c = self._counters
        return PoolStats(
            name=self.name,
            min_size=self.min_size,
            max_size=self.max_size,
            size=self._size(),
            idle=len(self._idle),
            in_use=self._in_use,
            opening=self._opening,
            waiting=self._waiting,
            connections_created=c["created"],
            connections_closed=c["closed"],
            acquisitions=c["acquired"],
            acquire_timeouts=c["timeouts"],
            failed_checks=c["checks"],
            closed=self._closed,
        )

    # -- internals -------------------------------------------------------------------

    def _size(self) -> int:
        return len(self._idle) + self._in_use + self._opening

    def _require_cond(self) -> asyncio.Condition:
        if self._closed:
            raise PoolClosedError()
        if self._cond is None:
            raise UnavailableError("The connection pool is not open; call open() first.")
        return self._cond

    def _expired(self, slot: _Slot[T], now: float) -> bool:
        return now - slot.created_at >= self.max_lifetime

    async def _acquire(self, timeout: float) -> _Slot[T]:
        cond = self._require_cond()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            slot: _Slot[T] | None = None
            async with cond:
                while True:
                    if self._closed:
                        raise PoolClosedError()
                    now = loop.time()
                    while self._idle:
                        candidate = self._idle.pop()  # LIFO: the warmest connection
                        if self._expired(candidate, now):
                            self._spawn(self._discard(candidate.conn))
                            continue
                        slot = candidate
                        self._in_use += 1
                        break
                    if slot is not None:
                        break
                    if self._size() < self.max_size:
                        self._opening += 1
                        break
                    remaining = deadline - now
                    if remaining <= 0:
                        self._counters["timeouts"] += 1
                        raise TimeoutError(
                            f"No connection became available within {timeout:g} s "
                            f"(pool {self.name!r} has {self.max_size} in use).",
                            details={"pool": self.name, "max_size": self.max_size},
                        )
                    self._waiting += 1
                    try:
                        await asyncio.wait_for(cond.wait(), remaining)
                    except builtins.TimeoutError:
                        pass
                    finally:
                        self._waiting -= 1
            if slot is None:
                slot = await self._create_for_acquire(deadline)
            elif (
                self._check is not None
                and loop.time() - slot.last_used >= self.check_after
                and not await self._healthy(slot.conn)
            ):
                self._counters["checks"] += 1
                async with cond:
                    self._in_use -= 1
                    cond.notify()
                await self._discard(slot.conn)
                continue
            self._counters["acquired"] += 1
            return slot

    async def _open_one(self, timeout: float) -> T:
        """Run the factory for a slot already counted in ``_opening``; uncount it on failure."""
        cond = self._require_cond()
        try:
            conn = await asyncio.wait_for(self._factory(), max(timeout, 0.001))
        except BaseException as exc:
            async with cond:
                self._opening -= 1
                cond.notify()
            if isinstance(exc, builtins.TimeoutError):
                raise TimeoutError("Opening a connection timed out.") from None
            raise
        self._counters["created"] += 1
        return conn

    async def _create_for_acquire(self, deadline: float) -> _Slot[T]:
        cond = self._require_cond()
        loop = asyncio.get_running_loop()
        conn = await self._open_one(deadline - loop.time())
        now = loop.time()
        async with cond:
            self._opening -= 1
            self._in_use += 1
        return _Slot(conn, now, now)

    async def _healthy(self, conn: T) -> bool:
        assert self._check is not None
        try:
            return await asyncio.wait_for(self._check(conn), self.acquire_timeout)
        except Exception:
            logger.info("Pool %s: a connection failed its health check.", self.name, exc_info=True)
            return False

    async def _release(self, slot: _Slot[T], *, broken: bool) -> None:
        cond = self._cond
        now = asyncio.get_running_loop().time()
        discard = broken or self._closed or self._expired(slot, now) or cond is None
        if cond is not None:
            async with cond:
                self._in_use -= 1
                if not discard:
                    slot.last_used = now
                    self._idle.append(slot)
                cond.notify()
        if discard:
            await self._discard(slot.conn)

    async def _discard(self, conn: T) -> None:
        try:
            await self._close_conn(conn)
        except Exception:
            logger.warning("Pool %s: closing a connection failed.", self.name, exc_info=True)
        finally:
            self._counters["closed"] += 1

    def _spawn(self, coro: Awaitable[None]) -> None:
        async def run() -> None:
            await coro

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _add_idle(self) -> None:
        cond = self._require_cond()
        async with cond:
            if self._size() >= self.max_size:
                return
            self._opening += 1
        conn = await self._open_one(self.acquire_timeout)
        now = asyncio.get_running_loop().time()
        async with cond:
            self._opening -= 1
            closing = self._closed
            if not closing:
                self._idle.appendleft(_Slot(conn, now, now))
                cond.notify()
        if closing:
            await self._discard(conn)

    async def _maintain(self) -> None:
        interval = max(min(self.idle_timeout, self.max_lifetime, 60.0) / 4, 0.05)
        while not self._closed:
            try:
                await self._maintain_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.warning("Pool %s: maintenance failed.", self.name, exc_info=True)
            await asyncio.sleep(interval)

    async def _maintain_once(self) -> None:
        cond = self._require_cond()
        now = asyncio.get_running_loop().time()
        stale: list[T] = []
        async with cond:
            keep: deque[_Slot[T]] = deque()
            # Oldest-used first (left end), so the warmest connections survive.
            for slot in self._idle:
                over_min = self._size() - len(stale) > self.min_size
                idle_too_long = now - slot.last_used >= self.idle_timeout
                if self._expired(slot, now) or (idle_too_long and over_min):
                    stale.append(slot.conn)
                else:
                    keep.append(slot)
            self._idle = keep
            missing = self.min_size - self._size()
        for conn in stale:
            await self._discard(conn)
        for _ in range(max(missing, 0)):
            try:
                await self._add_idle()
            except Exception:
                logger.info("Pool %s: could not open a connection; will retry.", self.name)
                break
