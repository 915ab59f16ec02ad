"""A PostgreSQL connector for tests: tables set up as the admin, read as the least-privilege
role (the ``postgres_database`` and ``postgres_reader`` fixtures of ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import asyncpg

from datasources.connectors.postgresql import PostgreSQLConnector

__all__ = ["reader_connector"]


@contextlib.asynccontextmanager
async def reader_connector(
    database: str, reader: str, setup_sql: str
) -> AsyncIterator[PostgreSQLConnector]:
    """Run ``setup_sql`` on ``database`` as its owner, then connect as ``reader``."""
    conn = await asyncpg.connect(database)
    try:
        await conn.execute(setup_sql)
    finally:
        await conn.close()
    async with PostgreSQLConnector({"dsn": reader}, source_id="pg") as connector:
        yield connector
