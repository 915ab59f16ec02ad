"""Request and response bodies of the HTTP API (the library's models where they fit)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from datasources.models import DataItem, DataSourceConfig

__all__ = [
    "DataSourceCreate",
    "DataSourceList",
    "DataSourceOut",
    "DataSourceUpdate",
    "ItemPage",
    "QueryRequest",
]

_CONFIG_EXAMPLE: dict[str, Any] = {"root": "/srv/data/sales"}


class DataSourceCreate(BaseModel):
    """A new data source. Secret config fields are sent in plain text once, over TLS."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "name": "Sales exports",
                    "type": "local_folder",
                    "config": _CONFIG_EXAMPLE,
                    "description": "Nightly CSV exports",
                    "read_only": True,
                    "tags": ["sales"],
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    type: str = Field(
        pattern=r"^[a-z][a-z0-9_]{0,63}$",
        description="The connector type: local_folder, azure_blob, postgresql or a plugin's.",
    )
    config: dict[str, Any] = Field(default_factory=dict, description="The connector's settings.")
    description: str = Field(default="", max_length=2000)
    read_only: bool = False
    tags: list[str] = Field(default_factory=list, max_length=50)


class DataSourceUpdate(BaseModel):
    """Fields to change. ``config`` is merged key by key (``null`` removes a key); a secret
    sent back masked (``"********"``) keeps the stored value while no connection-target
    field changes."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"description": "Renamed", "tags": ["sales", "eu"]}]},
    )

    name: str | None = Field(default=None, min_length=1, max_length=200)
    description: str | None = Field(default=None, max_length=2000)
    config: dict[str, Any] | None = None
    read_only: bool | None = None
    tags: list[str] | None = Field(default=None, max_length=50)


class DataSourceOut(BaseModel):
    """A stored data source; secret config values are always ``"********"``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "sales-exports",
                    "name": "Sales exports",
                    "type": "local_folder",
                    "description": "Nightly CSV exports",
                    "config": _CONFIG_EXAMPLE,
                    "read_only": True,
                    "tags": ["sales"],
                    "created_at": "2026-11-26T10:00:00Z",
                    "updated_at": "2026-11-26T10:00:00Z",
                }
            ]
        }
    )

    id: str
    name: str
    type: str
    description: str
    config: dict[str, Any]
    read_only: bool
    tags: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, source: DataSourceConfig) -> DataSourceOut:
        return cls(
            id=source.id,
            name=source.name,
            type=str(source.type),
            description=source.description,
            config=source.config,
            read_only=source.read_only,
            tags=source.tags,
            created_at=source.created_at,
            updated_at=source.updated_at,
        )


class DataSourceList(BaseModel):
    """One page of data sources, in id order."""

    items: list[DataSourceOut]
    next_cursor: str | None = Field(
        default=None, description="Pass as ?cursor= for the next page; null on the last."
    )


class ItemPage(BaseModel):
    """One page of items straight from the connector."""

    items: list[DataItem]
    next_cursor: str | None = None


class QueryRequest(BaseModel):
    """One read-only statement for a database source."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"sql": "SELECT id, total FROM sales WHERE region = $1", "params": ["EU"]}]
        },
    )

    sql: str = Field(min_length=1, max_length=100_000)
    params: list[str | int | float | bool | None] | None = Field(default=None, max_length=1000)
    max_rows: int | None = Field(default=None, ge=1, le=10_000)
    timeout: float | None = Field(default=None, gt=0, le=3600, description="Seconds.")
