"""Where bubblewrap cannot run: code is refused, unless the operator chooses ``process``."""

from __future__ import annotations

from pathlib import Path

import pytest

from datasources.config import ApiSettings, SandboxLimits, Settings
from datasources.sandbox import runtime
from datasources.sandbox.manager import SandboxManager
from tests.api.conftest import served
from tests.waiting import eventually

pytestmark = pytest.mark.sandbox


def _settings(tmp_path: Path, mode: str) -> Settings:
    return Settings(
        home=tmp_path / "home",
        sandbox=mode,
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=0, timeout=5, min_free_disk_bytes=0),
    )


async def test_without_bubblewrap_code_is_refused_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime, "bwrap_problem", lambda: "bubblewrap (bwrap) is not installed")
    monkeypatch.setattr(
        "datasources.sandbox.manager.bwrap_problem", lambda: "bubblewrap (bwrap) is not installed"
    )
    async for client, auth in served(_settings(tmp_path, "bwrap")):
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        response = await client.post(
            f"/api/v1/chats/{chat}/execute", json={"code": "1+1"}, headers=auth
        )
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "sandbox_unavailable"
        assert "DATASOURCES_SANDBOX=process" in body["detail"] and "not installed" in body["detail"]
        reply = await client.post(
            f"/api/v1/chats/{chat}/messages", json={"content": "```python\n1\n```"}, headers=auth
        )
        assert reply.json()["reply"]["parts"][-1]["name"] == "sandbox_unavailable"


async def test_process_mode_runs_code_with_limits_but_says_it_is_not_isolated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async for client, auth in served(_settings(tmp_path, "process")):
        assert "WITHOUT isolation" in caplog.text
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        url = f"/api/v1/chats/{chat}/execute"
        first = await client.post(url, json={"code": "x = 6\nimport os\nprint(os.getcwd())"},
                                  headers=auth)  # fmt: skip
        assert first.status_code == 200, first.text
        assert first.json()["parts"][0]["text"].strip().endswith(chat)
        env = await client.post(url, json={"code": "import os; print(sorted(os.environ))"},
                                headers=auth)  # fmt: skip
        assert "DATASOURCES" not in env.text
        slow = await client.post(url, json={"code": "while True: pass", "timeout": 1},
                                 headers=auth)  # fmt: skip
        assert slow.json()["timed_out"] is True
        again = await client.post(url, json={"code": "print(x * 7)"}, headers=auth)
        assert again.json()["parts"] == [{"type": "stdout", "text": "42\n"}]


async def test_idle_sessions_are_culled(tmp_path: Path) -> None:
    manager = SandboxManager(
        tmp_path / "ws", mode="process", limits=SandboxLimits(pool_size=0, idle_seconds=0.1)
    )
    await manager.start()
    try:
        session, new = await manager.session("c", tmp_path / "ws" / "c")
        assert new and session.alive

        # Culled once idle for longer than idle_seconds (explicit cull() calls: the
        # background culler's timing is not what this tests).
        async def culled() -> bool:
            await manager.cull()
            return not session.alive

        await eventually(culled, what="the idle session is culled")
        again, new = await manager.session("c", tmp_path / "ws" / "c")
        assert new and again is not session
    finally:
        await manager.close()
