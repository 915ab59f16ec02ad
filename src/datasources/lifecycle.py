"""One live connector per source per process: who opens it, who closes it.

A connector is long-lived and owns its driver's connections (an asyncpg pool, an HTTP
session) and the source's caches, the way an ``httpx.AsyncClient`` or a ``psycopg_pool``
pool does. :class:`LiveConnectors` keeps one per ``(owner, source id)``:

- **opened** on first use (:meth:`LiveConnectors.get`), with the record just read from
  the store, and marked *shared* so that its users cannot close it;
- **borrowed** by ``async with registry.get_connector(ref)`` (counted, so a replaced
  connector is closed only after its last borrower is done) or **handed out** by
  ``await registry.get_connector(ref)`` (the seed's form: the same object, not counted);
- **closed** when its source changes (here or, seen within ``revalidate_after``
  seconds, in another replica), is removed, or the registry closes.

A borrow reads the source from the store before it takes the source's lock; a change
that ends in between (its retirement counted in :attr:`LiveConnectors.epoch`) makes it
read again rather than open a connector from the record it had: the old host, secrets
or ``read_only`` never come back after a change, nor a removed source's connector.

There is no second layer of pooling: concurrency is bounded by the driver's own pool
(``Settings.pool.max_connections`` server connections per source per process).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from datasources.connectors.base import BaseConnector
from datasources.store import StoredSource

__all__ = ["Live", "LiveConnectors", "PoolStats"]

logger = logging.getLogger(__name__)

Builder = Callable[[StoredSource], Awaitable[BaseConnector[Any]]]
"""Builds and connects the connector of a stored source."""


@dataclass(frozen=True, slots=True)
class PoolStats:
    """One source's live connector and the driver pool it owns, in this process."""

    name: str
    """``owner/id``."""
    type: str
    in_use: int
    """Borrows (``async with``) running now."""
    acquisitions: int
    """Borrows and hand-outs since the connector opened."""
    connections: int
    """Server connections its driver holds now (0 for a connector without any)."""
    idle: int
    """Of those, the ones not in use."""
    max_connections: int | None
    """The driver pool's ceiling (None: no pool of connections)."""


@dataclass(eq=False)
class Live:
    """A source's connector as it is kept: when it was read and who is using it."""

    key: tuple[str, str]
    connector: BaseConnector[Any]
    updated_at: datetime
    checked_at: float
    leases: int = 0
    acquisitions: int = 0
    retired: bool = False
    closed: bool = False
    drained: asyncio.Event = field(default_factory=asyncio.Event)


class LiveConnectors:
    """The per-source map of live connectors (one registry and its scoped views share it).

    Args:
        revalidate_after: Seconds a connector is handed out without asking the store
            whether its source changed (another replica's change shows within this).
    """

    def __init__(self, *, revalidate_after: float) -> None:
        self.revalidate_after = revalidate_after
        self._live: dict[tuple[str, str], Live] = {}
        self._refs: dict[tuple[str, str], Live] = {}
        """(owner, id or name) → its live connector: borrowing costs no store round trip."""
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._closing: set[asyncio.Task[None]] = set()
        self.epoch = 0
        """Counts retirements: read it before reading a source, pass it to :meth:`get`."""
        self._retired: dict[tuple[str, str], int] = {}
        """(owner, id) → the epoch of its last retirement (kept, like its lock)."""
        self._all_retired = 0
        """The epoch at which everything was retired (changes may have been missed)."""

    def cached(self, owner: str, ref: str) -> Live | None:
        """The live connector of ``ref`` if it was checked against the store lately."""
        live = self._refs.get((owner, ref))
        if live is None or live.retired:
            return None
        if asyncio.get_running_loop().time() - live.checked_at >= self.revalidate_after:
            return None
        return live

    async def get(
        self, record: StoredSource, ref: str, build: Builder, *, seen: int
    ) -> Live | None:
        """The live connector of ``record``, opened now if it has none or an outdated one.

        ``seen`` is :attr:`epoch` as it was before ``record`` was read. None when the
        source was retired since (changed or removed): ``record`` may predate that, so
        the caller reads the store again.
        """
        key = (record.owner, record.id)
        async with self._lock(key):
            if max(self._retired.get(key, 0), self._all_retired) > seen:
                return None
            now = asyncio.get_running_loop().time()
            live = self._live.get(key)
            if live is not None and (
                live.updated_at != record.updated_at or not live.connector.connected
            ):
                # Changed in another replica (or closed under us): lent no more, closed
                # once its borrowers are done; this caller gets a new one.
                stale = self._retire(live)
                if stale is not None:
                    self._spawn(stale)
                live = None
            if live is None:
                live = Live(key, await build(record), record.updated_at, now)
                self._live[key] = live
            live.checked_at = now
            self._refs[(record.owner, ref)] = live
            self._refs[key] = live
        return live

    def borrow(self, live: Live) -> None:
        """Count a borrower (``async with``); call :meth:`release` when it is done."""
        live.leases += 1
        live.acquisitions += 1
        live.drained.clear()

    def hand_out(self, live: Live) -> None:
        """Count a hand-out (``await get_connector``): the caller keeps the shared object."""
        live.acquisitions += 1

    async def release(self, live: Live) -> None:
        """A borrower is done; the last one closes a connector that was replaced meanwhile."""
        live.leases -= 1
        if live.leases == 0:
            live.drained.set()
            if live.retired:
                await self._close(live)

    async def retire(self, owner: str, source_id: str) -> None:
        """The source changed or went: close its connector (after its borrowers are done)."""
        key = (owner, source_id)
        async with self._lock(key):
            self.epoch += 1
            self._retired[key] = self.epoch  # a borrow that read the source before: again
            live = self._live.get(key)
            closing = self._retire(live) if live is not None else None
        if closing is not None:
            await closing

    def retire_all(self) -> None:
        """Count every source as retired now (changes may have been missed): borrows that
        read a source before this read it again. Live connectors are retired one by one
        with :meth:`retire`."""
        self.epoch += 1
        self._all_retired = self.epoch

    def live_keys(self) -> list[tuple[str, str]]:
        """(owner, source id) of every live connector."""
        return list(self._live)

    async def close(self, *, grace: float = 10.0) -> None:
        """Close every connector, giving borrowers up to ``grace`` seconds to finish."""
        lives = list(self._live.values())
        self._live.clear()
        self._refs.clear()

        async def finish(live: Live) -> None:
            live.retired = True
            if live.leases:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(live.drained.wait(), grace)
            await self._close(live)

        await asyncio.gather(*(finish(live) for live in lives), *list(self._closing))

    def stats(self) -> dict[str, PoolStats]:
        """Every live connector's stats, keyed by ``owner/id``."""
        stats: dict[str, PoolStats] = {}
        for (owner, source_id), live in self._live.items():
            driver = live.connector.driver_stats()
            name = f"{owner}/{source_id}"
            stats[name] = PoolStats(
                name=name,
                type=live.connector.type,
                in_use=live.leases,
                acquisitions=live.acquisitions,
                connections=driver.connections if driver is not None else 0,
                idle=driver.idle if driver is not None else 0,
                max_connections=driver.max_connections if driver is not None else None,
            )
        return stats

    # -- internals -------------------------------------------------------------------

    def _lock(self, key: tuple[str, str]) -> asyncio.Lock:
        # Kept for the life of the map (one small lock per source used): dropping one
        # while a task waits on it would let two connectors open for the same source.
        return self._locks.setdefault(key, asyncio.Lock())

    def _retire(self, live: Live) -> Awaitable[None] | None:
        """Stop lending ``live``; the close to await when nobody is using it, else None."""
        live.retired = True
        if self._live.get(live.key) is live:
            del self._live[live.key]
        for ref in [ref for ref, held in self._refs.items() if held is live]:
            del self._refs[ref]
        return self._close(live) if live.leases == 0 else None

    def _spawn(self, closing: Awaitable[None]) -> None:
        async def run() -> None:
            await closing

        task = asyncio.get_running_loop().create_task(run())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, live: Live) -> None:
        if live.closed:
            return
        live.closed = True
        try:
            await live.connector.close_shared()
        except Exception:
            logger.warning("Closing the connector of %s/%s failed.", *live.key, exc_info=True)
