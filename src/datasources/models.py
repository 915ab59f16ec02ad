"""The data shapes every layer shares: sources, items, statuses, pages."""

from __future__ import annotations

import re
import unicodedata
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from datasources.credentials import mask_config_for_display

__all__ = [
    "ConnectionStatus",
    "DataItem",
    "DataSourceConfig",
    "DataSourceType",
    "FetchFailure",
    "FetchReport",
    "ItemKind",
    "Page",
    "slugify",
]

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
ID_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")


class DataSourceType(StrEnum):
    """The built-in connector types. Plugins add types as plain strings."""

    AZURE_BLOB = "azure_blob"
    POSTGRESQL = "postgresql"
    LOCAL_FOLDER = "local_folder"


class ItemKind(StrEnum):
    """What a listed item is."""

    FILE = "file"
    DIRECTORY = "directory"
    TABLE = "table"
    VIEW = "view"


def slugify(name: str) -> str:
    """Turn a human name into an id: ``"Sales Data (EU)"`` → ``"sales-data-eu"``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", ascii_name.lower()).strip("-")
    return slug[:64].rstrip("-") or "source"


def _now() -> datetime:
    return datetime.now(UTC)


def _coerce_type(value: object) -> str:
    if isinstance(value, DataSourceType):
        return value
    if not isinstance(value, str) or not _TYPE_RE.match(value):
        raise ValueError("must be a lower-case identifier such as 'azure_blob'")
    try:
        return DataSourceType(value)
    except ValueError:
        return value  # a plugin's type; the registry checks that a connector exists


class DataSourceConfig(BaseModel):
    """A registered data source: who it is, what connector serves it, how to reach it.

    ``config`` holds the connector's settings; secret fields in it are plain values only
    on the way in (registration, update) and are masked (``"********"``) on the way out.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    id: str = Field(default="", description="Unique per owner; defaults to a slug of the name.")
    type: DataSourceType | str = Field(
        union_mode="left_to_right", description="Connector type, e.g. 'local_folder'."
    )
    name: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=2000)
    config: dict[str, Any] = Field(default_factory=dict)
    read_only: bool = False
    tags: list[str] = Field(default_factory=list, max_length=50)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)

    @field_validator("type", mode="before")
    @classmethod
    def _check_type(cls, value: object) -> str:
        return _coerce_type(value)

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if value and not ID_RE.match(value):
            raise ValueError(
                "must be 1-64 characters of a-z, 0-9, '-' or '_', starting with a letter or digit"
            )
        return value

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        value = value.strip()
        if not value or any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise ValueError("must be non-empty printable text")
        return value

    @field_validator("tags")
    @classmethod
    def _check_tags(cls, value: list[str]) -> list[str]:
        for tag in value:
            if not (1 <= len(tag) <= 64) or any(ord(c) < 32 for c in tag):
                raise ValueError("tags are 1-64 printable characters")
        return value

    def model_post_init(self, context: Any, /) -> None:
        if not self.id:
            self.id = slugify(self.name)

    def __repr_args__(self) -> Any:
        for key, value in super().__repr_args__():
            if key == "config":
                yield key, mask_config_for_display(self.config)
            else:
                yield key, value


class DataItem(BaseModel):
    """One listed thing in a source: a file, a virtual directory, a table or a view."""

    model_config = ConfigDict(extra="forbid")

    path: str
    name: str
    kind: ItemKind = ItemKind.FILE
    size: int | None = None
    last_modified: datetime | None = None
    content_type: str | None = None
    etag: str | None = None
    checksum: str | None = Field(default=None, description="'sha256:<hex>' or 'md5:<base64>'.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def trusted(
        cls,
        path: str,
        name: str,
        kind: ItemKind = ItemKind.FILE,
        size: int | None = None,
        last_modified: datetime | None = None,
        content_type: str | None = None,
        etag: str | None = None,
        checksum: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> DataItem:
        """Build without validation, for connectors whose values are already well-typed.

        Listings build tens of thousands of items; validation (or even
        ``model_construct``) would cost more than the system calls behind them.
        """
        item = cls.__new__(cls)
        object.__setattr__(
            item,
            "__dict__",
            {
                "path": path,
                "name": name,
                "kind": kind,
                "size": size,
                "last_modified": last_modified,
                "content_type": content_type,
                "etag": etag,
                "checksum": checksum,
                "metadata": {} if metadata is None else metadata,
            },
        )
        object.__setattr__(item, "__pydantic_fields_set__", _ITEM_FIELDS)
        object.__setattr__(item, "__pydantic_extra__", None)
        object.__setattr__(item, "__pydantic_private__", None)
        return item


_ITEM_FIELDS = frozenset(DataItem.model_fields)


class ConnectionStatus(BaseModel):
    """The result of ``test_connection``: reachable or not, how fast, what to worry about."""

    model_config = ConfigDict(extra="forbid")

    ok: bool
    latency_ms: float | None = None
    message: str = ""
    warnings: list[str] = Field(default_factory=list)
    details: dict[str, Any] = Field(default_factory=dict)


class FetchFailure(BaseModel):
    """One item a bulk fetch could not bring, and why (a safe message)."""

    model_config = ConfigDict(extra="forbid")

    path: str
    error: str
    message: str


class FetchReport(BaseModel):
    """What ``fetch_prefix`` did: the files that landed and the items that did not."""

    model_config = ConfigDict(extra="forbid")

    fetched: list[str] = Field(default_factory=list, description="Workspace-relative paths.")
    failed: list[FetchFailure] = Field(default_factory=list)
    bytes_transferred: int = 0


class Page(BaseModel):
    """One page of a listing; ``next_cursor`` is opaque and ``None`` on the last page."""

    model_config = ConfigDict(extra="forbid")

    items: list[DataItem]
    next_cursor: str | None = None
