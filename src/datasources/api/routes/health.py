"""Liveness and readiness: no authentication, nothing about any owner's data."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from datasources.registry import DataSourceRegistry

__all__ = ["router"]

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    store: str
    pools: dict[str, int]


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    summary="Readiness: the store answers; connection totals",
    responses={503: {"model": Readiness, "description": "The store cannot be reached."}},
)
async def readyz(request: Request) -> Any:
    registry: DataSourceRegistry = request.app.state.registry
    ok = await registry.store.ping()
    stats = registry.pool_stats().values()
    # Totals only: per-source stats would name other owners' sources. One live connector
    # per source; "connections" are the server connections their driver pools hold.
    pools = {
        "connectors": len(stats),
        "connections": sum(s.connections for s in stats),
        "in_use": sum(s.in_use for s in stats),
    }
    body = {
        "status": "ready" if ok else "unavailable",
        "store": "ok" if ok else "down",
        "pools": pools,
    }
    return JSONResponse(body, status_code=200 if ok else 503)
