"""What routes depend on, as ``Annotated`` aliases (the fastapi-template habit).

A route names what it needs — ``chats: ChatsDep``, ``settings: SettingsDep``,
``limit: PageLimit`` — and FastAPI resolves it per request from the app it runs in
(:func:`~datasources.api.app.create_app` puts the service objects on ``app.state``).
Routes are module-level functions; nothing is built per app but the app itself.
The caller and its owner-scoped registry are in :mod:`datasources.api.security`.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import Field, TypeAdapter, ValidationError

from datasources.chat import ChatService
from datasources.config import ApiSettings, Settings

__all__ = [
    "ChatsDep",
    "PageLimit",
    "SettingsDep",
    "chat_service",
    "document_page_limits",
    "page_limit",
    "settings",
]


def settings(request: Request) -> Settings:
    """The settings the app was built with."""
    found: Settings = request.app.state.settings
    return found


SettingsDep = Annotated[Settings, Depends(settings)]


def chat_service(request: Request) -> ChatService:
    """The app's chat service (made in its lifespan)."""
    found: ChatService = request.app.state.chats
    return found


ChatsDep = Annotated[ChatService, Depends(chat_service)]


def page_limit(
    current: SettingsDep,
    limit: Annotated[
        int | None, Query(ge=1, description="Page size, at most the service's max_page_size.")
    ] = None,
) -> int:
    """``?limit=``, checked against this service's ``max_page_size``; the default if absent.

    The maximum is a setting, so it is checked here, with pydantic's own rule and words,
    and a too-large limit is answered 422 like any other invalid parameter.
    """
    api = current.api
    if limit is None:
        return api.default_page_size
    try:
        return TypeAdapter(Annotated[int, Field(le=api.max_page_size)]).validate_python(limit)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        raise RequestValidationError(
            [{**error, "loc": ("query", "limit", *error["loc"])} for error in errors]
        ) from None


PageLimit = Annotated[int, Depends(page_limit)]


def document_page_limits(app: FastAPI, api: ApiSettings) -> None:
    """State this service's ``max_page_size`` in its OpenAPI document.

    :func:`page_limit` enforces it at run time; every ``limit`` query parameter of the
    document gets the same ``maximum`` and says so in words, so clients and schema-based
    fuzzers know the bound.
    """
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = build()
            words = f"At most {api.max_page_size}."
            for operations in document.get("paths", {}).values():
                for operation in operations.values():
                    for parameter in operation.get("parameters", ()):
                        if parameter.get("in") != "query" or parameter.get("name") != "limit":
                            continue
                        parameter["description"] = words
                        schema = parameter.get("schema", {})
                        schema["description"] = words
                        for option in schema.get("anyOf", [schema]):
                            if option.get("type") == "integer":
                                option["maximum"] = api.max_page_size
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way
