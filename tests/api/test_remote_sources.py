"""The API in front of real PostgreSQL and Azurite, and a real uvicorn for streaming."""

from __future__ import annotations

import asyncio
import csv
import io
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from datasources.api import create_app
from tests.api.conftest import Api, create_keys, make_settings
from tests.memory import PeakGrowth

pytestmark = [pytest.mark.api, pytest.mark.integration]

SOURCES = "/api/v1/datasources"


async def test_postgresql_query_schema_items_and_table_download(
    api: Api, postgres_database: str, postgres_reader: str
) -> None:
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            "CREATE TABLE sales (id int PRIMARY KEY, region text, total numeric(10,2));"
            "COMMENT ON TABLE sales IS 'orders';"
            "INSERT INTO sales SELECT g, CASE WHEN g % 2 = 0 THEN 'EU' ELSE 'US' END, g * 1.5 "
            "FROM generate_series(1, 100) g;"
        )
    finally:
        await conn.close()
    created = await api.request(
        "POST",
        SOURCES,
        json={"name": "pg", "type": "postgresql", "config": {"dsn": postgres_reader}},
    )
    assert created.status_code == 201, created.text
    status = (await api.request("POST", f"{SOURCES}/pg/test")).json()
    assert status["ok"] is True and status["warnings"] == []
    # A superuser source is refused unless the operator allows privileged roles.
    admin = {"name": "admin", "type": "postgresql", "config": {"dsn": postgres_database}}
    refused = await api.request("POST", SOURCES, json=admin)
    assert refused.status_code == 403 and "privileged_role" in refused.text, refused.text
    result = await api.request(
        "POST",
        f"{SOURCES}/pg/query",
        json={"sql": "SELECT id, total FROM sales WHERE region = $1 ORDER BY id", "params": ["EU"],
              "max_rows": 3},
    )  # fmt: skip
    body = result.json()
    assert body["rows"] == [[2, "3.00"], [4, "6.00"], [6, "9.00"]] and body["truncated"] is True
    assert [c["type"] for c in body["columns"]] == ["int4", "numeric"]
    refused = await api.request("POST", f"{SOURCES}/pg/query", json={"sql": "DELETE FROM sales"})
    assert refused.status_code == 400 and refused.json()["code"] == "read_only_violation"
    broken = await api.request("POST", f"{SOURCES}/pg/query", json={"sql": "SELEC 1"})
    assert broken.status_code == 400
    schema = (await api.request("GET", f"{SOURCES}/pg/schema")).json()
    table = next(t for t in schema["tables"] if t["name"] == "sales")
    assert table["comment"] == "orders" and [c["name"] for c in table["columns"]] == [
        "id",
        "region",
        "total",
    ]
    items = (await api.request("GET", f"{SOURCES}/pg/items")).json()["items"]
    assert [i["path"] for i in items] == ["public.sales"]
    download = await api.request("GET", f"{SOURCES}/pg/download", params={"path": "public.sales"})
    assert download.status_code == 200 and download.headers["content-type"].startswith("text/csv")
    assert 'filename="sales.csv"' in download.headers["content-disposition"]
    rows = list(csv.reader(io.StringIO(download.text)))
    assert (
        rows[0] == ["id", "region", "total"] and len(rows) == 101 and rows[1] == ["1", "US", "1.50"]
    )
    upload = await api.request(
        "POST", f"{SOURCES}/pg/upload", files={"file": ("f", b"x")}, data={"path": "public.x"}
    )
    assert upload.status_code == 403
    folder_schema = await api.request("GET", f"{SOURCES}/{await api.add_folder_source()}/schema")
    assert folder_schema.status_code == 400


async def test_azure_items_download_upload(
    api: Api, azurite: dict[str, str], container: Any
) -> None:
    await container.upload_blob("data/a.csv", b"a,b\n1,2\n")
    await container.upload_blob("data/deep/b.bin", b"\x00" * 3000)
    config = {
        "connection_string": azurite["connection_string"],
        "container_name": container.container_name,
    }
    created = await api.request(
        "POST", SOURCES, json={"name": "az", "type": "azure_blob", "config": config}
    )
    assert created.status_code == 201, created.text
    assert created.json()["config"]["connection_string"] == "********"
    listing = await api.request(
        "GET", f"{SOURCES}/az/items", params={"prefix": "data/", "delimiter": "/"}
    )
    assert [i["path"] for i in listing.json()["items"]] == ["data/a.csv", "data/deep/"]
    download = await api.request(
        "GET", f"{SOURCES}/az/download", params={"path": "data/deep/b.bin"}
    )
    assert download.content == b"\x00" * 3000 and download.headers["content-length"] == "3000"
    blob = await container.get_blob_client("data/deep/b.bin").get_blob_properties()
    assert download.headers["etag"].strip('"') == blob.etag.strip('"')  # the version sent
    upload = await api.request(
        "POST", f"{SOURCES}/az/upload", files={"file": ("n", b"new")}, data={"path": "up/n.txt"}
    )
    assert upload.status_code == 201 and upload.json()["size"] == 3
    assert await (await container.download_blob("up/n.txt")).readall() == b"new"
    missing = await api.request("GET", f"{SOURCES}/az/download", params={"path": "nope"})
    assert missing.status_code == 404
    # The same target with the secret sent back masked keeps working.
    patched = await api.request(
        "PATCH", f"{SOURCES}/az", json={"config": {"connection_string": "********"}, "tags": ["t"]}
    )
    assert patched.status_code == 200
    assert (await api.request("GET", f"{SOURCES}/az/items")).status_code == 200


def test_downloads_stream_through_a_real_server(tmp_path: Path, live_server_factory: Any) -> None:
    settings = make_settings(tmp_path)
    folder = tmp_path / "data"
    folder.mkdir()
    size = 256 * 1024 * 1024
    with open(folder / "big.bin", "wb") as fh:  # sparse: no disk used, zeros when read
        fh.truncate(size)
    (key,) = asyncio.run(create_keys(settings, "k"))
    server = live_server_factory(create_app(settings))
    headers = {"Authorization": f"Bearer {key.key}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=60) as client:
        created = client.post(
            SOURCES, json={"name": "f", "type": "local_folder", "config": {"root": str(folder)}}
        )
        assert created.status_code == 201
        received = 0
        # The peak is reset first: an earlier test's peak in this process must not hide
        # a download held whole (the server runs in this process, in a thread).
        with (
            PeakGrowth() as peak,
            client.stream("GET", f"{SOURCES}/f/download", params={"path": "big.bin"}) as response,
        ):
            assert response.status_code == 200
            assert response.headers["content-length"] == str(size)
            assert response.headers["etag"]  # files carry their ETag (docs/api.md)
            for chunk in response.iter_bytes():
                received += len(chunk)
        assert received == size
        assert peak.mib < 64, f"peak RSS grew by {peak.mib:.0f} MiB for a 256 MiB download"
        # A client that goes away mid-download leaves the server healthy.
        with client.stream("GET", f"{SOURCES}/f/download", params={"path": "big.bin"}) as partial:
            next(partial.iter_bytes())
        assert client.get("/healthz").status_code == 200
