"""The OpenAPI document is complete, and the live app keeps to it under schemathesis."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok
from schemathesis.specs.openapi.checks import positive_data_acceptance

from datasources.api import create_app
from tests.api.conftest import Api, LiveServer, create_keys, make_settings
from tests.conftest import require_service

pytestmark = pytest.mark.api

SOURCES = "/api/v1/datasources"


async def test_openapi_documents_every_route_model_error_and_the_security_scheme(api: Api) -> None:
    doc = (await api.client.get("/openapi.json")).json()
    schemes = doc["components"]["securitySchemes"]
    assert schemes["ApiKey"]["type"] == "http" and schemes["ApiKey"]["scheme"] == "bearer"
    assert "Problem" in doc["components"]["schemas"]
    operations = [
        (path, method, op) for path, ops in doc["paths"].items() for method, op in ops.items()
    ]
    assert len(operations) >= 12
    for path, method, op in operations:
        assert op.get("summary"), (method, path)
        if path in ("/healthz", "/readyz"):
            assert "security" not in op
            continue
        assert op["security"] == [{"ApiKey": []}], (method, path)
        for status in ("401", "422", "429", "500"):
            assert status in op["responses"], (method, path, status)
            content = op["responses"][status]["content"]
            assert "application/problem+json" in content, (method, path, status)
        if "{source_id}" in path:
            assert "404" in op["responses"], (method, path)
        body = op.get("requestBody", {}).get("content", {}).get("application/json")
        if body is not None:
            ref = body["schema"]["$ref"].rsplit("/", 1)[1]
            assert doc["components"]["schemas"][ref].get("examples"), ref


@pytest.fixture
def live(tmp_path: Path, live_server_factory: Any) -> tuple[LiveServer, str]:
    # The fuzzed source is the test server's own DSN (its superuser): the operator's opt-in.
    settings = make_settings(tmp_path).model_copy(update={"allow_privileged_database_roles": True})
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"x\n1\n")
    (folder / "sub" / "b.txt").write_bytes(b"b")
    (key,) = asyncio.run(create_keys(settings, "fuzzer"))
    server = live_server_factory(create_app(settings))
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key.key}"}) as c:
        created = c.post(
            SOURCES, json={"name": "files", "type": "local_folder", "config": {"root": str(folder)}}
        )
        assert created.status_code == 201
        dsn = require_service("DATASOURCES_TEST_POSTGRES_DSN")
        database = c.post(
            SOURCES, json={"name": "db", "type": "postgresql", "config": {"dsn": dsn}}
        )
        assert database.status_code == 201
    return server, key.key


def test_the_live_app_keeps_to_its_schema(live: tuple[LiveServer, str]) -> None:
    """No 5xx, and every response (status, content type, headers, body) matches the document.

    Every operation gets generated requests (valid and invalid), authenticated; half of
    those that name a source aim at a real one, so the code behind the 404 runs too.
    """
    server, key = live
    api_schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    headers = {"Authorization": f"Bearer {key}"}
    tested = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), result  # every operation of the document parses
        operation = result.ok()

        @given(case=operation.as_strategy())
        @settings(
            max_examples=50,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            if "source_id" in (case.path_parameters or {}):
                # Two thirds aim at real sources (a folder, PostgreSQL), so the code behind
                # the lookup runs too; the rest at whatever was generated.
                pick = len(repr(case.query)) + len(repr(case.body)) % 3
                real = {0: "files", 1: "db"}.get(pick % 3)
                if real is not None:
                    case.path_parameters["source_id"] = real
            # Schema-valid is not always meaningful: a config for another connector type, a
            # path that does not exist or is unsafe, SQL that writes. Those are 400/422 by
            # design, so the check that expects every schema-valid request to succeed is
            # the one left out; every other check runs.
            case.call_and_validate(headers=headers, excluded_checks=[positive_data_acceptance])

        check()
        tested.append(operation.label)
    assert len(tested) >= 12, tested
