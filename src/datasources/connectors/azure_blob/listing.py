"""Listings: List Blobs pages read from the XML directly, bounded in memory.

The SDK builds a full BlobProperties object per blob (about 1.5k blobs/s here); reading
the few fields a DataItem needs straight from the XML is faster. A page over the cap is
asked for again with fewer results, and an endpoint that answers empty pages forever is
stopped.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, ClassVar
from urllib.parse import quote, unquote

from datasources.connectors.azure_blob.errors import RETRYABLE_STATUS, error_for
from datasources.connectors.azure_blob.http import (
    TooBig,
    Transient,
    error_code,
    read_capped,
    with_retries,
)
from datasources.connectors.azure_blob.session import AzureSession
from datasources.connectors.listing import (
    ListingQuery,
    check_page_limit,
    decode_cursor,
    encode_cursor,
    listing_query,
)
from datasources.errors import IntegrityError, UnavailableError
from datasources.models import DataItem, ItemKind, Page

__all__ = ["AzureListing", "dir_item"]


# A List Blobs page of 5,000 blobs is about 1-2 KiB a blob with its properties (7-10 MiB);
# user metadata (up to 8 KiB a blob) can make it bigger. A page over the cap is asked for
# again with fewer results, down to _MIN_PAGE, and only then refused: memory stays bounded
# whatever the endpoint sends, and a container with heavy metadata still lists.
_LISTING_MAX_BYTES = 16 * 1024 * 1024


_MAX_EMPTY_PAGES = 100
"""Empty listing pages in a row (each with a next marker) before a listing is refused."""


_MIN_PAGE = 100


# An error body is read for its <Code> only: a few hundred bytes in practice.
_ERROR_MAX_BYTES = 64 * 1024


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


async def _kept(
    items: list[DataItem], query: ListingQuery, start_after: str | None
) -> list[DataItem]:
    """The items of a page a listing keeps; glob matching (CPU) runs off the event loop."""

    def keep() -> list[DataItem]:
        return [
            item
            for item in items
            if (start_after is None or item.path > start_after) and query.accepts(item)
        ]

    if query.matcher is None:
        return keep()
    return await asyncio.to_thread(keep)


def _http_date(value: str | None) -> datetime | None:
    """'Tue, 26 Nov 2026 03:25:01 GMT' → aware datetime (fast path, RFC 1123 only)."""
    if not value:
        return None
    try:
        _day, day, month, year, clock, _zone = value.split()
        hour, minute, second = clock.split(":")
        return datetime(
            int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except (ValueError, KeyError):
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None


def _text(element: Any) -> str:
    text = element.text or ""
    return unquote(text) if element.get("Encoded") == "true" else text


# Elements a listing may hold per result asked for: a blob is about 30 (its properties)
# plus its metadata keys. Counted on the bytes before parsing, since an element tree costs
# ~100 bytes an element and a body of tiny elements (``<a/>``) would cost 25 times its size.
_TAGS_PER_ITEM = 400


def _parse_listing(body: bytes, max_items: int | None = None) -> tuple[list[DataItem], str | None]:
    """Items and the next marker of one List Blobs response.

    With ``max_items`` (the page size asked for), a body with more tags than such a page
    can have, or more entries than asked for, is an unreadable listing: what the parse
    builds stays proportional to the page, whatever the endpoint sends.
    """
    from xml.etree import ElementTree

    if max_items is not None and body.count(b"<") > (max_items + 10) * _TAGS_PER_ITEM:
        raise UnavailableError("Azure Storage sent an unreadable listing.")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise UnavailableError("Azure Storage sent an unreadable listing.") from None
    items: list[DataItem] = []
    blobs = root.find("Blobs")
    for entry in blobs if blobs is not None else ():
        item = _entry(entry)
        if item is not None:
            items.append(item)
    if max_items is not None and len(items) > max_items:
        raise UnavailableError("Azure Storage sent an unreadable listing.")
    next_marker = root.findtext("NextMarker") or None
    # Azurite sends a page's BlobPrefix entries before its blobs; the contract is path order.
    items.sort(key=lambda item: item.path)
    return items, next_marker


def dir_item(name: str) -> DataItem:
    """The item of a virtual folder (a ``BlobPrefix``)."""
    return DataItem.trusted(
        path=name, name=name.rstrip("/").rsplit("/", 1)[-1], kind=ItemKind.DIRECTORY
    )


def _entry(entry: Any) -> DataItem | None:
    """The DataItem of one <Blob> or <BlobPrefix> element (None for anything else)."""
    name_el = entry.find("Name")
    if name_el is None:
        return None
    name = _text(name_el)
    if entry.tag == "BlobPrefix":
        return dir_item(name)
    if entry.tag != "Blob":
        return None
    fields: dict[str, str] = {}
    props = entry.find("Properties")
    if props is not None:
        for prop in props:
            if prop.text:
                fields[prop.tag] = prop.text
    metadata_el = entry.find("Metadata")
    metadata = {m.tag: m.text or "" for m in metadata_el} if metadata_el is not None else {}
    md5 = fields.get("Content-MD5")
    size = fields.get("Content-Length")
    return DataItem.trusted(
        path=name,
        name=name.rstrip("/").rsplit("/", 1)[-1],
        kind=ItemKind.FILE,
        size=int(size) if size is not None and size.isdigit() else None,
        last_modified=_http_date(fields.get("Last-Modified")),
        content_type=fields.get("Content-Type"),
        etag=fields.get("Etag", "").strip('"') or None,
        checksum=f"md5:{md5}" if md5 else None,
        metadata=metadata,
    )


def _next_marker(body: bytes) -> str | None:
    """The NextMarker of a List Blobs body, found without parsing the whole document."""
    start = body.rfind(b"<NextMarker>")
    if start == -1:
        return None
    end = body.find(b"</NextMarker>", start)
    if end == -1:
        return None
    from html import unescape

    marker = unescape(body[start + len(b"<NextMarker>") : end].decode("utf-8", "replace"))
    return marker or None


class AzureListing(AzureSession):
    """Listing a container and describing its blobs."""

    list_page_size: ClassVar[int] = 5000
    """Blobs per List Blobs request when iterating (the service's maximum)."""

    def _item(self, blob: Any) -> DataItem:
        settings = getattr(blob, "content_settings", None)
        md5 = getattr(settings, "content_md5", None) if settings is not None else None
        checksum = "md5:" + base64.b64encode(bytes(md5)).decode() if md5 else None
        name: str = blob.name
        return DataItem.trusted(
            path=name,
            name=name.rstrip("/").rsplit("/", 1)[-1],
            kind=ItemKind.FILE,
            size=blob.size,
            last_modified=blob.last_modified,
            content_type=getattr(settings, "content_type", None) if settings is not None else None,
            etag=(blob.etag or "").strip('"') or None,
            checksum=checksum,
            metadata=dict(blob.metadata or {}),
        )

    async def _list_pages(
        self, prefix: str, delimiter: str | None, marker: str | None, page_size: int
    ) -> AsyncIterator[tuple[list[DataItem], str | None]]:
        """Raw List Blobs pages: (items, next marker), parsed from the XML directly.

        The SDK builds a full BlobProperties object per blob (about 1.5k blobs/s here);
        reading the few fields a DataItem needs straight from the XML is faster. The next
        page is requested as soon as its marker is known, while this one is parsed and
        consumed; at most two pages are held at once.
        """
        pending: asyncio.Task[bytes] = asyncio.create_task(
            self._list_request(prefix, delimiter, marker, page_size)
        )
        empty_in_a_row = 0
        try:
            while True:
                try:
                    body = await pending
                except TooBig:
                    if page_size <= _MIN_PAGE:
                        raise IntegrityError(
                            f"Azure Storage sent a listing page over "
                            f"{_LISTING_MAX_BYTES // 2**20} MiB for {page_size} results; "
                            "it was refused.",
                            details={"max_bytes": _LISTING_MAX_BYTES},
                        ) from None
                    page_size = max(page_size // 8, _MIN_PAGE)
                    pending = asyncio.create_task(
                        self._list_request(prefix, delimiter, marker, page_size)
                    )
                    continue
                following = _next_marker(body)
                if following:
                    pending = asyncio.create_task(
                        self._list_request(prefix, delimiter, following, page_size)
                    )
                items, _ = await asyncio.to_thread(_parse_listing, body, page_size)
                del body
                # Azure may answer an empty page with a marker now and then; an endpoint
                # that does so without end would hold the caller forever.
                empty_in_a_row = 0 if items else empty_in_a_row + 1
                if following and empty_in_a_row >= _MAX_EMPTY_PAGES:
                    raise IntegrityError(
                        f"Azure Storage answered {_MAX_EMPTY_PAGES} empty listing pages in a "
                        "row, each pointing to another; the listing was stopped.",
                        details={"max_empty_pages": _MAX_EMPTY_PAGES},
                    )
                yield items, following
                if not following:
                    return
                marker = following
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def _list_request(
        self, prefix: str, delimiter: str | None, marker: str | None, page_size: int
    ) -> bytes:
        """One List Blobs request, retried on transient failures; the XML body."""
        import aiohttp
        from yarl import URL

        target = self._target
        assert target is not None and self._session is not None
        auth_query, headers = await self._auth()
        params = [("restype", "container"), ("comp", "list"), ("include", "metadata")]
        params.append(("maxresults", str(page_size)))
        if prefix:
            params.append(("prefix", prefix))
        if delimiter:
            params.append(("delimiter", delimiter))
        if marker:
            params.append(("marker", marker))
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        if auth_query:
            query += "&" + auth_query
        url = URL(f"{target.account_url}/{quote(target.container)}?{query}", encoded=True)
        session = self._session

        async def attempt() -> bytes:
            timeout = aiohttp.ClientTimeout(total=self.config.timeout)
            async with session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                status = response.status
                if status in RETRYABLE_STATUS:
                    raise Transient(f"HTTP {status}")
                if status != 200:
                    # Only the start of an error body is read (its <Code>): the rest is
                    # never buffered, and the connection is dropped with it.
                    head = await read_capped(response, _ERROR_MAX_BYTES, cut=True)
                    code = response.headers.get("x-ms-error-code") or error_code(head)
                    raise error_for(status, code, self._failure("listing"))
                return await read_capped(response, _LISTING_MAX_BYTES, cut=False)

        return await with_retries(
            attempt,
            what="listing",
            unreachable=f"Azure Storage cannot be reached for source {self.source_id!r}.",
        )

    async def iter_items(
        self,
        prefix: str | None = None,
        *,
        delimiter: str | None = None,
        glob: str | None = None,
        start_after: str | None = None,
    ) -> AsyncIterator[DataItem]:
        query = listing_query(prefix, delimiter, glob)
        if query.empty:
            return
        # Markers are opaque, so a resume point (start_after) is skipped to locally.
        pages = self._list_pages(query.prefix, delimiter, None, self.list_page_size)
        async for items, _next in pages:
            for item in await _kept(items, query, start_after):
                yield item

    async def list_page(
        self,
        prefix: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        delimiter: str | None = None,
        glob: str | None = None,
    ) -> Page:
        """One page straight from the service's continuation token (no re-listing)."""
        check_page_limit(limit)
        token = decode_cursor(cursor) if cursor else None
        query = listing_query(prefix, delimiter, glob)
        if query.empty:
            return Page(items=[])
        async for page, following in self._list_pages(query.prefix, delimiter, token, limit):
            items = await _kept(page, query, None)
            return Page(items=items, next_cursor=encode_cursor(following) if following else None)
        return Page(items=[])

    async def get_metadata(self, path: str) -> DataItem:
        name = self._blob_name(path)
        with self._errors("reading metadata", name):
            props = await self._client().get_blob_client(name).get_blob_properties()
        return self._item(props)
