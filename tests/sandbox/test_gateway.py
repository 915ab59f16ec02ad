"""DATASOURCES_SANDBOX=gateway against a real Jupyter Enterprise Gateway (see gateway.py).

The chat code is the same as in every mode: the HTTP API's execute route and messages run
code through whatever session the manager gives. What these tests show is that a kernel
on the gateway behaves as a sandboxed one does (parts, images in displays/, errors,
timeouts, interrupts, the output cap), that its state outlives the replica that started
it, and that every way of failing to reach the gateway is a clear 503 without the token.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from datasources.config import ApiSettings, SandboxLimits, Settings
from datasources.sandbox.factory import sandbox_manager
from datasources.sandbox.gateway import GatewaySession
from datasources.sandbox.gateway_manager import GatewayManager
from datasources.sandbox.runtime import SandboxUnavailableError
from tests.api.conftest import served
from tests.sandbox.gateway import UID, Gateway, start_gateway
from tests.waiting import eventually

pytestmark = [pytest.mark.sandbox, pytest.mark.integration]

CHATS = "/api/v1/chats"


def _gateway_manager(settings: Settings) -> GatewayManager:
    manager = sandbox_manager(settings)
    assert isinstance(manager, GatewayManager)
    return manager


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    yield from start_gateway()


def settings_for(home: Path, url: str, token: str | None, **limits: Any) -> Settings:
    return Settings(
        home=home,
        sandbox="gateway",
        gateway_url=url,
        gateway_token=token,
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(
            **{"timeout": 20, "min_free_disk_bytes": 0, "pool_size": 0, **limits}
        ),
    )


def on(gateway: Gateway, name: str, **limits: Any) -> Settings:
    return settings_for(gateway.home(name), gateway.url, gateway.token, **limits)


async def execute(
    client: httpx.AsyncClient, auth: dict[str, str], chat: str, code: str, **extra: Any
) -> dict[str, Any]:
    response = await client.post(
        f"{CHATS}/{chat}/execute", json={"code": code, **extra}, headers=auth
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_code_runs_in_a_gateway_kernel_with_the_parts_of_a_sandbox(
    gateway: Gateway,
) -> None:
    settings = on(gateway, "parts")
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        workspace = settings.workspaces_dir / chat
        first = await execute(
            client, auth, chat,
            "import os\nx = 6\nprint(os.getcwd(), os.getuid())\nx * 7",
        )  # fmt: skip
        assert first["ok"] is True
        # Its working folder is the chat's workspace (KERNEL_WORKING_DIR), as no root.
        assert first["parts"] == [
            {"type": "stdout", "text": f"{workspace} {UID}\n"},
            {"type": "result", "text": "42"},
        ]
        # Variables persist across turns; errors are error parts.
        second = await execute(client, auth, chat, "print(x + 1)\n1 / 0")
        assert second["ok"] is False
        assert second["parts"][0] == {"type": "stdout", "text": "7\n"}
        assert second["parts"][1]["type"] == "error"
        assert second["parts"][1]["name"] == "ZeroDivisionError"
        # Figures become image parts saved in displays/, served by the files route.
        figure = await execute(
            client, auth, chat,
            "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
        )  # fmt: skip
        images = [p for p in figure["parts"] if p["type"] == "image"]
        assert len(images) == 1, figure
        got = await client.get(f"{CHATS}/{chat}/files/{images[0]['path']}", headers=auth)
        assert got.status_code == 200 and got.content.startswith(b"\x89PNG")
        # The kernel writes outputs/ and reads data/, and may not write data/ or displays/.
        checks = await execute(
            client, auth, chat,
            "open('outputs/r.txt', 'w').write('hi')\n"
            "for where in ('data/x', 'displays/x', 'x'):\n"
            "    try:\n"
            "        open(where, 'w')\n"
            "        print(where, 'written')\n"
            "    except OSError as exc:\n"
            "        print(where, type(exc).__name__)\n",
        )  # fmt: skip
        assert checks["parts"] == [
            {
                "type": "stdout",
                "text": "data/x PermissionError\ndisplays/x PermissionError\nx PermissionError\n",
            }
        ]
        assert (workspace / "outputs" / "r.txt").read_text() == "hi"
        # A message's python block runs in the same kernel.
        reply = await client.post(
            f"{CHATS}/{chat}/messages", json={"content": "```python\nx * 100\n```"}, headers=auth
        )
        assert reply.status_code == 200, reply.text
        assert {"type": "result", "text": "600"} in reply.json()["reply"]["parts"]


async def test_a_second_replica_attaches_to_the_same_kernel(gateway: Gateway) -> None:
    settings = on(gateway, "replicas")
    workspace = settings.workspaces_dir / "c1"
    first = sandbox_manager(settings)
    await first.start()
    await first.prepare("c1", workspace)
    session, new = await first.session("c1", workspace)
    assert new and isinstance(session, GatewaySession)
    kernel = session.kernel_id
    assert (await session.execute("state = {'n': 41}")).ok
    # A second replica (a new manager sharing the workspace root) finds the same kernel.
    second = sandbox_manager(settings)
    await second.start()
    try:
        other, new = await second.session("c1", workspace)
        assert not new and isinstance(other, GatewaySession) and other.kernel_id == kernel
        result = await other.execute("state['n'] += 1; state['n']")
        assert result.parts[0].text == "42"
        # The first replica stops: its kernels go on; a third one, later, still sees them.
        await first.close()
        assert gateway.has_kernel(str(kernel))
        third = _gateway_manager(settings)
        await third.start()
        again, new = await third.session("c1", workspace)
        assert not new
        assert (await again.execute("state['n']")).parts[0].text == "42"
        # Deleting the chat on a replica that never started its kernel ends the kernel.
        await third.discard("c1", workspace)
        assert not gateway.has_kernel(str(kernel))
        assert third.kernels.get("c1") is None
        await third.close()
        # A replica whose kernel is gone (another replica deleted it, or the gateway culled
        # it) starts a new one for the next turn.
        fresh, new = await second.session("c1", workspace)
        assert new and isinstance(fresh, GatewaySession) and fresh.kernel_id != kernel
        assert (await fresh.execute("'state' in globals()")).parts[0].text == "False"
        # ... and one shut down during a turn ends the turn (not its timeout); the next
        # turn gets a new kernel.
        async with httpx.AsyncClient() as raw:
            doomed = asyncio.create_task(fresh.execute("import time; time.sleep(600)"))
            await eventually(lambda: fresh.busy, what="the turn runs")
            gone = await raw.delete(
                f"{gateway.url}/api/kernels/{fresh.kernel_id}",
                headers={"Authorization": f"token {gateway.token}"},
            )
            assert gone.status_code == 204
            result = await doomed
        assert not result.ok and not result.timed_out
        last, new = await second.session("c1", workspace)
        assert new and (await last.execute("1")).ok
    finally:
        await second.close()
        await first.close()


async def test_timeouts_interrupt_and_a_stubborn_kernel_is_restarted(gateway: Gateway) -> None:
    settings = on(gateway, "timeouts")
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        await execute(client, auth, chat, "kept = 'yes'")
        # A long cell is interrupted at its timeout; the kernel and its variables stay.
        slow = await execute(client, auth, chat, "import time\ntime.sleep(600)", timeout=1)
        assert slow["timed_out"] is True and slow["restarted"] is False
        names = [p["name"] for p in slow["parts"] if p["type"] == "error"]
        assert names == ["KeyboardInterrupt", "Timeout"]
        assert slow["parts"][-1]["text"] == "The code ran past 1 s and was interrupted."
        assert (await execute(client, auth, chat, "kept"))["parts"] == [
            {"type": "result", "text": "'yes'"}
        ]
        # Code that ignores the interrupt: the kernel is restarted (same id, fresh state).
        stubborn = await execute(
            client, auth, chat,
            "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass",
            timeout=1,
        )  # fmt: skip
        assert stubborn["timed_out"] is True and stubborn["restarted"] is True
        assert stubborn["parts"][-1] == {
            "type": "error",
            "name": "Timeout",
            "text": "The code ran past 1 s and was stopped; the session was restarted.",
        }
        after = await execute(client, auth, chat, "import os\nprint(os.getcwd())\n'kept' in dir()")
        assert after["parts"] == [
            {"type": "stdout", "text": f"{settings.workspaces_dir / chat}\n"},
            {"type": "result", "text": "False"},
        ]


async def test_a_kernel_that_dies_is_reported_and_the_chat_goes_on(gateway: Gateway) -> None:
    settings = on(gateway, "dies")
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        died = await execute(client, auth, chat, "v = 1\nimport os\nos._exit(3)")
        assert died["ok"] is False and died["restarted"] is True
        assert [p["name"] for p in died["parts"]] == ["SessionDied"]
        # The gateway restarted it: the next turn runs, in a fresh kernel.
        after = await execute(client, auth, chat, "'v' in dir()")
        assert after["parts"] == [{"type": "result", "text": "False"}]


async def test_the_output_cap_holds_as_in_a_sandbox(gateway: Gateway) -> None:
    settings = on(gateway, "cap", output_bytes=4096)
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        loud = await execute(client, auth, chat, "for i in range(2000): print('x' * 100)")
        assert loud["truncated"] is True
        printed = [p for p in loud["parts"] if p["type"] == "stdout"]
        assert sum(len(p["text"].encode()) for p in printed) <= 4096
        assert loud["parts"][-1]["text"].startswith("(output cut at 4096 bytes")
        # Output without end is interrupted well before the 20 s timeout, not read forever.
        # (Not asserted: the KeyboardInterrupt's error message, which the gateway's own
        # iopub rate limit may drop; its status messages always pass.)
        endless = await execute(client, auth, chat, "while True: print('y' * 1000)")
        assert endless["truncated"] is True and endless["timed_out"] is False
        # A single message larger than the service takes closes the connection; the
        # session reconnects, the turn ends with a note, and the kernel is still usable.
        huge = await execute(
            client, auth, chat,
            "import sys\nkept = 5\nsys.stdout.write('z' * (20 * 2**20))\nsys.stdout.flush()",
        )  # fmt: skip
        assert huge["timed_out"] is False
        assert "connection to the kernel was lost" in huge["parts"][-1]["text"]
        assert (await execute(client, auth, chat, "kept"))["parts"] == [
            {"type": "result", "text": "5"}
        ]


async def test_deleting_a_chat_shuts_its_kernel_down(gateway: Gateway) -> None:
    settings = on(gateway, "delete")
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        await execute(client, auth, chat, "1")
        records = settings.workspaces_dir / ".kernels"
        kernel = (records / chat).read_text()
        assert gateway.has_kernel(kernel)
        deleted = await client.delete(f"{CHATS}/{chat}", headers=auth)
        assert deleted.status_code == 204, deleted.text
        assert not gateway.has_kernel(kernel)
        assert not (records / chat).exists()


async def test_idle_kernels_are_shut_down_unless_another_replica_uses_them(
    gateway: Gateway,
) -> None:
    settings = on(gateway, "idle", idle_seconds=8)  # margin for a loaded machine
    workspace = settings.workspaces_dir / "c"
    here, there = (_gateway_manager(settings) for _ in range(2))
    await here.start()
    await there.start()
    try:
        session, _ = await here.session("c", workspace)
        assert isinstance(session, GatewaySession)
        kernel = str(session.kernel_id)
        other, _ = await there.session("c", workspace)
        # Idle here (its clock says so) but just used on the other replica: this replica
        # lets go of it (now, or its own culler did already); the kernel stays.
        session.last_used -= 60
        assert (await other.execute("1")).ok
        assert await here.cull() == 0
        assert gateway.has_kernel(kernel) and "c" not in here._sessions
        assert (await other.execute("2")).ok
        # Idle everywhere: shut down (by the culler that runs every idle_seconds / 2).
        await eventually(
            lambda: not gateway.has_kernel(kernel), what="the idle kernel is shut down"
        )
        await eventually(lambda: there.kernels.get("c") is None, what="its record is removed")
        assert "c" not in there._sessions
    finally:
        await here.close()
        await there.close()


async def test_a_gateway_that_is_down_is_a_clear_503(tmp_path: Path) -> None:
    from tests.sandbox.gateway import _free_port

    home = tmp_path / "home"
    settings = settings_for(home, f"http://127.0.0.1:{_free_port()}", "t0ken-never-shown")
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        response = await client.post(f"{CHATS}/{chat}/execute", json={"code": "1"}, headers=auth)
        assert response.status_code == 503
        body = response.json()
        assert body["code"] == "sandbox_unavailable"
        assert "kernel gateway cannot be reached" in body["detail"]
        assert "t0ken-never-shown" not in response.text
        reply = await client.post(
            f"{CHATS}/{chat}/messages", json={"content": "```python\n1\n```"}, headers=auth
        )
        assert reply.json()["reply"]["parts"][-1]["name"] == "sandbox_unavailable"


async def test_a_bad_token_is_a_clear_503_without_the_token(
    gateway: Gateway, canary: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    settings = settings_for(gateway.home("token"), gateway.url, canary)
    async for client, auth in served(settings):
        chat = (await client.post(CHATS, json={}, headers=auth)).json()["id"]
        response = await client.post(f"{CHATS}/{chat}/execute", json={"code": "1"}, headers=auth)
        assert response.status_code == 503
        assert response.json()["code"] == "sandbox_unavailable"
        assert "refused the service's token" in response.json()["detail"]
        assert "DATASOURCES_GATEWAY_TOKEN" in response.json()["detail"]
        assert canary not in response.text and gateway.token not in response.text
    assert "refused the service's token" in caplog.text or "answered 401" in caplog.text
    assert canary not in caplog.text


async def test_a_gateway_run_as_root_refuses_kernels_and_says_so() -> None:
    """Enterprise Gateway's default (EG_UNAUTHORIZED_USERS=root): no kernel as root."""
    server = start_gateway(as_root=True, name="eg-root")
    running = next(server)
    try:
        settings = settings_for(running.home("root"), running.url, running.token)
        manager = sandbox_manager(settings)
        await manager.start()
        try:
            workspace = settings.workspaces_dir / "c"
            with pytest.raises(SandboxUnavailableError) as refused:
                await manager.session("c", workspace)
            assert "refused to start a kernel (HTTP 403" in refused.value.message
            assert running.kernels() == []
        finally:
            await manager.close()
    finally:
        server.close()


async def test_without_a_url_code_is_refused_with_the_setting_to_set(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", sandbox="gateway")
    manager = sandbox_manager(settings)
    await manager.start()
    try:
        with pytest.raises(SandboxUnavailableError) as refused:
            await manager.session("c", tmp_path / "home" / "workspaces" / "c")
        assert "DATASOURCES_GATEWAY_URL" in refused.value.message
    finally:
        await manager.close()
