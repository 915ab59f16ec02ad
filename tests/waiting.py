"""Wait for a condition instead of sleeping for a guess of how long it takes.

A fixed sleep is either too short on a loaded machine (a flaky failure) or longer than
needed everywhere; and it asserts nothing about *why* the test may go on. ``eventually``
polls the condition itself and fails, naming it, only if it never holds within a
generous deadline (the deadline is a safety net, not a measurement).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T]], *, what: str, timeout: float = ..., interval: float = ...
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T], *, what: str, timeout: float = ..., interval: float = ...
) -> T: ...


async def eventually(
    probe: Callable[[], Any],
    *,
    what: str,
    timeout: float = 30.0,
    interval: float = 0.02,
) -> Any:
    """Call ``probe`` (sync or async) until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened within {timeout:g} s: {what}")
        await asyncio.sleep(interval)
