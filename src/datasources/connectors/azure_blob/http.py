"""The REST side of the connector: one retry loop, one backoff, bounded bodies.

Listings and ranged downloads are our own requests on the source's aiohttp session
(faster than the SDK's objects and bounded in memory); both retry through
:func:`with_retries`, and the SDK's own requests through :func:`short_retry_policy`,
all with the same :func:`backoff`.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from datasources.connectors.azure_blob.errors import redirect_refused
from datasources.errors import TimeoutError, UnavailableError

__all__ = [
    "READ_PIECE",
    "RETRIES",
    "Changed",
    "TooBig",
    "Transient",
    "backoff",
    "error_code",
    "no_redirects_trace",
    "read_capped",
    "short_retry_policy",
    "with_retries",
]

logger = logging.getLogger("datasources.connectors.azure_blob")

T = TypeVar("T")

RETRIES = 3
"""Retries after a first attempt fails transiently (408/429/5xx, a dropped connection)."""
READ_PIECE = 1024 * 1024


class Transient(Exception):
    """A retryable failure of one request (a 5xx, a short body)."""


class Changed(Exception):
    """The blob's ETag changed during a ranged download (HTTP 412)."""


class TooBig(Exception):
    """A listing body passed the cap (asked for again with fewer results)."""


def backoff(attempt: int) -> float:
    """Seconds to wait before retry ``attempt``: 0.2 s doubling, at most 2 s, ±20 % jitter.

    Short on purpose: a chat waiting on a fetch cannot wait the SDK's 15 s first retry.
    """
    ceiling: float = min(0.2 * 2.0**attempt, 2.0)
    return ceiling * random.uniform(0.8, 1.2)


async def with_retries(attempt: Callable[[], Awaitable[T]], *, what: str, unreachable: str) -> T:
    """Run ``attempt`` until it succeeds, retrying transient failures with :func:`backoff`.

    After :data:`RETRIES` retries the last failure is raised as ``TimeoutError`` (it
    timed out) or ``UnavailableError`` with the ``unreachable`` message.
    """
    import aiohttp

    for tries in range(RETRIES + 1):
        try:
            return await attempt()
        except (Transient, aiohttp.ClientError, OSError, builtins.TimeoutError) as exc:
            if tries == RETRIES:
                logger.info("The %s failed for good: %s", what, type(exc).__name__)
                if isinstance(exc, builtins.TimeoutError):
                    raise TimeoutError(f"The {what} timed out.") from None
                raise UnavailableError(unreachable) from None
            await asyncio.sleep(backoff(tries))
    raise AssertionError("unreachable")


def short_retry_policy() -> Any:
    """The SDK's retry policy with :func:`backoff` (three retries) for its own requests."""
    from azure.storage.blob.aio import ExponentialRetry

    class ShortExponentialRetry(ExponentialRetry):
        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            seconds: float = backoff(int(settings["count"]))
            return seconds

    return ShortExponentialRetry(retry_total=RETRIES, initial_backoff=0, increment_base=2)


def no_redirects_trace() -> Any:
    """A session-wide backstop: any request that is about to follow a redirect fails."""
    import aiohttp

    async def refuse(_session: Any, _context: Any, params: Any) -> None:
        raise redirect_refused(f"request ({params.response.status})")

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(refuse)
    return trace


async def read_capped(response: Any, cap: int, *, cut: bool) -> bytes:
    """The body of an aiohttp response, never more than ``cap`` bytes of it in memory.

    Past the cap, ``cut`` returns what was read (an error body, read for its code only);
    otherwise :class:`TooBig` is raised as soon as the cap is passed (or announced).
    """
    length = response.content_length
    if not cut and length is not None and length > cap:
        raise TooBig()
    body = bytearray()
    async for piece in response.content.iter_chunked(READ_PIECE):
        body += piece
        if len(body) > cap:
            if cut:
                return bytes(body[:cap])
            raise TooBig()
    return bytes(body)


def error_code(body: bytes) -> str | None:
    """The ``<Code>`` of an Azure Storage error body."""
    from xml.etree import ElementTree

    try:
        return ElementTree.fromstring(body).findtext("Code")
    except ElementTree.ParseError:
        return None
