"""Renaming a chat."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.api


async def test_a_chat_is_renamed_by_its_owner(api: Api) -> None:
    chat = (await api.request("POST", "/api/v1/chats", json={"title": "old"})).json()
    renamed = await api.request("PATCH", f"/api/v1/chats/{chat['id']}", json={"title": "  Q4  "})
    assert renamed.status_code == 200
    assert renamed.json()["title"] == "Q4" and renamed.json()["updated_at"] >= chat["updated_at"]
    assert (await api.request("GET", f"/api/v1/chats/{chat['id']}")).json()["title"] == "Q4"
    for body in ({"title": "x" * 201}, {"title": "x", "owner": "bob"}, {}):
        refused = await api.request("PATCH", f"/api/v1/chats/{chat['id']}", json=body)
        assert refused.status_code == 422, body
