"""The page-size limit is a setting: enforced on every list route and stated in OpenAPI.

Routes are module-level functions, so the configured ``max_page_size`` is not part of
their signatures: a dependency checks it and the document is told. This test holds both
for a service configured with a small maximum.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.api.conftest import make_settings, served

pytestmark = pytest.mark.api

LISTS = ("/api/v1/datasources", "/api/v1/chats")


async def test_a_configured_maximum_is_enforced_and_documented(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    async for client, auth in served(make_settings(tmp_path, max_page_size=7)):
        created = await client.post(
            "/api/v1/datasources",
            headers=auth,
            json={"name": "f", "type": "local_folder", "config": {"root": str(tmp_path / "data")}},
        )
        assert created.status_code == 201, created.text
        chat = (await client.post("/api/v1/chats", headers=auth)).json()["id"]
        lists = [*LISTS, "/api/v1/datasources/f/items", f"/api/v1/chats/{chat}/messages"]
        for url in lists:
            assert (await client.get(url, params={"limit": 7}, headers=auth)).status_code == 200
            for bad, words in ((8, "less than or equal to 7"), (0, "greater than or equal to 1")):
                refused = await client.get(url, params={"limit": bad}, headers=auth)
                assert refused.status_code == 422, (url, refused.text)
                [error] = refused.json()["details"]["errors"]
                assert error["loc"] == ["query", "limit"] and words in error["msg"]
            # Without a key the answer is 401 whatever the limit: the caller comes first.
            assert (await client.get(url, params={"limit": 8})).status_code == 401

        document = (await client.get("/openapi.json")).json()
        limits = [
            parameter
            for operations in document["paths"].values()
            for operation in operations.values()
            for parameter in operation.get("parameters", ())
            if parameter["name"] == "limit"
        ]
        assert len(limits) == 4
        for parameter in limits:
            integer = next(s for s in parameter["schema"]["anyOf"] if s.get("type") == "integer")
            assert integer["maximum"] == 7 and integer["minimum"] == 1
            assert parameter["description"] == "At most 7."
