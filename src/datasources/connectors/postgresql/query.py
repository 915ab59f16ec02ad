"""Read-only queries: layers 1 and 2 (the statement, the catalog) and the run itself."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any, ClassVar

from datasources.connectors.postgresql.errors import DROPPED_CONNECTION
from datasources.connectors.postgresql.session import PgSession, deadline
from datasources.connectors.postgresql.values import jsonable
from datasources.errors import InvalidInputError
from datasources.query_models import QueryColumn, QueryResult
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
)

__all__ = ["PgQueries"]

logger = logging.getLogger("datasources.connectors.postgresql")


_INLINE_PARSE_CHARS = 4096


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


class PgQueries(PgSession):
    """Read-only statements through every layer."""

    catalog_ttl: ClassVar[float] = 300.0
    """Seconds catalog facts are reused; an unknown name reloads them sooner."""

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
                except DROPPED_CONNECTION as exc:
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
            async with asyncio.timeout(deadline(seconds)):
                attributes = await _describe(conn, sql)
                columns = [
                    QueryColumn(name=name, type=type_name) for name, _, type_name in attributes
                ]
                records = await _fetch_at_most(conn, sql, params, limit + 1)
            truncated = len(records) > limit
            rows = [[jsonable(v) for v in record] for record in records[:limit]]
        except BaseException as exc:
            await self._after_failure(conn, exc, "query", seconds)
            raise
        # The rows are in hand: the rollback and the pool's reset run after the caller has
        # them, and the connection is lent again only when both are done.
        task = asyncio.create_task(self._end_and_release(conn))
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        return columns, rows, truncated
