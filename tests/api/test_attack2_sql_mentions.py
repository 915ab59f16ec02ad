"""/sql rewrites every @source:schema.table mention before the 50-reference cap is
checked: one 100 kB message makes ~8400 registry look-ups and ~8400 re.sub passes over
the whole statement, synchronously on the event loop (~17 s of CPU here), and the
rewrite of @db:s.t1 also rewrites the prefix of @db:s.t10."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

pytestmark = [pytest.mark.api, pytest.mark.integration]


async def test_sql_mentions_are_capped_before_rewriting(api: Any, postgres_reader: str) -> None:
    body = {"name": "db", "type": "postgresql", "config": {"dsn": postgres_reader}}
    assert (await api.request("POST", "/api/v1/datasources", json=body)).status_code == 201
    chat = (await api.request("POST", "/api/v1/chats", json={})).json()["id"]
    sql = ("/sql SELECT 1 " + " ".join(f"@db:s.t{i}" for i in range(9000)))[:99_990]
    # The event loop should stay responsive: a ticker counts how long it was starved.
    worst = 0.0

    async def tick() -> None:
        nonlocal worst
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.05)
            now = time.monotonic()
            worst = max(worst, now - last)
            last = now

    ticker = asyncio.create_task(tick())
    started = time.monotonic()
    r = await api.request("POST", f"/api/v1/chats/{chat}/messages", json={"content": sql})
    took = time.monotonic() - started
    ticker.cancel()
    assert r.status_code == 400, (r.status_code, r.text[:300])
    assert took < 3, f"one /sql message took {took:.1f} s"
    assert worst < 1, f"event loop blocked for {worst:.1f} s"
