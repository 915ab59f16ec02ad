"""A hostile glob cannot stall the service: /healthz answers while it runs.

The issue (10, §6) asks for this timed assertion explicitly: /healthz under 100 ms at the
99th percentile while listings with a glob built to backtrack run against a folder of
long names, through the real app over HTTP (uvicorn in a thread)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import create_keys, make_settings

pytestmark = pytest.mark.api

# Against a 100-character name of 'a's, Python's backtracking `re` spends ~0.15 s on this
# pattern (holding the GIL, so even a worker thread stops the event loop); one more star
# and it is seconds per name.
HOSTILE = "*a" * 4 + "*b"


async def test_healthz_answers_while_a_hostile_glob_runs(
    tmp_path: Path, live_server_factory: Any
) -> None:
    from datasources.api import create_app

    settings = make_settings(tmp_path)
    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(16):
        (folder / ("a" * 100 + f"{i:02d}")).write_bytes(b"x")
    (key,) = await create_keys(settings, "k")
    server = live_server_factory(create_app(settings))
    auth = {"Authorization": f"Bearer {key.key}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        body = {"name": "long", "type": "local_folder", "config": {"root": str(folder)}}
        created = await client.post("/api/v1/datasources", json=body, headers=auth)
        assert created.status_code == 201, created.text
        stop = asyncio.Event()
        listings: list[httpx.Response] = []

        async def hostile() -> None:
            while not stop.is_set():
                listings.append(
                    await client.get(
                        "/api/v1/datasources/long/items", params={"glob": HOSTILE}, headers=auth
                    )
                )

        workers = [asyncio.create_task(hostile()) for _ in range(2)]
        await asyncio.sleep(0.05)  # the listings are under way
        latencies: list[float] = []
        for _ in range(60):
            start = time.perf_counter()
            health = await client.get("/healthz")
            latencies.append(time.perf_counter() - start)
            assert health.status_code == 200
            await asyncio.sleep(0.02)
        stop.set()
        await asyncio.gather(*workers)
    assert listings and all(r.status_code == 200 for r in listings), listings[-1].text
    assert all(r.json()["items"] == [] for r in listings)
    latencies.sort()
    p99 = latencies[int(len(latencies) * 0.99) - 1]
    assert p99 < 0.1, f"/healthz p99 {p99 * 1000:.0f} ms while the hostile glob ran"
