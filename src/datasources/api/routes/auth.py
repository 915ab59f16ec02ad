"""Signing in and out of the workbench: ``/login`` (a plain form) and ``/api/v1/session``.

The form posts name and password; the answer is a redirect with a fresh session cookie,
or the form again with a fixed message (nothing the visitor typed is echoed back). A
token presented before signing in is ended and never promoted (no fixation). Failures
are counted per name and per address (:class:`~datasources.api.browser.LoginLimiter`).
"""

from __future__ import annotations

import html
import json
import logging
import re
from datetime import UTC, datetime
from string import Template
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Form, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import BaseModel

from datasources.api.browser import (
    LoginLimiter,
    clear_session_cookie,
    cookie_max_age,
    is_https,
    origin_allowed,
    session_token,
    set_session_cookie,
    signed_in,
)
from datasources.api.routes.datasources import COMMON, _problem
from datasources.api.security import CurrentUser
from datasources.config import Settings
from datasources.users import MAX_PASSWORD_CHARS, Users
from datasources.web import read_page
from datasources.websessions import SignedIn, WebSessions

__all__ = ["router", "safe_next"]

logger = logging.getLogger("datasources.auth")

router = APIRouter()

_NEXT = re.compile(r"^/(?![/\\])[A-Za-z0-9._~%/-]{0,1000}$")
NO_STORE = {"Cache-Control": "no-store"}


def safe_next(value: str | None) -> str:
    """Where to go after signing in: a path of this site, else ``/``."""
    if not value or not _NEXT.match(value) or value.startswith(("/login", "/api/", "/static/")):
        return "/"
    return value


def _page(
    notice: str, next_path: str, status: int, headers: dict[str, str] | None = None
) -> HTMLResponse:
    template = Template(read_page("login.html"))
    body = template.substitute(
        notice=html.escape(notice),
        notice_hidden="" if notice else " hidden",
        next=html.escape(next_path, quote=True),
    )
    return HTMLResponse(body, status_code=status, headers={**NO_STORE, **(headers or {})})


@router.get("/login", include_in_schema=False)
async def login_page(request: Request, next: str | None = None) -> Response:
    target = safe_next(next)
    if await signed_in(request) is not None:
        return RedirectResponse(target, status_code=303, headers=NO_STORE)
    return _page("", target, 200)


@router.post("/login", include_in_schema=False)
async def login(
    request: Request,
    name: Annotated[str, Form()] = "",
    password: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "/",
) -> Response:
    settings: Settings = request.app.state.settings
    target = safe_next(next)
    client = request.client.host if request.client else None
    if not origin_allowed(request, settings.api):
        logger.warning(json.dumps({"event": "login_refused", "reason": "origin", "client": client}))
        return _page("This sign-in form was sent from another site; use this page.", target, 403)
    limiter: LoginLimiter = request.app.state.login_limiter
    name = name[:200]
    wait = await limiter.retry_after(name, client)
    if wait is not None:
        logger.warning(json.dumps({"event": "login_limited", "client": client}))
        minutes = max(1, round(wait / 60))
        return _page(
            f"Too many failed sign-ins. Try again in about {minutes} minute"
            f"{'s' if minutes != 1 else ''}.",
            target,
            429,
            {"Retry-After": str(wait)},
        )
    users: Users = request.app.state.users
    user = await users.verify(name, password[: MAX_PASSWORD_CHARS + 1])
    if user is None:
        await limiter.failed(name, client)
        logger.warning(json.dumps({"event": "login_failed", "client": client}))
        return _page("Wrong name or password.", target, 401)
    await limiter.succeeded(name)
    sessions: WebSessions = request.app.state.sessions
    await sessions.end(session_token(request))  # whatever was presented before: gone
    new = await sessions.start(user)
    logger.info(json.dumps({"event": "login", "user_id": user.id, "client": client}))
    response = RedirectResponse(target, status_code=303, headers=NO_STORE)
    set_session_cookie(
        response,
        request,
        new.token,
        secure=is_https(request, settings.api),
        max_age=cookie_max_age(new.expires_at, datetime.now(UTC)),
    )
    return response


class SessionUser(BaseModel):
    id: str
    name: str
    owner: str


class SessionOut(BaseModel):
    """The signed-in user, and the CSRF token to send in ``X-CSRF-Token`` on changes."""

    user: SessionUser
    csrf_token: str
    expires_at: datetime
    idle_seconds: float


SESSION: dict[int | str, dict[str, Any]] = {
    **COMMON,
    403: _problem("Not a signed-in browser (an API key), or a request from another site."),
}


@router.get(
    "/api/v1/session",
    response_model=SessionOut,
    summary="The signed-in user and the session's CSRF token (browsers only)",
    tags=["session"],
    responses=SESSION,
)
async def get_session(request: Request, caller: CurrentUser, response: Response) -> SessionOut:
    session: SignedIn = request.state.web_session
    sessions: WebSessions = request.app.state.sessions
    response.headers.update(NO_STORE)
    return SessionOut(
        user=SessionUser(id=session.user.id, name=session.user.name, owner=session.user.owner),
        csrf_token=session.csrf_token,
        expires_at=session.session.expires_at,
        idle_seconds=sessions.idle.total_seconds(),
    )


@router.delete(
    "/api/v1/session",
    status_code=204,
    summary="Sign out (ends the session; the cookie is cleared)",
    tags=["session"],
    responses=SESSION,
)
async def sign_out(request: Request, caller: CurrentUser) -> Response:
    sessions: WebSessions = request.app.state.sessions
    await sessions.end(session_token(request))
    logger.info(json.dumps({"event": "logout", "user_id": caller.user_id}))
    response = Response(status_code=204, headers=NO_STORE)
    clear_session_cookie(response)
    return response


def unauthenticated_page(request: Request) -> RedirectResponse:
    """Send a visitor who is not signed in to the form, coming back here afterwards."""
    target = safe_next(request.url.path)
    query = "" if target == "/" else f"?next={quote(target, safe='/')}"
    return RedirectResponse(f"/login{query}", status_code=303, headers=NO_STORE)
