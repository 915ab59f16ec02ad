"""``/api/v1/chats``: chats, messages that reference data, files, and code execution.

Owned and isolated exactly like data sources: another owner's chat id is a 404.
"""

from __future__ import annotations

import json
import mimetypes
import re
from collections.abc import AsyncIterator
from datetime import datetime
from email.utils import formatdate
from typing import Annotated, Any
from urllib.parse import quote

import anyio
from fastapi import APIRouter, Body, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from datasources import safefs
from datasources.api.deps import ChatsDep, PageLimit
from datasources.api.paging import keyset_page
from datasources.api.routes.datasources import COMMON, _problem
from datasources.api.security import INERT_FILE_HEADERS, CurrentPrincipal
from datasources.chat import DataRef, Event
from datasources.chat.models import FetchedFile
from datasources.errors import DataSourceError
from datasources.sandbox.session import Execution, Part
from datasources.store import StoredChat, StoredMessage

__all__ = ["router"]

CHAT: dict[int | str, dict[str, Any]] = {**COMMON, 404: _problem("No such chat for this key.")}
WORK: dict[int | str, dict[str, Any]] = {
    **CHAT,
    403: _problem("A referenced source refused the access."),
    503: _problem("Code cannot run here (no sandbox), or a source cannot be reached."),
}

ChatId = Annotated[str, Path(min_length=1, max_length=64, description="The chat's id.")]


class ChatCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"title": "Q3"}]})

    title: str = Field(default="", max_length=200)


_EMPTY = ChatCreate()


class ChatOut(BaseModel):
    id: str
    title: str
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, chat: StoredChat) -> ChatOut:
        return cls(
            id=chat.id, title=chat.title, created_at=chat.created_at, updated_at=chat.updated_at
        )


class ChatList(BaseModel):
    items: list[ChatOut]
    next_cursor: str | None = None


class MessageCreate(BaseModel):
    """A message. ``@source:path``, ``@source:folder/`` and ``@source:schema.table`` in the
    content are references too; fenced ```python blocks run; ``/sql …`` queries."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "content": "Brief me on @lake:sales/2026/jan.csv and @warehouse:public.regions",
                    "data_source_refs": [
                        {"data_source_id": "warehouse", "query": "SELECT * FROM targets"}
                    ],
                }
            ]
        },
    )

    content: str = Field(min_length=1, max_length=100_000)
    data_source_refs: list[DataRef] = Field(default_factory=list, max_length=50)


class MessageOut(BaseModel):
    id: str
    role: str
    content: str
    refs: list[dict[str, Any]]
    parts: list[Part]
    created_at: datetime

    @classmethod
    def of(cls, message: StoredMessage) -> MessageOut:
        return cls(
            id=message.id,
            role=message.role,
            content=message.content,
            refs=message.refs,
            parts=[Part.model_validate(p) for p in message.parts],
            created_at=message.created_at,
        )


class MessageList(BaseModel):
    items: list[MessageOut]
    next_cursor: str | None = None


class Exchange(BaseModel):
    """The stored user message and the reply."""

    message: MessageOut
    reply: MessageOut


class ExecuteRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"code": "df.describe()", "timeout": 30}]}
    )

    code: str = Field(min_length=1, max_length=1_000_000)
    timeout: float | None = Field(default=None, gt=0, le=3600)


class FileList(BaseModel):
    items: list[FetchedFile]


router = APIRouter(prefix="/api/v1/chats", tags=["chats"])


@router.post("", status_code=201, response_model=ChatOut, summary="Start a chat",
             responses=COMMON)  # fmt: skip
async def create_chat(
    chats: ChatsDep, caller: CurrentPrincipal, body: Annotated[ChatCreate, Body()] = _EMPTY
) -> ChatOut:
    chat = await chats.create_chat(caller.owner, body.title)
    return ChatOut.of(chat)


@router.get("", response_model=ChatList, summary="List chats", responses=COMMON)
async def list_chats(
    chats: ChatsDep,
    caller: CurrentPrincipal,
    limit: PageLimit,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> ChatList:
    page, next_cursor = await keyset_page(
        lambda n, after: chats.list_chats(caller.owner, limit=n, after=after),
        lambda chat: chat.id,
        limit=limit,
        cursor=cursor,
    )
    return ChatList(items=[ChatOut.of(c) for c in page], next_cursor=next_cursor)


@router.get("/{chat_id}", response_model=ChatOut, summary="Get a chat", responses=CHAT)
async def get_chat(chats: ChatsDep, chat_id: ChatId, caller: CurrentPrincipal) -> ChatOut:
    return ChatOut.of(await chats.get_chat(caller.owner, chat_id))


@router.delete("/{chat_id}", status_code=204, summary="Delete a chat, its files and session",
               responses=CHAT)  # fmt: skip
async def delete_chat(chats: ChatsDep, chat_id: ChatId, caller: CurrentPrincipal) -> Response:
    await chats.delete_chat(caller.owner, chat_id)
    return Response(status_code=204)


@router.get("/{chat_id}/messages", response_model=MessageList, summary="List messages",
            responses=CHAT, response_model_exclude_none=True)  # fmt: skip
async def list_messages(
    chats: ChatsDep,
    chat_id: ChatId,
    caller: CurrentPrincipal,
    limit: PageLimit,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> MessageList:
    page, next_cursor = await keyset_page(
        lambda n, after: chats.messages(caller.owner, chat_id, limit=n, after=after),
        lambda message: message.id,
        limit=limit,
        cursor=cursor,
    )
    return MessageList(items=[MessageOut.of(m) for m in page], next_cursor=next_cursor)


@router.post(
    "/{chat_id}/messages",
    response_model=Exchange,
    response_model_exclude_none=True,
    summary="Send a message; the reply (or, with Accept: text/event-stream, its events)",
    responses={
        **WORK,
        200: {
            "description": "The message and the reply; as server-sent events when asked.",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
    },
)
async def post_message(
    request: Request,
    chats: ChatsDep,
    chat_id: ChatId,
    body: MessageCreate,
    caller: CurrentPrincipal,
) -> Any:
    # References are checked before anything streams, so a bad one is a plain 4xx.
    chat = await chats.get_chat(caller.owner, chat_id)
    resolved = await chats.prepare(caller.owner, body.content, body.data_source_refs)
    events = chats.post(
        caller.owner, chat.id, body.content, body.data_source_refs, resolved=resolved
    )
    if "text/event-stream" in request.headers.get("accept", ""):
        return StreamingResponse(
            _sse(events),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
    done: dict[str, Any] = {}
    async for event in events:
        if event.event == "done":
            done = event.data
    stored = await chats.messages(caller.owner, chat.id, limit=1000, after=None)
    by_id = {m.id: m for m in stored}
    return Exchange(
        message=MessageOut.of(by_id[done["user_message_id"]]),
        reply=MessageOut.of(by_id[done["message_id"]]),
    )


@router.post("/{chat_id}/execute", response_model=Execution, response_model_exclude_none=True,
             summary="Run code in the chat's session", responses=WORK)  # fmt: skip
async def execute(
    chats: ChatsDep, chat_id: ChatId, body: ExecuteRequest, caller: CurrentPrincipal
) -> Execution:
    return await chats.execute(caller.owner, chat_id, body.code, timeout=body.timeout)


@router.get("/{chat_id}/files", response_model=FileList, response_model_exclude_none=True,
            summary="Files of the workspace, with provenance", responses=CHAT)  # fmt: skip
async def list_files(chats: ChatsDep, chat_id: ChatId, caller: CurrentPrincipal) -> FileList:
    return FileList(items=await chats.files(caller.owner, chat_id))


@router.get(
    "/{chat_id}/files/{path:path}",
    summary="Download a workspace file, streamed",
    response_class=StreamingResponse,
    responses={
        **CHAT,
        400: _problem("The path is not safe."),
        200: {
            "description": "The file's bytes.",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
    },
)
async def get_file(
    request: Request,
    chats: ChatsDep,
    chat_id: ChatId,
    path: Annotated[str, Path(min_length=1, max_length=4096)],
    caller: CurrentPrincipal,
) -> Response:
    file = await chats.open_file(caller.owner, chat_id, path)
    return _stream_file(file, request.headers.get("range"))


_RANGE = re.compile(r"bytes=(\d{0,19})-(\d{0,19})")


def _byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``[start, end)`` of a single ``Range: bytes=…``; None: the whole file.

    Raises:
        ValueError: a range this file cannot satisfy (answered 416).
    """
    match = _RANGE.fullmatch(header.strip()) if header else None
    if match is None or match.group(1) == match.group(2) == "":
        return None  # absent, several ranges, or another unit: the whole file (RFC 9110)
    first, last = match.group(1), match.group(2)
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), min(int(last) + 1, size) if last else size
    if start >= size or start >= end:
        raise ValueError("unsatisfiable range")
    return start, end


def _stream_file(file: safefs.SafeFile, range_header: str | None = None) -> Response:
    """Stream the descriptor that was opened and checked — never the path again.

    Files come from sandboxed code: they are attachments, never sniffed, and sandboxed
    if a browser renders them anyway. A single byte range is honoured.
    """
    media_type = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Disposition": f"attachment; filename*=utf-8''{quote(file.name)}",
        **INERT_FILE_HEADERS,
        "Last-Modified": formatdate(file.mtime, usegmt=True),
    }
    try:
        span = _byte_range(range_header, file.size)
    except ValueError:
        file.close()
        return Response(status_code=416, headers={"Content-Range": f"bytes */{file.size}"})
    start, end = span or (0, file.size)
    headers["Content-Length"] = str(end - start)
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{file.size}"

    async def body() -> AsyncIterator[bytes]:
        try:
            chunks = file.chunks(start=start, end=end)
            while True:
                chunk = await anyio.to_thread.run_sync(next, chunks, None)
                if chunk is None:
                    break
                yield chunk
        finally:
            file.close()

    status = 200 if span is None else 206
    return StreamingResponse(body(), status_code=status, media_type=media_type, headers=headers)


async def _sse(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    try:
        async for event in events:
            data = json.dumps(event.data, default=str)
            yield f"event: {event.event}\ndata: {data}\n\n".encode()
    except DataSourceError as exc:
        payload = json.dumps({"code": exc.code, "message": exc.message})
        yield f"event: error\ndata: {payload}\n\n".encode()
