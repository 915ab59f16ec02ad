"""Keyset pagination for the API's lists: ``?limit=&cursor=`` → a page and the next cursor."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TypeVar

from datasources.connectors.base import decode_cursor, encode_cursor

__all__ = ["keyset_page"]

T = TypeVar("T")


async def keyset_page(
    fetch: Callable[[int, str | None], Awaitable[list[T]]],
    key: Callable[[T], str],
    *,
    limit: int,
    cursor: str | None,
) -> tuple[list[T], str | None]:
    """One page from ``fetch(how_many, after_key)``; one extra row says if there is more."""
    size = limit
    after = decode_cursor(cursor) if cursor else None
    found = await fetch(size + 1, after)
    page = found[:size]
    return page, encode_cursor(key(page[-1])) if len(found) > size else None
