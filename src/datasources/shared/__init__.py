"""State several replicas share: rate limits, and the news that a key or source changed.

Without ``DATASOURCES_REDIS_URL`` everything here is per process (the embedded default);
:class:`SharedState` says what is shared in each configuration.
"""

from datasources.shared.feed import RedisChangeFeed
from datasources.shared.ratelimit import LocalRateLimiter, Rate, RateLimiter, RedisRateLimiter
from datasources.shared.state import CacheInvalidation, SharedState, redis_client

__all__ = [
    "CacheInvalidation",
    "LocalRateLimiter",
    "Rate",
    "RateLimiter",
    "RedisChangeFeed",
    "RedisRateLimiter",
    "SharedState",
    "redis_client",
]
