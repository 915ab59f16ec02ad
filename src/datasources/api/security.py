"""Who is calling: API keys or a signed-in browser, and per-caller rate limiting, as
dependencies."""

from __future__ import annotations

import math
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from datasources.api.browser import check_browser_request, signed_in
from datasources.api.errors import ApiError
from datasources.keys import ApiKeys, Principal
from datasources.registry import DataSourceRegistry
from datasources.shared.ratelimit import RateLimiter

__all__ = [
    "CurrentPrincipal",
    "CurrentUser",
    "OwnerRegistry",
    "RateLimiter",
    "bearer",
    "principal",
]

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
    """The caller: from ``Authorization: Bearer <key>``, or from a signed-in browser's
    session cookie when no ``Authorization`` is sent; 401 without either, 403 for a
    cookie on a request another site could have made, 429 too fast."""
    found: Principal | None
    if "authorization" in request.headers:
        # A request with a key is judged by the key alone, never by a cookie beside it.
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise _unauthorized("An API key is required: Authorization: Bearer <key>.")
        keys: ApiKeys = request.app.state.keys
        found = await keys.authenticate(credentials.credentials)
        if found is None:
            raise _unauthorized("The API key is not valid.")
        request.scope.setdefault("state", {})["key_id"] = found.key_id
    else:
        session = await signed_in(request)
        if session is None:
            raise _unauthorized(
                "An API key is required: Authorization: Bearer <key> (or sign in at /login)."
            )
        check_browser_request(request, session, request.app.state.settings.api)
        found = Principal(owner=session.user.owner, key_id="", user_id=session.user.id)
        state = request.scope.setdefault("state", {})
        state["user_id"] = session.user.id
        state["web_session"] = session
    limiter: RateLimiter = request.app.state.limiter
    wait = await limiter.take(found.actor)
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


async def current_user(request: Request, caller: CurrentPrincipal) -> Principal:
    """A signed-in person (not a program's key): managing keys is theirs alone, so a
    leaked key cannot mint more keys."""
    if caller.user_id is None:
        raise ApiError(
            403, "session_required", "This route is for signed-in users of the workbench."
        )
    return caller


CurrentUser = Annotated[Principal, Depends(current_user)]


INERT_FILE_HEADERS: dict[str, str] = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "sandbox",
}
"""Sent with every file the API serves: its bytes and its type come from someone else
(sandboxed code, a remote endpoint), so a browser must neither sniff nor run it."""
