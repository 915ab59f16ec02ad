"""The workbench in the browser: its pages, its assets, and the headers that keep it inert.

``/`` and the deep links (``/chats/{id}``, ``/sources``, ``/sources/{id}``,
``/sources/{id}/sql``, ``/settings``) all answer with the same app shell, which routes
on the client; a visitor who is not signed in is sent to ``/login`` and back. Assets
come from :mod:`datasources.web` under ``/static/app``; nothing is loaded from another
origin.

Every response gets the security headers below unless it set its own (downloads set
``Content-Security-Policy: sandbox``; the API docs allow their own inline script by
hash). The app's policy allows scripts, styles and requests of this origin only, no
inline script, no ``eval``, no framing, and Trusted Types with no policy at all, so
assigning a string to ``innerHTML`` throws in the browser instead of parsing markup.
"""

from __future__ import annotations

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datasources.api.browser import signed_in
from datasources.api.routes.auth import unauthenticated_page
from datasources.web import ASSETS, read_page

__all__ = ["APP_CSP", "SECURITY_HEADERS", "SecurityHeadersMiddleware", "install_web"]

STATIC_URL = "/static/app"

APP_CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob: data:",
        "connect-src 'self'",
        "font-src 'self'",
        "manifest-src 'self'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    ]
)

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": APP_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # "same-origin", not "no-referrer": under no-referrer a browser sends "Origin: null"
    # with a form post, and the sign-in form's Origin check would refuse every sign-in.
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
}
_ENCODED = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

router = APIRouter(include_in_schema=False)


class SecurityHeadersMiddleware:
    """Add :data:`SECURITY_HEADERS` to every response that does not set them itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((k, v) for k, v in _ENCODED if k not in present)
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _shell(request: Request) -> Response:
    if await signed_in(request) is None:
        return unauthenticated_page(request)
    return HTMLResponse(read_page("index.html"), headers={"Cache-Control": "no-store"})


@router.get("/")
async def home(request: Request) -> Response:
    return await _shell(request)


@router.get("/chats/{chat_id}")
async def chat_page(request: Request, chat_id: str) -> Response:
    return await _shell(request)


@router.get("/sources")
async def sources_page(request: Request) -> Response:
    return await _shell(request)


@router.get("/sources/{source_id}")
async def source_page(request: Request, source_id: str) -> Response:
    return await _shell(request)


@router.get("/sources/{source_id}/sql")
async def sql_page(request: Request, source_id: str) -> Response:
    return await _shell(request)


@router.get("/settings")
async def settings_page(request: Request) -> Response:
    return await _shell(request)


def install_web(app: FastAPI) -> None:
    """Serve the workbench's pages and assets."""
    app.mount(STATIC_URL, StaticFiles(directory=ASSETS), name="app-assets")
    app.include_router(router)
