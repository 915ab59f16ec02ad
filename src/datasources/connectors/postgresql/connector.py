"""The PostgreSQL connector: its identity, registration checks and connection test.

The behaviour lives in the classes it extends, one concern per module: sessions
(:mod:`.session`), queries (:mod:`.query`), the catalog (:mod:`.catalog`), profiles
(:mod:`.profile`) and exports (:mod:`.export`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

import asyncpg

from datasources.connectors.base import ConnectorConfig
from datasources.connectors.postgresql.config import PostgreSQLConfig
from datasources.connectors.postgresql.errors import PrivilegedRole
from datasources.connectors.postgresql.export import PgExports
from datasources.connectors.postgresql.session import ROLE_SQL, privileges
from datasources.errors import (
    AuthenticationError,
    DataSourceError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)
from datasources.models import ConnectionStatus, DataItem, DataSourceType
from datasources.netpolicy import OutboundPolicy

__all__ = ["PostgreSQLConnector"]


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


class PostgreSQLConnector(PgExports):
    """Read-only queries, table listings and CSV exports of one PostgreSQL database."""

    type: ClassVar[str] = DataSourceType.POSTGRESQL
    config_model = PostgreSQLConfig
    secret_fields = frozenset({"password", "dsn"})
    target_fields = frozenset({"host", "port", "database", "user"})

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

    async def test_connection(self) -> ConnectionStatus:
        start = time.perf_counter()
        try:
            if not self._connected:
                await self.connect()

            async def probe(conn: Any) -> tuple[Any, Any, Any]:
                return (
                    await conn.fetchval("SHOW server_version"),
                    await conn.fetchrow(ROLE_SQL),
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
            for reason in privileges(role)
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

    async def upload_data(
        self, local_path: Path | str, remote_path: str, *, overwrite: bool = False
    ) -> DataItem:
        raise PermissionDeniedError(
            f"Source {self.source_id!r} is a PostgreSQL database: every PostgreSQL source is "
            "read-only, so uploads are refused."
        )
