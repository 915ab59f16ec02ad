"""What a reply is made of, as the API streams and stores it: events and fetched files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from datasources.chat.refs import DataRef
from datasources.models import DataSourceConfig

__all__ = ["Event", "FetchedFile", "Resolved"]

Resolved = tuple[DataRef, DataSourceConfig]
"""A reference, checked, with the source it names."""


class Event(BaseModel):
    """One step of a reply, as streamed (server-sent events) or collected into parts."""

    event: str = Field(
        description="fetch_progress | fetch_done | code | output | display | "
        "text_delta | done | error"
    )
    data: dict[str, Any] = Field(default_factory=dict)


class FetchedFile(BaseModel):
    """A file of the workspace and where it came from."""

    path: str = Field(description="Workspace-relative, e.g. data/sales/2026/jan.csv.")
    source_id: str | None = None
    remote: str | None = Field(default=None, description="The path, table or SQL fetched.")
    kind: str | None = None
    etag: str | None = None
    bytes: int
    sha256: str | None = None
    fetched_at: datetime | None = None
    message_id: str | None = None
