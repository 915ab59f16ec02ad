"""The source's session: one aiohttp session and one SDK client per source, and the
authentication of our own requests (a short read+list SAS signed with the key, or a
bearer token).
"""

from __future__ import annotations

import contextlib
import time
from contextlib import AbstractContextManager
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from datasources.connectors.azure_blob.config import (
    AUTH_LABELS,
    AzureBlobConfig,
    SasInfo,
    Target,
    resolve_target,
)
from datasources.connectors.azure_blob.errors import Failure, translate
from datasources.connectors.azure_blob.http import no_redirects_trace, short_retry_policy
from datasources.connectors.base import BaseConnector
from datasources.errors import UnavailableError
from datasources.netpolicy import policy_resolver
from datasources.workspace import safe_relative_path

__all__ = ["AzureSession"]


class AzureSession(BaseConnector[AzureBlobConfig]):
    """One container's session: the HTTP session, the SDK client and request auth."""

    def __init__(self, config: AzureBlobConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._container: Any = None
        self._credential: Any = None
        self._session: Any = None
        self._target: Target | None = None
        self._sas_info: SasInfo | None = None
        self._own_sas: tuple[str, float] | None = None

    @classmethod
    def _sas_of(cls, config: AzureBlobConfig) -> SasInfo | None:
        target = resolve_target(config)
        if target.sas is None:
            return None
        field = {
            "connection_string": "connection_string",
            "container_sas_url": "container_sas_url",
        }.get(target.mode, "sas_token")
        return SasInfo.parse(target.sas, field=field)

    @property
    def _label(self) -> str:
        return AUTH_LABELS[self.config.auth_mode]

    async def connect(self) -> None:
        if self._connected:
            return
        try:
            import aiohttp
            from azure.core.pipeline.transport import AioHttpTransport
            from azure.storage.blob.aio import ContainerClient
        except ModuleNotFoundError as exc:  # pragma: no cover - covered by registry hint
            from datasources.errors import MissingDependencyError

            raise MissingDependencyError(
                f"The azure_blob connector needs {exc.name!r}: pip install 'datasources[azure]'"
            ) from None
        config = self.config
        target = resolve_target(config)
        self._target = target
        self._sas_info = self._sas_of(config)
        resolver = None
        if self.outbound is not None:
            # Checked again at every connect: a source stored before the operator changed
            # the policy is held to the policy of today.
            await self.check_targets(config, self.outbound)
            # IP literals never reach a resolver: check_targets checked the endpoint; host
            # names are checked by the resolver, answer by answer, right before aiohttp
            # connects.
            resolver = policy_resolver(self.outbound)
        connector = aiohttp.TCPConnector(
            limit=max(config.max_concurrency * 2, 16), ttl_dns_cache=300, resolver=resolver
        )
        # A 64 KiB read buffer (the default) pauses the socket every 128 KiB; big transfers
        # stream faster with room for a MiB per connection (memory stays bounded).
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            read_bufsize=1024 * 1024,
            trace_configs=[no_redirects_trace()],
        )
        transport = AioHttpTransport(session=self._session, session_owner=False)
        common: dict[str, Any] = {
            "transport": transport,
            # azure-core's RedirectPolicy follows 301/302 (GET, HEAD) and 307/308 by
            # default and re-sends to wherever Location points: an allowed endpoint could
            # hand the request to an internal one. The storage pipeline builds the policy
            # from these keyword arguments (a redirect_policy= object would be ignored).
            "permit_redirects": False,
            "retry_policy": short_retry_policy(),
            "connection_timeout": min(config.timeout, 20.0),
            "read_timeout": config.timeout,
            "max_single_put_size": config.chunk_size,
            "max_block_size": config.chunk_size,
        }
        credential: Any = None
        if target.account_key is not None:
            from azure.core.credentials import AzureNamedKeyCredential

            credential = AzureNamedKeyCredential(target.account_name or "", target.account_key)
        elif target.sas is not None:
            from azure.core.credentials import AzureSasCredential

            credential = AzureSasCredential(target.sas)
        elif target.mode == "client_secret":
            from azure.identity.aio import ClientSecretCredential

            assert config.client_secret is not None
            credential = ClientSecretCredential(
                config.tenant_id or "",
                config.client_id or "",
                config.client_secret.get_secret_value(),
            )
            self._credential = credential
        elif target.mode == "default_credential":
            from azure.identity.aio import DefaultAzureCredential

            credential = DefaultAzureCredential()
            self._credential = credential
        self._container = ContainerClient(
            target.account_url, target.container, credential=credential, **common
        )
        self._connected = True

    async def disconnect(self) -> None:
        self._connected = False
        for resource in (self._container, self._credential, self._session):
            if resource is not None:
                with contextlib.suppress(Exception):
                    await resource.close()
        self._container = self._credential = self._session = None

    def _client(self) -> Any:
        if self._container is None:
            raise UnavailableError(f"Source {self.source_id!r} is not connected.")
        return self._container

    def _failure(self, what: str, path: str | None = None) -> Failure:
        return Failure(what, self.source_id, self._label, path)

    def _errors(self, what: str, path: str | None = None) -> AbstractContextManager[None]:
        """Translate SDK and network errors to the error tree (:mod:`.errors`)."""
        return translate(self._failure(what, path))

    @staticmethod
    def _blob_name(path: str) -> str:
        """Blob names are validated like workspace paths: such names are the only ones we fetch."""
        return safe_relative_path(path, allow_reserved=True).as_posix()

    async def _auth(self) -> tuple[str, dict[str, str]]:
        """The query string and headers our own requests (ranges, listings) need."""
        target = self._target
        assert target is not None
        headers = {"x-ms-version": self._client().api_version}
        if target.sas is not None:
            return target.sas, headers
        if target.account_key is not None:
            now = time.monotonic()
            if self._own_sas is None or now > self._own_sas[1]:
                from azure.storage.blob import ContainerSasPermissions, generate_container_sas

                # Signed here with the key, never sent: a short read+list SAS for our GETs.
                sas = generate_container_sas(
                    target.account_name or "",
                    target.container,
                    account_key=target.account_key,
                    permission=ContainerSasPermissions(read=True, list=True),
                    expiry=datetime.now(UTC) + timedelta(hours=1),
                )
                self._own_sas = (sas, now + 50 * 60)
            return self._own_sas[0], headers
        if self._credential is not None:
            token = await self._credential.get_token("https://storage.azure.com/.default")
            headers["Authorization"] = f"Bearer {token.token}"
        return "", headers

    def _blob_url(self, blob_name: str, query: str) -> str:
        target = self._target
        assert target is not None
        base = f"{target.account_url}/{quote(target.container)}/{quote(blob_name, safe='/~')}"
        return f"{base}?{query}" if query else base
