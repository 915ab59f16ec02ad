"""What a registry and its owner-scoped views share: the store, keys, live connectors,
listing caches.
"""

from __future__ import annotations

import asyncio
import bisect
from dataclasses import dataclass, field
from typing import Any

from datasources.config import PoolSettings
from datasources.connectors.base import BaseConnector, DriverLimits
from datasources.credentials import CredentialManager
from datasources.lifecycle import LiveConnectors
from datasources.models import DataSourceConfig
from datasources.netpolicy import OutboundPolicy
from datasources.store import Store

__all__ = ["LISTING_CACHE_MAX", "Listing", "Shared"]

LISTING_CACHE_MAX = 1000
"""Owners with more sources than this are listed from the store every time."""


@dataclass
class Listing:
    """One owner's sources as cached: models and their JSON documents, in id order."""

    expires: float
    ids: list[str]
    sources: list[DataSourceConfig]
    documents: list[bytes]

    def window(self, limit: int | None, after: str | None) -> tuple[int, int]:
        start = bisect.bisect_right(self.ids, after) if after is not None else 0
        return start, len(self.ids) if limit is None else start + limit


@dataclass
class Shared:
    """State shared by a registry and its owner-scoped views."""

    store: Store
    credentials: CredentialManager
    pool_settings: PoolSettings
    outbound: OutboundPolicy | None = None
    allow_privileged_roles: bool = False
    classes: dict[str, type[BaseConnector[Any]]] = field(default_factory=dict)
    live: LiveConnectors = field(init=False)
    listings: dict[str, Listing] = field(default_factory=dict)
    refreshing: dict[str, asyncio.Future[Listing | None]] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    opened: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.live = LiveConnectors(revalidate_after=self.pool_settings.revalidate_after)

    @property
    def limits(self) -> DriverLimits:
        settings = self.pool_settings
        return DriverLimits(
            max_connections=settings.max_connections,
            min_connections=settings.min_size,
            idle_timeout=settings.idle_timeout,
            max_lifetime=settings.max_lifetime,
            acquire_timeout=settings.acquire_timeout,
        )
