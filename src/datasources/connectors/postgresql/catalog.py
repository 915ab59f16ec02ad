"""What the database holds: schema inspection, table listing and table metadata."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from datasources.connectors.listing import listing_query
from datasources.connectors.postgresql.query import PgQueries
from datasources.errors import InvalidInputError, NotFoundError
from datasources.models import DataItem, ItemKind
from datasources.query_models import ColumnInfo, ConstraintInfo, IndexInfo, SchemaInfo, TableInfo

__all__ = ["PgCatalog"]


_RELKIND_NAMES = {
    "r": "table",
    "p": "partitioned_table",
    "v": "view",
    "m": "materialized_view",
    "f": "foreign_table",
}


_TABLE_KINDS = {
    "r": ItemKind.TABLE,
    "p": ItemKind.TABLE,
    "f": ItemKind.TABLE,
    "v": ItemKind.VIEW,
    "m": ItemKind.VIEW,
}


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


class PgCatalog(PgQueries):
    """Schemas, tables and their metadata."""

    schema_ttl: ClassVar[float] = 300.0
    """Seconds a schema inspection is reused before ``get_schema`` runs it again."""

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
