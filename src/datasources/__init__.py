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
from datasources.models import (
    ConnectionStatus,
    DataItem,
    DataSourceConfig,
    DataSourceType,
    ItemKind,
    Page,
)
from datasources.pool import ConnectionPool, PoolStats
from datasources.registry import DataSourceRegistry
from datasources.workspace import ManifestEntry, Workspace

__version__ = "0.1.0"

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "BaseConnector",
    "ConfigurationError",
    "ConnectionPool",
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
