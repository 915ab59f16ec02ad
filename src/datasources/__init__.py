"""datasources: uniform, safe and fast access to external data for AI data-analysis assistants.

The public API::

    from datasources import DataSourceRegistry, DataSourceConfig, Settings

    async with DataSourceRegistry.from_settings(Settings()) as registry:
        await registry.register_data_source(
            DataSourceConfig(name="samples", type="local_folder", config={"root": "/data"})
        )
        async with registry.get_connector("samples") as connector:
            items = await connector.list_items()
            path = await connector.fetch_data(items[0].path, "/tmp/workspace")
"""

import importlib
from typing import TYPE_CHECKING, Any

from datasources.config import PoolSettings, Settings
from datasources.connectors.base import BaseConnector, ConnectorConfig, ProgressCallback
from datasources.connectors.local_folder import LocalFolderConfig, LocalFolderConnector
from datasources.credentials import CredentialManager, install_log_redaction, redact
from datasources.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConfigurationError,
    CredentialsError,
    CredentialsUnreadableError,
    DataSourceError,
    IntegrityError,
    InvalidInputError,
    LimitExceededError,
    MissingDependencyError,
    MissingKeyError,
    NotFoundError,
    PermissionDeniedError,
    ReadOnlyError,
    TimeoutError,
    UnavailableError,
    UnknownDataSourceTypeError,
    UnsafePathError,
)
from datasources.lifecycle import PoolStats
from datasources.models import (
    ConnectionStatus,
    DataItem,
    DataSourceConfig,
    DataSourceType,
    ItemKind,
    Page,
)
from datasources.registry import DataSourceRegistry
from datasources.workspace import ManifestEntry, Workspace

__version__ = "0.1.0"

# Connectors whose drivers are optional extras load on first use, so that importing
# ``datasources`` needs neither the Azure SDK nor asyncpg (PEP 562).
_LAZY: dict[str, str] = {
    "AzureBlobConfig": "datasources.connectors.azure_blob",
    "AzureBlobConnector": "datasources.connectors.azure_blob",
    "PostgreSQLConfig": "datasources.connectors.postgresql",
    "PostgreSQLConnector": "datasources.connectors.postgresql",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'datasources' has no attribute {name!r}")
    extra = "azure" if "azure" in module else "postgresql"
    try:
        value = getattr(importlib.import_module(module), name)
    except ImportError as exc:
        raise MissingDependencyError(
            f"{name} needs optional dependencies: pip install 'datasources[{extra}]'"
        ) from exc
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


if TYPE_CHECKING:
    from datasources.connectors.azure_blob import AzureBlobConfig, AzureBlobConnector
    from datasources.connectors.postgresql import PostgreSQLConfig, PostgreSQLConnector

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "AzureBlobConfig",
    "AzureBlobConnector",
    "BaseConnector",
    "ConfigurationError",
    "ConnectionStatus",
    "ConnectorConfig",
    "CredentialManager",
    "CredentialsError",
    "CredentialsUnreadableError",
    "DataItem",
    "DataSourceConfig",
    "DataSourceError",
    "DataSourceRegistry",
    "DataSourceType",
    "IntegrityError",
    "InvalidInputError",
    "ItemKind",
    "LimitExceededError",
    "LocalFolderConfig",
    "LocalFolderConnector",
    "ManifestEntry",
    "MissingDependencyError",
    "MissingKeyError",
    "NotFoundError",
    "Page",
    "PermissionDeniedError",
    "PoolSettings",
    "PoolStats",
    "PostgreSQLConfig",
    "PostgreSQLConnector",
    "ProgressCallback",
    "ReadOnlyError",
    "Settings",
    "TimeoutError",
    "UnavailableError",
    "UnknownDataSourceTypeError",
    "UnsafePathError",
    "Workspace",
    "install_log_redaction",
    "redact",
]
