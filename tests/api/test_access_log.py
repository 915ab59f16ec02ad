"""The access log records the path only, never the query string (docs/api.md: a query
string can carry names users consider private), and key ids, never keys."""

from __future__ import annotations

import pytest

from tests.api.conftest import Api

pytestmark = pytest.mark.api

SOURCES = "/api/v1/datasources"


async def test_query_strings_are_not_logged(api: Api, all_logs: pytest.LogCaptureFixture) -> None:
    source = await api.add_folder_source()
    private = "private-prefix-4c1d"
    for path, params in (
        (f"{SOURCES}/{source}/items", {"prefix": private}),
        (f"{SOURCES}/{source}/download", {"path": f"{private}.csv"}),
        (SOURCES, {"q": private, "token": private}),
    ):
        await api.request("GET", path, params=params, headers={"X-Request-ID": "qs-test"})
    access = [r for r in all_logs.records if r.name == "datasources.access"]
    assert len([r for r in access if "qs-test" in r.getMessage()]) == 3
    # Every logger of the service, not only the access log (httpx is the test's client).
    for record in all_logs.records:
        if record.name.split(".")[0] in ("httpx", "httpcore"):
            continue
        shown = all_logs.handler.format(record) + repr(record.__dict__)
        assert private not in shown, (record.name, shown[:300])
        assert api.alice.key not in shown
