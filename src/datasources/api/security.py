"""Who is calling: API-key authentication and per-key rate limiting, as dependencies."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from datasources.api.errors import ApiError
from datasources.keys import ApiKeys, Principal
from datasources.registry import DataSourceRegistry
from datasources.shared.ratelimit import RateLimiter

__all__ = ["CurrentPrincipal", "OwnerRegistry", "RateLimiter", "bearer", "principal"]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `datasources keys create`: `Authorization: Bearer dsk_…`.",
)


def _unauthorized(detail: str) -> ApiError:
    return ApiError(401, "unauthorized", detail, headers={"WWW-Authenticate": "Bearer"})


async def principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller, from ``Authorization: Bearer <key>``; 401 without a valid key, 429 too fast."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise _unauthorized("An API key is required: Authorization: Bearer <key>.")
    keys: ApiKeys = request.app.state.keys
    found = await keys.authenticate(credentials.credentials)
    if found is None:
        raise _unauthorized("The API key is not valid.")
    request.scope.setdefault("state", {})["key_id"] = found.key_id
    limiter: RateLimiter = request.app.state.limiter
    wait = await limiter.take(found.key_id)
    if wait is not None:
        raise ApiError(
            429,
            "rate_limited",
            "Too many requests for this API key; slow down.",
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
    return found


CurrentPrincipal = Annotated[Principal, Depends(principal)]


async def owner_registry(request: Request, caller: CurrentPrincipal) -> DataSourceRegistry:
    """The registry as the caller's owner sees it: nobody else's sources exist there."""
    registry: DataSourceRegistry = request.app.state.registry
    return registry.scoped(caller.owner)


OwnerRegistry = Annotated[DataSourceRegistry, Depends(owner_registry)]


INERT_FILE_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}
"""Sent with every file the API serves: its bytes and its type come from someone else
(sandboxed code, a remote endpoint), so a browser must neither sniff nor run it."""
