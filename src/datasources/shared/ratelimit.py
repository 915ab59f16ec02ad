"""Rate limits: one token bucket per key, in this process or shared through Redis.

Both limiters answer the same three questions, so a caller (the API's per-key limit, the
workbench's login limit) does not know which one it has::

    wait = await limiter.take(key)     # spend one; None, or seconds until one is left
    wait = await limiter.peek(key)     # the same answer without spending
    await limiter.reset(key)           # a full bucket again (e.g. after a good login)

A bucket holds at most ``burst`` tokens and refills at ``per_second``; ``Rate.per_minute
(1200, burst=200)`` is the API's default, ``Rate.every(5, seconds=900)`` is "5 in 15
minutes". The Redis limiter runs the bucket as one Lua script on Redis's own clock, so
replicas share each bucket exactly and their clocks do not matter. When Redis cannot be
reached it falls back to a bucket in this process (and logs it) and tries Redis again a
second later: a Redis outage loosens the limit to one bucket per replica for its
duration instead of refusing every request (see docs/deployment.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["LocalRateLimiter", "Rate", "RateLimiter", "RedisRateLimiter"]

logger = logging.getLogger(__name__)

_MAX_LOCAL_BUCKETS = 100_000


@dataclass(frozen=True)
class Rate:
    """How fast a bucket refills (``per_second``) and how many tokens it holds (``burst``).

    A rate of 0 turns the limit off.
    """

    per_second: float
    burst: int

    @classmethod
    def per_minute(cls, count: int, *, burst: int) -> Rate:
        """``count`` a minute sustained, ``burst`` at once."""
        return cls(per_second=count / 60.0, burst=burst)

    @classmethod
    def every(cls, count: int, *, seconds: float) -> Rate:
        """At most ``count`` in any ``seconds`` from a full bucket, refilling evenly."""
        return cls(per_second=count / seconds, burst=count)

    @property
    def unlimited(self) -> bool:
        """Whether this rate limits nothing."""
        return self.per_second <= 0


@runtime_checkable
class RateLimiter(Protocol):
    """A token bucket per key. Every method may be awaited from any task."""

    async def take(self, key: str) -> float | None:
        """Spend one token; None if allowed, else the seconds until one is left."""
        ...

    async def peek(self, key: str) -> float | None:
        """As :meth:`take` without spending: None if a token is left now."""
        ...

    async def reset(self, key: str) -> None:
        """Fill ``key``'s bucket again."""
        ...

    async def close(self) -> None:
        """Release what the limiter holds (connections)."""
        ...


class LocalRateLimiter:
    """Buckets in this process's memory: each replica and each worker counts alone."""

    def __init__(self, rate: Rate) -> None:
        self.rate = rate
        self._buckets: dict[str, tuple[float, float]] = {}

    def __repr__(self) -> str:
        return f"LocalRateLimiter({self.rate!r})"

    def _level(self, key: str, now: float) -> float:
        tokens, last = self._buckets.get(key, (float(self.rate.burst), now))
        return min(float(self.rate.burst), tokens + (now - last) * self.rate.per_second)

    async def take(self, key: str) -> float | None:
        """Spend one token; None if allowed, else the seconds until one is left."""
        if self.rate.unlimited:
            return None
        now = time.monotonic()
        tokens = self._level(key, now)
        if tokens < 1.0:
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate.per_second
        if len(self._buckets) > _MAX_LOCAL_BUCKETS:
            self._buckets.clear()
        self._buckets[key] = (tokens - 1.0, now)
        return None

    async def peek(self, key: str) -> float | None:
        """None if a token is left for ``key``, else the seconds until one is."""
        if self.rate.unlimited:
            return None
        tokens = self._level(key, time.monotonic())
        return None if tokens >= 1.0 else (1.0 - tokens) / self.rate.per_second

    async def reset(self, key: str) -> None:
        """Fill ``key``'s bucket again."""
        self._buckets.pop(key, None)

    async def close(self) -> None:
        """Nothing to release."""


# One bucket as a Redis hash {t: tokens, at: ms}, on the server's clock. ARGV: rate per
# second, burst, cost (1 take, 0 peek, -1 reset). Returns -1 when allowed, else the
# milliseconds until a token is left. The key expires once the bucket would be full again.
_BUCKET_LUA = """
if redis.replicate_commands then redis.replicate_commands() end
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
if cost < 0 then
  redis.call('DEL', KEYS[1])
  return -1
end
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local state = redis.call('HMGET', KEYS[1], 't', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate / 1000)
end
if tokens < 1 then
  return math.max(1, math.ceil((1 - tokens) * 1000 / rate))
end
if cost > 0 then
  tokens = tokens - cost
  redis.call('HSET', KEYS[1], 't', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], math.ceil((burst - tokens) * 1000 / rate) + 1000)
end
return -1
"""


class RedisRateLimiter:
    """Buckets in Redis, shared by every replica that names the same Redis and prefix.

    Args:
        client: A ``redis.asyncio.Redis`` (its timeouts bound how long a request waits).
        rate: The bucket.
        name: What is limited (``"api"``, ``"login"``): one namespace per use.
        prefix: The deployment's key prefix (``Settings.redis_prefix``).
        retry_after: Seconds the local fallback is used before Redis is tried again.
        owns_client: Close ``client`` with the limiter.
    """

    def __init__(
        self,
        client: Redis,
        rate: Rate,
        *,
        name: str,
        prefix: str = "datasources:",
        retry_after: float = 1.0,
        owns_client: bool = False,
    ) -> None:
        self.rate = rate
        self._client = client
        self._script = client.register_script(_BUCKET_LUA)
        self._namespace = f"{prefix}ratelimit:{name}:"
        self._retry_after = retry_after
        self._owns_client = owns_client
        self._fallback = LocalRateLimiter(rate)
        self._down_until = 0.0
        self._down_since: float | None = None

    def __repr__(self) -> str:
        return f"RedisRateLimiter({self.rate!r}, namespace={self._namespace!r})"

    @property
    def shared(self) -> bool:
        """Whether the last answer came from Redis (False while falling back)."""
        return self._down_since is None

    async def _run(self, key: str, cost: int) -> float | None:
        if self.rate.unlimited:
            return None
        now = time.monotonic()
        if now < self._down_until:
            return await self._local(key, cost)
        from redis.exceptions import RedisError

        try:
            answer = await self._script(
                keys=[self._namespace + key],
                args=[repr(self.rate.per_second), self.rate.burst, cost],
            )
        except (RedisError, OSError, TimeoutError) as exc:
            self._down_until = time.monotonic() + self._retry_after
            if self._down_since is None:
                self._down_since = now
                logger.warning(
                    "Rate limits: Redis cannot be reached (%s); each replica limits on its "
                    "own until it is back.",
                    type(exc).__name__,
                )
            return await self._local(key, cost)
        if self._down_since is not None:
            logger.warning(
                "Rate limits: Redis is back after %.1f s; limits are shared again.",
                now - self._down_since,
            )
            self._down_since = None
        wait_ms = int(answer)
        return None if wait_ms < 0 else wait_ms / 1000.0

    async def _local(self, key: str, cost: int) -> float | None:
        if cost > 0:
            return await self._fallback.take(key)
        if cost == 0:
            return await self._fallback.peek(key)
        await self._fallback.reset(key)
        return None

    async def take(self, key: str) -> float | None:
        """Spend one token; None if allowed, else the seconds until one is left."""
        return await self._run(key, 1)

    async def peek(self, key: str) -> float | None:
        """None if a token is left for ``key``, else the seconds until one is."""
        return await self._run(key, 0)

    async def reset(self, key: str) -> None:
        """Fill ``key``'s bucket again (in Redis and in the fallback)."""
        await self._fallback.reset(key)
        await self._run(key, -1)

    async def close(self) -> None:
        """Close the client if this limiter owns it."""
        if self._owns_client:
            await asyncio.shield(self._client.aclose())
