"""Pure-ASGI middleware: request ids, JSON access logs, request-body limits.

Written against ASGI directly (not ``BaseHTTPMiddleware``) so streamed downloads and
uploads pass through without buffering and each request pays a few microseconds.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from datasources.api.errors import PROBLEM_JSON, ApiError

__all__ = ["RequestContextMiddleware"]

access_logger = logging.getLogger("datasources.access")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def _problem_bytes(status: int, code: str, detail: str, path: str, request_id: str) -> bytes:
    return json.dumps(
        {
            "type": f"urn:datasources:problem:{code}",
            "title": "Content Too Large" if status == 413 else "Error",
            "status": status,
            "detail": detail,
            "code": code,
            "instance": path,
            "request_id": request_id,
            "details": {},
        }
    ).encode()


class RequestContextMiddleware:
    """Give each request an id, cap its body, and log one JSON line when it ends.

    Args:
        app: The wrapped application.
        max_body_bytes: Cap on request bodies; a declared larger ``Content-Length`` gets
            413 before any byte is read, a chunked body is cut off when it passes it.
        max_upload_bytes: The cap for upload routes (paths ending in ``/upload``).
        access_log: Whether to write access log lines.
    """

    def __init__(
        self, app: ASGIApp, *, max_body_bytes: int, max_upload_bytes: int, access_log: bool
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_upload_bytes = max_upload_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                candidate = value.decode("latin-1")
                if _REQUEST_ID.match(candidate):
                    request_id = candidate
                break
        request_id = request_id or secrets.token_hex(8)
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        path: str = scope["path"]
        limit = self.max_upload_bytes if path.endswith("/upload") else self.max_body_bytes
        status_holder = [500]
        sent_bytes = [0]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder[0] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            elif message["type"] == "http.response.body":
                sent_bytes[0] += len(message.get("body", b""))
            await send(message)

        declared = None
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                break
        try:
            if declared is not None and (declared < 0 or declared > limit):
                await self._refuse(send_wrapper, path, request_id, limit, declared < 0)
                return
            received = 0

            async def receive_limited() -> Message:
                nonlocal received
                message = await receive()
                if message["type"] == "http.request":
                    received += len(message.get("body", b""))
                    if received > limit:
                        raise ApiError(
                            413,
                            "body_too_large",
                            f"The request body is larger than the limit of {limit} bytes.",
                            details={"limit": limit},
                        )
                return message

            await self.app(scope, receive_limited, send_wrapper)
        finally:
            if self.access_log:
                self._log(scope, state, request_id, status_holder[0], sent_bytes[0], start)

    async def _refuse(
        self, send: Send, path: str, request_id: str, limit: int, malformed: bool
    ) -> None:
        status, code = (400, "bad_content_length") if malformed else (413, "body_too_large")
        detail = (
            "The Content-Length header is not a number."
            if malformed
            else f"The request body is larger than the limit of {limit} bytes."
        )
        body = _problem_bytes(status, code, detail, path, request_id)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", PROBLEM_JSON.encode()),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    @staticmethod
    def _log(
        scope: Scope,
        state: dict[str, Any],
        request_id: str,
        status: int,
        sent: int,
        start: float,
    ) -> None:
        if not access_logger.isEnabledFor(logging.INFO):
            return
        client = scope.get("client")
        # The path only: query strings can carry names users consider private.
        line = {
            "event": "request",
            "request_id": request_id,
            "method": scope["method"],
            "path": scope["path"],
            "status": status,
            "bytes": sent,
            "ms": round((time.perf_counter() - start) * 1000, 2),
            "key_id": state.get("key_id"),
            "user_id": state.get("user_id"),
            "client": client[0] if client else None,
        }
        access_logger.info(json.dumps(line))
