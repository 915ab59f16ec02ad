"""A registered endpoint (or sandboxed code) cannot make the service hold unbounded data.

Each remote endpoint here is a loopback socket server playing a hostile "storage account":
an error with a huge body, a listing page that never ends, a listing of millions of tiny
elements, a NextMarker forever. Memory is measured from a reset peak (tests/memory.py);
the endpoint threads run in this process and hold at most one 1 MiB piece each.
"""

from __future__ import annotations

import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.api.conftest import make_settings, served
from tests.memory import PeakGrowth

pytestmark = [pytest.mark.api]

SOURCES = "/api/v1/datasources"
CHATS = "/api/v1/chats"
MIB = 1024 * 1024


def endpoint(answer: Callable[[bytes, socket.socket], None]) -> tuple[int, list[bytes]]:
    """A loopback HTTP/1.1 server calling ``answer(request_head, conn)`` per request."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    heads: list[bytes] = []

    def handle(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                buf += data
                while b"\r\n\r\n" in buf:
                    head, buf = buf.split(b"\r\n\r\n", 1)
                    heads.append(head)
                    try:
                        answer(head, conn)
                    except OSError:
                        return  # the service hung up: what it refused to read

    def serve() -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return sock.getsockname()[1], heads


def send(conn: socket.socket, status: str, body: bytes, *, length: int | None = None) -> None:
    length = len(body) if length is None else length
    conn.sendall(
        f"HTTP/1.1 {status}\r\nContent-Type: application/xml\r\n"
        f"Content-Length: {length}\r\n\r\n".encode()
        + body
    )


def lake(port: int) -> dict[str, object]:
    return {
        "name": "lake",
        "type": "azure_blob",
        "config": {
            "account_url": f"http://127.0.0.1:{port}/acct",
            "container_name": "ccc",
            "sas_token": "sv=2022-11-02&ss=b&srt=co&sp=rl&sig=abc",
        },
    }


async def test_a_huge_error_body_is_not_buffered(tmp_path: Path) -> None:
    """400 + 150 MiB: only the head of the body is read; 502, not 500; no buffering."""
    piece = b"<a>" + b"x" * (MIB - 7) + b"</a>"

    def answer(_head: bytes, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 400 Bad\r\nContent-Type: application/xml\r\n"
            b"Content-Length: " + str(150 * MIB + 13).encode() + b"\r\n\r\n<Error><Code>"
        )
        for _ in range(150):
            conn.sendall(piece)

    port, _heads = endpoint(answer)
    async for client, headers in served(make_settings(tmp_path)):
        assert (await client.post(SOURCES, json=lake(port), headers=headers)).status_code == 201
        with PeakGrowth() as peak:
            listed = await client.get(f"{SOURCES}/lake/items", headers=headers)
        assert listed.status_code == 502, listed.text
        assert listed.json()["code"] == "integrity_error"
        assert "HTTP 400" in listed.json()["detail"]
    assert peak.mib < 48, f"peak RSS grew by {peak.mib:.0f} MiB for a 150 MiB error body"


async def test_a_listing_page_over_the_cap_is_asked_smaller_then_refused(tmp_path: Path) -> None:
    """A 200 body that never ends (no length): read up to the cap, asked again with fewer
    results, and refused with 502 naming the cap; memory stays near the cap."""
    blob = (
        b"<Blob><Name>d/x</Name><Properties><Content-Length>1</Content-Length></Properties></Blob>"
    )
    piece = blob * (MIB // len(blob))

    def answer(_head: bytes, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/xml\r\nConnection: close\r\n\r\n"
            b"<EnumerationResults><Blobs>"
        )
        for _ in range(200):  # 200 MiB, unless the service hangs up first
            conn.sendall(piece)
        conn.close()

    port, heads = endpoint(answer)
    async for client, headers in served(make_settings(tmp_path)):
        assert (await client.post(SOURCES, json=lake(port), headers=headers)).status_code == 201
        with PeakGrowth() as peak:
            listed = await client.get(f"{SOURCES}/lake/items", headers=headers)
        assert listed.status_code == 502, listed.text
        assert "16 MiB" in listed.json()["detail"]
    sizes = [int(m.group(1)) for h in heads if (m := re.search(rb"maxresults=(\d+)", h))]
    assert sizes == [50], sizes  # the route's page is small already: refused at once
    assert peak.mib < 80, f"peak RSS grew by {peak.mib:.0f} MiB for an endless page"


async def test_a_page_of_tiny_elements_is_refused_before_parsing(tmp_path: Path) -> None:
    """15 MiB of empty elements for a page of 50: a tree of them would take hundreds of
    MiB; more tags than such a page can have is an unreadable listing (503)."""
    body = b"<EnumerationResults>" + b"<a/>" * (15 * MIB // 4) + b"<Blobs/></EnumerationResults>"

    port, _heads = endpoint(lambda _head, conn: send(conn, "200 OK", body))
    async for client, headers in served(make_settings(tmp_path)):
        assert (await client.post(SOURCES, json=lake(port), headers=headers)).status_code == 201
        with PeakGrowth() as peak:
            listed = await client.get(f"{SOURCES}/lake/items", headers=headers)
        assert listed.status_code == 503, listed.text
        assert "unreadable listing" in listed.json()["detail"]
    assert peak.mib < 80, f"peak RSS grew by {peak.mib:.0f} MiB parsing a 15 MiB page"


def endless_listing(size: int) -> Callable[[bytes, socket.socket], None]:
    """Every List Blobs page: 5,000 blobs of ``size`` bytes and a NextMarker, forever
    (the endpoint gives up after 40 pages so that a service without the cap ends)."""
    blobs = "".join(
        f"<Blob><Name>d/{i:06d}</Name><Properties><Content-Length>{size}</Content-Length>"
        f"<Etag>0x1</Etag></Properties></Blob>"
        for i in range(5000)
    )
    more = f"<EnumerationResults><Blobs>{blobs}</Blobs><NextMarker>m</NextMarker>"
    last = f"<EnumerationResults><Blobs>{blobs}</Blobs>"
    served_pages = [0]

    def answer(_head: bytes, conn: socket.socket) -> None:
        served_pages[0] += 1
        tail = "</EnumerationResults>"
        send(conn, "200 OK", ((last if served_pages[0] >= 40 else more) + tail).encode())

    return answer


@pytest.mark.parametrize(
    ("size", "pages", "said"),
    [(1, 4, "more than 10000 items"), (10**9, 2, "quota left")],
)
async def test_a_prefix_reference_stops_listing_at_its_caps(
    tmp_path: Path, size: int, pages: int, said: str
) -> None:
    """@lake:d/ against a NextMarker forever: refused (413-class limit_exceeded in the
    reply) as soon as the count passes the cap, or the listed bytes pass the quota left;
    a few pages are asked for, not all of them."""
    port, heads = endpoint(endless_listing(size))
    settings = make_settings(tmp_path)
    async for client, headers in served(settings):
        assert (await client.post(SOURCES, json=lake(port), headers=headers)).status_code == 201
        chat = (await client.post(CHATS, json={}, headers=headers)).json()["id"]
        reply = await client.post(
            f"{CHATS}/{chat}/messages", json={"content": "@lake:d/"}, headers=headers
        )
        assert reply.status_code == 200, reply.text
        parts = reply.json()["reply"]["parts"]
        assert parts[0]["type"] == "error" and parts[0]["name"] == "limit_exceeded", parts
        assert said in parts[0]["text"], parts[0]["text"]
    assert len(heads) <= pages, f"{len(heads)} listing pages were asked for"


DEEP = """import os
d = os.open('outputs', os.O_RDONLY)
for i in range(1500):
    os.mkdir('d', dir_fd=d); n = os.open('d', os.O_RDONLY, dir_fd=d); os.close(d); d = n
print('ok')"""


@pytest.mark.sandbox
async def test_a_deep_outputs_tree_breaks_nothing(tmp_path: Path) -> None:
    """Sandboxed code makes 1,500 nested folders in outputs/: the chat's files are still
    listed and a reference is still fetched (the quota counts outputs/ from its own
    filesystem, or refuses clearly when it cannot count it)."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "a.csv").write_text("x\n1\n")
    async for client, headers in served(make_settings(tmp_path)):
        folder = {"name": "f", "type": "local_folder", "config": {"root": str(tmp_path / "data")}}
        assert (await client.post(SOURCES, json=folder, headers=headers)).status_code == 201
        chat = (await client.post(CHATS, json={}, headers=headers)).json()["id"]
        ran = await client.post(f"{CHATS}/{chat}/execute", json={"code": DEEP}, headers=headers)
        assert ran.status_code == 200 and "ok" in ran.text, ran.text
        files = await client.get(f"{CHATS}/{chat}/files", headers=headers)
        assert files.status_code == 200, files.text
        ref = {"data_source_id": "f", "path": "a.csv"}
        reply = await client.post(
            f"{CHATS}/{chat}/messages",
            json={"content": "hi", "data_source_refs": [ref]},
            headers=headers,
        )
        assert reply.status_code == 200, reply.text
        parts = reply.json()["reply"]["parts"]
        assert parts[0]["type"] == "table" and parts[0]["data"]["title"] == "data/f/a.csv", parts
