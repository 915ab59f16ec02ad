"""``GET …/preview``: the first rows of a file, over HTTP, owned like every source route."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.api


async def test_preview_of_a_csv_and_refusals(api: Api) -> None:
    source = await api.add_folder_source()
    url = f"/api/v1/datasources/{source}/preview"
    got = await api.request("GET", url, params={"path": "a.csv"})
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["columns"] == ["x", "y"] and body["rows"] == [["1", "2"]]
    assert body["format"] == "csv" and body["truncated"] is False
    other = await api.request("GET", url, params={"path": "dir/b.txt"})
    assert other.status_code == 200  # .txt is read as delimited text
    refused = await api.request("GET", url, params={"path": "dir"})
    assert refused.status_code == 400 and refused.json()["code"] == "invalid_input"
    missing = await api.request("GET", url, params={"path": "nope.csv"})
    assert missing.status_code == 404
    unsafe = await api.request("GET", url, params={"path": "../etc/passwd.csv"})
    assert unsafe.status_code == 400 and unsafe.json()["code"] == "unsafe_path"
    too_many = await api.request("GET", url, params={"path": "a.csv", "rows": 501})
    assert too_many.status_code == 422
    as_bob = await api.request("GET", url, api.bob, params={"path": "a.csv"})
    assert as_bob.status_code == 404
