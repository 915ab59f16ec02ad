"""``PATCH /api/v1/chats/{chat_id}``: rename a chat (owned like every chat route)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel, ConfigDict, Field

from datasources.api.routes.chats import CHAT, ChatOut
from datasources.api.security import CurrentPrincipal
from datasources.errors import NotFoundError
from datasources.store import Store

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/chats", tags=["chats"])


class ChatUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"title": "Q4"}]})

    title: str = Field(max_length=200)


@router.patch("/{chat_id}", response_model=ChatOut, summary="Rename a chat", responses=CHAT)
async def rename_chat(
    request: Request,
    chat_id: Annotated[str, Path(min_length=1, max_length=64)],
    body: ChatUpdate,
    caller: CurrentPrincipal,
) -> ChatOut:
    store: Store = request.app.state.registry.store
    chat = await store.rename_chat(caller.owner, chat_id, body.title.strip(), datetime.now(UTC))
    if chat is None:
        raise NotFoundError(f"Chat {chat_id!r} not found.")
    return ChatOut.of(chat)
