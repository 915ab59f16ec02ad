"""Limits the kernel enforces: one cgroup per session, caps on live sessions.

Real bubblewrap. Processes are known by the cgroup they are in, not by what they call
themselves; a key that starts more sessions than it may gets 429 with Retry-After.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from datasources.config import ApiSettings, SandboxLimits, Settings
from datasources.sandbox.manager import SandboxManager
from datasources.sandbox.session import Session
from tests.api.conftest import served

pytestmark = [pytest.mark.sandbox]


def _cmdlines() -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode())
            except OSError:
                continue
    return found


async def test_a_child_named_like_bubblewrap_is_reaped_after_the_execution(
    tmp_path: Path,
) -> None:
    manager = SandboxManager(tmp_path / "ws", mode="bwrap", limits=SandboxLimits(pool_size=0))
    await manager.start()
    try:
        session, _ = await manager.session("c", tmp_path / "ws" / "c", owner="o")
        marker = f"bwrap {1000 + time.time_ns() % 1000}"
        result = await session.execute(
            "import os\n"
            "if os.fork() == 0:\n"
            f"    os.execv('/bin/sleep', {marker.split()!r})\n"
            "print('started')"
        )
        assert any(p.text and "leftover process" in p.text for p in result.parts), result.parts
        assert not [c for c in _cmdlines() if c.startswith(marker)]
        again = await session.execute("print(6 * 7)")
        assert again.parts[0].text == "42\n"
    finally:
        await manager.close()


async def test_nothing_the_session_started_outlives_it(tmp_path: Path) -> None:
    manager = SandboxManager(tmp_path / "ws", mode="bwrap", limits=SandboxLimits(pool_size=0))
    await manager.start()
    try:
        workspace = tmp_path / "ws" / "c"
        session, _ = await manager.session("c", workspace, owner="o")
        # A thread that keeps writing after the execution returns, and a double-forked
        # grandchild in a session of its own.
        result = await session.execute(
            "import threading, time, os, subprocess\n"
            "def write():\n"
            "    with open('outputs/log', 'a') as f:\n"
            "        while True:\n"
            "            f.write('x'); f.flush(); time.sleep(0.01)\n"
            "threading.Thread(target=write, daemon=True).start()\n"
            "print('ok')"
        )
        assert result.ok
        assert isinstance(session, Session)
        cgroup = session._plan.cgroup if session._plan is not None else None
        assert cgroup is not None and cgroup.pids()
        await manager.end("c")
        assert cgroup.pids() == []
        log = workspace / "outputs" / "log"
        size = log.stat().st_size
        await asyncio.sleep(0.3)
        assert log.stat().st_size == size  # nobody writes any more
        assert all(not path.exists() for path in cgroup.paths.values())
    finally:
        await manager.close()


def _settings(tmp_path: Path, **limits: float) -> Settings:
    return Settings(
        home=tmp_path / "home",
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(
            **{"pool_size": 0, "timeout": 30, "min_free_disk_bytes": 0, **limits}
        ),
    )


async def test_beyond_the_owner_cap_a_busy_key_gets_429_with_retry_after(
    tmp_path: Path,
) -> None:
    async for client, auth in served(_settings(tmp_path, max_sessions_per_owner=1)):
        first = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        second = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        warm = await client.post(f"/api/v1/chats/{first}/execute", json={"code": "1"}, headers=auth)
        assert warm.status_code == 200, warm.text
        busy = asyncio.create_task(
            client.post(
                f"/api/v1/chats/{first}/execute",
                json={"code": "import time; time.sleep(3)"},
                headers=auth,
            )
        )
        await asyncio.sleep(1)  # the first chat is running code now
        refused = await client.post(
            f"/api/v1/chats/{second}/execute", json={"code": "1"}, headers=auth
        )
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["code"] == "too_many_sessions"
        assert (await busy).status_code == 200
        # The first chat is idle now: its session makes room for the second.
        later = await client.post(
            f"/api/v1/chats/{second}/execute", json={"code": "print(6 * 7)"}, headers=auth
        )
        assert later.status_code == 200, later.text
        assert later.json()["parts"] == [{"type": "stdout", "text": "42\n"}]


async def test_a_start_on_a_full_service_waits_for_room(tmp_path: Path) -> None:
    limits = SandboxLimits(pool_size=0, max_sessions=1, start_wait_seconds=60)
    manager = SandboxManager(tmp_path / "ws", mode="bwrap", limits=limits)
    await manager.start()
    try:
        first, _ = await manager.session("a", tmp_path / "ws" / "a", owner="x")
        running = asyncio.create_task(first.execute("import time; time.sleep(2)"))
        await asyncio.sleep(0.5)
        # Another owner's chat waits while the only session is busy, then takes its place.
        second, new = await manager.session("b", tmp_path / "ws" / "b", owner="y")
        assert new and second.alive
        assert (await running).ok
        assert not first.alive
        reply = await second.execute("print(6 * 7)")
        assert reply.parts[0].text == "42\n"
    finally:
        await manager.close()


async def _settled_size(path: Path, ceiling: int) -> int:
    """The size of ``path`` once it stops growing (or once it passes ``ceiling``)."""
    last = -1
    for _ in range(300):
        size = await asyncio.to_thread(lambda: path.stat().st_size)
        if size == last or size > ceiling:
            return size
        last = size
        await asyncio.sleep(0.1)
    return last


async def test_the_disk_quota_holds_after_execute_across_executions_and_sessions(
    tmp_path: Path,
) -> None:
    quota = 8 * 1024**2
    limits = SandboxLimits(pool_size=1, workspace_quota_bytes=quota)
    manager = SandboxManager(tmp_path / "ws", mode="bwrap", limits=limits)
    await manager.start()
    workspace = tmp_path / "ws" / "c"
    try:
        session, _ = await manager.session("c", workspace, owner="o")
        # A thread that keeps writing after the execution has returned.
        started = await session.execute(
            "import threading, errno\n"
            "stopped = []\n"
            "def fill():\n"
            "    try:\n"
            "        with open('outputs/fill', 'wb') as f:\n"
            "            while True:\n"
            "                f.write(b'0' * 65536); f.flush()\n"
            "    except OSError as e:\n"
            "        stopped.append(errno.errorcode[e.errno])\n"
            "threading.Thread(target=fill, daemon=True).start()\n"
            "print('started')"
        )
        assert started.ok, started.parts
        size = await _settled_size(workspace / "outputs" / "fill", 4 * quota)
        assert size <= quota
        told = await session.execute("import time\nwhile not stopped: time.sleep(0.05)\n"
                                     "print(stopped)", timeout=30)  # fmt: skip
        assert told.parts[0].text == "['ENOSPC']\n", told.parts
        # The next execution cannot write either; the session is alive.
        more = await session.execute(
            "try:\n    open('outputs/more', 'wb').write(b'1' * 1024**2); print('WROTE')\n"
            "except OSError as e: print(e.errno)"
        )
        assert more.parts[0].text == "28\n", more.parts
        await manager.end("c")
        # A new session for the same chat (a pre-started one) sees the same files and
        # the same full filesystem.
        again, new = await manager.session("c", workspace, owner="o")
        assert new
        seen = await again.execute(
            "import os\nprint(os.path.getsize('outputs/fill') == "
            f"{size})\n"
            "try:\n    open('outputs/more', 'wb').write(b'1' * 1024**2); print('WROTE')\n"
            "except OSError as e: print(e.errno)"
        )
        assert seen.parts[0].text == "True\n28\n", seen.parts
        # Freeing space frees the quota.
        freed = await again.execute(
            "import os\nos.unlink('outputs/fill')\n"
            "open('outputs/more', 'wb').write(b'1' * 1024**2); print('ok')"
        )
        assert freed.parts[0].text == "ok\n", freed.parts
    finally:
        await manager.close()
