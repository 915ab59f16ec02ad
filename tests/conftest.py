"""Shared fixtures. Integration services come from scripts/services.sh (see README).

Under CI=true a missing service fails the test instead of skipping it.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("datasources.testing.contract")

from datasources.credentials import install_log_redaction  # noqa: E402

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_service(var: str) -> str:
    """The value of a service variable; fail in CI, skip elsewhere, when it is missing."""
    value = os.environ.get(var)
    if value:
        return value
    message = f"{var} is not set: run 'scripts/services.sh start' (make test does)"
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)  # local runs without services only; CI fails above


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No test reads the developer's real state or keys."""
    for name in list(os.environ):
        if name.startswith("DATASOURCES_") and not name.startswith("DATASOURCES_TEST_"):
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("DATASOURCES_HOME", str(tmp_path / "home"))
    # No disk floor under test: a test machine may have little free space (the floor's
    # own test sets one).
    monkeypatch.setenv("DATASOURCES_SANDBOX_LIMITS__MIN_FREE_DISK_BYTES", "0")
    install_log_redaction()
    yield


@pytest.fixture
def canary() -> str:
    """A unique secret value that must never appear anywhere visible."""
    return "canary-" + secrets.token_hex(12)


@pytest.fixture
def postgres_admin_dsn() -> str:
    return require_service("DATASOURCES_TEST_POSTGRES_DSN")


@pytest.fixture
async def postgres_database(postgres_admin_dsn: str) -> AsyncIterator[str]:
    """A fresh, empty database; yields its libpq URL and drops it afterwards."""
    import asyncpg

    name = "ds_test_" + secrets.token_hex(6)
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = postgres_admin_dsn.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        admin = await asyncpg.connect(postgres_admin_dsn)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
async def postgres_reader(postgres_database: str) -> AsyncIterator[str]:
    """A least-privilege role on ``postgres_database``: SELECT on ``public``, now and later.

    Sources in tests use it: PostgreSQL sources refuse superusers unless the operator opts
    in. Yields the role's libpq URL.
    """
    import asyncpg

    role = "ds_reader_" + secrets.token_hex(6)
    conn = await asyncpg.connect(postgres_database)
    try:
        await conn.execute(
            f"CREATE ROLE {role} LOGIN; GRANT USAGE ON SCHEMA public TO {role}; "
            f"GRANT SELECT ON ALL TABLES IN SCHEMA public TO {role}; "
            f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {role}"
        )
    finally:
        await conn.close()
    scheme, rest = postgres_database.split("://", 1)
    try:
        yield f"{scheme}://{role}@{rest.split('@', 1)[-1]}"
    finally:
        conn = await asyncpg.connect(postgres_database)
        try:
            await conn.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")
        finally:
            await conn.close()


@pytest.fixture
def azurite() -> dict[str, str]:
    connection_string = require_service("DATASOURCES_TEST_AZURITE_CONNECTION_STRING")
    url = require_service("DATASOURCES_TEST_AZURITE_URL")
    key = connection_string.split("AccountKey=", 1)[1].split(";", 1)[0]
    return {"connection_string": connection_string, "url": url, "key": key}


@pytest.fixture
async def container(azurite: dict[str, str]) -> AsyncIterator[Any]:
    """A fresh container, deleted afterwards; yields the SDK's ContainerClient."""
    from azure.storage.blob.aio import BlobServiceClient

    name = "t" + secrets.token_hex(8)
    async with BlobServiceClient.from_connection_string(azurite["connection_string"]) as service:
        client = service.get_container_client(name)
        await client.create_container()
        try:
            yield client
        finally:
            await client.delete_container()


@pytest.fixture
def redis_url() -> str:
    """The Redis scripts/services.sh found or started (shared: use ``redis_prefix``)."""
    return require_service("DATASOURCES_TEST_REDIS_URL")


@pytest.fixture
async def redis_prefix(redis_url: str) -> AsyncIterator[str]:
    """A key and channel prefix of this test's own; its keys are deleted afterwards."""
    from redis.asyncio import Redis

    prefix = f"dstest:{secrets.token_hex(6)}:"
    yield prefix
    client = Redis.from_url(redis_url)
    try:
        async for key in client.scan_iter(match=f"{prefix}*"):
            await client.delete(key)
    finally:
        await client.aclose()


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[Any]:
    """A redis-server of the test's own (``tests.redis_server.PrivateRedis``), started."""
    from tests.redis_server import PrivateRedis

    server = PrivateRedis(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def all_logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Capture every log record at DEBUG, formatted with exception text."""
    caplog.set_level(logging.DEBUG)
    yield caplog


def logged_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = logging.Formatter("%(levelname)s %(name)s %(message)s")
    return "\n".join(formatter.format(r) for r in caplog.records)
