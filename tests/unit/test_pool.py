"""The generic connection pool, with fake connections (unit level)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field

import pytest

from datasources.errors import TimeoutError, UnavailableError
from datasources.pool import ConnectionPool, PoolClosedError
from tests.waiting import eventually


@dataclass
class Conn:
    n: int
    healthy: bool = True
    closed: bool = False


@dataclass
class Factory:
    counter: itertools.count[int] = field(default_factory=itertools.count)
    made: list[Conn] = field(default_factory=list)
    fail: bool = False
    delay: float = 0.0

    async def __call__(self) -> Conn:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise UnavailableError("cannot connect")
        conn = Conn(next(self.counter))
        self.made.append(conn)
        return conn


async def close(conn: Conn) -> None:
    conn.closed = True


async def check(conn: Conn) -> bool:
    return conn.healthy


def make(factory: Factory, **kwargs: float) -> ConnectionPool[Conn]:
    return ConnectionPool(factory, close=close, check=check, name="t", **kwargs)  # type: ignore[arg-type]


async def test_open_wait_fills_min_size_and_close_closes_all() -> None:
    factory = Factory()
    pool = make(factory, min_size=2, max_size=4)
    await pool.open(wait=True)
    assert pool.stats().idle == 2
    async with pool.connection() as conn:
        assert pool.stats().in_use == 1
        assert not conn.closed
    await pool.close()
    assert all(c.closed for c in factory.made)
    assert pool.stats().closed
    with pytest.raises(PoolClosedError):
        async with pool.connection():
            pass


async def test_reuses_the_warmest_connection() -> None:
    factory = Factory()
    async with make(factory, min_size=0, max_size=3) as pool:
        async with pool.connection() as a:
            pass
        async with pool.connection() as b:
            pass
        assert a is b
        assert pool.stats().connections_created == 1
        assert pool.stats().acquisitions == 2


async def test_max_size_bounds_and_acquire_times_out() -> None:
    factory = Factory()
    async with make(factory, min_size=0, max_size=2, acquire_timeout=0.05) as pool:
        async with pool.connection(), pool.connection():
            with pytest.raises(TimeoutError) as info:
                async with pool.connection():
                    pass
            assert "2 in use" in info.value.message
            assert pool.stats().acquire_timeouts == 1
        assert pool.stats().size == 2


async def test_waiters_get_released_connections() -> None:
    factory = Factory()
    async with make(factory, min_size=0, max_size=1) as pool:
        order: list[int] = []

        async def use(i: int) -> None:
            async with pool.connection():
                order.append(i)
                await asyncio.sleep(0.01)

        await asyncio.gather(*(use(i) for i in range(5)))
        assert sorted(order) == list(range(5))
        assert pool.stats().connections_created == 1


async def test_unhealthy_connection_is_replaced_on_acquire() -> None:
    factory = Factory()
    async with make(factory, min_size=0, max_size=2) as pool:
        async with pool.connection() as first:
            pass
        first.healthy = False
        async with pool.connection() as second:
            assert second is not first
        assert first.closed
        assert pool.stats().failed_checks == 1


async def test_check_after_skips_recently_used() -> None:
    factory = Factory()
    async with make(factory, min_size=0, max_size=2, check_after=60) as pool:
        async with pool.connection() as first:
            pass
        first.healthy = False  # not checked: used a moment ago
        async with pool.connection() as again:
            assert again is first


async def test_transient_error_discards_the_connection() -> None:
    factory = Factory()
    async with make(factory, min_size=0) as pool:
        with pytest.raises(UnavailableError):
            async with pool.connection() as conn:
                raise UnavailableError("connection dropped")
        assert conn.closed
        with pytest.raises(ValueError):
            async with pool.connection() as other:
                raise ValueError("a bug in the caller, the connection is fine")
        assert not other.closed
        assert pool.stats().idle == 1


async def test_idle_timeout_and_lifetime() -> None:
    factory = Factory()
    async with make(factory, min_size=1, max_size=3, idle_timeout=0.1, max_lifetime=0.3) as pool:
        async with pool.connection(), pool.connection(), pool.connection():
            pass
        assert pool.stats().idle == 3
        first_generation = {id(c) for c in factory.made}
        # The idle ones beyond min_size are trimmed, and never below it.
        await eventually(lambda: pool.stats().idle == 1, what="idle connections trimmed")
        assert pool.stats().size >= 1

        async def replaced() -> bool:
            async with pool.connection() as conn:
                return id(conn) not in first_generation

        # The survivor is replaced on a borrow once its lifetime (0.3 s) is over.
        await eventually(replaced, what="a connection replaced after its lifetime")
        assert pool.stats().connections_closed >= 3


async def test_factory_failure_frees_the_slot() -> None:
    factory = Factory(fail=True)
    async with make(factory, min_size=0, max_size=1) as pool:
        for _ in range(3):
            with pytest.raises(UnavailableError):
                async with pool.connection():
                    pass
        assert pool.stats().size == 0
        factory.fail = False
        async with pool.connection():
            pass


async def test_slow_factory_times_out() -> None:
    factory = Factory(delay=1.0)
    async with make(factory, min_size=0, max_size=1, acquire_timeout=0.05) as pool:
        with pytest.raises(TimeoutError):
            async with pool.connection():
                pass
        assert pool.stats().size == 0


async def test_cancelled_borrower_discards() -> None:
    factory = Factory()
    async with make(factory, min_size=0) as pool:
        started = asyncio.Event()
        holder: list[Conn] = []

        async def borrower() -> None:
            async with pool.connection() as conn:
                holder.append(conn)
                started.set()
                await asyncio.sleep(10)

        task = asyncio.create_task(borrower())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert holder[0].closed
        assert pool.stats().in_use == 0


def test_invalid_limits() -> None:
    with pytest.raises(ValueError):
        make(Factory(), min_size=3, max_size=2)


async def test_not_open() -> None:
    pool = make(Factory())
    with pytest.raises(UnavailableError):
        async with pool.connection():
            pass
