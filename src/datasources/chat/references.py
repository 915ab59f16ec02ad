"""A message's references, checked before anything is fetched or run.

``data_source_refs`` and ``@source:target`` mentions become :class:`DataRef` objects;
each is validated — the source exists and is the caller's, the path is safe, the table
is ``schema.table`` of a database, the SQL passes every read-only layer the database
applies — and a bad one stops the message with a clear 4xx error naming it. ``/sql``
messages become one query reference on their database.
"""

from __future__ import annotations

from collections.abc import Sequence

from datasources.chat.models import Resolved
from datasources.chat.refs import DataRef, parse_mentions, replace_mentions
from datasources.connectors.sql import as_sql
from datasources.errors import DataSourceError, InvalidInputError, NotFoundError
from datasources.registry import DataSourceRegistry
from datasources.workspace import safe_relative_path

__all__ = ["MAX_REFERENCES", "References"]

MAX_REFERENCES = 50
"""References one message may hold, mentions and ``data_source_refs`` together."""


class References:
    """Resolves the references of messages against the registry, per owner."""

    def __init__(self, registry: DataSourceRegistry) -> None:
        self.registry = registry

    async def prepare(self, owner: str, content: str, refs: Sequence[DataRef]) -> list[Resolved]:
        """A message's references, every one checked (a clear 4xx) before anything runs."""
        if content.lstrip().startswith("/sql"):
            # The query runs in the database; only its result lands in the workspace.
            query = await self._sql_ref(owner, content, refs)
            return await self.resolve(owner, "", [query])
        return await self.resolve(owner, content, refs)

    async def resolve(self, owner: str, content: str, refs: Sequence[DataRef]) -> list[Resolved]:
        """Every reference, validated, with its source; a clear 4xx error for a bad one."""
        registry = self.registry.scoped(owner)
        mentions = parse_mentions(content)
        if len(refs) + len(mentions) > MAX_REFERENCES:
            raise InvalidInputError(
                f"A message may hold at most {MAX_REFERENCES} references "
                f"(this one has {len(refs) + len(mentions)}).",
                details={"limit": MAX_REFERENCES},
            )
        resolved: list[Resolved] = []
        seen: set[tuple[str, str, str]] = set()
        for ref in list(refs) + [
            await self._mention_ref(registry, m.source, m.target) for m in mentions
        ]:
            try:
                source = await registry.get_data_source(ref.data_source_id)
            except NotFoundError:
                raise NotFoundError(
                    f"Reference {ref.label()} names no data source of yours.",
                    details={"ref": ref.label()[:200]},
                ) from None
            self._check_ref(ref, source.type)
            key = (source.id, ref.kind, ref.target)
            if key not in seen:
                seen.add(key)
                resolved.append((ref, source))
        for ref, source in resolved:
            if ref.kind in ("path", "table"):
                await self._check_exists(registry, ref, source.id)
            elif ref.kind == "query":
                await self._check_query(registry, ref, source.id)
        return resolved

    @staticmethod
    async def _check_query(registry: DataSourceRegistry, ref: DataRef, source_id: str) -> None:
        """Every read-only layer the database applies before running, applied now."""
        async with registry.get_connector(source_id) as connector:
            try:
                await as_sql(connector).check_query(ref.target)
            except DataSourceError as exc:
                raise type(exc)(
                    f"Reference {ref.label()} is not valid: {exc.message}",
                    details={"ref": ref.label()[:200]},
                ) from None

    @staticmethod
    async def _check_exists(registry: DataSourceRegistry, ref: DataRef, source_id: str) -> None:
        """A file or table reference names something that exists: a 404 before any fetch."""
        folder = False
        async with registry.get_connector(source_id) as connector:
            try:
                item = await connector.get_metadata(ref.target)
            except NotFoundError:
                folder = ref.kind == "path" and bool(
                    (await connector.list_page(ref.target.rstrip("/") + "/", limit=1)).items
                )
                if not folder:
                    raise NotFoundError(
                        f"Reference {ref.label()} names nothing that exists in the source.",
                        details={"ref": ref.label()[:200]},
                    ) from None
        if folder or str(item.kind) == "directory":
            raise InvalidInputError(
                f"Reference {ref.label()} is a folder: reference it as "
                f"@{ref.data_source_id}:{ref.target.rstrip('/')}/ to fetch what it holds.",
                details={"ref": ref.label()[:200]},
            )

    async def _sql_ref(self, owner: str, content: str, refs: Sequence[DataRef]) -> DataRef:
        """A ``/sql`` message as one query reference on its database.

        ``@source:schema.table`` mentions in the statement name tables of that database:
        each becomes the quoted identifier, so the statement the guard and the server see
        is plain SQL. The database is the one the mentions (or a reference without a
        path, table or query of its own) name; only one per message.
        """
        registry = self.registry.scoped(owner)
        sql = content.lstrip()[4:].strip()
        databases: set[str] = set()
        for ref in refs:
            databases.add(ref.data_source_id)
        mentions = parse_mentions(sql)
        if len(refs) + len(mentions) > MAX_REFERENCES:  # before any per-mention work
            raise InvalidInputError(
                f"A message may hold at most {MAX_REFERENCES} references "
                f"(this one has {len(refs) + len(mentions)}).",
                details={"limit": MAX_REFERENCES},
            )
        quoted: dict[tuple[str, str], str] = {}
        for mention in mentions:
            try:
                source = await registry.get_data_source(mention.source)
            except NotFoundError:
                raise NotFoundError(
                    f"Reference @{mention.source}:{mention.target} names no data source of yours.",
                    details={"ref": f"@{mention.source}:{mention.target}"[:200]},
                ) from None
            parts = mention.target.split(".")
            if source.type != "postgresql" or len(parts) != 2 or not all(parts):
                raise InvalidInputError(
                    f"In /sql, @{mention.source}:{mention.target} must name a table "
                    "'schema.table' of a database source."
                )
            databases.add(source.id)
            quoted[(mention.source, mention.target)] = ".".join(
                '"' + part.replace('"', '""') + '"' for part in parts
            )
        sql = replace_mentions(sql, quoted)
        if not sql:
            raise InvalidInputError("/sql needs a statement after it.")
        if not databases:
            raise InvalidInputError(
                "/sql needs a database: mention a table as @source:schema.table or add a "
                "reference to a database source."
            )
        ids = {(await registry.get_data_source(d)).id for d in databases}
        if len(ids) != 1:
            raise InvalidInputError("/sql runs on one database; this message names several.")
        return DataRef(data_source_id=ids.pop(), query=sql)

    async def _mention_ref(self, registry: DataSourceRegistry, name: str, target: str) -> DataRef:
        try:
            source = await registry.get_data_source(name)
        except NotFoundError:
            raise NotFoundError(
                f"Reference @{name}:{target} names no data source of yours.",
                details={"ref": f"@{name}:{target}"[:200]},
            ) from None
        if source.type == "postgresql" and "/" not in target:
            return DataRef(data_source_id=source.id, table=target)
        if target.endswith("/"):
            return DataRef(data_source_id=source.id, prefix=target)
        return DataRef(data_source_id=source.id, path=target)

    @staticmethod
    def _check_ref(ref: DataRef, source_type: str) -> None:
        try:
            if ref.path is not None:
                safe_relative_path(ref.path)
            elif ref.prefix is not None:
                safe_relative_path(ref.prefix.rstrip("/") or "x")
            elif ref.table is not None:
                if source_type != "postgresql" or ref.table.count(".") != 1:
                    raise InvalidInputError("a table is 'schema.table' on a database source")
            elif ref.query is not None:
                if source_type != "postgresql":
                    raise InvalidInputError("queries need a database source")
                from datasources.sql_guard import check_read_only

                check_read_only(ref.query)
        except DataSourceError as exc:
            raise type(exc)(
                f"Reference {ref.label()} is not valid: {exc.message}",
                details={"ref": ref.label()[:200]},
            ) from None
