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

One module per concern:

| module | owns |
|---|---|
| ``config`` | the config model, DSN parsing (allowed parameters only), TLS contexts |
| ``errors`` | the error table and its context manager; what a dropped connection is |
| ``session`` | the source's asyncpg pool, read-only transactions, recovery (layers 4, 5) |
| ``query`` | ``execute_query`` and the statement and catalog layers (1, 2) |
| ``catalog`` | schema inspection, table listing and metadata |
| ``profile`` | column profiles |
| ``export`` | Parquet and CSV exports, CSV streams (``arrow``: COPY CSV into Parquet) |
| ``decoders`` | values Python cannot hold, returned as PostgreSQL's text |
| ``connector`` | :class:`PostgreSQLConnector`: registration checks, the connection test |
"""

from datasources.connectors.postgresql.config import PostgreSQLConfig, parse_dsn
from datasources.connectors.postgresql.connector import PostgreSQLConnector
from datasources.connectors.postgresql.errors import PrivilegedRole
from datasources.query_models import QueryColumn, QueryResult

__all__ = [
    "PostgreSQLConfig",
    "PostgreSQLConnector",
    "PrivilegedRole",
    "QueryColumn",
    "QueryResult",
    "parse_dsn",
]
