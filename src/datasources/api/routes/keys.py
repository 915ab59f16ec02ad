"""``/api/v1/keys``: a signed-in user's own API keys (create, list, revoke).

Only people manage keys: a request made with an API key gets 403, so a leaked key cannot
mint more. Each user sees and revokes only their owner's keys; another owner's key id
answers like a missing one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from datasources.api.routes.datasources import COMMON, _problem
from datasources.api.security import CurrentUser
from datasources.errors import NotFoundError
from datasources.keys import ApiKeys
from datasources.store import Store

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/keys", tags=["keys"])

KEYS: dict[int | str, dict[str, Any]] = {
    **COMMON,
    403: _problem("Only a signed-in user (not an API key) manages keys."),
}
KEY: dict[int | str, dict[str, Any]] = {**KEYS, 404: _problem("No such key of this owner.")}
NO_STORE = {"Cache-Control": "no-store"}


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"name": "ci"}]})

    name: str = Field(min_length=1, max_length=200)


class KeyOut(BaseModel):
    id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None


class CreatedKeyOut(KeyOut):
    """A new key; ``key`` is shown this once and never again."""

    owner: str
    key: str


class KeyList(BaseModel):
    items: list[KeyOut]


def _keys(request: Request) -> ApiKeys:
    keys: ApiKeys = request.app.state.keys
    return keys


@router.get("", response_model=KeyList, summary="List your API keys", responses=KEYS)
async def list_keys(request: Request, caller: CurrentUser) -> KeyList:
    found = await _keys(request).list_keys(owner=caller.owner)
    return KeyList(
        items=[
            KeyOut(id=k.id, name=k.name, created_at=k.created_at, revoked_at=k.revoked_at)
            for k in found
        ]
    )


@router.post("", status_code=201, response_model=CreatedKeyOut, summary="Create an API key",
             responses=KEYS)  # fmt: skip
async def create_key(
    request: Request, body: KeyCreate, caller: CurrentUser, response: Response
) -> CreatedKeyOut:
    created = await _keys(request).create(body.name, owner=caller.owner, new_owner=True)
    store: Store = request.app.state.registry.store
    stored = await store.get_api_key(created.id)
    response.headers.update(NO_STORE)
    return CreatedKeyOut(
        id=created.id,
        name=created.name,
        owner=created.owner,
        key=created.key,
        created_at=stored.created_at if stored else datetime.now().astimezone(),
    )


@router.delete("/{key_id}", status_code=204, summary="Revoke one of your API keys",
               responses=KEY)  # fmt: skip
async def revoke_key(
    request: Request,
    key_id: Annotated[str, Path(min_length=1, max_length=64)],
    caller: CurrentUser,
) -> Response:
    store: Store = request.app.state.registry.store
    key = await store.get_api_key(key_id)
    if key is None or key.owner != caller.owner:
        raise NotFoundError(f"API key {key_id!r} not found.")
    await _keys(request).revoke(key.id)
    return Response(status_code=204)
