"""The chat core: chats and messages per owner, data fetched into workspaces, code run.

A message is handled in three steps, each reported as an :class:`Event`:

1. every reference (``data_source_refs`` and ``@source:target`` mentions) is resolved and
   validated — the source exists and is the caller's, the path is safe, the SQL is
   read-only — before anything is fetched; a bad one stops the message with a clear
   error naming it;
2. the data is streamed into the chat's workspace (``data/<source>/…``) within the
   chat's quota, with provenance in ``manifest.json``; an unchanged blob is reused;
3. the reply: fenced ```python blocks run in the chat's sandboxed session; ``/sql`` runs
   a read-only query on the referenced database; anything else gets a brief of each
   referenced item (rows, columns, types, nulls, distinct counts, min/max, a preview)
   computed in the sandbox. Credentials never enter the sandbox: fetching happens here.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from datasources import safefs
from datasources.chat.assistant import run_assistant
from datasources.chat.llm import LLMProvider
from datasources.chat.refs import DataRef, parse_mentions, replace_mentions
from datasources.config import Settings
from datasources.connectors.sql import as_sql
from datasources.errors import (
    DataSourceError,
    InvalidInputError,
    LimitExceededError,
    NotFoundError,
)
from datasources.registry import DataSourceRegistry
from datasources.sandbox.manager import SandboxManager
from datasources.sandbox.session import DISPLAYS, Execution, OutputBudget, Part
from datasources.store import StoredChat, StoredMessage
from datasources.workspace import RESERVED_DIR, Workspace, safe_relative_path

__all__ = ["ChatService", "Event", "FetchedFile"]

logger = logging.getLogger(__name__)

_CODE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
_ID = re.compile(r"^[0-9a-f]{24}$")
_TABLE_ROWS = 100


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


def _new_id() -> str:
    return secrets.token_hex(12)


def _message_id() -> str:
    return f"m{time.time_ns():020d}{secrets.token_hex(4)}"


class ChatService:
    """Chats of every owner; :meth:`scoped` gives the view one owner may use."""

    def __init__(
        self,
        registry: DataSourceRegistry,
        sandboxes: SandboxManager,
        settings: Settings,
        provider: LLMProvider | None = None,
    ) -> None:
        self.registry = registry
        self.sandboxes = sandboxes
        self.settings = settings
        self.root = settings.workspaces_dir
        self.provider = provider
        """The language model; None: offline replies (code blocks, /sql, briefs)."""
        self._reply_budgets: dict[str, OutputBudget] = {}
        """Per chat, while a reply is produced: what is left of its output cap."""
        # Both mechanisms are safe; which one runs is worth a line in the log.
        logger.info("Workspace files are opened beneath descriptors with %s.", safefs.mechanism())

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

    # -- references and fetching -------------------------------------------------------

    async def resolve_refs(
        self, owner: str, content: str, refs: Sequence[DataRef]
    ) -> list[tuple[DataRef, Any]]:
        """Every reference, validated, with its source; a clear 4xx error for a bad one."""
        registry = self.registry.scoped(owner)
        mentions = parse_mentions(content)
        if len(refs) + len(mentions) > MAX_REFERENCES:
            raise InvalidInputError(
                f"A message may hold at most {MAX_REFERENCES} references "
                f"(this one has {len(refs) + len(mentions)}).",
                details={"limit": MAX_REFERENCES},
            )
        resolved: list[tuple[DataRef, Any]] = []
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

    def _used_bytes(self, directory: Path) -> int:
        """Bytes the chat's workspace holds, reached through descriptors only.

        Files are counted by a walk with caps. A walk cut short (the sandbox can make a
        tree too big or too deep to count) falls back, where the workspace is a filesystem
        of its own (under bwrap), on that filesystem's used blocks — an upper bound that
        includes its own overhead — and refuses only where there is no such bound.
        """
        try:
            anchor = safefs.open_anchor(directory)
        except DataSourceError:
            return 0
        try:
            total, complete = safefs.usage(anchor)
            if complete:
                return total
            devices: dict[str, int] = {}
            used = 0
            for name in ("data", "outputs"):
                with contextlib.suppress(OSError, DataSourceError):
                    folder = safefs.open_dir(anchor, name)
                    try:
                        devices[name] = os.fstat(folder).st_dev
                        if name == "outputs" and devices[name] != os.fstat(anchor).st_dev:
                            fs = os.fstatvfs(folder)
                            used = (fs.f_blocks - fs.f_bfree) * fs.f_frsize
                    finally:
                        os.close(folder)
            if used and devices.get("data") == devices.get("outputs"):
                return used  # one filesystem holds data/ and outputs/
            if used:
                rest, rest_complete = safefs.usage(anchor, skip=frozenset({"outputs"}))
                if rest_complete:
                    return rest + used
        finally:
            os.close(anchor)
        raise LimitExceededError(
            "The chat's workspace has too many files, or folders nested too deep, to "
            f"count its quota (more than {safefs.MAX_ENTRIES} entries or "
            f"{safefs.MAX_DEPTH} levels); remove some of them first.",
            details={"max_entries": safefs.MAX_ENTRIES, "max_depth": safefs.MAX_DEPTH},
        )

    async def fetch(
        self, owner: str, chat_id: str, refs: Sequence[tuple[DataRef, Any]], message_id: str
    ) -> AsyncIterator[Event]:
        """Stream every reference into the workspace; events as it goes."""
        directory = self.workspace_dir(chat_id)
        quota = self.settings.sandbox_limits.workspace_quota_bytes
        registry = self.registry.scoped(owner)
        floor = self.settings.sandbox_limits.min_free_disk_bytes
        for ref, source in refs:
            free = (await asyncio.to_thread(shutil.disk_usage, self.root)).free
            if free < floor:
                raise LimitExceededError(
                    "The service's disk is nearly full: nothing more is fetched until space "
                    "is freed (delete chats, or ask the operator).",
                    details={"ref": ref.label()[:200]},
                )
            used = await asyncio.to_thread(self._used_bytes, directory)
            workspace = Workspace(directory / "data" / source.id)
            workspace.byte_budget = max(quota - used, 0)
            label = ref.label()
            yield Event(event="fetch_progress", data={"ref": label, "bytes": 0})
            async with registry.get_connector(source.id) as connector:
                if ref.kind == "path":
                    item = await connector.get_metadata(ref.target)
                    if item.size is not None and item.size > workspace.byte_budget:
                        raise LimitExceededError(
                            f"{label} is {item.size} bytes; the chat has "
                            f"{workspace.byte_budget} bytes of its quota left.",
                            details={"ref": label[:200], "quota": quota},
                        )
                    local = [await connector.fetch_data(ref.target, workspace)]
                elif ref.kind == "prefix":
                    # Listed as a stream and refused as soon as it passes a cap: a
                    # remote endpoint can list forever, and nothing of it is held.
                    cap = self.settings.sandbox_limits.prefix_max_items
                    count = total = 0
                    async for listed in connector.iter_items(ref.target):
                        count += 1
                        if count > cap:
                            raise LimitExceededError(
                                f"{label} lists more than {cap} items, the most a reference "
                                "may fetch; name a narrower folder.",
                                details={"ref": label[:200], "max_items": cap},
                            )
                        if listed.kind == "file":
                            total += listed.size or 0
                        if total > workspace.byte_budget:
                            raise LimitExceededError(
                                f"{label} lists at least {total} bytes; the chat has "
                                f"{workspace.byte_budget} bytes of its quota left.",
                                details={"ref": label[:200], "quota": quota},
                            )
                    report = await connector.fetch_prefix(ref.target, workspace, max_items=cap)
                    if report.failed:
                        first = report.failed[0]
                        raise DataSourceError(
                            f"{len(report.failed)} item(s) of {label} could not be fetched, "
                            f"first {first.path!r}: {first.message}"
                        )
                    local = [workspace.path_for(p) for p in report.fetched]
                elif ref.kind == "table":
                    local = [await connector.fetch_data(ref.target, workspace)]
                else:
                    digest = hashlib.sha256(ref.target.encode()).hexdigest()[:12]
                    export = getattr(connector, "export_query", None)
                    if export is None:
                        raise InvalidInputError(f"{label}: this source runs no queries.")
                    local = [
                        await export(ref.target, workspace, filename=f"queries/{digest}.parquet")
                    ]
            files = await asyncio.to_thread(
                self._record, directory, workspace, ref, source.id, local, message_id
            )
            yield Event(event="fetch_done", data={"ref": label, "files": files})

    def _record(
        self,
        directory: Path,
        workspace: Workspace,
        ref: DataRef,
        source_id: str,
        local: list[Path],
        message_id: str,
    ) -> list[dict[str, Any]]:
        """Add the fetched files to ``manifest.json`` (atomically); their entries."""
        manifest = _read_manifest(directory)
        entries = workspace.manifest()
        added = []
        for path in local:
            rel = path.relative_to(directory).as_posix()
            entry = entries.get(workspace.relative(path))
            record = FetchedFile(
                path=rel,
                source_id=source_id,
                remote=ref.target,
                kind=ref.kind,
                etag=entry.etag if entry else None,
                bytes=path.lstat().st_size,
                sha256=entry.sha256 if entry else None,
                fetched_at=entry.fetched_at if entry else datetime.now(UTC),
                message_id=message_id,
            )
            manifest.setdefault("files", {})[rel] = record.model_dump(mode="json")
            added.append(record.model_dump(mode="json"))
        data = json.dumps(manifest, indent=1, sort_keys=True).encode()
        anchor = safefs.open_anchor(directory)
        try:
            safefs.replace_file(anchor, MANIFEST, data)
        finally:
            os.close(anchor)
        return added

    # -- files ------------------------------------------------------------------------

    async def files(self, owner: str, chat_id: str) -> list[FetchedFile]:
        """Every file of the workspace (data with provenance, outputs, displays), by path.

        The sandbox can rename and swap entries of ``outputs/`` while this runs: folders
        are entered through descriptors opened without following links, so a swapped-in
        link is skipped, never listed through.
        """
        chat = await self.get_chat(owner, chat_id)
        directory = self.workspace_dir(chat.id)

        def scan() -> list[FetchedFile]:
            try:
                known = _read_manifest(directory)["files"]
            except (KeyError, TypeError):
                known = {}
            found = []
            anchor = safefs.open_anchor(directory)
            try:
                for top in SERVED_FOLDERS:
                    try:
                        folder = safefs.open_dir(anchor, top)
                    except (OSError, DataSourceError):
                        continue
                    try:
                        for name, size in safefs.listing(folder, skip=frozenset({RESERVED_DIR})):
                            rel = f"{top}/{name}"
                            if "/.datasources/" in f"/{name}" or not _utf8(name):
                                continue  # a source workspace's own state; an unnamable file
                            if rel in known:
                                found.append(FetchedFile.model_validate(known[rel]))
                            else:
                                found.append(FetchedFile(path=rel, bytes=size))
                    finally:
                        os.close(folder)
            finally:
                os.close(anchor)
            return found

        return await asyncio.to_thread(scan)

    async def open_file(
        self, owner: str, chat_id: str, path: str, *, check_path: bool = True
    ) -> safefs.SafeFile:
        """A workspace file, opened for reading: stream it from the returned descriptor.

        ``path`` is checked for shape (``check_path``: tests switch it off to prove the
        layer below), then opened beneath the chat's workspace descriptor with no link
        followed at any component, and ``fstat``-checked to be a regular file. The caller
        reads that descriptor; the path is never opened again, so nothing the sandbox
        renames afterwards changes what is served.
        """
        chat = await self.get_chat(owner, chat_id)
        directory = self.workspace_dir(chat.id)
        missing = NotFoundError(f"{path!r} is not a file of this chat.")
        if check_path:
            relative = safe_relative_path(path).as_posix()
            top = relative.split("/", 1)[0]
            if top not in SERVED_FOLDERS and relative != MANIFEST:
                raise missing
        else:
            relative = path

        def open_() -> safefs.SafeFile:
            anchor = safefs.open_anchor(directory)
            try:
                return safefs.open_file(anchor, relative)
            except NotFoundError:
                raise missing from None
            finally:
                os.close(anchor)

        return await asyncio.to_thread(open_)

    # -- code -------------------------------------------------------------------------

    async def execute(
        self, owner: str, chat_id: str, code: str, *, timeout: float | None = None
    ) -> Execution:
        """Run code in the chat's session (state persists across calls)."""
        chat = await self.get_chat(owner, chat_id)
        limit = self.settings.sandbox_limits.timeout
        async with self.sandboxes.lock(chat.id):
            session, _new = await self.sandboxes.session(
                chat.id, self.workspace_dir(chat.id), owner=chat.owner
            )
            result = await session.execute(code, timeout=min(timeout or limit, 3600))
        await self.registry.store.touch_chat(chat.id, datetime.now(UTC))
        return result

    # -- messages ---------------------------------------------------------------------

    async def prepare(
        self, owner: str, content: str, refs: Sequence[DataRef]
    ) -> list[tuple[DataRef, Any]]:
        """A message's references, every one checked (a clear 4xx) before anything runs."""
        if content.lstrip().startswith("/sql"):
            # The query runs in the database; only its result lands in the workspace.
            query = await self._sql_ref(owner, content, refs)
            return await self.resolve_refs(owner, "", [query])
        return await self.resolve_refs(owner, content, refs)

    async def post(
        self,
        owner: str,
        chat_id: str,
        content: str,
        refs: Sequence[DataRef],
        *,
        resolved: list[tuple[DataRef, Any]] | None = None,
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
                with self._reply_budget(chat.id):
                    fetched: list[str] = []
                    async for event in self.fetch(owner, chat.id, resolved, user.id):
                        fetched += [f["path"] for f in event.data.get("files", [])]
                        yield event
                    steps = self._reply(owner, chat.id, content, resolved, fetched)
                    async for event, produced in steps:
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

    async def _reply(
        self,
        owner: str,
        chat_id: str,
        content: str,
        refs: list[tuple[DataRef, Any]],
        fetched: list[str],
    ) -> AsyncIterator[tuple[Event, list[Part]]]:
        blocks = _CODE_BLOCK.findall(content)
        stripped = content.strip()
        if self.provider is not None:
            history = await self._history(chat_id)
            steps = run_assistant(
                self,
                self.provider,
                owner,
                chat_id,
                content,
                history,
                fetched,
                max_steps=self.settings.llm_max_steps,
                max_tokens=self.settings.llm_max_tokens,
            )
            async for pair in steps:
                yield pair
        elif blocks:
            for code in blocks:
                yield Event(event="code", data={"code": code}), [Part(type="code", text=code)]
                async for pair in self._run(chat_id, code, owner):
                    yield pair
        elif stripped.startswith("/sql"):
            if not fetched:
                raise InvalidInputError("/sql produced no result file.")
            table = await asyncio.to_thread(
                _parquet_preview, self.workspace_dir(chat_id), fetched[0], _TABLE_ROWS
            )
            yield (
                Event(event="display", data={"type": "table", "data": table}),
                [Part(type="table", data=table)],
            )
        elif fetched:
            async for pair in self._run(chat_id, _brief_code(fetched[:20]), owner):
                yield pair
        else:
            text = (
                "No model is configured, so: put Python in ```python blocks to run it, start "
                "with /sql to query a referenced database, or reference data "
                "(@source:path) for a brief of it."
            )
            yield Event(event="text_delta", data={"text": text}), [Part(type="text", text=text)]

    async def _history(self, chat_id: str) -> list[dict[str, Any]]:
        """The chat so far as model messages: what was said, not the data."""
        stored = await self.registry.store.list_messages(chat_id, limit=1000)
        history: list[dict[str, Any]] = []
        for message in stored[-21:-1]:  # the newest is the message being answered
            if message.role == "user":
                history.append({"role": "user", "content": message.content})
            else:
                # Only the model's own words: its answer is the last part of a reply. Other
                # text parts are the sandbox session's notes ("N leftover processes were
                # stopped", "M more bytes"), numbers code chose, maybe from data the model
                # must not see.
                last = message.parts[-1] if message.parts else {}
                text = str(last.get("text") or "") if last.get("type") == "text" else ""
                if text:
                    history.append({"role": "assistant", "content": text})
        return history

    @contextlib.contextmanager
    def _reply_budget(self, chat_id: str) -> Iterator[None]:
        """One output cap for a whole reply, however many executions it takes."""
        self._reply_budgets[chat_id] = OutputBudget(self.settings.sandbox_limits.output_bytes)
        try:
            yield
        finally:
            self._reply_budgets.pop(chat_id, None)

    async def run_code(self, chat_id: str, code: str, *, owner: str | None = None) -> Execution:
        """Run code in the chat's session; the caller holds the chat's lock.

        Within a reply, every execution's parts spend the reply's one output cap: once it
        is spent, what is left is cut and further code is not run.
        """
        budget = self._reply_budgets.get(chat_id)
        if budget is not None and budget.kept >= budget.cap:
            return Execution(
                ok=False,
                parts=[
                    Part(
                        type="error",
                        name="OutputLimit",
                        text=f"This reply has used its output limit ({budget.cap} bytes): "
                        "the code was not run.",
                    )
                ],
                elapsed_ms=0,
                truncated=True,
            )
        session, _new = await self.sandboxes.session(
            chat_id, self.workspace_dir(chat_id), owner=owner
        )
        result = await session.execute(code)
        if budget is not None:
            cut_before = budget.cut
            result.parts = await asyncio.to_thread(
                self._admit, self.workspace_dir(chat_id), budget, result.parts
            )
            if budget.cut and not cut_before:
                result.truncated = True
                result.parts.append(
                    Part(type="text", text=f"(reply cut at its output limit, {budget.cap} bytes)")
                )
        return result

    @staticmethod
    def _admit(directory: Path, budget: OutputBudget, parts: list[Part]) -> list[Part]:
        """``parts`` as far as ``budget`` allows: text cut, tables and images dropped."""
        kept: list[Part] = []
        for part in parts:
            if part.type == "image" and part.path:
                size = _display_size(directory, part.path)
                if budget.fits(size):
                    budget.take(size)
                    kept.append(part)
                else:
                    _drop_display(directory, part.path)  # no part names it: not kept either
            elif part.type == "table":
                size = len(json.dumps(part.data, default=str))
                if budget.fits(size):
                    budget.take(size)
                    kept.append(part)
            elif part.text is not None:
                text = budget.cut_text(part.text, tail=part.type == "error")
                if text or part.type == "error":
                    kept.append(part.model_copy(update={"text": text or None}))
            else:
                kept.append(part)
        return kept

    async def workspace_sources(self, chat_id: str) -> set[str]:
        """Ids of the sources whose data is in the chat's workspace."""
        directory = self.workspace_dir(chat_id)
        manifest = await asyncio.to_thread(_read_manifest, directory)
        try:
            files = manifest["files"]
        except (KeyError, TypeError):
            files = {}
        recorded = {f["source_id"] for f in files.values() if f.get("source_id")}
        # A fetch that failed half-way leaves files it wrote but never recorded: a source's
        # folder under data/ (the service's own, read-only to the sandbox) counts as well.
        return recorded | await asyncio.to_thread(_data_folders, directory)

    async def _run(
        self, chat_id: str, code: str, owner: str
    ) -> AsyncIterator[tuple[Event, list[Part]]]:
        result = await self.run_code(chat_id, code, owner=owner)
        for part in result.parts:
            kind = "output" if part.type in ("stdout", "stderr", "result", "text") else "display"
            if part.type == "error":
                kind = "error"
            yield Event(event=kind, data=part.model_dump(exclude_none=True)), [part]


MAX_REFERENCES = 50
"""References one message may hold, mentions and ``data_source_refs`` together."""

MANIFEST = "manifest.json"
SERVED_FOLDERS = ("data", "outputs", DISPLAYS)
"""The workspace folders whose files the API lists and serves (besides the manifest)."""
_MANIFEST_LIMIT = 64 * 1024 * 1024


def _display_size(directory: Path, path: str) -> int:
    """The size of a saved display (through a descriptor); 0 if it is gone."""
    try:
        anchor = safefs.open_anchor(directory)
    except DataSourceError:
        return 0
    try:
        with safefs.open_file(anchor, path) as file:
            return file.size
    except DataSourceError:
        return 0
    finally:
        os.close(anchor)


def _drop_display(directory: Path, path: str) -> None:
    """Remove a saved display (``unlinkat`` beneath the workspace's descriptor)."""
    with contextlib.suppress(DataSourceError, OSError):
        anchor = safefs.open_anchor(directory)
        try:
            safefs.remove(anchor, path)
        finally:
            os.close(anchor)


def _utf8(name: str) -> bool:
    """Whether a listed name (``surrogateescape``d bytes) is text a reply can carry."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _read_manifest(directory: Path) -> dict[str, Any]:
    """The chat's ``manifest.json`` (read through a descriptor), or an empty one."""
    try:
        anchor = safefs.open_anchor(directory)
    except DataSourceError:
        return {"files": {}}
    try:
        manifest = json.loads(safefs.read_file(anchor, MANIFEST, limit=_MANIFEST_LIMIT))
    except (OSError, ValueError, DataSourceError):
        return {"files": {}}
    finally:
        os.close(anchor)
    return manifest if isinstance(manifest, dict) else {"files": {}}


def _brief_code(paths: list[str]) -> str:
    """Code (run in the sandbox) that describes each file: the data brief."""
    return _BRIEF.replace("__PATHS__", json.dumps(paths))


_BRIEF = r"""
import json as _json
import pandas as _pd
from IPython.display import display as _display

def _ds_brief(_path):
    _low = _path.lower()
    if _low.endswith(".parquet"):
        _df = _pd.read_parquet(_path)
    elif _low.endswith((".csv", ".txt")):
        _df = _pd.read_csv(_path)
    elif _low.endswith((".json", ".jsonl", ".ndjson")):
        _df = _pd.read_json(_path, lines=not _low.endswith(".json"))
    else:
        print(f"{_path}: not a table (csv, parquet or json); skipped")
        return
    _cols = []
    for _name in _df.columns:
        _s = _df[_name]
        _col = {"name": str(_name), "type": str(_s.dtype),
                "null_fraction": round(float(_s.isna().mean()), 4) if len(_s) else 0.0,
                "distinct": int(_s.nunique(dropna=True))}
        try:
            if len(_s.dropna()):
                _col["min"], _col["max"] = str(_s.min())[:100], str(_s.max())[:100]
        except TypeError:
            pass
        _cols.append(_col)
    _preview = _json.loads(
        _df.head(5).to_json(orient="split", date_format="iso", default_handler=str)
    )
    _display({"application/vnd.datasources.table+json": {
        "title": _path, "rows": int(len(_df)), "columns": _cols,
        "preview": {"columns": [str(c) for c in _preview["columns"]], "rows": _preview["data"]},
    }}, raw=True)

for _p in __PATHS__:
    try:
        _ds_brief(_p)
    except Exception as _e:
        print(f"{_p}: could not be read ({type(_e).__name__}: {_e})")
"""


def _parquet_preview(directory: Path, relative: str, rows: int) -> dict[str, Any]:
    """The first ``rows`` rows of a workspace Parquet file as a table part (bounded memory)."""
    import pyarrow.parquet as pq

    anchor = safefs.open_anchor(directory)
    try:
        opened = safefs.open_file(anchor, relative)
    finally:
        os.close(anchor)
    with opened, os.fdopen(os.dup(opened.fd), "rb") as handle:
        parquet = pq.ParquetFile(handle)
        batch = next(parquet.iter_batches(batch_size=rows), None)
        schema = parquet.schema_arrow
        total = parquet.metadata.num_rows
    shown = batch.to_pylist() if batch is not None else []
    names = schema.names
    return {
        "columns": names,
        "types": [str(field.type) for field in schema],
        "rows": [[_jsonable(row[name]) for name in names] for row in shown],
        "row_count": total,
        "truncated": total > len(shown),
        "path": relative,
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _data_folders(directory: Path) -> set[str]:
    """Names of the source folders under the chat's ``data/``."""
    try:
        with os.scandir(directory / "data") as entries:
            return {e.name for e in entries if e.is_dir(follow_symlinks=False)}
    except OSError:
        return set()
