"""``create_app(settings)``: the FastAPI application, built per call (no import-time state).

The lifespan opens the registry (store, migrations) and closes every pool on shutdown.
``DataSourceRegistry`` and :class:`~datasources.keys.ApiKeys` are the same core the CLI
and the library use; the routes are a thin view over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from datasources import __version__
from datasources.api.browser import LoginLimiter
from datasources.api.deps import document_page_limits
from datasources.api.docs import install_docs
from datasources.api.errors import install_error_handlers
from datasources.api.middleware import RequestContextMiddleware
from datasources.api.routes import auth, chat_titles, datasources, health
from datasources.api.routes import chats as chat_routes
from datasources.api.routes import keys as key_routes
from datasources.api.routes import preview as preview_routes
from datasources.api.routes import types as type_routes
from datasources.api.web import SecurityHeadersMiddleware, install_web
from datasources.chat import ChatService
from datasources.config import Settings
from datasources.credentials import install_log_redaction
from datasources.keys import ApiKeys
from datasources.registry import DataSourceRegistry
from datasources.sandbox.factory import sandbox_manager
from datasources.shared import SharedState
from datasources.users import Users
from datasources.websessions import WebSessions

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

DESCRIPTION = """\
Uniform, safe access to external data for an AI data-analysis assistant.

Every route except `/healthz` and `/readyz` needs `Authorization: Bearer <API key>`
(create one with `datasources keys create NAME`), or, from the workbench's own pages, a
signed-in session (cookie plus `X-CSRF-Token` on changes). Each key acts for one owner and sees
only that owner's data sources: another owner's id answers exactly like a missing one.
Errors are RFC 9457 `application/problem+json` documents with a stable `code`.
"""


async def _expire_forever(chats: ChatService, sessions: WebSessions) -> None:
    """Delete old chats (and their workspaces) and ended sessions once an hour."""
    while True:
        try:
            removed = await chats.expire()
            if removed:
                logger.info("Deleted %d expired chats.", removed)
            await sessions.sweep()
        except Exception as exc:
            logger.warning("Expiring old chats failed: %s", type(exc).__name__)
        await asyncio.sleep(3600)


def create_app(
    settings: Settings | None = None, *, registry: DataSourceRegistry | None = None
) -> FastAPI:
    """Build the service.

    Args:
        settings: Everything configurable; default read from the environment.
        registry: Use this registry (tests, embedding); it is opened, and closed on
            shutdown only if the app created it. By default one is built from
            ``settings`` with the outbound-target policy enforced.
    """
    settings = settings or Settings()
    install_log_redaction()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        own = registry is None
        current = registry or DataSourceRegistry.from_settings(settings, enforce_outbound=True)
        await current.open()
        app.state.registry = current
        app.state.keys = ApiKeys(
            current.store,
            cache_seconds=settings.api.key_cache_seconds,
            cache_trusted=shared.cache_trusted,
        )
        app.state.users = Users(current.store)
        app.state.sessions = WebSessions(
            current.store,
            idle_seconds=settings.api.session_idle_seconds,
            max_seconds=settings.api.session_max_seconds,
        )
        await shared.start(current, app.state.keys)
        sandboxes = sandbox_manager(settings)
        await sandboxes.start()
        provider = None
        if settings.llm_model:
            from datasources.chat.llm import OpenAICompatibleProvider

            provider = OpenAICompatibleProvider(
                base_url=settings.llm_base_url,
                model=settings.llm_model,
                api_key=settings.llm_api_key,
            )
        chats = ChatService(current, sandboxes, settings, provider)
        app.state.chats = chats
        expiry = asyncio.create_task(_expire_forever(chats, app.state.sessions))
        try:
            yield
        finally:
            expiry.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await expiry
            await sandboxes.close()
            await shared.close()
            if own:
                await current.close()

    app = FastAPI(
        title="datasources",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # served from local assets by install_docs: no CDN
        redoc_url=None,
        openapi_tags=[
            {"name": "data sources", "description": "Register sources and reach their data."},
            {"name": "chats", "description": "Chats with data: references, files, code."},
            {"name": "session", "description": "The signed-in browser's user and CSRF token."},
            {"name": "keys", "description": "A signed-in user's own API keys."},
            {"name": "health", "description": "Liveness and readiness, without auth."},
        ],
    )
    app.state.settings = settings
    # Rate limits and cache invalidation: per process, or shared through Redis/PostgreSQL.
    shared = app.state.shared = SharedState(settings)
    app.state.limiter = shared.limiter
    app.state.login_limiter = LoginLimiter.from_settings(shared, settings.api)
    install_error_handlers(app)
    install_docs(app)
    install_web(app)
    app.include_router(health.router)
    app.include_router(auth.router)
    app.include_router(key_routes.router)
    app.include_router(type_routes.router)
    app.include_router(datasources.router)
    app.include_router(preview_routes.router)
    app.include_router(chat_routes.router)
    app.include_router(chat_titles.router)
    document_page_limits(app, settings.api)
    app.add_middleware(SecurityHeadersMiddleware)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.api.max_body_bytes,
        max_upload_bytes=settings.api.max_upload_bytes,
        access_log=settings.api.access_log,
    )
    return app
