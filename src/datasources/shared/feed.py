"""Changes carried through Redis pub/sub, for stores that cannot notify (SQLite).

Several workers on one SQLite file (``datasources serve --workers N``) share no
notification channel of the store's own, so each one publishes the changes it commits to
``<prefix>changes`` and listens there for the others'. A PostgreSQL store needs none of
this: it notifies in the writing transaction (:mod:`datasources.store.changes`).

The listening connection is checked by a ``PING`` every half second; when it breaks the
feed reports itself unhealthy (callers stop trusting their caches), reconnects with a
backoff, and, once subscribed again, tells its handler to forget everything: whatever was
published while it was away is lost with pub/sub.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from datasources.store.changes import Change, ChangeHandler, Listener

if TYPE_CHECKING:
    from redis.asyncio import Redis

__all__ = ["RedisChangeFeed"]

logger = logging.getLogger(__name__)


class RedisChangeFeed(Listener):
    """Publish this process's changes to a Redis channel and hear every process's.

    Args:
        client: A ``redis.asyncio.Redis`` built without retries (see
            :func:`datasources.shared.state.redis_client`), so that a lost connection
            is seen here instead of being silently re-subscribed.
        channel: The channel (``<prefix>changes``).
        handler: Called for each change heard, and with None after every (re)subscription.
        heartbeat: Seconds between pings on the listening connection.
        timeout: Seconds a subscription or a ping answer may take.
    """

    _what = "Redis change feed"

    def __init__(
        self,
        client: Redis,
        channel: str,
        handler: ChangeHandler,
        *,
        heartbeat: float = 0.5,
        timeout: float = 1.0,
    ) -> None:
        super().__init__(handler, heartbeat=heartbeat, timeout=timeout)
        self._client = client
        self._channel = channel

    def __repr__(self) -> str:
        return f"RedisChangeFeed(channel={self._channel!r}, healthy={self._healthy})"

    async def publish(self, change: Change) -> None:
        """Tell every listening process (errors are logged: the change is committed)."""
        from redis.exceptions import RedisError

        try:
            await self._client.publish(self._channel, change.to_json())
        except (RedisError, OSError, TimeoutError) as exc:
            logger.warning(
                "Could not publish a %s change to Redis (%s); other workers see it when "
                "their caches expire.",
                change.kind,
                type(exc).__name__,
            )

    async def _listen_once(self) -> None:
        pubsub = self._client.pubsub()
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(pubsub.subscribe(self._channel), self._timeout)
            deadline = loop.time() + self._timeout
            while True:  # the subscription is confirmed before anything is trusted
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise TimeoutError("no subscription confirmation")
                message = await pubsub.get_message(timeout=remaining)
                if message is not None and message["type"] == "subscribe":
                    break
            await self._handler(None)
            self._healthy = self._was_up = True
            self._connected.set()
            logger.info("Redis change feed: subscribed to %s.", self._channel)
            last_heard = loop.time()
            next_beat = loop.time() + self._heartbeat
            while True:
                message = await pubsub.get_message(timeout=max(next_beat - loop.time(), 0.01))
                if message is not None:
                    last_heard = loop.time()  # anything heard proves the connection alive
                    await self._dispatch(message)
                    continue
                now = loop.time()
                if now >= next_beat:
                    if now - last_heard > 2 * self._heartbeat + self._timeout:
                        raise TimeoutError("the listening connection stopped answering")
                    await asyncio.wait_for(pubsub.ping(), self._timeout)
                    next_beat = now + self._heartbeat
        finally:
            self._healthy = False
            try:
                await asyncio.wait_for(pubsub.aclose(), self._timeout)
            except Exception:
                logger.debug("Closing the Redis subscription failed.", exc_info=True)

    async def _dispatch(self, message: dict[str, Any]) -> None:
        if message["type"] != "message":
            return
        change = Change.from_json(message["data"])
        if change is not None:
            await self._handler(change)
