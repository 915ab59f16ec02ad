"""Column profiles of a table (from ``pg_stats`` when fresh) or of a query's sample."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from datasources.connectors.postgresql.catalog import PgCatalog
from datasources.connectors.postgresql.values import ident, jsonable
from datasources.errors import InvalidInputError, NotFoundError
from datasources.query_models import ColumnProfile, TableProfile, ValueCount

__all__ = ["PgProfiles"]


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
    value = jsonable(value)
    if isinstance(value, str) and len(value) > _VALUE_CHARS:
        return value[: _VALUE_CHARS - 1] + "…"
    return value


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


class PgProfiles(PgCatalog):
    """Column profiles."""

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
            source_sql = f"SELECT * FROM {ident(schema)}.{ident(table)}"
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
