"""The seed's Azure quick start, verbatim but for the connection string and container.

The earlier system's users wrote exactly these lines (shared/seed, "Quick Start"); they
must keep working: the names import from the package root, the registry takes a
connector class for a type, and ``await registry.get_connector(id)`` hands out an owned,
connected connector.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration


async def test_the_seed_quick_start_runs(
    container: Any, azurite: dict[str, str], tmp_path: Path
) -> None:
    await container.upload_blob("data/file.csv", b"a,b\n1,2\n")
    workspace = tmp_path / "workspace"

    # -- the seed's lines ------------------------------------------------------------------
    from datasources import (
        AzureBlobConnector,
        DataSourceConfig,
        DataSourceRegistry,
        DataSourceType,
    )

    # Create registry
    registry = DataSourceRegistry()
    registry.register_connector_class(DataSourceType.AZURE_BLOB, AzureBlobConnector)

    # Configure Azure Blob Storage
    config = DataSourceConfig(
        id="my-azure",
        type=DataSourceType.AZURE_BLOB,
        name="My Azure Storage",
        config={
            "connection_string": azurite["connection_string"],
            "container_name": container.container_name,
        },
    )

    # Register and connect
    await registry.register_data_source(config)

    # Use the connector
    connector = await registry.get_connector("my-azure")
    items = await connector.list_items()
    local_path = await connector.fetch_data("data/file.csv", str(workspace))
    # -- end of the seed's lines -----------------------------------------------------------

    try:
        assert [item.path for item in items] == ["data/file.csv"]
        assert Path(local_path).read_bytes() == b"a,b\n1,2\n"  # noqa: ASYNC240 - a test
        assert Path(local_path).is_relative_to(workspace)
    finally:
        await connector.disconnect()
        await registry.close()


def test_importing_the_package_loads_no_driver() -> None:
    """The connector classes are exported lazily: ``import datasources`` needs no extra."""
    code = (
        "import sys, datasources\n"
        "loaded = [m for m in sys.modules if m.split('.')[0] in "
        "('azure', 'asyncpg', 'pyarrow', 'aiohttp')]\n"
        "assert not loaded, loaded\n"
        "from datasources import AzureBlobConnector, PostgreSQLConnector\n"
        "assert AzureBlobConnector.__name__ == 'AzureBlobConnector'\n"
        "assert 'datasources.connectors.postgresql' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_an_unknown_name_is_an_attribute_error() -> None:
    import datasources

    with pytest.raises(AttributeError, match="NoSuchConnector"):
        datasources.NoSuchConnector  # noqa: B018 - the lookup is the test
