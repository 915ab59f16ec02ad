"""The database capability: what a source that runs SQL offers beyond files.

A connector that can run read-only SQL, describe its schema, profile a table and export
a query into a workspace says so by having these methods (PostgreSQL does); callers ask
once, with :func:`as_sql`, and get a typed object or one clear error — never an
attribute probed at the call site.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from datasources.errors import InvalidInputError
from datasources.query_models import QueryResult, SchemaInfo, TableProfile

if TYPE_CHECKING:
    from datasources.connectors.base import ProgressCallback
    from datasources.workspace import Workspace

__all__ = ["NotADatabaseError", "SqlConnector", "as_sql"]


class NotADatabaseError(InvalidInputError):
    """The source holds files, not tables: it runs no SQL."""

    code = "not_a_database"
    default_message = "This source is not a database: it does not run queries."


@runtime_checkable
class SqlConnector(Protocol):
    """A connector that runs read-only SQL (see the PostgreSQL connector for the details)."""

    async def execute_query(
        self,
        sql: str,
        params: Sequence[Any] | None = None,
        *,
        max_rows: int | None = None,
        timeout: float | None = None,
    ) -> QueryResult:
        """Run one read-only statement; at most ``max_rows`` rows."""
        ...

    async def check_query(self, sql: str) -> None:
        """Refuse ``sql`` as ``execute_query`` would, without running it."""
        ...

    async def get_schema(
        self, schemas: Sequence[str] | None = None, *, refresh: bool = False
    ) -> SchemaInfo:
        """Tables, views, columns, keys and indexes."""
        ...

    async def profile(self, path_or_sql: str, *, sample_rows: int = 10_000) -> TableProfile:
        """Per-column statistics of a ``schema.table`` or a query."""
        ...

    async def export_query(
        self,
        sql: str,
        workspace_dir: Path | str | Workspace,
        *,
        params: Sequence[Any] | None = None,
        format: Literal["parquet", "csv"] = "parquet",
        filename: str | None = None,
        max_rows: int | None = None,
        decimals: Mapping[str, tuple[int, int]] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream a query's rows into a workspace file; its path."""
        ...


def as_sql(connector: object, source: str | None = None) -> SqlConnector:
    """``connector`` as a database, or :class:`NotADatabaseError` naming ``source``."""
    if isinstance(connector, SqlConnector):
        return connector
    name = f"Source {source!r}" if source else "This source"
    raise NotADatabaseError(f"{name} is not a database: it does not run queries.")
