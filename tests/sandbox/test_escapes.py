"""The sandbox escape corpus: each attempt is contained, the service stays up, and the next
message in the same chat works. Driven over the real API, with real PostgreSQL and Azurite
listening on loopback and a stand-in for the service's own port.

Every attempt to read a host secret is judged by plain-text markers planted in the target
(the key itself, a source name in the store, a file in the service's home, root-only files
in ``/root`` and ``/etc``), looked for in every field of the reply, and must raise inside
the sandbox: the encrypted canary alone could not show that the store was read."""

from __future__ import annotations

import json
import os
import secrets
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import httpx
import pytest

from datasources.api import create_app
from datasources.config import ApiSettings, SandboxLimits, Settings
from tests.conftest import require_service

pytestmark = [pytest.mark.integration, pytest.mark.sandbox]


@pytest.fixture
def listener() -> Iterator[int]:
    """A port on loopback standing in for the service itself."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def mark() -> str:
    """This run's marker prefix: no file on the machine holds it unless we planted it."""
    return "escape-marker-" + secrets.token_hex(6) + "-"


@pytest.fixture
def host_markers(mark: str) -> Iterator[dict[str, Path]]:
    """Plain-text markers planted in host places a sandbox must never see: ``/root`` and
    beside ``/etc/shadow`` (a root-only file of our own: the real one is never touched).
    Only where this process may write (as root, which is how CI runs); removed after."""
    planted: dict[str, Path] = {}
    for label, folder in (("/root", Path("/root")), ("/etc", Path("/etc"))):
        path = folder / f".datasources-escape-{secrets.token_hex(6)}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError:
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{mark}{label.strip('/')}-{secrets.token_hex(8)}")
        planted[label] = path
    try:
        yield planted
    finally:
        for path in planted.values():
            path.unlink(missing_ok=True)


class Box(NamedTuple):
    client: httpx.AsyncClient
    headers: dict[str, str]
    settings: Settings
    chat: str
    mark: str
    markers: dict[str, str]
    """Plain-text secrets by where they were planted; none may appear in any reply."""
    paths: dict[str, Path]


@pytest.fixture
async def sandboxed(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    canary: str,
    mark: str,
    host_markers: dict[str, Path],
) -> AsyncIterator[Box]:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", canary)  # a cloud credential in the env
    settings = Settings(
        home=tmp_path / "home",
        allow_private_networks=True,
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(
            pool_size=1,
            min_free_disk_bytes=0,
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
        # The canary is stored only encrypted, so it cannot show a read of the store:
        # plain-text markers can. The source's name and database are stored in clear.
        store_marker = mark + "store-" + secrets.token_hex(8)
        await app.state.registry.scoped(key.owner).register_data_source(
            {"name": store_marker, "type": "postgresql",
             "config": {"host": "127.0.0.1", "database": store_marker, "user": "u",
                        "password": canary}}
        )  # fmt: skip
        home_marker = mark + "home-" + secrets.token_hex(8)
        (settings.home / "notes.txt").write_text(home_marker)
        key_file = settings.home / "secret.key"
        markers = {
            "store": store_marker,
            "home": home_marker,
            "canary": canary,
            **{
                f"key line {i}": line.strip()
                for i, line in enumerate(key_file.read_text().splitlines())
                if len(line.strip()) >= 16
            },
            **{label: path.read_text() for label, path in host_markers.items()},
        }
        assert any(label.startswith("key line") for label in markers), "no key material"
        paths = {
            "key file": key_file,
            "store": settings.home / "datasources.db",
            "home": settings.home / "notes.txt",
            **host_markers,
        }
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=120) as c:
            other = (await c.post("/api/v1/chats", json={}, headers=headers)).json()["id"]
            (settings.workspaces_dir / other / "outputs" / "private.txt").write_text(canary)
            chat = (await c.post("/api/v1/chats", json={}, headers=headers)).json()["id"]
            yield Box(c, headers, settings, chat, mark, markers, paths)


def _reads(box: Box) -> list[tuple[str, str]]:
    """Attempts to read a host secret: each must raise inside the sandbox."""
    reads = [
        ("the key file", f"print(open({str(box.paths['key file'])!r}).read())"),
        ("the store", f"print(open({str(box.paths['store'])!r}, 'rb').read())"),
        ("the home folder", f"print(open({str(box.paths['home'])!r}).read())"),
        ("another chat", f"import glob\nfiles = glob.glob({str(box.settings.workspaces_dir)!r}"
                         " + '/*/outputs/*')\nassert files, 'nothing visible'\n"
                         "print([open(p).read() for p in files])"),
        ("/etc/shadow", "print(open('/etc/shadow').read())"),
    ]  # fmt: skip
    for label, path in box.paths.items():
        if label.startswith("/"):
            reads.append((f"a root-only file in {label}", f"print(open({str(path)!r}).read())"))
    return reads


def _attempts(box: Box, listener: int) -> list[tuple[str, str]]:
    pg_port = int(require_service("DATASOURCES_TEST_POSTGRES_DSN").rsplit(":", 1)[1].split("/")[0])
    return [
        ("environment", "import os; print(dict(os.environ))"),
        # May succeed if a workspace is bound at its own path; must show none of the files.
        ("listing the home folder",
         f"import os\nfor d, _, f in os.walk({str(box.settings.home)!r}): print(d, f)"),
        # /root may exist inside (an interpreter under /root/.pyenv is bound read-only at
        # its own path), so listing it need not fail: it must just not show our file.
        ("listing /root and /etc", "import os\nfor d in ('/root', '/etc'):\n"
                                   "    try: print(d, os.listdir(d))\n"
                                   "    except OSError as e: print(d, e)"),
        ("other processes' environments",
         "import glob\nfor p in glob.glob('/proc/*/environ'):\n"
         "    try: print(open(p, 'rb').read())\n    except Exception as e: print(p, e)"),
        # Skipped: system folders, the interpreter, and the sandbox's own /kernel (socket
        # folder) and /tmp (private tmpfs), where reading the kernel's live files can end
        # the session (seen: right after /tmp/.ipython/profile_default/history.sqlite).
        ("every readable file",
         "import os, sys\nskip = {'/usr', '/proc', '/sys', '/dev', '/lib', '/lib64', '/bin',"
         " '/sbin', '/kernel', '/tmp', os.path.realpath(sys.prefix),"
         " os.path.realpath(sys.base_prefix)}\n"
         "n = 0\nfor d, dirs, files in os.walk('/'):\n"
         "    dirs[:] = [x for x in dirs if os.path.realpath(os.path.join(d, x)) not in skip]\n"
         "    for f in files:\n"
         "        path = os.path.join(d, f)\n"
         "        if not os.path.isfile(path): continue  # sockets, FIFOs: not files\n"
         "        try: data = open(path, 'rb').read(1 << 20)\n"
         "        except OSError: continue\n"
         "        n += 1\n"
         "        if MARK in data: print('FOUND', os.path.join(d, f), data)\n"
         "print('searched', n, 'files')"
         .replace("MARK", repr(box.mark.encode()))),
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
    sandboxed: Box, listener: int
) -> None:
    box = sandboxed
    client, headers, settings, chat = box.client, box.headers, box.settings, box.chat
    url = f"/api/v1/chats/{chat}/execute"
    reads = _reads(box)
    outcomes: dict[str, Any] = {}
    for label, code in [*reads, *_attempts(box, listener)]:
        response = await client.post(url, json={"code": code, "timeout": 4}, headers=headers)
        assert response.status_code == 200, (label, response.text)
        body = response.json()
        text = json.dumps(body) + repr(body)  # every part, every field, escaped or not
        outcomes[label] = body
        for where, marker in box.markers.items():
            assert marker not in text, f"{label}: the {where} marker came back"
        # What the code printed (its own source may echo back in a traceback).
        printed = "".join(p.get("text") or "" for p in body["parts"] if p["type"] == "stdout")
        # Nothing of /root may show (only an interpreter's own folder may exist there).
        # A sandbox may bind parts of /etc: there only the file's content is secret.
        names = [path.name for label, path in box.paths.items() if label == "/root"]
        names += ["secret.key", "datasources.db", "notes.txt", "private.txt"]
        for word in ("CONNECTED", "WROTE", "FOUND", *names):
            assert word not in printed, (label, printed[:500])
        # The service is up and the same chat answers the next message.
        after = await client.post(url, json={"code": "print(6 * 7)"}, headers=headers)
        assert after.status_code == 200, label
        assert {"type": "stdout", "text": "42\n"} in after.json()["parts"], (label, after.text)
    for label, _code in reads:
        body = outcomes[label]
        assert body["ok"] is False, (label, body)
        errors = [part for part in body["parts"] if part["type"] == "error"]
        assert errors, (label, body)
        assert not [p for p in body["parts"] if p["type"] == "stdout"], (label, body)
    searched = outcomes["every readable file"]
    assert not searched["timed_out"] and "searched" in searched["parts"][-1]["text"], searched
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
