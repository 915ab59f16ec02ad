"""The connector's sessions: one asyncpg pool per source, read-only transactions.

Every borrow is a ``BEGIN TRANSACTION READ ONLY`` with the statement's limits (layer
4), on connections opened with ``default_transaction_read_only=on`` whose role was
checked when they opened (layer 5); it always ends in a rollback that undoes whatever
could outlive a transaction. A connection that turns out dead takes the pool's other
connections with it (a restart or a failover ends them together), the BEGIN is sent
again on a new one, and every wait on the server has a client deadline.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import asyncpg

from datasources.connectors.base import BaseConnector, DriverStats
from datasources.connectors.postgresql.config import (
    PinnedNameContext,
    PostgreSQLConfig,
    ca_context,
)
from datasources.connectors.postgresql.decoders import install as install_decoders
from datasources.connectors.postgresql.errors import (
    DROPPED_CONNECTION,
    PrivilegedRole,
    dropped,
    translate,
)
from datasources.errors import TimeoutError, UnavailableError
from datasources.query_models import SchemaInfo
from datasources.sql_guard import Catalog

__all__ = ["ROLE_SQL", "PgSession", "deadline", "privileges"]

logger = logging.getLogger("datasources.connectors.postgresql")


def deadline(seconds: float) -> float:
    """How long the client waits for a statement the server itself stops after ``seconds``.

    The server's ``statement_timeout`` normally ends a slow statement and says so; this is
    the backstop for a server or a network that has stopped answering altogether.
    """
    return seconds + min(max(seconds, 1.0), 5.0)


class _Connection(asyncpg.Connection):  # type: ignore[misc]
    """asyncpg's connection, knowing when it was opened (for the pool's ``max_lifetime``)."""

    __slots__ = ("opened_at",)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened_at = time.monotonic()


_CANCEL_ATTEMPTS = 40  # quarter seconds: ten seconds for a cancelled statement to stop


_END_SQL = "ROLLBACK; SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL"


async def _session_already_reset(conn: Any) -> None:
    """The pool's reset hook: nothing to do, :meth:`PostgreSQLConnector._end` did it."""


# Roles and functions that reach past the database: server files, programs, signals.
_PRIVILEGED_ROLES = (
    "pg_read_server_files",
    "pg_write_server_files",
    "pg_execute_server_program",
    "pg_signal_backend",
)


# Superuser-only by default; a direct GRANT EXECUTE on one is the same power as the role.
_PRIVILEGED_FUNCTIONS = (
    "pg_read_file(text)",
    "pg_read_binary_file(text)",
    "pg_ls_dir(text)",
    "pg_stat_file(text)",
    "lo_import(text)",
    "lo_export(oid, text)",
    "pg_reload_conf()",
    "pg_rotate_logfile()",
    "pg_stat_reset()",
    "pg_promote(boolean, integer)",
)


ROLE_SQL = f"""
SELECT r.rolname, r.rolsuper,
       ARRAY(SELECT g FROM unnest(ARRAY{list(_PRIVILEGED_ROLES)!r}::text[]) g
             WHERE pg_has_role(current_user, g, 'MEMBER')) AS roles,
       ARRAY(SELECT f FROM unnest(ARRAY{list(_PRIVILEGED_FUNCTIONS)!r}::text[]) f
             WHERE has_function_privilege(current_user, ('pg_catalog.' || f)::regprocedure,
                                          'EXECUTE')) AS functions
FROM pg_roles r WHERE r.rolname = current_user
"""


def privileges(role: Mapping[str, Any]) -> list[str]:
    """Why a role (a row of ``ROLE_SQL``) is privileged; empty when it is not."""
    if role["rolsuper"]:
        return ["is a superuser"]
    reasons = [f"is a member of {name}" for name in role["roles"]]
    if role["functions"]:
        reasons.append(f"may execute {', '.join(role['functions'])}")
    return reasons


class PgSession(BaseConnector[PostgreSQLConfig]):
    """Sessions of one PostgreSQL source: its pool, transactions, error translation."""

    parser_check: bool = True
    """Layer 1, the statement. Tests switch layers off to prove each holds alone."""
    catalog_check: bool = True
    """Layer 2, functions and schemas by the server's catalog."""
    transaction_check: bool = True
    """Layer 4, the read-only transaction and session default."""
    privilege_check: bool = True
    """Layer 5, refusing privileged roles (unless ``allow_privileged_role``)."""

    def __init__(
        self,
        config: PostgreSQLConfig | dict[str, Any],
        *,
        allow_privileged_role: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(config, **kwargs)
        if allow_privileged_role:
            self.allow_privileged_role = True
        self._pool: Any = None
        self._schema_cache: dict[tuple[str, ...] | None, SchemaInfo] = {}
        self._catalog: Catalog | None = None
        self._catalog_at = 0.0
        self._catalog_lock = asyncio.Lock()
        self._releasing: set[asyncio.Task[None]] = set()
        self._max_connections = 0

    async def connect(self) -> None:
        if self._connected:
            return

        params = self.config.connection_params()
        max_size = min(self.config.pool_max_size, self.limits.max_connections)
        name = host = params["host"]
        if self.outbound is not None:
            # Connect to the address that was checked, never to a second DNS answer; a
            # verify-full certificate check still uses the name (PinnedNameContext).
            addresses = await self.outbound.resolve(host, int(params.get("port", "5432")))
            host = addresses[0]
        kwargs: dict[str, Any] = {
            "host": host,
            "port": int(params.get("port", "5432")),
            "user": params["user"],
            "database": params["dbname"],
            "password": params.get("password"),
            "timeout": float(params.get("connect_timeout", self.config.connect_timeout)),
            "server_settings": {
                "default_transaction_read_only": "on" if self.transaction_check else "off",
                "application_name": params.get("application_name", self.config.application_name),
            },
            # One pool per source per process: the operator's ceiling, which the source's
            # own pool_max_size may lower but never raise.
            "min_size": min(max(self.config.pool_min_size, self.limits.min_connections), max_size),
            "max_size": max_size,
            "max_inactive_connection_lifetime": self.limits.idle_timeout,
            "connection_class": _Connection,
            # _end() rolls back and resets the session in one round trip; asyncpg's own
            # reset would add a second one on every release.
            "reset": _session_already_reset,
            "init": self._init_connection,
        }
        if params.get("sslmode"):
            kwargs["ssl"] = self._ssl(params["sslmode"], params.get("sslrootcert"))
            if isinstance(kwargs["ssl"], PinnedNameContext) and params["sslmode"] == "verify-full":
                kwargs["ssl"].pinned_name = name
        if self.config.pgbouncer:
            kwargs["statement_cache_size"] = 0
        with self._errors("connecting"):
            self._pool = await asyncpg.create_pool(**kwargs)
        self._max_connections = max_size
        self._connected = True

    async def _init_connection(self, conn: Any) -> None:
        """Every new server connection: the privilege layer, before anything else runs.

        It also installs the decoders that return dates, times and intervals Python
        cannot hold as PostgreSQL's text (:mod:`datasources.connectors.pg_values`).
        """
        await install_decoders(conn)
        if not self.privilege_check or self.allow_privileged_role:
            return
        role = await conn.fetchrow(ROLE_SQL)
        reasons = privileges(role)
        if reasons:
            raise PrivilegedRole(
                f"The role {role['rolname']!r} of source {self.source_id!r} "
                f"{'; '.join(reasons)}: use a least-privilege role (the operator can allow "
                "privileged roles with DATASOURCES_ALLOW_PRIVILEGED_DATABASE_ROLES=true)."
            )

    @staticmethod
    def _ssl(mode: str, rootcert: str | None) -> Any:
        if mode in ("verify-ca", "verify-full"):
            context = ca_context(rootcert)
            context.check_hostname = mode == "verify-full"
            return context
        return mode

    async def disconnect(self) -> None:
        self._connected = False
        if self._releasing:
            await asyncio.gather(*self._releasing, return_exceptions=True)
        pool = self._pool
        if pool is not None:
            # Graceful: busy connections are waited for (their users hand them back to
            # this pool, which must still be reachable), then closed; 10 s at most.
            try:
                await asyncio.wait_for(pool.close(), 10)
            except (builtins.TimeoutError, OSError):
                pool.terminate()
            finally:
                self._pool = None

    async def ping(self) -> bool:
        if not self._connected or self._pool is None:
            return False
        try:
            async with self._transaction(5.0) as conn, asyncio.timeout(deadline(5.0)):
                await conn.fetchval("SELECT 1")
            return True
        except Exception:
            return False

    def driver_stats(self) -> DriverStats | None:
        pool = self._pool
        if pool is None:
            return None
        return DriverStats(
            connections=pool.get_size(),
            idle=pool.get_idle_size(),
            max_connections=self._max_connections,
        )

    async def _discard_all(self) -> None:
        """Replace every connection of the pool: idle ones at their next borrow, busy ones
        when they come back. They died together (a restart, a failover)."""
        pool = self._pool
        if pool is not None:
            await pool.expire_connections()

    async def _checkout(self, seconds: float, *, snapshot: bool = False, extra: str = "") -> Any:
        """A connection in a new read-only transaction with its limits set.

        The BEGIN is the connection's health check: a connection found dead there is
        discarded with every other one of the pool, and the BEGIN is sent once more on a
        new connection (nothing has run yet, so any statement may be retried).
        """
        pool = self._require_pool()
        for attempt in (1, 2):
            try:
                conn = await pool.acquire(timeout=self.limits.acquire_timeout)
            except builtins.TimeoutError:
                raise TimeoutError(
                    f"No connection of source {self.source_id!r} became free within "
                    f"{self.limits.acquire_timeout:g} s (all {self._max_connections} busy).",
                    details={"max_connections": self._max_connections},
                ) from None
            except DROPPED_CONNECTION:
                await self._discard_all()
                if attempt == 2:
                    raise
                continue
            try:
                async with asyncio.timeout(deadline(self.config.connect_timeout)):
                    await self._begin(conn, seconds, snapshot=snapshot, extra=extra)
                return conn
            except BaseException as exc:
                await self._checkin(conn, broken=True)
                if not dropped(exc, conn) or attempt == 2:
                    if isinstance(exc, builtins.TimeoutError):
                        raise self._no_answer("transaction", self.config.connect_timeout) from None
                    raise
                await self._discard_all()
                logger.info(
                    "PostgreSQL connection of %r was dead (%s); discarding the pool's "
                    "connections and trying a new one.",
                    self.source_id,
                    type(exc).__name__,
                )
        raise AssertionError("unreachable")

    async def _checkin(self, conn: Any, *, broken: bool = False) -> None:
        """Hand a connection back: a broken or expired one is closed instead of lent again."""
        pool = self._require_pool()
        try:
            if broken or conn.is_closed():
                conn.terminate()
            elif time.monotonic() - conn.opened_at >= self.limits.max_lifetime:
                await conn.close(timeout=2)
        except asyncpg.InterfaceError:
            pass  # it closed under us, and the driver has taken it back already
        except Exception:
            with contextlib.suppress(asyncpg.InterfaceError):
                conn.terminate()
        await pool.release(conn)

    @contextlib.asynccontextmanager
    async def _transaction(
        self, seconds: float, *, snapshot: bool = False, extra: str = ""
    ) -> AsyncIterator[Any]:
        """Borrow a connection inside a read-only transaction; always rolled back.

        The block should bound its own waiting with ``asyncio.timeout(deadline(…))``:
        on that timeout, or when the connection turns out dead, the connection is closed
        rather than lent again (and a dead one takes the pool's others with it).
        """
        conn = await self._checkout(seconds, snapshot=snapshot, extra=extra)
        try:
            yield conn
        except BaseException as exc:
            await self._after_failure(conn, exc, "statement", seconds)
            raise
        await self._end(conn)
        await self._checkin(conn)

    async def _after_failure(
        self, conn: Any, exc: BaseException, what: str, seconds: float
    ) -> None:
        """Give back a connection whose work failed; a timeout becomes our error.

        A dead connection (or one that timed out, which may still be busy on the server)
        is closed, never lent again, and a dead one takes the pool's others with it.
        """
        dead = dropped(exc, conn)
        if dead or isinstance(exc, builtins.TimeoutError):
            await self._checkin(conn, broken=True)
            if dead:
                await self._discard_all()
        else:
            await self._end(conn)
            await self._checkin(conn)
        if isinstance(exc, builtins.TimeoutError):
            raise self._no_answer(what, seconds) from None

    def _no_answer(self, what: str, seconds: float) -> TimeoutError:
        return TimeoutError(
            f"PostgreSQL did not answer the {what} of source {self.source_id!r} within "
            f"{deadline(seconds):g} s; the connection was closed.",
            details={"seconds": deadline(seconds)},
        )

    async def _read(self, what: str, seconds: float, work: Any, *, snapshot: bool = False) -> Any:
        """Run ``work(conn)`` in a read-only transaction, once more if the connection drops.

        Everything here reads, so running it again on a new connection is safe.
        """
        with self._errors(what):
            for attempt in (1, 2):
                try:
                    async with self._transaction(seconds, snapshot=snapshot) as conn:
                        async with asyncio.timeout(deadline(seconds)):
                            return await work(conn)
                except DROPPED_CONNECTION as exc:
                    if attempt == 2:
                        raise
                    logger.info(
                        "PostgreSQL connection lost during the %s (%s); retrying once.",
                        what,
                        type(exc).__name__,
                    )
        raise AssertionError("unreachable")

    def _errors(self, what: str) -> AbstractContextManager[None]:
        """Translate asyncpg and network errors to the error tree (:mod:`.errors`)."""
        return translate(what, self.source_id)

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise UnavailableError(f"Source {self.source_id!r} is not connected.")
        return self._pool

    async def _begin(
        self, conn: Any, seconds: float, *, snapshot: bool = False, extra: str = ""
    ) -> None:
        """Open the read-only transaction and set its limits, in one round trip."""
        ms = max(int(seconds * 1000), 1)
        isolation = "ISOLATION LEVEL REPEATABLE READ" if snapshot else ""
        mode = "READ ONLY" if self.transaction_check else "READ WRITE"
        modes = ", ".join(m for m in (isolation, mode) if m)
        # Our own constant text: the user's SQL only ever goes through prepare().
        await conn.execute(
            f"BEGIN TRANSACTION {modes}; "
            f"SET LOCAL statement_timeout = {ms}; "
            f"SET LOCAL idle_in_transaction_session_timeout = {ms + 5000}"
            + (f"; {extra}" if extra else "")
        )

    @staticmethod
    async def _end(conn: Any) -> None:
        """Always roll back, and undo what could outlive a transaction, in one round trip.

        Session advisory locks, WITH HOLD cursors, LISTEN and session settings are what a
        statement could leave behind with the parser switched off; ``RESET ALL`` returns
        settings to the connection's start-up values (``default_transaction_read_only=on``).

        When the caller was cancelled mid-statement, asyncpg sends one cancel request; one
        that reaches the server between protocol messages is dropped, and the statement
        would then run on until its timeout. So while the rollback waits, a cancel request
        is sent again every quarter second; a connection that still does not answer is
        terminated.
        """
        end = asyncio.ensure_future(conn.execute(_END_SQL))
        try:
            for _ in range(_CANCEL_ATTEMPTS):
                done, _pending = await asyncio.wait({end}, timeout=0.25)
                if done:
                    end.result()
                    return
                cancel = getattr(conn, "_cancel_current_command", None)
                if cancel is not None:
                    cancel(asyncio.get_running_loop().create_future())
            end.cancel()
            conn.terminate()
        except Exception:
            # The connection broke: make sure it is not lent again.
            await conn.close(timeout=2)

    async def _end_and_release(self, conn: Any) -> None:
        # The statement has finished: the rollback needs no cancel requests behind it.
        broken = False
        try:
            async with asyncio.timeout(deadline(self.config.connect_timeout)):
                await conn.execute(_END_SQL)
        except Exception:
            broken = True
        await self._checkin(conn, broken=broken)
