"""PostgreSQL: read-only in depth.

Every query passes independent layers, each tested alone with the others switched off:

1. the statement, read by PostgreSQL's own parser (:func:`datasources.sql_guard.analyse`,
   ``parser_check``): one plain read, nothing that writes or locks;
2. the catalog (:class:`datasources.sql_guard.Catalog`, ``catalog_check``): every
   function, operator and cast by allow-list from this server's ``pg_proc``, and every
   relation inside the source's ``schemas``; the facts are loaded once per connector;
3. the extended protocol (a prepared statement), so a second statement never rides along;
4. a ``BEGIN TRANSACTION READ ONLY`` with ``SET LOCAL statement_timeout`` and
   ``idle_in_transaction_session_timeout``, on connections opened with
   ``default_transaction_read_only=on``; the transaction is always rolled back
   (``transaction_check``);
5. the role (``privilege_check``): every new server connection is refused when its role is
   a superuser, can read or write server files, run programs or signal other sessions
   (or holds such functions by grant), unless the operator opts in
   (``allow_privileged_role``, from ``DATASOURCES_ALLOW_PRIVILEGED_DATABASE_ROLES``);
   ``test_connection`` reports it and warns when the role can write tables.

Only an allow-list of connection parameters is accepted: ``passfile``, ``service``,
``options``, ``sslkeylogfile`` and anything else that reads local files or changes
session settings is refused.
"""

from __future__ import annotations

import asyncio
import base64
import builtins
import contextlib
import datetime as dt
import decimal
import functools
import hashlib
import ipaddress
import logging
import re
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import asyncpg
import pyarrow as pa
from pydantic import Field, SecretStr, model_validator

from datasources.connectors import pg_values
from datasources.connectors.base import (
    BaseConnector,
    ConnectorConfig,
    DriverStats,
    ItemStream,
    ProgressCallback,
    listing_query,
)
from datasources.connectors.pg_arrow import (
    EXPORT_SETTINGS,
    ChunkPipe,
    ColumnPlan,
    ReaderGone,
    copy_select,
    csv_to_parquet,
    plan_columns,
)
from datasources.errors import (
    AuthenticationError,
    ConfigurationError,
    DataSourceError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)
from datasources.models import ConnectionStatus, DataItem, DataSourceType, ItemKind
from datasources.netpolicy import OutboundPolicy
from datasources.query_models import (
    ColumnInfo,
    ColumnProfile,
    ConstraintInfo,
    IndexInfo,
    QueryColumn,
    QueryResult,
    SchemaInfo,
    TableInfo,
    TableProfile,
    ValueCount,
)
from datasources.sql_guard import (
    CASTS_SQL,
    CATALOG_SQL,
    OPERATORS_SQL,
    RELATIONS_SQL,
    SEARCH_PATH_SQL,
    TYPES_SQL,
    Catalog,
    ReadOnlyViolation,
    Statement,
    analyse,
    parameter_spans,
)
from datasources.workspace import AsyncAtomicWriter, Workspace

__all__ = ["PostgreSQLConfig", "PostgreSQLConnector", "QueryColumn", "QueryResult", "parse_dsn"]

logger = logging.getLogger(__name__)

_PREFIX = "Invalid postgresql configuration"
# Connection parameters a DSN may carry; everything else is refused by name.
_ALLOWED_DSN_PARAMS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "sslmode",
        "sslrootcert",
        "connect_timeout",
        "application_name",
    }
)
_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _config_error(field: str, problem: str) -> ConfigurationError:
    return ConfigurationError.from_fields([(field, problem)], prefix=_PREFIX)


_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"
_MAX_ROOTCERT_CHARS = 256 * 1024


class _PinnedNameContext(ssl.SSLContext):
    """A TLS context that checks the certificate against one fixed host name.

    The connection goes to an address the outbound policy checked (so DNS cannot be asked
    twice and answer differently the second time), while ``verify-full`` still needs the
    server's *name* for the certificate check: every handshake uses that name, whatever
    address the socket was opened to.
    """

    pinned_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = self.pinned_name if self.pinned_name is not None else server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


def _ca_context(rootcert: str | None) -> ssl.SSLContext:
    """The TLS context that trusts ``rootcert``: PEM text, ``system``, or none (system).

    A source's config comes from API users, so ``sslrootcert`` is never a path: reading
    a server file on their behalf would tell them which files exist and what they hold.
    The certificate itself is given as PEM text.
    """
    context = _PinnedNameContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks names
    if rootcert is None or rootcert == "system":
        context.load_default_certs()
        return context
    if len(rootcert) > _MAX_ROOTCERT_CHARS or _PEM_CERTIFICATE not in rootcert:
        raise _config_error(
            "sslrootcert",
            "must be the CA certificate itself as PEM text (-----BEGIN CERTIFICATE-----…) "
            "or 'system'; file paths are not read",
        )
    try:
        context.load_verify_locations(cadata=rootcert)
    except (ssl.SSLError, ValueError):
        raise _config_error("sslrootcert", "is not a valid PEM certificate") from None
    return context


def parse_dsn(dsn: str) -> dict[str, str]:
    """A ``postgresql://`` URL or ``key=value`` string → allowed parameters (others refused)."""
    params: dict[str, str] = {}
    text = dsn.strip()
    if text.startswith(("postgresql://", "postgres://")):
        split = urlsplit(text)
        if split.username:
            params["user"] = unquote(split.username)
        if split.password:
            params["password"] = unquote(split.password)
        if split.hostname:
            params["host"] = split.hostname
        try:
            port = split.port
        except ValueError:
            raise _config_error("dsn", "has an invalid port") from None
        if port:
            params["port"] = str(port)
        if split.path.strip("/"):
            params["dbname"] = unquote(split.path.strip("/"))
        pairs = parse_qsl(split.query, keep_blank_values=True)
    else:
        pairs = []
        for match in re.finditer(r"(\w+)\s*=\s*('(?:\\.|[^'\\])*'|\S+)", text):
            value = match.group(2)
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            pairs.append((match.group(1), value))
        if not pairs:
            raise _config_error("dsn", "is neither a postgresql:// URL nor key=value pairs")
    refused = sorted({key for key, _ in pairs if key not in _ALLOWED_DSN_PARAMS})
    if refused:
        raise _config_error(
            "dsn",
            f"parameter(s) {', '.join(refused)} are not allowed (they read local files "
            "or change session settings)",
        )
    params.update(pairs)
    return params


class PostgreSQLConfig(ConnectorConfig):
    """Config of a ``postgresql`` source: discrete keys or a ``dsn``."""

    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    database: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    dsn: SecretStr | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    sslrootcert: str | None = Field(
        default=None,
        description="The CA certificate as PEM text, or 'system'; never a file path.",
    )
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    application_name: str = Field(default="datasources", max_length=63)
    statement_timeout: float = Field(default=30.0, gt=0, le=86400)
    max_rows: int = Field(default=10_000, ge=1, le=10_000_000)
    schemas: list[str] | None = Field(default=None, description="Allow-list of schemas.")
    pgbouncer: bool = Field(default=False, description="No server-side prepared statement cache.")
    pool_min_size: int = Field(default=0, ge=0, le=100)
    pool_max_size: int = Field(default=5, ge=1, le=100)

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> PostgreSQLConfig:
        discrete = [k for k in ("host", "database", "user", "password") if getattr(self, k)]
        if self.dsn is not None and discrete:
            raise ValueError(f"give either dsn or {', '.join(discrete)}, not both")
        if self.dsn is None and not (self.host and self.database and self.user):
            raise ValueError("host, database and user are required (or a dsn)")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        if any(c in self.application_name for c in "\x00'\\"):
            raise ValueError("application_name has characters that are not allowed")
        return self

    def connection_params(self) -> dict[str, str]:
        """The allowed connection parameters, from the DSN or the discrete keys."""
        if self.dsn is not None:
            params = parse_dsn(self.dsn.get_secret_value())
        else:
            params = {
                "host": self.host or "",
                "port": str(self.port),
                "dbname": self.database or "",
                "user": self.user or "",
            }
            if self.password is not None:
                params["password"] = self.password.get_secret_value()
        if self.sslmode:
            params["sslmode"] = self.sslmode
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        if params.get("sslmode") and params["sslmode"] not in _SSLMODES:
            raise _config_error("sslmode", "is not a libpq sslmode")
        if "sslrootcert" in params:
            _ca_context(params["sslrootcert"])  # PEM text or 'system', never a path
        for needed in ("host", "dbname", "user"):
            if not params.get(needed):
                raise _config_error("dsn", f"does not name a {needed}")
        return params


_ORDERABLE = {
    "int2",
    "int4",
    "int8",
    "float4",
    "float8",
    "numeric",
    "money",
    "text",
    "varchar",
    "bpchar",
    "name",
    "date",
    "time",
    "timetz",
    "timestamp",
    "timestamptz",
    "interval",
    "uuid",
    "citext",
}
_TOP_VALUES = 5
_LOW_CARDINALITY = 20
_VALUE_CHARS = 100


def _short(value: Any) -> Any:
    """JSON-safe and short: long text is cut so a profile never carries bulk data."""
    value = _jsonable(value)
    if isinstance(value, str) and len(value) > _VALUE_CHARS:
        return value[: _VALUE_CHARS - 1] + "…"
    return value


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_RELKIND_NAMES = {
    "r": "table",
    "p": "partitioned_table",
    "v": "view",
    "m": "materialized_view",
    "f": "foreign_table",
}


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return (
            value if value == value and value not in (float("inf"), float("-inf")) else str(value)
        )
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, dt.datetime | dt.date | dt.time):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, uuid.UUID | ipaddress.IPv4Address | ipaddress.IPv6Address):
        return str(value)
    if isinstance(value, ipaddress.IPv4Network | ipaddress.IPv6Network):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


# What a server restart, a failover or a dropped connection looks like to the client. A
# connection that fails like this is gone, and most likely so is every other one the pool
# holds: they are discarded together (asyncpg's expire_connections), not one per query.
_DROPPED_CONNECTION: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection does not exist, failed…
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: the server is starting up
    ConnectionError,  # reset, refused, aborted, broken pipe
)


def _dropped(exc: BaseException, conn: Any = None) -> bool:
    """Whether ``exc`` means the connection (and likely its pool's others) is gone."""
    if isinstance(exc, _DROPPED_CONNECTION):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and conn is not None:
        try:
            return bool(conn.is_closed())
        except asyncpg.InterfaceError:  # a proxy already handed back
            return True
    return False


def _deadline(seconds: float) -> float:
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


ExportFormat = Literal["parquet", "csv"]
_PIPE_CHUNK = 1 << 20


_INLINE_PARSE_CHARS = 4096
_CANCEL_ATTEMPTS = 40  # quarter seconds: ten seconds for a cancelled statement to stop
_END_SQL = "ROLLBACK; SELECT pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL"


async def _session_already_reset(conn: Any) -> None:
    """The pool's reset hook: nothing to do, :meth:`PostgreSQLConnector._end` did it."""


async def _describe(conn: Any, sql: str) -> list[tuple[str, int, str]]:
    """Parse ``sql`` on the server (layer 2) and name its result columns.

    asyncpg's statement cache makes a repeated statement free here; ``prepare()`` would
    parse it again every time (one more round trip). The cache is reached through
    ``_get_statement``, the call ``fetch`` and ``cursor`` themselves make.
    """
    get_statement = getattr(conn, "_get_statement", None)
    if get_statement is not None:
        state = await get_statement(sql, None)
        attributes = state._get_attributes()
    else:  # pragma: no cover - an asyncpg without the private call
        attributes = (await conn.prepare(sql)).get_attributes()
    return [(a.name, a.type.oid, a.type.name) for a in attributes]


def _declared_typmods(
    attributes: Sequence[tuple[str, int, str]], decimals: Mapping[str, tuple[int, int]]
) -> list[int]:
    """Type modifiers for the numeric columns the caller declared as ``(precision, scale)``."""
    names = {name for name, _, _ in attributes}
    unknown = sorted(set(decimals) - names)
    if unknown:
        raise InvalidInputError(f"decimals names columns the result does not have: {unknown}.")
    typmods = []
    for name, _, _ in attributes:
        if name not in decimals:
            typmods.append(-1)
            continue
        precision, scale = decimals[name]
        if not (1 <= precision <= 76 and 0 <= scale <= precision):
            raise InvalidInputError(
                f"decimals[{name!r}] must be (precision, scale) with 1 <= precision <= 76 "
                "and 0 <= scale <= precision."
            )
        typmods.append(((precision << 16) | scale) + 4)
    return typmods


async def _fetch_at_most(
    conn: Any, sql: str, params: Sequence[Any] | None, limit: int
) -> list[Any]:
    """Run the (cached) statement and read at most ``limit`` rows in one round trip.

    The row cap travels in the Execute message, so the server stops there; asyncpg's
    ``fetchrow`` uses the same call with a cap of one. A cursor would need one more round
    trip to close its portal, which the rollback closes anyway.
    """
    execute = getattr(conn, "_execute", None)
    if execute is not None:
        return list(await execute(sql, list(params or ()), limit, None))
    rows = []  # pragma: no cover - an asyncpg without the private call
    async for record in conn.cursor(sql, *(params or ()), prefetch=min(limit, 1000)):
        rows.append(record)
        if len(rows) == limit:
            break
    return rows


def _export_format(value: str) -> str:
    if value not in ("parquet", "csv"):
        raise InvalidInputError("format is 'parquet' or 'csv'.")
    return value


def _inline_parameters(sql: str, literals: Sequence[str]) -> str:
    """Put server-quoted literals in place of the ``$n`` tokens of ``sql``.

    The server's own scanner tells parameters from look-alikes inside strings, dollar
    quotes and comments, which a regular expression cannot.
    """
    spans = parameter_spans(sql)
    for _start, _end, number in spans:
        if not 1 <= number <= len(literals):
            raise InvalidInputError(f"No value for parameter ${number}.")
    for start, end, number in reversed(spans):
        sql = f"{sql[:start]}{literals[number - 1]}{sql[end:]}"
    return sql


class PrivilegedRole(PermissionDeniedError):
    """The source's role can do more than read; the operator has not allowed that."""

    code = "privileged_role"
    default_message = "The database role of this source is privileged."


_TABLE_KINDS = {
    "r": ItemKind.TABLE,
    "p": ItemKind.TABLE,
    "f": ItemKind.TABLE,
    "v": ItemKind.VIEW,
    "m": ItemKind.VIEW,
}


class PostgreSQLConnector(BaseConnector[PostgreSQLConfig]):
    """Read-only queries, table listings and CSV exports of one PostgreSQL database."""

    type: ClassVar[str] = DataSourceType.POSTGRESQL
    config_model = PostgreSQLConfig
    secret_fields = frozenset({"password", "dsn"})
    target_fields = frozenset({"host", "port", "database", "user"})
    parser_check: bool = True
    """Layer 1, the statement. Tests switch layers off to prove each holds alone."""
    catalog_check: bool = True
    """Layer 2, functions and schemas by the server's catalog."""
    transaction_check: bool = True
    """Layer 4, the read-only transaction and session default."""
    privilege_check: bool = True
    """Layer 5, refusing privileged roles (unless ``allow_privileged_role``)."""
    catalog_ttl: ClassVar[float] = 300.0
    """Seconds catalog facts are reused; an unknown name reloads them sooner."""

    schema_ttl: ClassVar[float] = 300.0
    """Seconds a schema inspection is reused before ``get_schema`` runs it again."""

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

    @classmethod
    async def check_config(cls, config: ConnectorConfig) -> None:
        assert isinstance(config, PostgreSQLConfig)
        config.connection_params()  # refuses disallowed DSN parameters, naming them

    @classmethod
    async def check_targets(cls, config: ConnectorConfig, policy: OutboundPolicy) -> None:
        assert isinstance(config, PostgreSQLConfig)
        params = config.connection_params()
        await policy.resolve(params["host"], int(params.get("port", "5432")))

    @classmethod
    async def check_access(
        cls,
        config: ConnectorConfig,
        *,
        outbound: OutboundPolicy | None = None,
        allow_privileged_role: bool = False,
    ) -> None:
        """Connect once and refuse a privileged role (:class:`PrivilegedRole`, 403).

        A server that cannot be reached now (or refuses the credentials) is not a reason
        to refuse the source: every connection it opens later checks again.
        """
        if allow_privileged_role:
            return
        assert isinstance(config, PostgreSQLConfig)
        probe = config.model_copy(
            update={
                "connect_timeout": min(config.connect_timeout, 5.0),
                "pool_min_size": 0,
                "pool_max_size": 1,
            }
        )
        connector = cls(probe, source_id="registration", outbound=outbound)
        try:
            async with (
                connector,
                connector._require_pool().acquire(timeout=probe.connect_timeout),
            ):
                pass  # the pool's init step has checked the role
        except PrivilegedRole:
            raise
        except (DataSourceError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            return

    # -- lifecycle -------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connected:
            return

        params = self.config.connection_params()
        max_size = min(self.config.pool_max_size, self.limits.max_connections)
        name = host = params["host"]
        if self.outbound is not None:
            # Connect to the address that was checked, never to a second DNS answer; a
            # verify-full certificate check still uses the name (_PinnedNameContext).
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
            if isinstance(kwargs["ssl"], _PinnedNameContext) and params["sslmode"] == "verify-full":
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
        await pg_values.install(conn)
        if not self.privilege_check or self.allow_privileged_role:
            return
        role = await conn.fetchrow(_ROLE_SQL)
        reasons = _privileges(role)
        if reasons:
            raise PrivilegedRole(
                f"The role {role['rolname']!r} of source {self.source_id!r} "
                f"{'; '.join(reasons)}: use a least-privilege role (the operator can allow "
                "privileged roles with DATASOURCES_ALLOW_PRIVILEGED_DATABASE_ROLES=true)."
            )

    @staticmethod
    def _ssl(mode: str, rootcert: str | None) -> Any:
        if mode in ("verify-ca", "verify-full"):
            context = _ca_context(rootcert)
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
            async with self._transaction(5.0) as conn, asyncio.timeout(_deadline(5.0)):
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

    # -- sessions --------------------------------------------------------------------

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
            except _DROPPED_CONNECTION:
                await self._discard_all()
                if attempt == 2:
                    raise
                continue
            try:
                async with asyncio.timeout(_deadline(self.config.connect_timeout)):
                    await self._begin(conn, seconds, snapshot=snapshot, extra=extra)
                return conn
            except BaseException as exc:
                await self._checkin(conn, broken=True)
                if not _dropped(exc, conn) or attempt == 2:
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

        The block should bound its own waiting with ``asyncio.timeout(_deadline(…))``:
        on that timeout, or when the connection turns out dead, the connection is closed
        rather than lent again (and a dead one takes the pool's others with it).
        """
        conn = await self._checkout(seconds, snapshot=snapshot, extra=extra)
        try:
            yield conn
        except BaseException as exc:
            dead = _dropped(exc, conn)
            if dead or isinstance(exc, builtins.TimeoutError):
                await self._checkin(conn, broken=True)
                if dead:
                    await self._discard_all()
            else:
                await self._end(conn)
                await self._checkin(conn)
            if isinstance(exc, builtins.TimeoutError):
                raise self._no_answer("statement", seconds) from None
            raise
        await self._end(conn)
        await self._checkin(conn)

    def _no_answer(self, what: str, seconds: float) -> TimeoutError:
        return TimeoutError(
            f"PostgreSQL did not answer the {what} of source {self.source_id!r} within "
            f"{_deadline(seconds):g} s; the connection was closed.",
            details={"seconds": _deadline(seconds)},
        )

    async def _read(self, what: str, seconds: float, work: Any, *, snapshot: bool = False) -> Any:
        """Run ``work(conn)`` in a read-only transaction, once more if the connection drops.

        Everything here reads, so running it again on a new connection is safe.
        """
        with self._errors(what):
            for attempt in (1, 2):
                try:
                    async with self._transaction(seconds, snapshot=snapshot) as conn:
                        async with asyncio.timeout(_deadline(seconds)):
                            return await work(conn)
                except _DROPPED_CONNECTION as exc:
                    if attempt == 2:
                        raise
                    logger.info(
                        "PostgreSQL connection lost during the %s (%s); retrying once.",
                        what,
                        type(exc).__name__,
                    )
        raise AssertionError("unreachable")

    # -- errors ----------------------------------------------------------------------

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Translate asyncpg and network errors to the error tree (the one table)."""
        try:
            yield
        except DataSourceError:
            raise
        except (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError):
            raise AuthenticationError(
                f"PostgreSQL rejected the credentials of source {self.source_id!r}."
            ) from None
        except asyncpg.InvalidCatalogNameError:
            raise NotFoundError(
                f"The database of source {self.source_id!r} does not exist."
            ) from None
        except asyncpg.QueryCanceledError:
            raise TimeoutError(
                f"The {what} ran past the statement timeout and was cancelled."
            ) from None
        except (asyncpg.ReadOnlySQLTransactionError, asyncpg.ActiveSQLTransactionError) as exc:
            raise ReadOnlyViolation(
                f"The server refused it: {exc.args[0] if exc.args else exc}"
            ) from None
        except _DROPPED_CONNECTION as exc:
            logger.info("PostgreSQL %s failed: %s", what, type(exc).__name__)
            raise UnavailableError(
                f"PostgreSQL cannot be reached for source {self.source_id!r}."
            ) from None
        except asyncpg.TooManyConnectionsError:
            raise UnavailableError(
                f"PostgreSQL has no connection left for source {self.source_id!r} "
                "(its max_connections is reached); try again."
            ) from None
        except asyncpg.InsufficientPrivilegeError as exc:
            raise PermissionDeniedError(f"PostgreSQL refused the {what}: {exc}") from None
        except asyncpg.UndefinedTableError as exc:
            raise NotFoundError(str(exc)) from None
        except (
            asyncpg.PostgresSyntaxError,
            asyncpg.DataError,
            asyncpg.UndefinedColumnError,
            asyncpg.UndefinedFunctionError,
            asyncpg.WrongObjectTypeError,
        ) as exc:
            raise InvalidInputError(f"PostgreSQL refused the {what}: {exc}") from None
        except asyncpg.PostgresError as exc:
            logger.info("PostgreSQL %s failed: %s", what, type(exc).__name__)
            raise InvalidInputError(f"PostgreSQL refused the {what}: {exc}") from None
        except (asyncpg.InternalClientError, asyncpg.exceptions.UnsupportedClientFeatureError):
            # The driver cannot read a column's type (a record of some built-in types).
            raise InvalidInputError(
                f"The {what} returns a value the driver cannot read; cast that column to text."
            ) from None
        except (asyncpg.InterfaceError, OSError, builtins.TimeoutError) as exc:
            logger.info("PostgreSQL %s failed: %s", what, type(exc).__name__)
            raise UnavailableError(
                f"PostgreSQL cannot be reached for source {self.source_id!r}."
            ) from None

    def _require_pool(self) -> Any:
        if self._pool is None:
            raise UnavailableError(f"Source {self.source_id!r} is not connected.")
        return self._pool

    # -- queries ---------------------------------------------------------------------

    async def execute_query(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one read-only statement through every layer; at most ``max_rows`` rows."""
        await self._guard(sql)
        limit = max_rows or self.config.max_rows
        if not 1 <= limit <= 10_000_000:
            raise InvalidInputError("max_rows must be between 1 and 10,000,000.")
        seconds = min(timeout or self.config.statement_timeout, self.config.statement_timeout)
        start = time.perf_counter()
        with self._errors("query"):
            for attempt in (1, 2):
                try:
                    columns, rows, truncated = await self._run(sql, params, limit, seconds)
                    break
                except _DROPPED_CONNECTION as exc:
                    # The server restarted or dropped us before the rows came back (the
                    # pool's connections are discarded by then). Every query here is one
                    # read-only statement, so running it once more is safe.
                    if attempt == 2:
                        raise
                    logger.info(
                        "PostgreSQL connection lost (%s); retrying once.", type(exc).__name__
                    )
        return QueryResult(
            columns=columns,
            rows=rows,
            row_count=len(rows),
            truncated=truncated,
            elapsed_ms=(time.perf_counter() - start) * 1000,
        )

    async def check_query(self, sql: str) -> None:
        """Refuse ``sql`` as :meth:`execute_query` would, without running it.

        The statement and catalog layers (one statement, read-only, functions by the
        server's allow-list, relations inside ``schemas``): callers that run the query
        later (a chat's query reference) get the refusal before anything is fetched.
        """
        await self._guard(sql)

    async def _guard(self, sql: str) -> None:
        """Layers 1 and 2: the statement, then its functions and relations by the catalog."""
        if not (self.parser_check or self.catalog_check):
            return
        # Unparseable text is refused by either layer. Parsing is CPU-bound (about 1 ms
        # per kilobyte): a long statement is parsed in a worker thread, off the loop.
        if len(sql) > _INLINE_PARSE_CHARS:
            statement = await asyncio.to_thread(analyse, sql)
        else:
            statement = analyse(sql)
        if self.parser_check and statement.problem is not None:
            raise ReadOnlyViolation(statement.problem)
        if self.catalog_check:
            catalog = await self._catalog_for(statement)
            catalog.check(statement, self.config.schemas)

    async def _catalog_for(self, statement: Statement) -> Catalog:
        """This server's catalog facts, loaded once and again when stale or missing a name.

        An unknown name reloads at most once a second, so a stream of made-up names costs
        no more than that; a name still unknown after the reload is refused.
        """
        now = time.monotonic()
        catalog = self._catalog
        if (
            catalog is not None
            and now - self._catalog_at < self.catalog_ttl
            and (
                (
                    (catalog.judged(statement) or catalog.knows(statement))
                    and (self.config.schemas is None or catalog.knows_relations(statement))
                )
                or now - self._catalog_at < 1.0
            )
        ):
            return catalog
        async with self._catalog_lock:
            if self._catalog is not catalog and self._catalog is not None:
                return self._catalog

            async def load(conn: Any) -> Catalog:
                functions = await conn.fetch(CATALOG_SQL)
                operators = await conn.fetch(OPERATORS_SQL)
                casts = await conn.fetch(CASTS_SQL)
                relations = await conn.fetch(RELATIONS_SQL)
                types = await conn.fetch(TYPES_SQL)
                search_path = await conn.fetchval(SEARCH_PATH_SQL)
                return Catalog.from_rows(
                    functions, operators, casts, relations, list(search_path), types
                )

            self._catalog = await self._read("catalog lookup", self.config.statement_timeout, load)
            self._catalog_at = time.monotonic()
            return self._catalog

    async def _run(
        self, sql: str, params: Sequence[Any] | None, limit: int, seconds: float
    ) -> tuple[list[QueryColumn], list[list[Any]], bool]:
        conn = await self._checkout(seconds)
        try:
            async with asyncio.timeout(_deadline(seconds)):
                attributes = await _describe(conn, sql)
                columns = [
                    QueryColumn(name=name, type=type_name) for name, _, type_name in attributes
                ]
                records = await _fetch_at_most(conn, sql, params, limit + 1)
            truncated = len(records) > limit
            rows = [[_jsonable(v) for v in record] for record in records[:limit]]
        except BaseException as exc:
            dead = _dropped(exc, conn)
            if dead or isinstance(exc, builtins.TimeoutError):
                await self._checkin(conn, broken=True)
                if dead:
                    await self._discard_all()
            else:
                await self._end(conn)
                await self._checkin(conn)
            if isinstance(exc, builtins.TimeoutError):
                raise self._no_answer("query", seconds) from None
            raise
        # The rows are in hand: the rollback and the pool's reset run after the caller has
        # them, and the connection is lent again only when both are done.
        task = asyncio.create_task(self._end_and_release(conn))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return columns, rows, truncated

    async def _end_and_release(self, conn: Any) -> None:
        # The statement has finished: the rollback needs no cancel requests behind it.
        broken = False
        try:
            async with asyncio.timeout(_deadline(self.config.connect_timeout)):
                await conn.execute(_END_SQL)
        except Exception:
            broken = True
        await self._checkin(conn, broken=broken)

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

    # -- status ----------------------------------------------------------------------

    async def test_connection(self) -> ConnectionStatus:
        start = time.perf_counter()
        try:
            if not self._connected:
                await self.connect()

            async def probe(conn: Any) -> tuple[Any, Any, Any]:
                return (
                    await conn.fetchval("SHOW server_version"),
                    await conn.fetchrow(_ROLE_SQL),
                    await conn.fetch(_WRITABLE_SQL),
                )

            version, role, writable = await self._read(
                "connection test", self.config.connect_timeout, probe
            )
        except (
            AuthenticationError,
            NotFoundError,
            UnavailableError,
            TimeoutError,
            PrivilegedRole,
        ) as exc:
            return ConnectionStatus(
                ok=False,
                latency_ms=(time.perf_counter() - start) * 1000,
                message=exc.message,
                details={"error": exc.code},
            )
        warnings = [
            f"This role {reason}; the operator allowed privileged roles."
            for reason in _privileges(role)
        ]
        if writable:
            names = ", ".join(
                f"{r['privilege']} on {r['schema']}.{r['table']}" for r in writable[:10]
            )
            more = f" and {len(writable) - 10} more" if len(writable) > 10 else ""
            warnings.append(f"This role can write ({names}{more}); use a read-only role.")
        return ConnectionStatus(
            ok=True,
            latency_ms=(time.perf_counter() - start) * 1000,
            message=f"Connected to PostgreSQL {version} as {role['rolname']}.",
            warnings=warnings,
            details={"server_version": version, "role": role["rolname"]},
        )

    # -- schema ----------------------------------------------------------------------

    async def get_schema(
        self, schemas: Sequence[str] | None = None, *, refresh: bool = False
    ) -> SchemaInfo:
        """Tables, views, columns, keys and indexes: five catalog queries, cached.

        A database with thousands of tables is inspected in a few round trips; the result
        is reused for ``schema_ttl`` seconds unless ``refresh``.
        """
        wanted = sorted(schemas) if schemas is not None else None
        if wanted is not None:
            for name in wanted:
                if not self._schema_allowed(name):
                    raise NotFoundError(
                        f"Schema {name!r} is not available in source {self.source_id!r}."
                    )
        key = tuple(wanted) if wanted is not None else None
        cached = self._schema_cache.get(key)
        if (
            cached is not None
            and not refresh
            and time.time() - cached.inspected_at < self.schema_ttl
        ):
            return cached
        allowed = wanted if wanted is not None else self.config.schemas
        start = time.perf_counter()

        async def inspect(conn: Any) -> tuple[Any, Any, Any, Any, Any]:
            relations = await conn.fetch(_SCHEMA_RELATIONS_SQL, allowed)
            oids = [r["oid"] for r in relations]
            return (
                relations,
                await conn.fetch(_SCHEMA_COLUMNS_SQL, oids),
                await conn.fetch(_SCHEMA_CONSTRAINTS_SQL, oids),
                await conn.fetch(_SCHEMA_INDEXES_SQL, oids),
                await conn.fetch(_SCHEMA_NAMES_SQL, allowed),
            )

        relations, columns, constraints, indexes, names = await self._read(
            "schema inspection", self.config.statement_timeout, inspect, snapshot=True
        )
        tables: dict[int, TableInfo] = {}
        for r in relations:
            tables[r["oid"]] = TableInfo(
                schema_name=r["schema"],
                name=r["name"],
                kind=_RELKIND_NAMES[r["kind"]],
                estimated_rows=max(int(r["estimated_rows"]), 0),
                bytes=r["bytes"],
                comment=r["comment"],
            )
        for c in columns:
            tables[c["oid"]].columns.append(
                ColumnInfo(
                    name=c["name"],
                    type=c["type"],
                    nullable=c["nullable"],
                    default=c["default"],
                    comment=c["comment"],
                    ordinal=c["ordinal"],
                )
            )
        kinds = {"p": "primary_key", "u": "unique", "f": "foreign_key"}
        for c in constraints:
            tables[c["oid"]].constraints.append(
                ConstraintInfo(
                    name=c["name"],
                    kind=kinds[c["kind"]],
                    columns=list(c["columns"]),
                    references=c["references"],
                    referenced_columns=list(c["ref_columns"] or []),
                )
            )
        for i in indexes:
            tables[i["oid"]].indexes.append(
                IndexInfo(name=i["name"], unique=i["unique"], definition=i["definition"])
            )
        info = SchemaInfo(
            schemas=[n["name"] for n in names if self._schema_allowed(n["name"])],
            tables=[t for t in tables.values() if self._schema_allowed(t.schema_name)],
            inspected_at=time.time(),
            elapsed_ms=(time.perf_counter() - start) * 1000,
        )
        self._schema_cache[key] = info
        return info

    # -- profiling -------------------------------------------------------------------

    async def profile(self, path_or_sql: str, *, sample_rows: int = 10_000) -> TableProfile:
        """Summarise a table (``schema.table``) or a read-only query, column by column.

        A table whose statistics are fresh (analyzed, under 10% of rows changed since) is
        described from ``pg_stats`` without reading it; anything else from a sample of
        ``sample_rows`` rows. Values are JSON-safe and cut to 100 characters.
        """
        if not 1 <= sample_rows <= 1_000_000:
            raise InvalidInputError("sample_rows must be between 1 and 1,000,000.")
        is_table = bool(re.fullmatch(r"[^\s.;()]+\.[^\s.;()]+", path_or_sql.strip()))
        if is_table:
            schema, table = self._split_table(path_or_sql.strip())
            source_sql = f"SELECT * FROM {_ident(schema)}.{_ident(table)}"
        else:
            await self._guard(path_or_sql)
            source_sql = path_or_sql.strip().rstrip(";")

        async def describe(conn: Any) -> TableProfile:
            fresh = None
            if is_table:
                fresh = await conn.fetchrow(_FRESH_STATS_SQL, schema, table)
                if fresh is None:
                    raise NotFoundError(
                        f"{path_or_sql!r} does not exist in source {self.source_id!r}."
                    )
                if fresh["fresh"]:
                    stats = await conn.fetch(_PG_STATS_SQL, schema, table)
                    if stats:
                        return self._from_stats(path_or_sql, fresh, stats)
            return await self._from_sample(
                conn,
                path_or_sql,
                source_sql,
                sample_rows,
                int(fresh["estimated_rows"]) if fresh is not None else None,
            )

        profile: TableProfile = await self._read(
            "profile", self.config.statement_timeout, describe, snapshot=True
        )
        return profile

    @staticmethod
    def _from_stats(subject: str, fresh: Any, stats: Sequence[Any]) -> TableProfile:
        rows = max(int(fresh["estimated_rows"]), 0)
        columns = []
        for s in stats:
            distinct = s["n_distinct"]
            estimate = int(-distinct * rows) if distinct is not None and distinct < 0 else distinct
            bounds = s["bounds"] or []
            values = s["common_values"] or []
            freqs = s["common_freqs"] or []
            columns.append(
                ColumnProfile(
                    name=s["name"],
                    type=s["type"],
                    null_fraction=s["null_frac"],
                    distinct_estimate=int(estimate) if estimate is not None else None,
                    min=_short(bounds[0]) if bounds else None,
                    max=_short(bounds[-1]) if bounds else None,
                    top_values=[
                        ValueCount(value=_short(v), fraction=float(f))
                        for v, f in list(zip(values, freqs, strict=False))[:_TOP_VALUES]
                    ],
                )
            )
        return TableProfile(
            subject=subject, method="pg_stats", estimated_rows=rows, columns=columns
        )

    async def _from_sample(
        self, conn: Any, subject: str, source_sql: str, sample_rows: int, estimated: int | None
    ) -> TableProfile:
        # Layer 2 for the caller's SQL: it must prepare as one statement on its own.
        statement = await conn.prepare(source_sql)
        attributes = statement.get_attributes()
        names = [f"c{i}" for i in range(len(attributes))]
        sample = (
            f"(SELECT * FROM (\n{source_sql}\n) AS _src({', '.join(names)}) "
            f"LIMIT {int(sample_rows)}) AS _s"
        )
        parts = ["count(*)"]
        for name, attribute in zip(names, attributes, strict=True):
            parts.append(f"count({name})")
            parts.append(f"count(DISTINCT {name}::text)")
            if attribute.type.name in _ORDERABLE:
                parts += [f"min({name})", f"max({name})"]
            else:
                parts += ["NULL", "NULL"]
        totals = await conn.fetchrow(f"SELECT {', '.join(parts)} FROM {sample}")
        total = int(totals[0])
        columns: list[ColumnProfile] = []
        for index, (name, attribute) in enumerate(zip(names, attributes, strict=True)):
            non_null, distinct, low, high = totals[1 + 4 * index : 5 + 4 * index]
            top: list[ValueCount] = []
            if total and distinct and distinct <= _LOW_CARDINALITY:
                counts = await conn.fetch(
                    f"SELECT {name}::text AS value, count(*) AS n FROM {sample} "
                    f"WHERE {name} IS NOT NULL GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT {_TOP_VALUES}"
                )
                top = [
                    ValueCount(value=_short(r["value"]), fraction=r["n"] / total) for r in counts
                ]
            columns.append(
                ColumnProfile(
                    name=attribute.name,
                    type=attribute.type.name,
                    null_fraction=(total - non_null) / total if total else None,
                    distinct_estimate=int(distinct),
                    min=_short(low),
                    max=_short(high),
                    top_values=top,
                )
            )
        return TableProfile(
            subject=subject,
            method="sample",
            estimated_rows=estimated,
            sampled_rows=total,
            columns=columns,
        )

    # -- listing ---------------------------------------------------------------------

    def _schema_allowed(self, schema: str) -> bool:
        return self.config.schemas is None or schema in self.config.schemas

    async def iter_items(
        self,
        prefix: str | None = None,
        *,
        delimiter: str | None = None,
        glob: str | None = None,
        start_after: str | None = None,
    ) -> AsyncIterator[DataItem]:
        query = listing_query(prefix, None, glob)
        if query.empty:
            return

        async def tables(conn: Any) -> list[Any]:
            return list(await conn.fetch(_TABLES_SQL, query.prefix))

        records = await self._read("listing", self.config.statement_timeout, tables)
        for record in records:
            if not self._schema_allowed(record["schema"]):
                continue
            path = f"{record['schema']}.{record['name']}"
            if start_after is not None and path <= start_after:
                continue
            item = DataItem.trusted(
                path=path,
                name=record["name"],
                kind=_TABLE_KINDS.get(record["kind"], ItemKind.TABLE),
                size=record["bytes"],
                metadata={
                    "estimated_rows": max(int(record["estimated_rows"]), 0),
                    "comment": record["comment"],
                    "relkind": record["kind"],
                },
            )
            if query.matcher is None or query.matcher.match(path):
                yield item

    def _split_table(self, path: str) -> tuple[str, str]:
        if not isinstance(path, str) or path.count(".") != 1 or "\x00" in path:
            raise InvalidInputError("A table is named 'schema.table'.")
        schema, table = path.split(".")
        if not schema or not table:
            raise InvalidInputError("A table is named 'schema.table'.")
        if not self._schema_allowed(schema):
            raise NotFoundError(f"{path!r} does not exist in source {self.source_id!r}.")
        return schema, table

    async def get_metadata(self, path: str) -> DataItem:
        item, _ = await self._describe_table(path)
        return item

    async def _describe_table(self, path: str) -> tuple[DataItem, list[int]]:
        """The table's item and its columns' type modifiers (numeric precision and scale)."""
        schema, table = self._split_table(path)

        async def lookup(conn: Any) -> tuple[Any, Any]:
            record = await conn.fetchrow(_TABLE_SQL, schema, table)
            if record is None:
                raise NotFoundError(f"{path!r} does not exist in source {self.source_id!r}.")
            return record, await conn.fetch(_COLUMNS_SQL, record["oid"])

        record, columns = await self._read("metadata lookup", self.config.statement_timeout, lookup)
        typmods = [int(c["typmod"]) for c in columns]
        return DataItem(
            path=path,
            name=table,
            kind=_TABLE_KINDS.get(record["kind"], ItemKind.TABLE),
            size=record["bytes"],
            metadata={
                "estimated_rows": max(int(record["estimated_rows"]), 0),
                "comment": record["comment"],
                "columns": [
                    {
                        "name": c["name"],
                        "type": c["type"],
                        "nullable": c["nullable"],
                        "default": c["default"],
                        "comment": c["comment"],
                        "ordinal": c["ordinal"],
                    }
                    for c in columns
                ],
            },
        ), typmods

    # -- transfer --------------------------------------------------------------------

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
        format: ExportFormat = "parquet",
        max_rows: int | None = None,
    ) -> Path:
        """Export a whole table or view to ``schema/table.parquet`` (or ``.csv``), streamed.

        The column types come from the catalog, so ``numeric(p, s)`` becomes a decimal
        with the same precision and scale.
        """
        schema, table = self._split_table(path)
        fmt = _export_format(format)
        workspace = Workspace.of(workspace_dir)
        target = f"{schema}/{table}.{fmt}"
        workspace.path_for(target)
        item, typmods = await self._describe_table(path)  # exists and allowed, or an error
        return await self._export(
            f"SELECT * FROM {_ident(schema)}.{_ident(table)}",
            None,
            workspace,
            target,
            fmt=fmt,
            max_rows=max_rows,
            typmods=typmods,
            progress=progress,
            provenance=self.provenance(path, item, {"query": f"TABLE {schema}.{table}"}),
        )

    async def open_stream(self, path: str) -> ItemStream:
        """A table or view as CSV (with a header), streamed from COPY as it is produced."""
        schema, table = self._split_table(path)
        item, _ = await self._describe_table(path)
        query = f"SELECT * FROM {_ident(schema)}.{_ident(table)}"

        async def chunks() -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)

            async def produce() -> None:
                try:
                    seconds = self.config.statement_timeout
                    with self._errors("export"):
                        async with self._transaction(
                            seconds, snapshot=True, extra=EXPORT_SETTINGS
                        ) as conn:

                            async def put(data: bytes) -> None:
                                await queue.put(bytes(data))

                            # No client deadline: the consumer may be slow, and the
                            # server's statement_timeout bounds the COPY itself.
                            await conn.copy_from_query(query, output=put, format="csv", header=True)
                except Exception as exc:
                    await queue.put(exc)
                    return
                await queue.put(None)

            producer = asyncio.create_task(produce())
            try:
                while (chunk := await queue.get()) is not None:
                    if isinstance(chunk, BaseException):
                        raise chunk
                    yield chunk
            finally:
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer

        # Streamed as CSV: the download is named like a CSV file, not like the table.
        named = item.model_copy(update={"name": f"{item.name}.csv"})
        return ItemStream(named, chunks, "text/csv; charset=utf-8")

    async def export_query(
        self,
        sql: str,
        workspace_dir: Path | str | Workspace,
        *,
        params: Sequence[Any] | None = None,
        format: ExportFormat = "parquet",
        filename: str | None = None,
        max_rows: int | None = None,
        decimals: Mapping[str, tuple[int, int]] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream the result of one read-only statement into a Parquet (default) or CSV file.

        The statement passes the same layers as :meth:`execute_query`. ``filename`` is a
        workspace-relative path (default ``exports/query-<hash>.<format>``); ``max_rows``
        stops the export early and the source's ``max_download_bytes`` caps the file.
        asyncpg does not expose a query's type modifiers, so a numeric column is exported
        as exact text unless ``decimals`` declares its ``(precision, scale)`` by name.
        """
        await self._guard(sql)
        fmt = _export_format(format)
        workspace = Workspace.of(workspace_dir)
        if filename is None:
            digest = hashlib.sha256(repr((sql, list(params or ()))).encode()).hexdigest()[:12]
            filename = f"exports/query-{digest}.{fmt}"
        workspace.path_for(filename)
        item = DataItem(path=filename, name=filename.rsplit("/", 1)[-1], kind=ItemKind.TABLE)
        extra: dict[str, Any] = {"query": sql}
        if params:
            extra["extra"] = {"params": [_jsonable(v) for v in params]}
        return await self._export(
            sql,
            params,
            workspace,
            filename,
            fmt=fmt,
            max_rows=max_rows,
            typmods=None,
            decimals=decimals,
            progress=progress,
            provenance=self.provenance(filename, item, extra),
        )

    async def _export(
        self,
        sql: str,
        params: Sequence[Any] | None,
        workspace: Workspace,
        target: str,
        *,
        fmt: str,
        max_rows: int | None,
        typmods: Sequence[int] | None,
        progress: ProgressCallback | None,
        provenance: dict[str, Any],
        decimals: Mapping[str, tuple[int, int]] | None = None,
    ) -> Path:
        if max_rows is not None and max_rows < 0:
            raise InvalidInputError("max_rows cannot be negative.")
        done = 0
        seconds = self.config.statement_timeout
        with self._errors("export"):
            async with (
                self._transaction(seconds, snapshot=True, extra=EXPORT_SETTINGS) as conn,
                # A few statements, then a COPY the server stops at statement_timeout, and
                # the Parquet writer's tail: twice the budget before the client gives up.
                asyncio.timeout(_deadline(seconds) + seconds),
            ):
                inner, attributes = await self._one_statement(conn, sql, params)
                if decimals:
                    typmods = _declared_typmods(attributes, decimals)
                plans = plan_columns(attributes, typmods)
                if fmt == "csv":
                    limit = f" LIMIT {int(max_rows)}" if max_rows is not None else ""
                    query = f"SELECT * FROM (\n{inner}\n) AS q{limit}"
                else:
                    query = copy_select(inner, plans, max_rows)
                async with workspace.writer(
                    target, max_bytes=self.config.max_download_bytes, provenance=provenance
                ) as writer:
                    if fmt == "csv":

                        async def sink(chunk: bytes) -> None:
                            nonlocal done
                            await writer.write(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(done, None)

                        await conn.copy_from_query(query, output=sink, format="csv", header=True)
                    else:
                        await self._copy_parquet(conn, query, plans, writer, progress)
        return writer.path

    async def _one_statement(
        self, conn: Any, sql: str, params: Sequence[Any] | None
    ) -> tuple[str, list[tuple[str, int, str]]]:
        """Layer 2 for exports: the server parses ``sql`` alone as exactly one statement.

        COPY cannot take bind parameters, so parameters are rendered by the server as
        literals and put in place of the ``$n`` tokens (found by the tokenizer, never in
        strings or comments); the result is checked again, by the parser and by Parse.
        """
        inner = sql.strip().rstrip(";").rstrip()
        statement = await conn.prepare(inner)  # not cached: COPY runs the text, not this
        wanted = statement.get_parameters()
        given = list(params or ())
        if len(given) != len(wanted):
            raise InvalidInputError(
                f"The statement takes {len(wanted)} parameter(s); {len(given)} given."
            )
        if wanted:
            casts = ", ".join(
                f"quote_nullable(${i}::{_ident(t.schema)}.{_ident(t.name)}::text)"
                for i, t in enumerate(wanted, start=1)
            )
            literals = list(await conn.fetchrow(f"SELECT {casts}", *given))
            inner = _inline_parameters(inner, literals)
            await self._guard(inner)
            statement = await conn.prepare(inner)
            if statement.get_parameters():
                raise InvalidInputError("Could not place every parameter of the statement.")
        attributes = [(a.name, a.type.oid, a.type.name) for a in statement.get_attributes()]
        if not attributes:
            raise InvalidInputError("Only a statement that returns rows can be exported.")
        return inner, attributes

    async def _copy_parquet(
        self,
        conn: Any,
        query: str,
        plans: Sequence[ColumnPlan],
        writer: AsyncAtomicWriter,
        progress: ProgressCallback | None,
    ) -> None:
        """COPY CSV from the server, parsed and written as Parquet by one worker thread."""
        pipe = ChunkPipe(depth=4)
        loop = asyncio.get_running_loop()
        multiline = any(p.csv_type == pa.string() for p in plans)
        convert = loop.run_in_executor(
            None,
            functools.partial(csv_to_parquet, pipe, writer.file.write, plans, multiline=multiline),
        )
        buffer = bytearray()
        received = 0

        async def sink(chunk: bytes) -> None:
            nonlocal received
            buffer.extend(chunk)
            received += len(chunk)
            if len(buffer) >= _PIPE_CHUNK:
                await pipe.put(bytes(buffer))
                buffer.clear()
                if progress is not None:
                    progress(received, None)

        try:
            await conn.copy_from_query(query, output=sink, format="csv")
            if buffer:
                await pipe.put(bytes(buffer))
            await pipe.put(None)
        except ReaderGone:
            pass  # the converter failed; its error is raised below
        except BaseException:
            # The COPY failed or we were cancelled: stop the thread before the atomic
            # file it writes to is thrown away.
            pipe.fail()
            with contextlib.suppress(BaseException):
                await asyncio.shield(convert)
            raise
        try:
            await convert
        except (pa.ArrowInvalid, ValueError) as exc:
            raise InvalidInputError(f"The result could not be written as Parquet: {exc}") from None
        if progress is not None:
            progress(received, None)

    async def upload_data(
        self, local_path: Path | str, remote_path: str, *, overwrite: bool = False
    ) -> DataItem:
        raise PermissionDeniedError(
            f"Source {self.source_id!r} is a PostgreSQL database: every PostgreSQL source is "
            "read-only, so uploads are refused."
        )


# Sizes come from pg_class.relpages (as of the last VACUUM/ANALYZE): pg_total_relation_size()
# would lock every relation, and 10,000 locks overflow the lock table of one transaction.
_SCHEMA_FILTER = """
  n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%' AND n.nspname NOT LIKE 'pg_temp%'
  AND ($1::text[] IS NULL OR n.nspname = ANY($1::text[]))
"""

_SCHEMA_NAMES_SQL = f"""
SELECT n.nspname AS name FROM pg_namespace n
WHERE {_SCHEMA_FILTER} AND has_schema_privilege(n.oid, 'USAGE')
ORDER BY 1
"""

_SCHEMA_RELATIONS_SQL = f"""
SELECT c.oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
       c.reltuples::bigint AS estimated_rows,
       (c.relpages::bigint * current_setting('block_size')::bigint) AS bytes,
       obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {_SCHEMA_FILTER}
  AND has_table_privilege(c.oid, 'SELECT')
ORDER BY n.nspname, c.relname
"""

_SCHEMA_COLUMNS_SQL = """
SELECT a.attrelid AS oid, a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable, pg_get_expr(d.adbin, d.adrelid) AS default,
       col_description(a.attrelid, a.attnum) AS comment, a.attnum AS ordinal
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = ANY($1::oid[]) AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attrelid, a.attnum
"""

_SCHEMA_CONSTRAINTS_SQL = """
SELECT con.conrelid AS oid, con.conname AS name, con.contype::text AS kind,
       ARRAY(SELECT att.attname FROM unnest(con.conkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute att ON att.attrelid = con.conrelid AND att.attnum = k.num
             ORDER BY k.ord) AS columns,
       CASE WHEN con.contype = 'f' THEN con.confrelid::regclass::text END AS references,
       ARRAY(SELECT att.attname FROM unnest(con.confkey) WITH ORDINALITY k(num, ord)
             JOIN pg_attribute att ON att.attrelid = con.confrelid AND att.attnum = k.num
             ORDER BY k.ord) AS ref_columns
FROM pg_constraint con
WHERE con.conrelid = ANY($1::oid[]) AND con.contype IN ('p', 'u', 'f')
ORDER BY con.conrelid, con.conname
"""

_SCHEMA_INDEXES_SQL = """
SELECT i.indrelid AS oid, ic.relname AS name, i.indisunique AS unique,
       pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index i JOIN pg_class ic ON ic.oid = i.indexrelid
WHERE i.indrelid = ANY($1::oid[])
ORDER BY i.indrelid, ic.relname
"""

_FRESH_STATS_SQL = """
SELECT c.reltuples::bigint AS estimated_rows,
       coalesce(st.last_analyze, st.last_autoanalyze) IS NOT NULL
         AND coalesce(st.n_mod_since_analyze, 0) <= greatest(c.reltuples, 0) * 0.1 AS fresh
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
LEFT JOIN pg_stat_user_tables st ON st.relid = c.oid
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND has_table_privilege(c.oid, 'SELECT')
"""

_PG_STATS_SQL = """
SELECT s.attname AS name, format_type(a.atttypid, a.atttypmod) AS type, s.null_frac,
       s.n_distinct, s.most_common_vals::text::text[] AS common_values,
       s.most_common_freqs AS common_freqs, s.histogram_bounds::text::text[] AS bounds
FROM pg_stats s
JOIN pg_namespace n ON n.nspname = s.schemaname
JOIN pg_class c ON c.relnamespace = n.oid AND c.relname = s.tablename
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = s.attname
WHERE s.schemaname = $1 AND s.tablename = $2 AND NOT s.inherited
ORDER BY a.attnum
"""

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
_ROLE_SQL = f"""
SELECT r.rolname, r.rolsuper,
       ARRAY(SELECT g FROM unnest(ARRAY{list(_PRIVILEGED_ROLES)!r}::text[]) g
             WHERE pg_has_role(current_user, g, 'MEMBER')) AS roles,
       ARRAY(SELECT f FROM unnest(ARRAY{list(_PRIVILEGED_FUNCTIONS)!r}::text[]) f
             WHERE has_function_privilege(current_user, ('pg_catalog.' || f)::regprocedure,
                                          'EXECUTE')) AS functions
FROM pg_roles r WHERE r.rolname = current_user
"""


def _privileges(role: Mapping[str, Any]) -> list[str]:
    """Why a role (a row of ``_ROLE_SQL``) is privileged; empty when it is not."""
    if role["rolsuper"]:
        return ["is a superuser"]
    reasons = [f"is a member of {name}" for name in role["roles"]]
    if role["functions"]:
        reasons.append(f"may execute {', '.join(role['functions'])}")
    return reasons


_WRITABLE_SQL = """
SELECT n.nspname AS schema, c.relname AS table, p.privilege
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('DELETE'), ('TRUNCATE')) AS p(privilege)
WHERE c.relkind IN ('r', 'p')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND has_table_privilege(c.oid, p.privilege)
ORDER BY 1, 2, 3
LIMIT 200
"""

_TABLES_SQL = """
SELECT n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
       c.reltuples::bigint AS estimated_rows,
       (c.relpages::bigint * current_setting('block_size')::bigint) AS bytes,
       obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg_toast%'
  AND starts_with(n.nspname || '.' || c.relname, $1)
  AND has_table_privilege(c.oid, 'SELECT')
ORDER BY (n.nspname || '.' || c.relname) COLLATE "C"
"""

_TABLE_SQL = """
SELECT c.oid, c.relkind::text AS kind, c.reltuples::bigint AS estimated_rows,
       pg_total_relation_size(c.oid) AS bytes, obj_description(c.oid, 'pg_class') AS comment
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND has_table_privilege(c.oid, 'SELECT')
"""

_COLUMNS_SQL = """
SELECT a.attname AS name, format_type(a.atttypid, a.atttypmod) AS type,
       NOT a.attnotnull AS nullable, pg_get_expr(d.adbin, d.adrelid) AS default,
       col_description(a.attrelid, a.attnum) AS comment, a.attnum AS ordinal,
       a.atttypmod AS typmod
FROM pg_attribute a
LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
