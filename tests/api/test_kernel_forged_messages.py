"""A message the kernel forges for its own execution cannot crash the turn.

Found by review: code in the sandbox holds the kernel's HMAC key and can publish any
message with its execution's parent id. One whose ``content`` was not an object (a list,
a string, a number) raised ``AttributeError`` out of the reply collector: the turn failed
with a 500, and —
since nothing after the collector ran — the code was neither timed out nor interrupted,
and in ``bwrap`` mode the processes it had left behind were not stopped at the end of the
execution. Such a message is now dropped; the execution goes on under its limits.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import make_settings, served

pytestmark = [pytest.mark.api, pytest.mark.sandbox]

FORGE = """
k = get_ipython().kernel
parent = k.get_parent("shell")
for kind, content in [("stream", b'["not", "an", "object"]'), ("stream", b'"text"'),
                      ("display_data", b"7"), ("error", b"[1]"), ("status", b"[]")]:
    k.session.send(k.iopub_socket, kind, content=content, parent=parent)  # packed already
import subprocess
left = subprocess.Popen(["sleep", "300"])
print("pid", left.pid)
"""


async def test_forged_messages_are_dropped_and_the_execution_ends_as_usual(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path)
    # Asserted after the service is closed: a failure inside would skip its shutdown and
    # leave the sandbox's mounts behind.
    failure: Exception | None = None
    async for client, auth in served(settings):
        chat = (await client.post("/api/v1/chats", json={}, headers=auth)).json()["id"]
        url = f"/api/v1/chats/{chat}/execute"
        try:
            forged = await client.post(url, json={"code": FORGE}, headers=auth)
            after = await client.post(url, json={"code": "print(6 * 7)"}, headers=auth)
        except Exception as exc:  # the app's own error (in-process transport)
            failure = exc
    assert failure is None, repr(failure)
    assert forged.status_code == 200, forged.text
    body = forged.json()
    text = "".join(p.get("text") or "" for p in body["parts"])
    assert "pid" in text and body["ok"], body
    if settings.sandbox == "bwrap":  # the process it left behind was stopped
        assert "leftover process" in text, body
    assert after.status_code == 200 and "42" in after.text, after.text
