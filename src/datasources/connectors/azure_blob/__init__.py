"""Azure Blob Storage: every auth mode, streamed ranged downloads, safe names, verified files.

The control plane (properties, uploads) goes through the ``azure-storage-blob`` aio SDK;
listings and the data plane of a download are our own requests on the SDK's aiohttp
session: concurrent ranged ``GET``s, each streamed straight to its offset in the
workspace file, so memory stays bounded by ``max_concurrency`` buffers whatever the blob
size. Each range is conditional on the ETag read at the start (``If-Match``), so a blob
replaced mid-way is noticed and fetched again whole rather than stitched from two
versions.

One module per concern:

| module | owns |
|---|---|
| ``config`` | the config model, connection strings and SAS tokens, the target of a config |
| ``errors`` | the one error table (by HTTP status and Azure error code), one context manager |
| ``http`` | the one retry loop and backoff, bounded bodies, no redirects |
| ``session`` | the source's aiohttp session and SDK client, auth of our own requests |
| ``listing`` | List Blobs pages parsed from the XML, bounded in memory |
| ``transfer`` | ranged downloads, streams, uploads |
| ``connector`` | :class:`AzureBlobConnector`: registration checks, the connection test |
"""

from datasources.connectors.azure_blob.config import (
    AzureBlobConfig,
    SasInfo,
    parse_connection_string,
)
from datasources.connectors.azure_blob.connector import AzureBlobConnector

__all__ = ["AzureBlobConfig", "AzureBlobConnector", "SasInfo", "parse_connection_string"]
