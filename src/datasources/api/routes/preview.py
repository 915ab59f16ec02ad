"""``/api/v1/datasources/{source_id}/preview``: the first rows of a CSV, JSON or Parquet
file, computed on the server in bounded memory (never the whole file)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam

from datasources.api.routes.datasources import REMOTE, _problem
from datasources.api.security import OwnerRegistry
from datasources.preview import Preview, preview_item

__all__ = ["router"]

router = APIRouter(prefix="/api/v1/datasources", tags=["data sources"])

PREVIEW: dict[int | str, dict[str, Any]] = {
    **REMOTE,
    400: _problem("Not a previewable format (CSV, TSV, JSON, JSON lines, Parquet), or damaged."),
    413: _problem("A Parquet file over 64 MiB, or a JSON document over 1 MiB."),
}


@router.get(
    "/{source_id}/preview",
    response_model=Preview,
    summary="The first rows of a CSV, JSON or Parquet file",
    responses=PREVIEW,
)
async def preview(
    request: Request,
    source_id: Annotated[str, PathParam(min_length=1, max_length=200)],
    path: Annotated[str, Query(min_length=1, max_length=4096)],
    registry: OwnerRegistry,
    rows: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Preview:
    tmp_dir = request.app.state.settings.home / "tmp"
    async with registry.get_connector(source_id) as connector:
        return await preview_item(connector, path, rows=rows, tmp_dir=tmp_dir)
