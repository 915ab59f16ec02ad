"""Listing helpers every connector shares: checked arguments, page limits, cursors.

A cursor is an opaque encoding of the last path returned, so ``list_page`` works for any
connector; connectors with native continuation tokens can override it.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass

from datasources.errors import InvalidInputError, UnsafePathError
from datasources.globs import GlobMatcher, compile_glob, glob_prefix
from datasources.models import DataItem, ItemKind

__all__ = [
    "MAX_PAGE_SIZE",
    "ListingQuery",
    "check_page_limit",
    "decode_cursor",
    "encode_cursor",
    "listing_query",
]

MAX_PAGE_SIZE = 5000


@dataclass(frozen=True)
class ListingQuery:
    """A checked listing request: the prefix to ask the source for, and what to keep."""

    prefix: str
    delimiter: str | None
    matcher: GlobMatcher | None
    empty: bool
    """The glob and the prefix can never both match: list nothing."""

    def accepts(self, item: DataItem) -> bool:
        """With a glob, only files whose whole path matches it."""
        if self.matcher is None:
            return True
        return item.kind == ItemKind.FILE and self.matcher.match(item.path)


def listing_query(prefix: str | None, delimiter: str | None, glob: str | None) -> ListingQuery:
    """Validate listing arguments and narrow the prefix to the glob's literal start."""
    if delimiter not in (None, "/"):
        raise InvalidInputError("Only '/' is supported as a delimiter.")
    prefix = prefix or ""
    for value in (prefix, glob or ""):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise UnsafePathError("The prefix or glob contains a control character.")
    if not glob:
        return ListingQuery(prefix, delimiter, None, empty=False)
    literal = glob_prefix(glob)
    if not (literal.startswith(prefix) or prefix.startswith(literal)):
        return ListingQuery(prefix, delimiter, None, empty=True)
    return ListingQuery(max(prefix, literal, key=len), delimiter, compile_glob(glob), empty=False)


def check_page_limit(limit: int) -> None:
    """Page sizes are bounded so one page never holds a listing whole."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInputError(f"limit must be between 1 and {MAX_PAGE_SIZE}.")


def encode_cursor(last: str) -> str:
    """An opaque cursor that resumes a listing after ``last``."""
    return base64.urlsafe_b64encode(json.dumps({"after": last}).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    """The inverse of :func:`encode_cursor`; :class:`InvalidInputError` when malformed."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        after = data["after"]
        if not isinstance(after, str):
            raise TypeError
        return after
    except (ValueError, KeyError, TypeError, binascii.Error, UnicodeError):
        raise InvalidInputError("The cursor is malformed; start the listing again.") from None
