"""The chat core: chats and messages per owner, data fetched into workspaces, code run.

A message is handled in three steps, each reported as an :class:`Event`:

1. every reference (``data_source_refs`` and ``@source:target`` mentions) is resolved and
   validated — the source exists and is the caller's, the path is safe, the SQL is
   read-only — before anything is fetched; a bad one stops the message with a clear
   error naming it (:mod:`~datasources.chat.references`);
2. the data is streamed into the chat's workspace (``data/<source>/…``) within the
   chat's quota, with provenance in ``manifest.json``; an unchanged blob is reused
   (:mod:`~datasources.chat.fetcher`);
3. the reply, by a :class:`~datasources.chat.context.Replier`: the model's tool loop
   (:mod:`~datasources.chat.assistant`) or, without a model, the offline replies
   (:mod:`~datasources.chat.offline`). Either acts on the chat only through the
   :class:`~datasources.chat.context.ChatContext` built here for the reply, and all the
   code it runs shares one output cap (:mod:`~datasources.chat.runner`). Credentials
   never enter the sandbox: fetching happens here.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from datasources import safefs
from datasources.chat.assistant import Assistant
from datasources.chat.context import Replier
from datasources.chat.fetcher import Fetcher
from datasources.chat.files import list_files, open_file
from datasources.chat.llm import LLMProvider
from datasources.chat.models import Event, FetchedFile, Resolved
from datasources.chat.offline import OfflineReplies
from datasources.chat.references import References
from datasources.chat.refs import DataRef
from datasources.chat.runner import run_within
from datasources.config import Settings
from datasources.errors import DataSourceError, LimitExceededError, NotFoundError
from datasources.registry import DataSourceRegistry
from datasources.sandbox.manager import SandboxManager
from datasources.sandbox.session import Execution, OutputBudget, Part
from datasources.store import StoredChat, StoredMessage

__all__ = ["ChatService", "Event", "FetchedFile"]

logger = logging.getLogger(__name__)

_ID = re.compile(r"^[0-9a-f]{24}$")


def _new_id() -> str:
    return secrets.token_hex(12)


def _message_id() -> str:
    return f"m{time.time_ns():020d}{secrets.token_hex(4)}"


class ChatService:
    """Chats of every owner; every method takes the owner it acts for."""

    def __init__(
        self,
        registry: DataSourceRegistry,
        sandboxes: SandboxManager,
        settings: Settings,
        provider: LLMProvider | None = None,
    ) -> None:
        self.registry = registry
        self.sandboxes = sandboxes
        self.references = References(registry)
        self.fetcher = Fetcher(registry, settings)
        self.settings = settings
        self.provider = provider
        """The language model; None: offline replies (code blocks, /sql, briefs)."""
        self.replier: Replier = (
            Assistant(
                provider, max_steps=settings.llm_max_steps, max_tokens=settings.llm_max_tokens
            )
            if provider is not None
            else OfflineReplies()
        )
        # Both mechanisms are safe; which one runs is worth a line in the log.
        logger.info("Workspace files are opened beneath descriptors with %s.", safefs.mechanism())

    @property
    def settings(self) -> Settings:
        """The service's settings (replacing them reaches the fetcher too)."""
        return self._settings

    @settings.setter
    def settings(self, settings: Settings) -> None:
        self._settings = settings
        self.fetcher.settings = settings

    @property
    def root(self) -> Path:
        """The folder holding every chat's workspace."""
        return self.settings.workspaces_dir

    def workspace_dir(self, chat_id: str) -> Path:
        if not _ID.match(chat_id):
            raise NotFoundError(f"Chat {chat_id!r} not found.")
        return self.root / chat_id

    # -- chats -------------------------------------------------------------------------

    async def create_chat(self, owner: str, title: str = "") -> StoredChat:
        cap = self.settings.sandbox_limits.max_chats_per_owner
        # A chat's workspace costs disk up to its quota: chats per owner are capped too.
        if len(await self.registry.store.list_chats(owner, limit=cap)) >= cap:
            raise LimitExceededError(
                f"You have {cap} chats, the most one owner may keep: delete some first.",
                details={"limit": cap},
            )
        now = datetime.now(UTC)
        chat = StoredChat(id=_new_id(), owner=owner, title=title, created_at=now, updated_at=now)
        await self.registry.store.add_chat(chat)
        # Its data/ and outputs/ (a filesystem of its own when code runs in bwrap).
        await self.sandboxes.prepare(chat.id, self.workspace_dir(chat.id))
        return chat

    async def get_chat(self, owner: str, chat_id: str) -> StoredChat:
        chat = None
        if _ID.match(chat_id):
            chat = await self.registry.store.get_chat(owner, chat_id)
        if chat is None:
            raise NotFoundError(f"Chat {chat_id!r} not found.", details={"chat": chat_id[:64]})
        return chat

    async def list_chats(
        self, owner: str, *, limit: int, after: str | None = None
    ) -> list[StoredChat]:
        return await self.registry.store.list_chats(owner, limit=limit, after_id=after)

    async def delete_chat(self, owner: str, chat_id: str) -> None:
        """Delete a chat, its messages, its workspace and its session."""
        chat = await self.get_chat(owner, chat_id)
        await self.sandboxes.discard(chat.id, self.workspace_dir(chat.id))
        await self.registry.store.delete_chat(owner, chat.id)
        await asyncio.to_thread(shutil.rmtree, self.workspace_dir(chat.id), True)

    async def expire(self) -> int:
        """Delete chats untouched for ``workspace_max_age_days``; how many."""
        age = timedelta(days=self.settings.sandbox_limits.workspace_max_age_days)
        old = await self.registry.store.list_old_chats(datetime.now(UTC) - age)
        for chat in old:
            await self.delete_chat(chat.owner, chat.id)
        return len(old)

    async def messages(
        self, owner: str, chat_id: str, *, limit: int, after: str | None = None
    ) -> list[StoredMessage]:
        chat = await self.get_chat(owner, chat_id)
        return await self.registry.store.list_messages(chat.id, limit=limit, after_id=after)

    # -- files ------------------------------------------------------------------------

    async def files(self, owner: str, chat_id: str) -> list[FetchedFile]:
        """Every file of the workspace (data with provenance, outputs, displays), by path."""
        chat = await self.get_chat(owner, chat_id)
        return await asyncio.to_thread(list_files, self.workspace_dir(chat.id))

    async def open_file(
        self, owner: str, chat_id: str, path: str, *, check_path: bool = True
    ) -> safefs.SafeFile:
        """A workspace file, opened for reading: stream it from the returned descriptor.

        The path is never opened again, so nothing the sandbox renames afterwards changes
        what is served (see :func:`datasources.chat.files.open_file`).
        """
        chat = await self.get_chat(owner, chat_id)
        directory = self.workspace_dir(chat.id)
        return await asyncio.to_thread(open_file, directory, path, check_path=check_path)

    # -- code -------------------------------------------------------------------------

    async def execute(
        self, owner: str, chat_id: str, code: str, *, timeout: float | None = None
    ) -> Execution:
        """Run code in the chat's session (state persists across calls).

        The run is recorded in the chat's history as a message of role ``execution``
        (its code as the first part, then the output), so a reload shows it. It is not
        part of what a model is told of the chat (:meth:`history`): its output is numbers
        code chose, maybe from data the model must not see.
        """
        chat = await self.get_chat(owner, chat_id)
        limit = self.settings.sandbox_limits.timeout
        async with self.sandboxes.lock(chat.id):
            session, _new = await self.sandboxes.session(
                chat.id, self.workspace_dir(chat.id), owner=chat.owner
            )
            result = await session.execute(code, timeout=min(timeout or limit, 3600))
            parts = [Part(type="code", text=code), *result.parts]
            await self.registry.store.add_message(
                StoredMessage(
                    id=_message_id(),
                    chat_id=chat.id,
                    role="execution",
                    content="",
                    refs=[],
                    parts=[p.model_dump(exclude_none=True) for p in parts],
                    created_at=datetime.now(UTC),
                )
            )
        await self.registry.store.touch_chat(chat.id, datetime.now(UTC))
        return result

    # -- messages ---------------------------------------------------------------------

    async def prepare(self, owner: str, content: str, refs: Sequence[DataRef]) -> list[Resolved]:
        """A message's references, every one checked (a clear 4xx) before anything runs."""
        return await self.references.prepare(owner, content, refs)

    async def post(
        self,
        owner: str,
        chat_id: str,
        content: str,
        refs: Sequence[DataRef],
        *,
        resolved: list[Resolved] | None = None,
    ) -> AsyncIterator[Event]:
        """Handle one user message; the reply's events, ending with ``done`` (or ``error``).

        ``resolved`` is what :meth:`prepare` returned for this message, when the caller
        checked the references already (they are not resolved twice).
        """
        chat = await self.get_chat(owner, chat_id)
        if resolved is None:
            resolved = await self.prepare(owner, content, refs)
        user = StoredMessage(
            id=_message_id(),
            chat_id=chat.id,
            role="user",
            content=content,
            refs=[r.model_dump(exclude_none=True) for r, _ in resolved],
            parts=[],
            created_at=datetime.now(UTC),
        )
        await self.registry.store.add_message(user)
        parts: list[Part] = []
        reply_id = _message_id()
        try:
            async with self.sandboxes.lock(chat.id):
                # One output cap for the whole reply, however many executions it takes.
                budget = OutputBudget(self.settings.sandbox_limits.output_bytes)
                context = _ReplyContext(self, owner, chat.id, budget)
                fetched: list[str] = []
                async for event in context.fetch(resolved, user.id):
                    fetched += [f["path"] for f in event.data.get("files", [])]
                    yield event
                async for event, produced in self.replier.reply(context, content, fetched):
                    parts.extend(produced)
                    yield event
        except DataSourceError as exc:
            parts.append(Part(type="error", name=exc.code, text=exc.message))
            yield Event(event="error", data={"code": exc.code, "message": exc.message})
        reply = StoredMessage(
            id=reply_id,
            chat_id=chat.id,
            role="assistant",
            content="",
            refs=[],
            parts=[p.model_dump(exclude_none=True) for p in parts],
            created_at=datetime.now(UTC),
        )
        await self.registry.store.add_message(reply)
        await self.registry.store.touch_chat(chat.id, datetime.now(UTC))
        yield Event(event="done", data={"message_id": reply.id, "user_message_id": user.id})

    async def history(self, chat_id: str) -> list[dict[str, Any]]:
        """The chat so far as model messages: what was said, not the data."""
        stored = await self.registry.store.list_messages(chat_id, limit=1000)
        history: list[dict[str, Any]] = []
        for message in stored[-21:-1]:  # the newest is the message being answered
            if message.role == "user":
                history.append({"role": "user", "content": message.content})
            elif message.role == "assistant":
                # Only the model's own words: its answer is the last part of a reply. Other
                # text parts are the sandbox session's notes ("N leftover processes were
                # stopped", "M more bytes"), numbers code chose, maybe from data the model
                # must not see.
                last = message.parts[-1] if message.parts else {}
                text = str(last.get("text") or "") if last.get("type") == "text" else ""
                if text:
                    history.append({"role": "assistant", "content": text})
        return history


class _ReplyContext:
    """:class:`~datasources.chat.context.ChatContext` for one reply to one owner's message.

    Made while the chat's lock is held; its code shares the reply's output ``budget``.
    """

    def __init__(
        self, service: ChatService, owner: str, chat_id: str, budget: OutputBudget
    ) -> None:
        self._service = service
        self.owner = owner
        self.chat_id = chat_id
        self.registry = service.registry.scoped(owner)
        self.workspace_dir = service.workspace_dir(chat_id)
        self._budget = budget

    async def resolve(self, refs: Sequence[DataRef]) -> list[Resolved]:
        return await self._service.references.resolve(self.owner, "", refs)

    def fetch(self, resolved: Sequence[Resolved], message_id: str) -> AsyncIterator[Event]:
        return self._service.fetcher.fetch(self.owner, self.workspace_dir, resolved, message_id)

    async def run_code(self, code: str) -> Execution:
        return await run_within(
            self._service.sandboxes,
            self.chat_id,
            self.workspace_dir,
            code,
            owner=self.owner,
            budget=self._budget,
        )

    async def workspace_sources(self) -> set[str]:
        return await Fetcher.workspace_sources(self.workspace_dir)

    async def history(self) -> list[dict[str, Any]]:
        return await self._service.history(self.chat_id)
