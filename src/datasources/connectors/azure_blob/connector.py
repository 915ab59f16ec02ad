"""The Azure Blob connector: its identity, registration checks and connection test."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import ClassVar
from urllib.parse import urlsplit

from datasources.connectors.azure_blob.config import (
    EXPIRY_WARNING,
    AzureBlobConfig,
    config_error,
    resolve_target,
)
from datasources.connectors.azure_blob.transfer import AzureTransfer
from datasources.connectors.base import ConnectorConfig
from datasources.errors import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)
from datasources.models import ConnectionStatus, DataSourceType
from datasources.netpolicy import OutboundPolicy

__all__ = ["AzureBlobConnector"]


class AzureBlobConnector(AzureTransfer):
    """Lists, fetches and uploads blobs of one container."""

    type: ClassVar[str] = DataSourceType.AZURE_BLOB
    config_model = AzureBlobConfig
    secret_fields = frozenset(
        {"connection_string", "account_key", "sas_token", "container_sas_url", "client_secret"}
    )
    target_fields = frozenset({"account_url", "container_name", "tenant_id", "client_id"})

    @classmethod
    async def check_targets(cls, config: ConnectorConfig, policy: OutboundPolicy) -> None:
        assert isinstance(config, AzureBlobConfig)
        target = resolve_target(config)
        if target.mode == "default_credential":
            # The service's own identity (managed/workload identity, CLI login) would sign
            # requests to whatever account_url a user names: the operator's choice only.
            policy.check_ambient_identity(target.account_url)
        endpoint = urlsplit(target.account_url)
        await policy.resolve(endpoint.hostname or "", endpoint.port or 443)

    @classmethod
    async def check_config(cls, config: ConnectorConfig) -> None:
        assert isinstance(config, AzureBlobConfig)
        sas = cls._sas_of(config)  # parses connection strings and SAS, naming bad parts
        if sas is not None and sas.expiry is not None and sas.expiry <= datetime.now(UTC):
            raise config_error(
                config.auth_mode, f"the SAS token expired on {sas.expiry:%Y-%m-%d %H:%M} UTC"
            )

    async def test_connection(self) -> ConnectionStatus:
        warnings: list[str] = []
        sas = self._sas_info if self._connected else self._sas_of(self.config)
        if sas is not None:
            if sas.expiry is not None:
                left = sas.expiry - datetime.now(UTC)
                if left <= timedelta(0):
                    return ConnectionStatus(ok=False, message="The SAS token has expired.")
                if left < EXPIRY_WARNING:
                    warnings.append(
                        f"The SAS token expires in {left.days} days ({sas.expiry:%Y-%m-%d})."
                    )
            if self.read_only and sas.can_write:
                warnings.append(
                    f"The SAS token allows writes (sp={sas.permissions}) on a read-only source; "
                    "a read+list token is enough."
                )
        if not self._connected:
            await self.connect()
        start = time.perf_counter()
        client = self._client()
        try:
            with self._errors("listing"):
                # One blob name from the container: container-level, so a container SAS
                # never triggers an account-level call.
                pages = client.list_blob_names(results_per_page=1).by_page()
                async for page in pages:
                    async for _name in page:
                        break
                    break
        except (
            AuthenticationError,
            PermissionDeniedError,
            NotFoundError,
            UnavailableError,
            TimeoutError,
        ) as exc:
            return ConnectionStatus(
                ok=False,
                latency_ms=(time.perf_counter() - start) * 1000,
                message=exc.message,
                warnings=warnings,
                details={"auth_mode": self.config.auth_mode, "error": exc.code},
            )
        latency = (time.perf_counter() - start) * 1000
        return ConnectionStatus(
            ok=True,
            latency_ms=latency,
            message=(
                f"Container {self._client().container_name!r} is reachable with the {self._label}."
            ),
            warnings=warnings,
            details={"auth_mode": self.config.auth_mode},
        )
