"""One huge message from the kernel cannot make the service hold or parse it whole.

The code holds the kernel's HMAC key and can make it publish anything: a 200 MB stream
message used to be received and JSON-parsed on the service's event loop (RSS grew by
several times its size and every request waited). The session's ZeroMQ sockets now refuse
messages over a cap, so such a message never reaches the service.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.api.conftest import create_keys, make_settings

pytestmark = [pytest.mark.api, pytest.mark.sandbox]

MB = 200


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1024
    return 0.0


async def test_a_huge_kernel_message_never_reaches_the_service(
    tmp_path: Path, live_server_factory: Any
) -> None:
    from datasources.api import create_app

    settings = make_settings(tmp_path)
    settings = settings.model_copy(
        update={"sandbox_limits": settings.sandbox_limits.model_copy(update={"timeout": 10})}
    )
    (alice,) = await create_keys(settings, "alice")
    server = live_server_factory(create_app(settings))
    auth = {"Authorization": f"Bearer {alice.key}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        warm = await client.post(f"/api/v1/chats/{chat}/execute", headers=auth, json={"code": "1"})
        assert warm.status_code == 200, warm.text
        before = _rss_mb()
        peak = [before]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], _rss_mb())
                time.sleep(0.02)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        code = f"import sys; sys.stdout.write('x' * {MB} * 1024 * 1024); sys.stdout.flush()"
        flood = await client.post(
            f"/api/v1/chats/{chat}/execute", headers=auth, json={"code": code}
        )
        stop.set()
        watcher.join()
        assert flood.status_code == 200, flood.text
        kept = sum(len(p.get("text") or "") for p in flood.json()["parts"])
        assert kept <= settings.sandbox_limits.output_bytes + 4096
        # Far less than the message: it was never received whole, let alone parsed.
        assert peak[0] - before < MB / 2, (before, peak[0])
        # The chat goes on (in the same session, or a new one after the timeout).
        after = await client.post(
            f"/api/v1/chats/{chat}/execute", headers=auth, json={"code": "print(6 * 7)"}
        )
        assert after.status_code == 200 and "42" in str(after.json()["parts"]), after.text
        await asyncio.sleep(0)
