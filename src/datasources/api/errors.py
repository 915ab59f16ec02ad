"""Errors become HTTP responses here, and only here: RFC 9457 problem+json bodies.

Routes raise the library's own exceptions (:mod:`datasources.errors`); the status comes
from walking the exception's class hierarchy through :data:`STATUS`. The body carries
the error's *safe* message and code, the request id and nothing else: no stack trace, no
SDK text, no value from the request.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from datasources.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    DataSourceError,
    IntegrityError,
    InvalidInputError,
    LimitExceededError,
    MissingDependencyError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)
from datasources.sandbox.runtime import SessionLimitError

__all__ = [
    "PROBLEM_JSON",
    "STATUS",
    "ApiError",
    "Problem",
    "install_error_handlers",
    "problem_response",
    "status_for",
]

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"

STATUS: dict[type[DataSourceError], int] = {
    MissingDependencyError: 501,
    ConfigurationError: 422,
    InvalidInputError: 400,
    # The *source* rejected its stored credential: the caller's own key is fine (that is
    # a 401), so say the dependency failed.
    AuthenticationError: 424,
    PermissionDeniedError: 403,
    NotFoundError: 404,
    AlreadyExistsError: 409,
    # A cap on live sessions: come back later (Retry-After), not "too big".
    SessionLimitError: 429,
    LimitExceededError: 413,
    IntegrityError: 502,
    TimeoutError: 504,
    UnavailableError: 503,
    CredentialsError: 500,
    DataSourceError: 500,
}

_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Content Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Content",
    424: "Failed Dependency",
    429: "Too Many Requests",
    500: "Internal Server Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


class Problem(BaseModel):
    """An RFC 9457 problem detail."""

    type: str = Field(description="urn:datasources:problem:<code>, naming the kind of problem.")
    title: str
    status: int
    detail: str = Field(description="What went wrong, safe to show to a user.")
    code: str = Field(description="Stable machine-readable name of the problem.")
    instance: str | None = Field(default=None, description="The request path.")
    request_id: str | None = None
    details: dict[str, Any] = Field(default_factory=dict, description="Safe extra facts.")

    model_config = {
        "json_schema_extra": {
            "examples": [
                {
                    "type": "urn:datasources:problem:not_found",
                    "title": "Not Found",
                    "status": 404,
                    "detail": "Data source 'sales' not found.",
                    "code": "not_found",
                    "instance": "/api/v1/datasources/sales",
                    "request_id": "5f2c9a0e8b7d4c1a",
                    "details": {},
                }
            ]
        }
    }


class ApiError(StarletteHTTPException):
    """A protocol-level error of the HTTP layer itself (401, 413, 429…).

    An ``HTTPException`` so that FastAPI passes it through unchanged when it is raised
    while a request body is being read (other errors there become a bare 400).
    """

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(status, detail, headers)
        self.status, self.code = status, code
        self.details = details or {}


def status_for(exc: DataSourceError) -> int:
    """The HTTP status of a library error: the nearest class in :data:`STATUS`."""
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


def problem_response(
    request: Request | None,
    status: int,
    code: str,
    detail: str,
    *,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """A problem+json response for ``request``."""
    request_id = None
    instance = None
    if request is not None:
        request_id = request.scope.get("state", {}).get("request_id")
        instance = request.url.path
    body = Problem(
        type=f"urn:datasources:problem:{code}",
        title=_TITLES.get(status, "Error"),
        status=status,
        detail=detail,
        code=code,
        instance=instance,
        request_id=request_id,
        details=details or {},
    )
    return JSONResponse(
        body.model_dump(mode="json"), status_code=status, headers=headers, media_type=PROBLEM_JSON
    )


def _validation_details(exc: RequestValidationError) -> list[dict[str, Any]]:
    # Field locations and messages only: pydantic's "input" and "ctx" could echo a secret.
    return [
        {"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", ""))}
        for error in exc.errors()
    ]


def install_error_handlers(app: FastAPI) -> None:
    """Register the one mapping from exceptions to problem+json responses."""

    @app.exception_handler(DataSourceError)
    async def _domain(request: Request, exc: DataSourceError) -> JSONResponse:
        status = status_for(exc)
        if status >= 500:
            logger.warning("Request failed: %s (%s)", exc.code, type(exc).__name__)
        headers = None
        retry_after = exc.details.get("retry_after")
        if status == 429 and isinstance(retry_after, int):
            headers = {"Retry-After": str(retry_after)}
        return problem_response(
            request, status, exc.code, exc.message, details=dict(exc.details), headers=headers
        )

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError) -> JSONResponse:
        return problem_response(
            request,
            exc.status,
            exc.code,
            exc.detail,
            details=exc.details,
            headers=dict(exc.headers or {}),
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem_response(
            request,
            422,
            "validation_error",
            "The request does not match the API's schema.",
            details={"errors": _validation_details(exc)},
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        code = {404: "not_found", 405: "method_not_allowed"}.get(status, "http_error")
        detail = {404: "No such route.", 405: "Method not allowed on this route."}.get(
            status, _TITLES.get(status, "HTTP error")
        )
        return problem_response(request, status, code, detail, headers=dict(exc.headers or {}))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.error("Unhandled %s on %s", type(exc).__name__, request.url.path, exc_info=exc)
        return problem_response(
            request, 500, "internal_error", "An internal error occurred; it has been logged."
        )
