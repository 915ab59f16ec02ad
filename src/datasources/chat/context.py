"""The seam between the chat service and what produces a reply.

The assistant (a model calling tools) and the offline replies (code blocks, ``/sql``,
briefs) act on one chat for one owner: resolve and fetch references, run code, look at
the workspace. They see the chat only through :class:`ChatContext`, which the service
implements, and the service sees them only as a :class:`Replier`; neither imports the
other, so the import graph has no cycle.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from datasources.chat.models import Event, Resolved
from datasources.chat.refs import DataRef
from datasources.registry import DataSourceRegistry
from datasources.sandbox.session import Execution, Part

__all__ = ["ChatContext", "Replier", "ReplyStep"]

ReplyStep = tuple[Event, list[Part]]
"""One event of a reply and the parts it adds to the stored reply."""


class ChatContext(Protocol):
    """One chat, for one owner, as a reply may use it."""

    @property
    def owner(self) -> str:
        """Whose chat this is; every source reached is one of theirs."""
        ...

    @property
    def chat_id(self) -> str:
        """The chat's id."""
        ...

    @property
    def registry(self) -> DataSourceRegistry:
        """The registry scoped to the owner: nobody else's sources exist there."""
        ...

    @property
    def workspace_dir(self) -> Path:
        """The chat's workspace (files are read beneath it through descriptors only)."""
        ...

    async def resolve(self, refs: Sequence[DataRef]) -> list[Resolved]:
        """Check references (a clear 4xx error for a bad one) and find their sources."""
        ...

    def fetch(self, resolved: Sequence[Resolved], message_id: str) -> AsyncIterator[Event]:
        """Stream resolved references into the workspace; ``fetch_done`` events list files."""
        ...

    async def run_code(self, code: str) -> Execution:
        """Run code in the chat's session within the reply's output budget."""
        ...

    async def workspace_sources(self) -> set[str]:
        """Ids of the sources whose data is in the workspace."""
        ...

    async def history(self) -> list[dict[str, Any]]:
        """The chat so far as model messages (what was said, not the data)."""
        ...


class Replier(Protocol):
    """Produces the reply to one message, after its references were fetched."""

    def reply(
        self, chat: ChatContext, content: str, fetched: list[str]
    ) -> AsyncIterator[ReplyStep]:
        """The reply's steps; ``fetched`` lists the workspace files the message brought."""
        ...
