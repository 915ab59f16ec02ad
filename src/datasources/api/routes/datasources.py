"""``/api/v1/datasources``: manage sources and reach their data, for the caller's owner only.

Every route resolves the source through the caller's owner-scoped registry, so another
owner's id is indistinguishable from a missing one (404). Errors are raised as library
exceptions and turned into problem+json in :mod:`datasources.api.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, File, Form, Query, Response, UploadFile
from fastapi import Path as PathParam
from fastapi.responses import StreamingResponse

from datasources.api.deps import PageLimit, SettingsDep
from datasources.api.errors import PROBLEM_JSON, Problem
from datasources.api.paging import keyset_page
from datasources.api.schemas import (
    DataSourceCreate,
    DataSourceList,
    DataSourceOut,
    DataSourceUpdate,
    ItemPage,
    QueryRequest,
)
from datasources.api.security import INERT_FILE_HEADERS, OwnerRegistry
from datasources.connectors.sql import as_sql
from datasources.models import ConnectionStatus, DataItem
from datasources.query_models import QueryResult, SchemaInfo

__all__ = ["COMMON", "REMOTE", "SOURCE", "router"]


def _problem(description: str) -> dict[str, Any]:
    return {"model": Problem, "description": description, "content": {PROBLEM_JSON: {}}}


COMMON: dict[int | str, dict[str, Any]] = {
    400: _problem("The request can never succeed as sent (bad cursor, path, SQL…)."),
    401: _problem("No API key, or not a valid one."),
    413: _problem("The request body is too large."),
    422: _problem("The request does not match the schema."),
    429: _problem("Too many requests for this key; see Retry-After."),
    500: _problem("An internal error (logged with the request id)."),
}
SOURCE: dict[int | str, dict[str, Any]] = {
    **COMMON,
    404: _problem("No such data source for this API key's owner."),
}
REMOTE: dict[int | str, dict[str, Any]] = {
    **SOURCE,
    403: _problem("Not allowed (read-only source, refused target, missing permission)."),
    424: _problem("The data source rejected its stored credentials."),
    503: _problem("The data source cannot be reached."),
    504: _problem("The data source did not answer in time."),
}

SourceId = Annotated[
    str,
    PathParam(min_length=1, max_length=200, description="The data source's id (or its name)."),
]
ItemPath = Annotated[
    str, Query(min_length=1, max_length=4096, description="The item's path in the source.")
]


def _content_disposition(name: str) -> str:
    plain = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_" for c in name)
    encoded = quote(name, safe="")
    return f"attachment; filename=\"{plain or 'download'}\"; filename*=UTF-8''{encoded}"


router = APIRouter(prefix="/api/v1/datasources", tags=["data sources"])


@router.post(
    "",
    status_code=201,
    response_model=DataSourceOut,
    summary="Register a data source",
    responses={
        **COMMON,
        403: _problem("The source points somewhere this service may not reach."),
        409: _problem("The id or name is taken."),
        424: _problem("The source rejected the credentials given."),
    },
)
async def create_source(body: DataSourceCreate, registry: OwnerRegistry) -> DataSourceOut:
    source = await registry.register_data_source(body.model_dump())
    return DataSourceOut.of(source)


@router.get("", response_model=DataSourceList, summary="List data sources", responses=COMMON)
async def list_sources(
    registry: OwnerRegistry,
    limit: PageLimit,
    cursor: Annotated[str | None, Query(max_length=1000)] = None,
) -> Response:
    # The registry keeps each source's public JSON document with its cached listing;
    # the page is those documents joined, not models serialised again per request.
    page, next_cursor = await keyset_page(
        lambda n, after: registry.list_data_sources_json(limit=n, after=after),
        lambda document: str(json.loads(document)["id"]),
        limit=limit,
        cursor=cursor,
    )
    body = b'{"items":[' + b",".join(page) + b'],"next_cursor":'
    body += json.dumps(next_cursor).encode() + b"}"
    return Response(body, media_type="application/json")


@router.get(
    "/{source_id}", response_model=DataSourceOut, summary="Get a data source", responses=SOURCE
)
async def get_source(source_id: SourceId, registry: OwnerRegistry) -> DataSourceOut:
    return DataSourceOut.of(await registry.get_data_source(source_id))


@router.patch(
    "/{source_id}",
    response_model=DataSourceOut,
    summary="Change a data source",
    responses={**REMOTE, 409: _problem("The new name is taken.")},
)
async def update_source(
    source_id: SourceId, body: DataSourceUpdate, registry: OwnerRegistry
) -> DataSourceOut:
    changes = body.model_dump(exclude_unset=True)
    source = await registry.update_data_source(source_id, changes)
    return DataSourceOut.of(source)


@router.delete("/{source_id}", status_code=204, summary="Remove a data source", responses=SOURCE)
async def delete_source(source_id: SourceId, registry: OwnerRegistry) -> Response:
    await registry.remove_data_source(source_id)
    return Response(status_code=204)


@router.post(
    "/{source_id}/test",
    response_model=ConnectionStatus,
    summary="Test the connection (with warnings)",
    responses=SOURCE,
)
async def test_source(source_id: SourceId, registry: OwnerRegistry) -> ConnectionStatus:
    return await registry.test_data_source(source_id)


@router.get(
    "/{source_id}/items",
    response_model=ItemPage,
    summary="List items (cursor pagination from the source)",
    responses=REMOTE,
)
async def list_items(
    source_id: SourceId,
    registry: OwnerRegistry,
    limit: PageLimit,
    prefix: Annotated[str | None, Query(max_length=4096)] = None,
    delimiter: Annotated[str | None, Query(min_length=1, max_length=8)] = None,
    glob: Annotated[str | None, Query(max_length=4096)] = None,
    cursor: Annotated[str | None, Query(max_length=8192)] = None,
) -> ItemPage:
    async with registry.get_connector(source_id) as connector:
        page = await connector.list_page(
            prefix,
            limit=limit,
            cursor=cursor,
            delimiter=delimiter,
            glob=glob,
        )
    return ItemPage(items=page.items, next_cursor=page.next_cursor)


@router.get(
    "/{source_id}/metadata",
    response_model=DataItem,
    summary="Metadata of one item",
    responses=REMOTE,
)
async def item_metadata(source_id: SourceId, path: ItemPath, registry: OwnerRegistry) -> DataItem:
    async with registry.get_connector(source_id) as connector:
        return await connector.get_metadata(path)


@router.get(
    "/{source_id}/schema",
    response_model=SchemaInfo,
    summary="Schema of a database source",
    responses=REMOTE,
)
async def source_schema(
    source_id: SourceId,
    registry: OwnerRegistry,
    refresh: bool = False,
) -> SchemaInfo:
    async with registry.get_connector(source_id) as connector:
        return await as_sql(connector).get_schema(refresh=refresh)


@router.post(
    "/{source_id}/query",
    response_model=QueryResult,
    summary="Run one read-only SQL statement",
    responses=REMOTE,
)
async def run_query(
    source_id: SourceId, body: QueryRequest, registry: OwnerRegistry
) -> QueryResult:
    async with registry.get_connector(source_id) as connector:
        return await as_sql(connector).execute_query(
            body.sql, body.params, max_rows=body.max_rows, timeout=body.timeout
        )


@router.get(
    "/{source_id}/download",
    summary="Download one item, streamed",
    response_class=StreamingResponse,
    responses={
        **REMOTE,
        200: {
            "description": "The item's bytes (tables come as CSV).",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
    },
)
async def download(source_id: SourceId, path: ItemPath, registry: OwnerRegistry) -> Any:
    lease = registry.get_connector(source_id)
    connector = await lease.__aenter__()
    try:
        stream = await connector.open_stream(path)
    except BaseException:
        await lease.__aexit__(None, None, None)
        raise

    async def body() -> AsyncIterator[bytes]:
        try:
            async for chunk in stream.chunks():
                yield chunk
        finally:
            await lease.__aexit__(None, None, None)

    headers = {
        "Content-Disposition": _content_disposition(stream.item.name),
        **INERT_FILE_HEADERS,  # the type is the remote endpoint's: never trusted
    }
    if stream.size is not None:
        headers["Content-Length"] = str(stream.size)
    if stream.item.etag:
        headers["ETag"] = f'"{stream.item.etag}"'
    return StreamingResponse(body(), media_type=stream.media_type, headers=headers)


@router.post(
    "/{source_id}/upload",
    status_code=201,
    response_model=DataItem,
    summary="Upload one file (multipart, streamed, size-limited)",
    responses={**REMOTE, 409: _problem("The path exists and overwrite is false.")},
)
async def upload(
    settings: SettingsDep,
    source_id: SourceId,
    registry: OwnerRegistry,
    file: Annotated[UploadFile, File(description="The file's bytes.")],
    path: Annotated[str, Form(min_length=1, max_length=4096, description="Target path.")],
    overwrite: Annotated[bool, Form()] = False,
) -> DataItem:
    tmp_dir = settings.home / "tmp"
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=tmp_dir, prefix="upload-")
    local = Path(name)
    try:
        with os.fdopen(fd, "wb") as out:
            while chunk := await file.read(1024 * 1024):
                await asyncio.to_thread(out.write, chunk)
        async with registry.get_connector(source_id) as connector:
            return await connector.upload_data(local, path, overwrite=overwrite)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(local.unlink)
