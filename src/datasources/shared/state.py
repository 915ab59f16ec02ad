"""What one replica shares with the others, built from settings and closed with the app.

``SharedState(settings)`` decides, once:

- **rate limits**: a :class:`~datasources.shared.ratelimit.RedisRateLimiter` when
  ``DATASOURCES_REDIS_URL`` is set (global across replicas; per replica while Redis is
  down), else a :class:`~datasources.shared.ratelimit.LocalRateLimiter` (per process);
- **cache invalidation**: on a PostgreSQL store, the store's own notifications (every
  writer, the CLI on any machine included, announces its commits); on another store with
  Redis, Redis pub/sub (this service's writes); otherwise none, and caches expire by age.

While invalidations are flowing, a change made anywhere reaches this process's caches as
soon as it is committed. While they are not (the listener reconnecting), API keys are
checked against the store on every request — a revoked key is never honoured from a
cache — and sources fall back to their cache ages (``listing_cache_seconds``,
``revalidate_after``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Protocol

from datasources.errors import ConfigurationError
from datasources.shared.feed import RedisChangeFeed
from datasources.shared.ratelimit import LocalRateLimiter, Rate, RateLimiter, RedisRateLimiter
from datasources.store.changes import Change

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from datasources.config import Settings
    from datasources.keys import ApiKeys
    from datasources.registry import DataSourceRegistry

__all__ = ["CacheInvalidation", "SharedState", "redis_client"]

logger = logging.getLogger(__name__)

_FIRST_CONNECT_WAIT = 2.0
"""How long the service's start waits for the change feed before serving anyway."""


class _Feed(Protocol):
    @property
    def healthy(self) -> bool: ...

    async def start(self, *, wait: float | None = None) -> None: ...

    async def close(self) -> None: ...


def redis_client(settings: Settings) -> Redis:
    """A Redis client for ``settings.redis_url`` that fails fast and never retries.

    Callers decide what a failure means (fall back, resubscribe); a retry hidden in the
    client would also re-subscribe a broken subscription without anyone knowing that
    messages were lost in between.
    """
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    if settings.redis_url is None:
        raise ConfigurationError("DATASOURCES_REDIS_URL is not set.")
    try:
        return Redis.from_url(
            settings.redis_url.get_secret_value(),
            socket_timeout=settings.redis_timeout,
            socket_connect_timeout=settings.redis_timeout,
            retry=Retry(NoBackoff(), 0),
            client_name="datasources",
        )
    except ValueError:
        # The parser's message may quote parts of the URL; the URL may hold a password.
        raise ConfigurationError(
            "DATASOURCES_REDIS_URL is not a valid Redis URL "
            "(redis://[:password@]host:port/db, rediss://… or unix://…)."
        ) from None


class CacheInvalidation:
    """Apply changes heard from other processes to this process's caches.

    ``None`` (changes may have been missed) forgets every cached key, listing and pool.
    """

    def __init__(self, keys: ApiKeys, registry: DataSourceRegistry) -> None:
        self._keys = keys
        self._registry = registry

    async def __call__(self, change: Change | None) -> None:
        if change is None:
            self._keys.forget()
            await self._forget_all_sources()
        elif change.kind == "api_key":
            self._keys.forget(change.id)
        else:
            await self._forget_source(change.owner, change.id)

    async def _forget_source(self, owner: str, source_id: str) -> None:
        # The same steps the registry takes after a write of its own: the owner's listing
        # goes, and the source's connector closes, so the next use reads the store again.
        await self._registry.scoped(owner).forget_source(source_id)

    async def _forget_all_sources(self) -> None:
        await self._registry.forget_all_sources()


class SharedState:
    """This replica's rate limiter and change feed.

    Args:
        settings: ``redis_url``, ``redis_prefix``, ``redis_timeout`` and the API's rate.
    """

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._redis: Redis | None = redis_client(settings) if settings.redis_url else None
        self._feed: _Feed | None = None
        self.limiter = self.rate_limiter(
            Rate.per_minute(
                settings.api.rate_limit_per_minute, burst=settings.api.rate_limit_burst
            ),
            name="api",
        )

    def __repr__(self) -> str:
        return f"SharedState(redis={self._redis is not None}, feed={self._feed!r})"

    @property
    def redis(self) -> Redis | None:
        """The Redis client, when one is configured."""
        return self._redis

    def rate_limiter(self, rate: Rate, *, name: str) -> RateLimiter:
        """A limiter for ``name`` (``"api"``, ``"login"``…): global when Redis is set."""
        if self._redis is None:
            return LocalRateLimiter(rate)
        return RedisRateLimiter(
            self._redis,
            rate,
            name=name,
            prefix=self._settings.redis_prefix,
            retry_after=max(1.0, self._settings.redis_timeout),
        )

    def cache_trusted(self) -> bool:
        """Whether caches may answer: always without a feed, while it flows with one."""
        return self._feed is None or self._feed.healthy

    @property
    def invalidation(self) -> str:
        """How changes reach this process: ``postgresql``, ``redis`` or ``none``."""
        if isinstance(self._feed, RedisChangeFeed):
            return "redis"
        return "none" if self._feed is None else "postgresql"

    async def start(self, registry: DataSourceRegistry, keys: ApiKeys) -> None:
        """Start hearing changes to ``registry``'s store and applying them to the caches."""
        if self._feed is not None:
            return
        handler = CacheInvalidation(keys, registry)
        store = registry.store
        listener = store.change_listener(handler, timeout=max(2.0, self._settings.redis_timeout))
        if listener is not None:
            self._feed = listener
        elif self._redis is not None:
            feed = RedisChangeFeed(
                self._redis,
                f"{self._settings.redis_prefix}changes",
                handler,
                timeout=self._settings.redis_timeout,
            )
            store.observe(feed.publish)
            self._feed = feed
        if self._feed is not None:
            await self._feed.start(wait=_FIRST_CONNECT_WAIT)
            logger.info("Cache invalidation: %s.", self.invalidation)

    async def close(self) -> None:
        """Stop the feed and close the Redis client."""
        feed, self._feed = self._feed, None
        if feed is not None:
            await feed.close()
        await self.limiter.close()
        if self._redis is not None:
            await self._redis.aclose()
