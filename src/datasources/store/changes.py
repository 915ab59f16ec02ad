"""What the store tells other processes it changed, and how they hear it.

A :class:`Change` names a source (added, updated or removed) or an API key (revoked):
what another replica may hold in a cache. It carries ids only, never a config or a
secret.

On PostgreSQL the store announces each change with ``pg_notify`` *inside* the writing
transaction: listeners hear it if, and only once, the transaction commits, whichever
program wrote it (the service, ``datasources keys revoke`` on another machine, the
library). :class:`PostgresChangeListener` is the other end: one dedicated connection per
process that ``LISTEN``\\s, checked by a heartbeat so a silently dead connection is noticed
within about two seconds. On other stores the writing process tells the observers it
registered with :meth:`Store.observe` after the commit (the service forwards them to
Redis, see :mod:`datasources.shared.feed`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.engine import make_url

__all__ = [
    "CHANNEL",
    "Change",
    "ChangeAnnouncer",
    "ChangeHandler",
    "Listener",
    "PostgresChangeListener",
]

logger = logging.getLogger(__name__)

CHANNEL = "datasources_changes"
"""The PostgreSQL notification channel (per database, so one store's changes only)."""

_KINDS = frozenset({"source", "api_key"})
_MAX_FIELD = 256


@dataclass(frozen=True)
class Change:
    """A source or an API key changed; caches that hold it must let it go.

    Attributes:
        kind: ``"source"`` or ``"api_key"``.
        id: The source's or the key's id.
        owner: The source's owner (empty for keys: key ids are global).
    """

    kind: Literal["source", "api_key"]
    id: str
    owner: str = ""

    def to_json(self) -> str:
        """The wire form: a small JSON object."""
        return json.dumps(
            {"kind": self.kind, "id": self.id, "owner": self.owner}, separators=(",", ":")
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Change | None:
        """The change a message describes; None for anything malformed (never raises)."""
        try:
            data = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return None
        if not isinstance(data, dict):
            return None
        kind, ident, owner = data.get("kind"), data.get("id"), data.get("owner", "")
        if kind not in _KINDS or not isinstance(ident, str) or not isinstance(owner, str):
            return None
        if not ident or len(ident) > _MAX_FIELD or len(owner) > _MAX_FIELD:
            return None
        return cls(kind=kind, id=ident, owner=owner)


ChangeHandler = Callable[[Change | None], Awaitable[None]]
"""Called with each change heard, and with None when changes may have been missed (the
feed (re)connected): the handler must then forget everything it caches."""


class _Heard:
    """A queue of what a connection heard, with a way to say it broke."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[str | BaseException] = asyncio.Queue(maxsize=10_000)
        self.overflowed = False

    def put(self, item: str | BaseException) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            # A handler that cannot keep up must not grow memory without bound; it
            # forgets everything instead (the resync below), which is always correct.
            self.overflowed = True


class Listener:
    """A background task that keeps one listening connection up and says whether it is.

    Subclasses implement :meth:`_listen_once`: connect, call the handler with None once
    listening (whatever was missed is dropped by that resync), set :attr:`_healthy`,
    :attr:`_was_up` and :attr:`_connected`, and return or raise when the connection is lost.
    Here: the reconnect loop with its backoff, start, close and health.
    """

    _what = "Change listener"
    """How log lines name this listener."""

    def __init__(self, handler: ChangeHandler, *, heartbeat: float, timeout: float) -> None:
        self._handler = handler
        self._heartbeat = heartbeat
        self._timeout = timeout
        self._task: asyncio.Task[None] | None = None
        self._healthy = False
        self._was_up = False  # healthy at some point of the current connection
        self._connected = asyncio.Event()

    @property
    def healthy(self) -> bool:
        """Whether every committed change is being heard now."""
        return self._healthy

    async def start(self, *, wait: float | None = None) -> None:
        """Start listening in the background; with ``wait``, for at most that long until
        the first connection is up (a store or Redis that is down does not stop the service)."""
        if self._task is None:
            name = f"datasources-{type(self).__name__}"
            self._task = asyncio.create_task(self._run(), name=name)
        if wait:
            try:
                await asyncio.wait_for(self._connected.wait(), wait)
            except TimeoutError:
                logger.warning("%s: not connected yet; retrying in the background.", self._what)

    async def close(self) -> None:
        """Stop listening."""
        task, self._task = self._task, None
        self._healthy = False
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._was_up:
                    logger.warning(
                        "%s lost its connection (%s); caches are bypassed until it is back.",
                        self._what,
                        type(exc).__name__,
                    )
                # Back off while the other end stays away; retry at once after a healthy spell.
                backoff = 0.1 if self._was_up else min(backoff * 2, 2.0)
            finally:
                self._healthy = self._was_up = False
            await asyncio.sleep(backoff)

    async def _listen_once(self) -> None:
        raise NotImplementedError


class PostgresChangeListener(Listener):
    """``LISTEN`` on the store's database and pass each change to ``handler``.

    Args:
        dsn: A libpq URL of the store's database (asyncpg's form).
        handler: Called for each change, and with None after every (re)connection.
        heartbeat: Seconds between checks that the connection still answers.
        timeout: Seconds a connection attempt or a heartbeat may take.
    """

    _what = "Change listener (store)"

    def __init__(
        self,
        dsn: str,
        handler: ChangeHandler,
        *,
        heartbeat: float = 0.5,
        timeout: float = 2.0,
    ) -> None:
        super().__init__(handler, heartbeat=heartbeat, timeout=timeout)
        self._dsn = dsn

    def __repr__(self) -> str:
        return f"PostgresChangeListener(healthy={self._healthy})"

    async def _listen_once(self) -> None:
        import asyncpg

        heard = _Heard()

        def on_notify(_conn: Any, _pid: int, _channel: str, payload: str) -> None:
            heard.put(payload)

        def on_terminate(_conn: Any) -> None:
            heard.put(ConnectionError("the listening connection closed"))

        conn = await asyncpg.connect(self._dsn, timeout=self._timeout)
        try:
            conn.add_termination_listener(on_terminate)
            await conn.add_listener(CHANNEL, on_notify)
            # Listening from here on: whatever was missed before is dropped by the resync.
            await self._handler(None)
            self._healthy = self._was_up = True
            self._connected.set()
            logger.info("Change listener: listening on the store.")
            loop = asyncio.get_running_loop()
            next_beat = loop.time() + self._heartbeat
            while True:
                try:
                    item = await asyncio.wait_for(
                        heard.queue.get(), max(next_beat - loop.time(), 0)
                    )
                except TimeoutError:
                    await conn.fetchval("SELECT 1", timeout=self._timeout)
                    next_beat = loop.time() + self._heartbeat
                    continue
                if isinstance(item, BaseException):
                    raise item
                if heard.overflowed:
                    heard.overflowed = False
                    await self._handler(None)
                    continue
                change = Change.from_json(item)
                if change is not None:
                    await self._handler(change)
        finally:
            self._healthy = False
            try:
                await asyncio.wait_for(conn.close(), self._timeout)
            except Exception:
                conn.terminate()


class ChangeAnnouncer:
    """The store's side: announce committed changes (mixed into :class:`Store`)."""

    _url: str
    _observers: list[Callable[[Change], Awaitable[None]]]

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return make_url(self._url).get_backend_name()

    def observe(self, observer: Callable[[Change], Awaitable[None]]) -> None:
        """Call ``observer`` after each committed change this process makes to a source or
        an API key (it must not raise; errors are logged). For stores without their own
        notifications: PostgreSQL tells every listener itself, see :meth:`change_listener`.
        """
        self._observers.append(observer)

    def change_listener(
        self, handler: ChangeHandler, *, heartbeat: float = 0.5, timeout: float = 2.0
    ) -> PostgresChangeListener | None:
        """A listener for every process's changes to this store; None unless PostgreSQL."""
        if self.dialect != "postgresql":
            return None
        dsn = make_url(self._url).set(drivername="postgresql")
        return PostgresChangeListener(
            dsn.render_as_string(hide_password=False),
            handler,
            heartbeat=heartbeat,
            timeout=timeout,
        )

    async def _announce(self, session: Any, change: Change) -> None:
        """Inside the writing transaction: PostgreSQL delivers it on commit, or never."""
        if self.dialect == "postgresql":
            await session.execute(
                text("SELECT pg_notify(:channel, :payload)"),
                {"channel": CHANNEL, "payload": change.to_json()},
            )

    async def _told(self, change: Change) -> None:
        """After the commit: this process's observers."""
        for observer in self._observers:
            try:
                await observer(change)
            except Exception as exc:
                logger.warning("Announcing a change failed: %s", type(exc).__name__)
