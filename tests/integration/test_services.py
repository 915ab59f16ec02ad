"""The services scripts/services.sh starts really answer (CI runs these, never skips)."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import asyncpg
import pytest

from tests.conftest import require_service

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


async def test_postgresql_answers(postgres_admin_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_admin_dsn)
    try:
        version = await conn.fetchval("SHOW server_version_num")
    finally:
        await conn.close()
    assert int(version) >= 120000


def test_azurite_answers() -> None:
    url = require_service("DATASOURCES_TEST_AZURITE_URL")
    connection_string = require_service("DATASOURCES_TEST_AZURITE_CONNECTION_STRING")
    assert f"BlobEndpoint={url};" in connection_string
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"{url}?comp=list", timeout=5)
    # Unauthenticated: Azurite refuses, and says it is Azurite.
    assert info.value.code == 403
    assert info.value.headers.get("Server", "").startswith("Azurite")


def test_services_script_is_idempotent() -> None:
    require_service("DATASOURCES_TEST_POSTGRES_DSN")
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), "status"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PostgreSQL  up" in done.stdout and "Azurite     up" in done.stdout
    done = subprocess.run(
        ["bash", str(ROOT / "scripts" / "services.sh"), "start"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "reusing" in done.stderr
