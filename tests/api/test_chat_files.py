"""Workspace files over HTTP while sandboxed code renames, swaps and plants links.

The sandbox can write ``outputs/`` at any moment; these tests do what it can do — from a
racing thread on the host, or from code in the real bwrap sandbox — and show that the
service never reads or writes through a name the sandbox controls, and that every part
of a reply counts toward the output cap.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from datasources.api import create_app
from datasources.config import ApiSettings, SandboxLimits, Settings
from datasources.errors import DataSourceError
from tests.api.conftest import Api

pytestmark = pytest.mark.api

CHATS = "/api/v1/chats"
SECRET = b"HOST-SECRET-" + os.urandom(8).hex().encode()

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def exchange(a: Path, b: Path) -> None:
    """renameat2(RENAME_EXCHANGE): swap two names atomically (what the sandbox can do)."""
    if _libc.renameat2(_AT_FDCWD, bytes(a), _AT_FDCWD, bytes(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


class Swapper:
    """A thread that keeps swapping a real folder and a symlink to a host folder."""

    def __init__(self, folder: Path, link: Path) -> None:
        self.folder, self.link = folder, link
        self.stop = threading.Event()
        self.swaps = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.is_set():
            exchange(self.folder, self.link)
            self.swaps += 1

    def __enter__(self) -> Swapper:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(10)
        if self.folder.is_symlink():  # leave the real folder at its own name
            exchange(self.folder, self.link)


def plant_race(api: Api, chat: str, tmp_path: Path) -> tuple[Path, Path]:
    """outputs/d/secret.txt (a decoy) and outputs/l -> a host folder with the secret."""
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.txt").write_bytes(SECRET)
    outputs = api.settings.workspaces_dir / chat / "outputs"
    (outputs / "d").mkdir()
    (outputs / "d" / "secret.txt").write_bytes(b"decoy")
    (outputs / "l").symlink_to(host)
    return outputs / "d", outputs / "l"


async def new_chat(api: Api) -> str:
    response = await api.request("POST", CHATS, json={"title": "t"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


async def test_a_rename_exchange_race_never_serves_a_host_file(api: Api, tmp_path: Path) -> None:
    chat = await new_chat(api)
    folder, link = plant_race(api, chat, tmp_path)
    served = refused = 0
    with Swapper(folder, link) as swapper:
        for _ in range(1500):
            response = await api.request("GET", f"{CHATS}/{chat}/files/outputs/d/secret.txt")
            assert SECRET not in response.content, "a host file was served through a swap"
            if response.status_code == 200:
                assert response.content == b"decoy"
                served += 1
            else:
                assert response.status_code in (400, 404), response.text
                refused += 1
            listing = await api.request("GET", f"{CHATS}/{chat}/files")
            assert listing.status_code == 200
            # Listed through the link, the host folder's secret.txt would show its size;
            # the decoy (wherever the swap has put its folder) is 5 bytes.
            sizes = {
                f["bytes"] for f in listing.json()["items"] if f["path"].endswith("secret.txt")
            }
            assert sizes <= {5}, listing.text
    # The race really ran both ways: some requests saw the folder, some the link.
    assert swapper.swaps > 100 and served > 0 and refused > 0, (swapper.swaps, served, refused)


async def test_with_the_route_check_off_the_descriptor_layer_still_refuses(
    api: Api, tmp_path: Path
) -> None:
    chat = await new_chat(api)
    plant_race(api, chat, tmp_path)
    outputs = api.settings.workspaces_dir / chat / "outputs"
    (outputs / "file-link").symlink_to(tmp_path / "host" / "secret.txt")
    (outputs / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(outputs / "fifo")
    chats = api.app.state.chats
    hostile = [
        "outputs/l/secret.txt",
        "outputs/file-link",
        "outputs/dangling",
        "outputs/fifo",  # must not block waiting for a writer
        "outputs/d",
        "../host/secret.txt",
        "outputs/../../host/secret.txt",
        str(tmp_path / "host" / "secret.txt"),
        "outputs/d/secret.txt\0",
        "",
    ]
    for path in hostile:
        with pytest.raises(DataSourceError):
            file = await chats.open_file(api.alice.owner, chat, path, check_path=False)
            file.close()
    file = await chats.open_file(api.alice.owner, chat, "outputs/d/secret.txt", check_path=False)
    with file:
        assert b"".join(file.chunks()) == b"decoy"
    # And through HTTP, with the check on, the same names are refused.
    for path in hostile[:5]:
        response = await api.request("GET", f"{CHATS}/{chat}/files/{path}")
        assert response.status_code in (400, 404) and SECRET not in response.content, path


async def test_served_files_are_inert_attachments(api: Api) -> None:
    chat = await new_chat(api)
    page = api.settings.workspaces_dir / chat / "outputs" / "page.html"
    page.write_text("<script>alert(1)</script>")
    response = await api.request("GET", f"{CHATS}/{chat}/files/outputs/page.html")
    assert response.status_code == 200 and response.text == "<script>alert(1)</script>"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"] == "sandbox"
    assert response.headers["content-length"] == str(page.stat().st_size)
    url = f"{CHATS}/{chat}/files/outputs/page.html"
    body = page.read_bytes()
    for header, status, expected in [
        ("bytes=0-7", 206, body[:8]),
        ("bytes=8-", 206, body[8:]),
        ("bytes=-9", 206, body[-9:]),
        ("bytes=3-100000", 206, body[3:]),
        ("bytes=0-1,4-5", 200, body),  # several ranges: the whole file
        ("items=0-1", 200, body),
        ("bytes=1000-", 416, b""),
        ("bytes=5-2", 416, b""),
    ]:
        got = await api.request("GET", url, headers={"Range": header})
        assert (got.status_code, got.content) == (status, expected), header
        if status == 206:
            assert got.headers["content-range"].endswith(f"/{len(body)}")


# -- through the real sandbox ----------------------------------------------------------


@pytest.fixture
async def sandbox_api(tmp_path: Path) -> AsyncIterator[Api]:
    settings = Settings(
        home=tmp_path / "home",
        allow_private_networks=True,
        local_folder_roots=[tmp_path / "data"],
        api=ApiSettings(rate_limit_per_minute=0),
        sandbox_limits=SandboxLimits(pool_size=1, timeout=60, output_bytes=1024**2),
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://testserver", timeout=180
        ) as client:
            alice = await app.state.keys.create("alice")
            bob = await app.state.keys.create("bob")
            yield Api(app, client, alice, bob, settings, tmp_path / "data")


def tree(root: Path) -> dict[str, bytes | None]:
    """Every name under ``root`` (links not followed) with a regular file's bytes."""
    found: dict[str, bytes | None] = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base) / name
            found[str(path)] = (
                path.read_bytes() if path.is_file() and not path.is_symlink() else None
            )
    return found


@pytest.mark.integration
@pytest.mark.sandbox
async def test_display_images_are_never_written_through_planted_links(
    sandbox_api: Api, tmp_path: Path
) -> None:
    api = sandbox_api
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "target.png").write_bytes(b"original")
    before = tree(victim)
    chat = await new_chat(api)
    now = int(time.time())
    # From inside the sandbox: a link at every name the service used to write, pointing at
    # a host file (and dangling ones at new host names), then a figure.
    code = (
        "import os, matplotlib.pyplot as plt\n"
        f"for t in range({now - 5}, {now + 120}):\n"
        "    for k in range(1, 4):\n"
        "        name = f'outputs/figure-{t}-{k}.png'\n"
        f"        os.symlink({str(victim / 'target.png')!r} if k == 1 else "
        f"{str(victim)!r} + f'/new-{{t}}-{{k}}.png', name)\n"
        "plt.plot([1, 3, 2]); plt.show()\n"
    )
    run = await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": code})
    assert run.status_code == 200, run.text
    parts = run.json()["parts"]
    image = next(p for p in parts if p["type"] == "image")
    assert tree(victim) == before, "the service wrote through a link the sandbox planted"
    assert image["path"].startswith("displays/")
    png = await api.request("GET", f"{CHATS}/{chat}/files/{image['path']}")
    assert png.status_code == 200 and png.content.startswith(b"\x89PNG")
    listed = [
        f["path"] for f in (await api.request("GET", f"{CHATS}/{chat}/files")).json()["items"]
    ]
    assert image["path"] in listed
    # The sandbox cannot reach displays/ at all; plant a link there from the host (as
    # code in the unisolated process mode could), and the write is refused, not followed.
    displays = api.settings.workspaces_dir / chat / "displays"
    assert not (await api.request(
        "POST", f"{CHATS}/{chat}/execute",
        json={"code": "import os; print(os.path.exists('/workspace/displays'))"},
    )).json()["parts"][0]["text"].startswith("True")  # fmt: skip
    for child in displays.iterdir():
        child.unlink()
    displays.rmdir()
    displays.symlink_to(victim)
    again = await api.request(
        "POST", f"{CHATS}/{chat}/execute", json={"code": "plt.plot([2, 1]); plt.show()"}
    )
    assert [p["name"] for p in again.json()["parts"] if p["type"] == "error"] == ["DisplayError"]
    assert tree(victim) == before


@pytest.mark.integration
@pytest.mark.sandbox
async def test_every_part_of_a_reply_counts_toward_the_output_cap(sandbox_api: Api) -> None:
    api = sandbox_api
    cap = api.settings.sandbox_limits.output_bytes
    chat = await new_chat(api)
    # 40 MB of displays: images, results, tables, interleaved with a little printing.
    code = (
        "import base64, os\n"
        "from IPython.display import display\n"
        "png = base64.b64encode(b'\\x89PNG' + os.urandom(10**6)).decode()\n"
        "for i in range(14):\n"
        "    display({'image/png': png}, raw=True)\n"
        "    display({'text/plain': 'r' * 10**6}, raw=True)\n"
        "    table = {'rows': ['t' * 10**6]}\n"
        "    display({'application/vnd.datasources.table+json': table}, raw=True)\n"
        "    print('p' * 1000)\n"
    )
    run = await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": code})
    assert run.status_code == 200, run.text
    body = run.json()
    parts = body["parts"]
    cut = [p for p in parts if p["type"] == "text" and p["text"].startswith("(output cut")]
    assert len(cut) == 1 and body["truncated"] is True
    kept = 0
    for part in parts:
        if part is cut[0]:
            continue
        if part["type"] == "image":
            got = await api.request("GET", f"{CHATS}/{chat}/files/{part['path']}")
            kept += len(got.content)
        elif part["type"] == "table":
            kept += len(json.dumps(part["data"]))
        else:
            kept += len((part.get("text") or "").encode())
    assert 0 < kept <= cap, kept
    assert len(run.content) <= cap + 64 * 1024  # the whole HTTP reply, not just our count
    displays = api.settings.workspaces_dir / chat / "displays"
    assert sum(f.stat().st_size for f in displays.iterdir()) <= cap
    # The session is still usable afterwards.
    after = await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": "1 + 1"})
    assert after.json()["parts"] == [{"type": "result", "text": "2"}]


@pytest.mark.integration
@pytest.mark.sandbox
async def test_a_swap_loop_inside_the_sandbox_never_serves_a_host_file(
    sandbox_api: Api, tmp_path: Path
) -> None:
    """The attack as sandboxed code runs it: a thread in the kernel keeps swapping."""
    api = sandbox_api
    host = tmp_path / "host"
    host.mkdir()
    (host / "secret.txt").write_bytes(SECRET)
    chat = await new_chat(api)
    code = (
        "import ctypes, os, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "os.makedirs('outputs/d', exist_ok=True)\n"
        "open('outputs/d/secret.txt', 'wb').write(b'decoy')\n"
        f"os.symlink({str(host)!r}, 'outputs/l')\n"
        "def swap():\n"
        "    while True:\n"
        "        libc.renameat2(-100, b'outputs/d', -100, b'outputs/l', 2)\n"
        "threading.Thread(target=swap, daemon=True).start()\n"
    )
    run = await api.request("POST", f"{CHATS}/{chat}/execute", json={"code": code})
    assert run.json()["ok"] is True, run.text
    outcomes: set[int] = set()
    for _ in range(800):
        response = await api.request("GET", f"{CHATS}/{chat}/files/outputs/d/secret.txt")
        assert SECRET not in response.content, "a host file was served through a swap"
        assert response.status_code != 200 or response.content == b"decoy"
        outcomes.add(response.status_code)
    assert 200 in outcomes and outcomes - {200}, outcomes  # the swap really ran


@pytest.mark.integration
@pytest.mark.sandbox
async def test_one_output_cap_covers_a_whole_reply(sandbox_api: Api) -> None:
    """Three code blocks in one message share the cap: the third does not even run."""
    api = sandbox_api
    cap = api.settings.sandbox_limits.output_bytes
    chat = await new_chat(api)
    blocks = [
        "print('a' * 600_000)",
        "from IPython.display import display\ndisplay({'text/plain': 'b' * 600_000}, raw=True)\n"
        "import base64\npng = base64.b64encode(b'i' * 300_000).decode()\n"
        "display({'image/png': png}, raw=True)",
        "open('outputs/third-ran', 'w').write('yes'); print('c' * 600_000)",
    ]
    content = "".join(f"```python\n{code}\n```\n" for code in blocks)
    response = await api.request(
        "POST", f"{CHATS}/{chat}/messages", json={"content": content, "data_source_refs": []}
    )
    assert response.status_code == 200, response.text
    parts = response.json()["reply"]["parts"]
    outputs = [p for p in parts if p["type"] in ("stdout", "result")]
    assert sum(len(p["text"].encode()) for p in outputs) <= cap
    notes = [p["text"] for p in parts if p["type"] == "text"]
    assert any(n.startswith("(reply cut at its output limit") for n in notes), notes
    assert [p["name"] for p in parts if p["type"] == "error"] == ["OutputLimit"]
    assert not (api.settings.workspaces_dir / chat / "outputs" / "third-ran").exists()
    # The image of the second block fitted its execution but not the reply: not kept.
    assert not [p for p in parts if p["type"] == "image"]
    displays = api.settings.workspaces_dir / chat / "displays"
    assert not displays.exists() or not list(displays.iterdir())
    assert len(response.content) <= cap + 64 * 1024


def test_exchange_helper_swaps(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.symlink_to(tmp_path)
    exchange(a, b)
    assert a.is_symlink() and b.is_dir() and not b.is_symlink()
