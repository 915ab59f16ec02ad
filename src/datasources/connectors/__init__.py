"""Connectors: one module per data source type, loaded lazily by the registry."""

from datasources.connectors.base import BaseConnector, ConnectorConfig, ProgressCallback

__all__ = ["BaseConnector", "ConnectorConfig", "ProgressCallback"]
