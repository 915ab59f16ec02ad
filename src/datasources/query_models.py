"""Result shapes of database sources: query results, schemas and column profiles.

Shared by the connectors that produce them and the CLI and HTTP API that show them.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ColumnInfo",
    "ColumnProfile",
    "ConstraintInfo",
    "IndexInfo",
    "QueryColumn",
    "QueryResult",
    "SchemaInfo",
    "TableInfo",
    "TableProfile",
    "ValueCount",
]


class QueryColumn(BaseModel):
    """A result column: its name and PostgreSQL type."""

    model_config = ConfigDict(extra="forbid")

    name: str
    type: str


class QueryResult(BaseModel):
    """Rows as JSON-safe values, capped at ``max_rows`` (``truncated`` says so)."""

    model_config = ConfigDict(extra="forbid")

    columns: list[QueryColumn]
    rows: list[list[Any]]
    row_count: int
    truncated: bool
    elapsed_ms: float


class ColumnInfo(BaseModel):
    """One column of a table or view."""

    name: str
    type: str
    nullable: bool
    default: str | None = None
    comment: str | None = None
    ordinal: int


class ConstraintInfo(BaseModel):
    """A primary key, unique constraint or foreign key."""

    name: str
    kind: Literal["primary_key", "unique", "foreign_key"]
    columns: list[str]
    references: str | None = None
    referenced_columns: list[str] = Field(default_factory=list)


class IndexInfo(BaseModel):
    """An index, with its definition."""

    name: str
    unique: bool
    definition: str


class TableInfo(BaseModel):
    """A table, view, materialized view or foreign table."""

    schema_name: str
    name: str
    kind: Literal["table", "view", "materialized_view", "foreign_table", "partitioned_table"]
    estimated_rows: int
    bytes: int
    comment: str | None = None
    columns: list[ColumnInfo] = Field(default_factory=list)
    constraints: list[ConstraintInfo] = Field(default_factory=list)
    indexes: list[IndexInfo] = Field(default_factory=list)


class SchemaInfo(BaseModel):
    """What a database holds, from a handful of catalog queries (never one per table)."""

    schemas: list[str]
    tables: list[TableInfo]
    inspected_at: float
    elapsed_ms: float


class ValueCount(BaseModel):
    """A frequent value and how often it appears (a fraction of rows)."""

    value: Any
    fraction: float


class ColumnProfile(BaseModel):
    """A column summary that is safe to hand to a language model instead of rows."""

    name: str
    type: str
    null_fraction: float | None = None
    distinct_estimate: int | None = None
    min: Any = None
    max: Any = None
    top_values: list[ValueCount] = Field(default_factory=list)


class TableProfile(BaseModel):
    """Per-column statistics of a table or a query, from pg_stats or a sample."""

    subject: str
    method: Literal["pg_stats", "sample"]
    estimated_rows: int | None = None
    sampled_rows: int | None = None
    columns: list[ColumnProfile]
