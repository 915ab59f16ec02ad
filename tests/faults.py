"""A loopback TCP proxy that breaks connections on demand: the fault harness of the tests.

Put it in front of PostgreSQL or Azurite and point a source at ``proxy.host:proxy.port``;
then, while a query, an export or a download is running, ask it to

- ``reset()`` every open connection (an RST, as a crashed peer or a middlebox sends),
- ``cut()`` them (a clean close, as a restarted server does),
- ``stall()`` traffic (bytes stop flowing both ways; the sockets stay open),
- ``throttle(bytes_per_second)`` it, or
- ``refuse()`` new connections (nothing listens, as while a server restarts),
- ``lose_state()`` of every open connection (as a NAT, a load balancer or a failover
  does: the server's side is closed, the client hears nothing until it sends, and is then
  answered with a reset — the dead connections a pool only finds out about by using them),

and ``heal()`` to go back to passing everything through. Counters say how much went
each way so that a test can wait until a transfer is under way instead of sleeping.
Everything runs on the test's event loop, on 127.0.0.1 only; no privileges needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Self

__all__ = ["FaultProxy"]

_CHUNK = 64 * 1024


class FaultProxy:
    """A TCP proxy from an ephemeral loopback port to ``target_host:target_port``."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.host = "127.0.0.1"
        self.port = 0
        self.bytes_up = 0
        """Bytes sent from clients to the server so far."""
        self.bytes_down = 0
        """Bytes sent from the server to clients so far."""
        self.accepted = 0
        self._server: asyncio.Server | None = None
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._lost: set[asyncio.StreamWriter] = set()
        """Client ends whose server end is gone without the client being told."""
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._refusing = False
        self._rate: float | None = None
        self._progress = asyncio.Condition()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, self.host, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._pairs)

    # -- faults --------------------------------------------------------------------------

    def reset(self) -> None:
        """Abort every open connection with an RST to both sides."""
        self._break(rst=True)

    def cut(self) -> None:
        """Close every open connection cleanly (FIN to both sides)."""
        self._break(rst=False)

    def _break(self, *, rst: bool) -> None:
        for client, server in list(self._pairs):
            for writer in (client, server):
                _abort(writer, rst=rst)
        self._pairs.clear()
        for client in list(self._lost):
            _abort(client, rst=rst)

    def stall(self) -> None:
        """Stop moving bytes in both directions; connections stay open."""
        self._flowing.clear()

    def throttle(self, bytes_per_second: float) -> None:
        """Move at most about ``bytes_per_second`` per direction and connection."""
        self._rate = bytes_per_second

    def lose_state(self) -> None:
        """Drop every open connection's server side silently (see the module docstring)."""
        for client, server in list(self._pairs):
            self._lost.add(client)
            _abort(server, rst=False)
        self._pairs.clear()

    def refuse(self) -> None:
        """Close new connections at once, as if nothing listened."""
        self._refusing = True

    def heal(self) -> None:
        """Pass everything through again (open connections broken earlier stay broken)."""
        self._refusing = False
        self._rate = None
        self._flowing.set()

    async def wait_for_bytes(self, *, down: int = 0, up: int = 0, timeout: float = 30) -> None:
        """Return once at least ``down``/``up`` bytes have passed (a transfer is under way)."""
        async with asyncio.timeout(timeout), self._progress:
            await self._progress.wait_for(lambda: self.bytes_down >= down and self.bytes_up >= up)

    # -- plumbing ------------------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        if self._refusing:
            _abort(writer, rst=True)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _abort(writer, rst=True)
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, upstream=True, client=writer),
                self._pipe(up_reader, writer, upstream=False, client=writer),
            )
        finally:
            self._pairs.discard(pair)
            self._lost.discard(writer)
            for end in pair:
                _abort(end, rst=False)

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        upstream: bool,
        client: asyncio.StreamWriter,
    ) -> None:
        try:
            while True:
                data = await reader.read(_CHUNK)
                if client in self._lost:
                    if upstream:
                        # The client spoke on (or closed) a forgotten connection.
                        _abort(client, rst=bool(data))
                    else:
                        # The server's side was dropped: tell the client nothing, and wait
                        # for it to speak (the other pipe answers with a reset then).
                        with contextlib.suppress(Exception):
                            await client.wait_closed()
                    return
                if not data:
                    break
                await self._flowing.wait()
                if self._rate is not None:
                    await asyncio.sleep(len(data) / self._rate)
                writer.write(data)
                await writer.drain()
                async with self._progress:
                    if upstream:
                        self.bytes_up += len(data)
                    else:
                        self.bytes_down += len(data)
                    self._progress.notify_all()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        finally:
            if client not in self._lost:
                with contextlib.suppress(Exception):
                    if writer.can_write_eof():
                        writer.write_eof()


def _abort(writer: asyncio.StreamWriter, *, rst: bool) -> None:
    """Close ``writer``'s socket; with ``rst``, so that the peer sees a reset, not a FIN."""
    transport = writer.transport
    sock = transport.get_extra_info("socket")
    if rst and sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    if rst:
        transport.abort()
    else:
        transport.close()
