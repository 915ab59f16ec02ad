"""The sandbox escape corpus: each attempt is contained, the service stays up, and the next
message in the same chat works. Driven over the real API, with real PostgreSQL and Azurite
listening on loopback and a stand-in for the service's own port."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from datasources.api import create_app
from datasources.config import ApiSettings, SandboxLimits, Settings
from tests.conftest import require_service

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]

CANARY_ENV = "DATASOURCES_SECRET_KEYS"


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on loopback standing in for the service itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
async def sandboxed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, canary: str
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str], Settings, str]]:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)  # a cloud credential in the env
    settings = Settings(
        home=tmp_path / "home",
        allow_private_networks=True,
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(
            pool_size=1,
            timeout=4,
            memory_bytes=1024**3,
            file_size_bytes=50 * 1024**2,
            tmp_bytes=32 * 1024**2,
            output_bytes=64 * 1024,
            workspace_quota_bytes=64 * 1024**2,
        ),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        key = await app.state.keys.create("k")
        headers = {"Authorization": f"Bearer {key.key}"}
        # Something secret in the store, and a second chat with a private file.
        await app.state.registry.scoped(key.owner).register_data_source(
            {"name": "pg", "type": "postgresql",
             "config": {"host": "127.0.0.1", "database": "x", "user": "u", "password": canary}}
        )  # fmt: skip
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            other = (await c.post("/api/v1/chats", json={}, headers=headers)).json()["id"]
            (settings.workspaces_dir / other / "outputs" / "private.txt").write_text(canary)
            chat = (await c.post("/api/v1/chats", json={}, headers=headers)).json()["id"]
            yield c, headers, settings, chat


def _attempts(settings: Settings, listener: int) -> list[tuple[str, str]]:
    pg_port = int(require_service("DATASOURCES_TEST_POSTGRES_DSN").rsplit(":", 1)[1].split("/")[0])
    home = settings.home
    return [
        ("environment", "import os; print(dict(os.environ))"),
        ("other processes' environments",
         "import glob\nfor p in glob.glob('/proc/*/environ'):\n"
         "    try: print(open(p, 'rb').read())\n    except Exception as e: print(p, e)"),
        ("the key file", f"print(open({str(home / 'secret.key')!r}).read())"),
        ("the store", f"print(open({str(home / 'datasources.db')!r}, 'rb').read())"),
        ("another chat", f"import glob; print([open(p).read() for p in glob.glob("
                         f"{str(settings.workspaces_dir)!r} + '/*/outputs/*')])"),
        ("the home folder", "import os; print(os.listdir(os.path.expanduser('~')), "
                            "os.listdir('/root') if os.path.exists('/root') else None)"),
        ("/etc/shadow", "print(open('/etc/shadow').read())"),
        ("write outside outputs",
         "for p in ['data/x', '/usr/x', '/x', '/etc/x', '/workspace/x']:\n"
         "    try: open(p, 'w').write('x'); print('WROTE', p)\n"
         "    except OSError as e: print(p, e)"),
        ("loopback: PostgreSQL, Azurite, the service",
         f"import socket\nfor port in ({pg_port}, 10000, {listener}):\n"
         "    try:\n"
         "        socket.create_connection(('127.0.0.1', port), timeout=2)\n"
         "        print('CONNECTED', port)\n"
         "    except OSError as e: print(port, e)"),
        ("an outside address",
         "import socket\ntry: socket.create_connection(('1.1.1.1', 443), timeout=2); "
         "print('CONNECTED')\nexcept OSError as e: print(e)"),
        ("a busy loop", "while True: pass"),
        ("a long sleep", "import time; time.sleep(10**6)"),
        ("a fork bomb", "import os\nwhile True:\n    os.fork()"),
        ("a grandchild outliving the timeout",
         "import subprocess; subprocess.Popen(['/bin/sh', '-c', 'sleep 1000 & sleep 1000']); "
         "import time; time.sleep(10**6)"),
        ("a huge allocation", "x = bytearray(10**11)"),
        ("filling the disk",
         "i = 0\nwhile True:\n    open(f'outputs/fill{i}', 'wb').write(b'0' * 10**7); i += 1"),
        ("filling /tmp", "open('/tmp/fill', 'wb').write(b'0' * 10**9)"),
        ("printing a gigabyte",
         "import sys\nfor _ in range(1024):\n    sys.stdout.write('x' * 2**20)"),
    ]  # fmt: skip


async def test_every_escape_is_contained_and_the_chat_goes_on(
    sandboxed: tuple[httpx.AsyncClient, dict[str, str], Settings, str],
    listener: int,
    canary: str,
) -> None:
    client, headers, settings, chat = sandboxed
    url = f"/api/v1/chats/{chat}/execute"
    outcomes: dict[str, Any] = {}
    for label, code in _attempts(settings, listener):
        response = await client.post(url, json={"code": code, "timeout": 4}, headers=headers)
        assert response.status_code == 200, (label, response.text)
        body = response.json()
        text = repr(body)
        outcomes[label] = body
        assert canary not in text, label
        assert "CONNECTED" not in text and "WROTE" not in text, (label, text[:500])
        # The service is up and the same chat answers the next message.
        after = await client.post(url, json={"code": "print(6 * 7)"}, headers=headers)
        assert after.status_code == 200, label
        assert {"type": "stdout", "text": "42\n"} in after.json()["parts"], (label, after.text)
    for label in ("a busy loop", "a long sleep", "a grandchild outliving the timeout"):
        assert outcomes[label]["timed_out"] is True, label
    assert outcomes["a huge allocation"]["ok"] is False  # MemoryError, not the host's memory
    # Cut at the output limit, or stopped by the memory limit first (ipykernel buffers).
    printed = outcomes["printing a gigabyte"]
    assert printed["truncated"] is True or printed["ok"] is False
    env = outcomes["environment"]["parts"][0]["text"]
    assert "DATASOURCES" not in env and "AWS_SECRET" not in env
    assert (settings.workspaces_dir / chat / "data").exists()
    assert (await client.get("/healthz")).status_code == 200
    # Nothing the code started is still running anywhere on the host.
    assert _running("sleep 1000") == []
    # What filled the disk was removed; the quota held.
    outputs = settings.workspaces_dir / chat / "outputs"
    assert sum(f.stat().st_size for f in outputs.iterdir()) <= 64 * 1024**2


def _running(command: str) -> list[Path]:
    return [p for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline(p) == command]


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except OSError:
        return ""
