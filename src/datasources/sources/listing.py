"""An owner's source listing: served from memory briefly, dropped on every local write."""

from __future__ import annotations

import asyncio
import logging
import time

from datasources.models import DataSourceConfig
from datasources.sources.core import RegistryCore
from datasources.sources.state import LISTING_CACHE_MAX, Listing

__all__ = ["SourceListings"]

logger = logging.getLogger("datasources.registry")


class SourceListings(RegistryCore):
    """Listing an owner's sources, in id order, secrets masked."""

    async def list_data_sources(
        self, *, limit: int | None = None, after: str | None = None
    ) -> list[DataSourceConfig]:
        """This owner's sources in id order, secrets masked (keyset pagination by id).

        An owner's listing is kept in memory for ``pool_settings.listing_cache_seconds``:
        writes through this process clear it at once; another replica's writes show
        within that many seconds.
        """
        listing = await self._listing()
        if listing is None:
            records = await self._shared.store.list(self.owner, limit=limit, after_id=after)
            return [self._public(r) for r in records]
        start, end = listing.window(limit, after)
        # Copies, so a caller that edits one cannot change what the next caller gets.
        return [
            s.model_copy(update={"config": dict(s.config), "tags": list(s.tags)})
            for s in listing.sources[start:end]
        ]

    async def list_data_sources_json(self, *, limit: int, after: str | None = None) -> list[bytes]:
        """The same page as :meth:`list_data_sources`, each source as its JSON document.

        For servers that pass listings on: the documents are serialised once per cached
        listing, not once per request.
        """
        listing = await self._listing()
        if listing is None:
            return [
                s.model_dump_json().encode()
                for s in await self.list_data_sources(limit=limit, after=after)
            ]
        start, end = listing.window(limit, after)
        return listing.documents[start:end]

    async def _listing(self) -> Listing | None:
        """The owner's cached listing; None when listings are not cached.

        One refresh runs at a time per owner. While it runs, requests keep the listing
        that just expired (stale by at most one refresh), so a busy service never sends
        every waiting request to the store at once. After a write through this process
        nothing stale is served: the write drops the listing and any refresh in flight.
        """
        await self.open()
        shared = self._shared
        if shared.pool_settings.listing_cache_seconds <= 0:
            return None
        cached = shared.listings.get(self.owner)
        if cached is not None and cached.expires > time.monotonic():
            return cached
        task = shared.refreshing.get(self.owner)
        if task is None:
            task = asyncio.ensure_future(self._refresh_listing())
            shared.refreshing[self.owner] = task
            owner = self.owner

            def done(finished: asyncio.Future[Listing | None]) -> None:
                if shared.refreshing.get(owner) is finished:
                    del shared.refreshing[owner]
                if not finished.cancelled() and finished.exception() is not None:
                    logger.info("Refreshing the listing of %r failed.", owner)

            task.add_done_callback(done)
        if cached is not None:
            return cached
        return await asyncio.shield(task)

    async def _refresh_listing(self) -> Listing | None:
        shared = self._shared
        generation = shared.generations.get(self.owner, 0)
        records = await shared.store.list(self.owner, limit=LISTING_CACHE_MAX + 1)
        if len(records) > LISTING_CACHE_MAX:
            shared.listings.pop(self.owner, None)
            return None
        sources = [self._public(r) for r in records]
        listing = Listing(
            expires=time.monotonic() + shared.pool_settings.listing_cache_seconds,
            ids=[s.id for s in sources],
            sources=sources,
            documents=[s.model_dump_json().encode() for s in sources],
        )
        if shared.generations.get(self.owner, 0) == generation:  # no write meanwhile
            if len(shared.listings) > 10_000:
                shared.listings.clear()
            shared.listings[self.owner] = listing
        return listing
