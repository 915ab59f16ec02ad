"""A List Blobs endpoint answering empty pages, each with a new NextMarker, is listed
forever: the prefix caps count items (and bytes), never pages, so @lake:d/ asks for page
after page with nothing to stop it (the endpoint here gives up after 300 pages so that
the test ends; a hostile one need not)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from tests.api.conftest import make_settings, served
from tests.api.test_remote_bounds import CHATS, SOURCES, endpoint, lake, send

pytestmark = [pytest.mark.api]

GIVE_UP = 300


def empty_pages() -> object:
    served_pages = [0]

    def answer(_head: bytes, conn: socket.socket) -> None:
        served_pages[0] += 1
        marker = f"<NextMarker>m{served_pages[0]}</NextMarker>" if served_pages[0] < GIVE_UP else ""
        body = f"<EnumerationResults><Blobs></Blobs>{marker}</EnumerationResults>"
        send(conn, "200 OK", body.encode())

    return answer


async def test_empty_listing_pages_are_bounded(tmp_path: Path) -> None:
    port, heads = endpoint(empty_pages())  # type: ignore[arg-type]
    settings = make_settings(tmp_path)
    async for client, headers in served(settings):
        assert (await client.post(SOURCES, json=lake(port), headers=headers)).status_code == 201
        chat = (await client.post(CHATS, json={}, headers=headers)).json()["id"]
        reply = await client.post(
            f"{CHATS}/{chat}/messages", json={"content": "@lake:d/"}, headers=headers
        )
        assert reply.status_code == 200, reply.text
    assert len(heads) < GIVE_UP, f"{len(heads)} listing pages were asked for"
