"""Azure Blob Storage: every auth mode, streamed ranged downloads, safe names, verified files.

The control plane (properties, listings, uploads) goes through the ``azure-storage-blob``
aio SDK; the data plane of a download is our own: concurrent ranged ``GET``s on the
SDK's aiohttp session, each streamed straight to its offset in the workspace file, so
memory stays bounded by ``max_concurrency`` buffers whatever the blob size. Each range
is conditional on the ETag read at the start (``If-Match``), so a blob replaced mid-way
is noticed and fetched again whole rather than stitched from two versions.

Auth modes (exactly one): ``connection_string`` | ``account_url`` + ``account_key`` |
``account_url`` + ``sas_token`` | ``container_sas_url`` | ``account_url`` +
``anonymous`` | ``account_url`` + ``tenant_id`` + ``client_id`` + ``client_secret`` |
``account_url`` + ``use_default_credential``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import builtins
import contextlib
import logging
import mimetypes
import random
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal
from urllib.parse import parse_qs, quote, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from datasources.connectors.base import (
    BaseConnector,
    ConnectorConfig,
    ItemStream,
    ListingQuery,
    ProgressCallback,
    check_page_limit,
    decode_cursor,
    encode_cursor,
    listing_query,
)
from datasources.errors import (
    AlreadyExistsError,
    AuthenticationError,
    ConfigurationError,
    DataSourceError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)
from datasources.models import ConnectionStatus, DataItem, DataSourceType, ItemKind, Page
from datasources.netpolicy import OutboundPolicy, policy_resolver
from datasources.workspace import AtomicFile, Workspace, md5_from_base64, safe_relative_path

__all__ = ["AzureBlobConfig", "AzureBlobConnector", "SasInfo", "parse_connection_string"]

logger = logging.getLogger(__name__)

AuthMode = Literal[
    "connection_string",
    "account_key",
    "sas_token",
    "container_sas_url",
    "anonymous",
    "client_secret",
    "default_credential",
]

_AUTH_LABELS: dict[str, str] = {
    "connection_string": "connection string",
    "account_key": "account key",
    "sas_token": "SAS token",
    "container_sas_url": "container SAS URL",
    "anonymous": "anonymous access",
    "client_secret": "service principal (client secret)",
    "default_credential": "DefaultAzureCredential",
}

EXPIRY_WARNING = timedelta(days=7)
_PREFIX = "Invalid azure_blob configuration"
_WRITE_PERMISSIONS = set("wdacmeuxy")  # SAS letters that allow changing data
_DEFAULT_CHUNK = 8 * 1024 * 1024
_READ_PIECE = 1024 * 1024
_RANGE_RETRIES = 3
# A List Blobs page of 5,000 blobs is about 1-2 KiB a blob with its properties (7-10 MiB);
# user metadata (up to 8 KiB a blob) can make it bigger. A page over the cap is asked for
# again with fewer results, down to _MIN_PAGE, and only then refused: memory stays bounded
# whatever the endpoint sends, and a container with heavy metadata still lists.
_LISTING_MAX_BYTES = 16 * 1024 * 1024
_MAX_EMPTY_PAGES = 100
"""Empty listing pages in a row (each with a next marker) before a listing is refused."""
_MIN_PAGE = 100
# An error body is read for its <Code> only: a few hundred bytes in practice.
_ERROR_MAX_BYTES = 64 * 1024


# -- connection strings and SAS tokens -------------------------------------------------------


@dataclass(frozen=True)
class ParsedConnectionString:
    """What a connection string says; ``repr`` never shows the key or SAS."""

    account_name: str | None
    account_url: str
    account_key: str | None
    sas_token: str | None

    def __repr__(self) -> str:
        auth = "key" if self.account_key else "sas"
        return f"ParsedConnectionString(account_url={self.account_url!r}, auth={auth})"


_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = (  # the emulator's published development key, not a secret
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)


def parse_connection_string(value: str) -> ParsedConnectionString:
    """Parse an Azure Storage connection string, naming every missing or malformed part.

    Raises:
        ConfigurationError: never echoing the key or the signature.
    """
    parts: dict[str, str] = {}
    problems: list[str] = []
    for segment in value.strip().split(";"):
        if not segment.strip():
            continue
        name, sep, val = segment.partition("=")
        if not sep or not name.strip():
            problems.append("a segment is not of the form Name=value")
            continue
        parts[name.strip().lower()] = val.strip()
    if parts.get("usedevelopmentstorage", "").lower() == "true":
        return ParsedConnectionString(
            _DEV_ACCOUNT, f"http://127.0.0.1:10000/{_DEV_ACCOUNT}", _DEV_KEY, None
        )
    account = parts.get("accountname")
    key: str | None = parts.get("accountkey")
    sas = parts.get("sharedaccesssignature")
    endpoint = parts.get("blobendpoint")
    if key and sas:
        problems.append("AccountKey and SharedAccessSignature are both given; keep one")
    if not key and not sas:
        problems.append("AccountKey or SharedAccessSignature is missing")
    if key:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            problems.append("AccountKey is not valid base64")
        if not account:
            problems.append("AccountName is missing (needed with AccountKey)")
    if endpoint:
        split = urlsplit(endpoint)
        if split.scheme not in ("http", "https") or not split.netloc:
            problems.append("BlobEndpoint is not an http(s) URL")
        account_url = endpoint.rstrip("/")
    elif account:
        protocol = parts.get("defaultendpointsprotocol", "https")
        if protocol not in ("http", "https"):
            problems.append("DefaultEndpointsProtocol must be http or https")
        suffix = parts.get("endpointsuffix", "core.windows.net")
        account_url = f"{protocol}://{account}.blob.{suffix}"
    else:
        problems.append("BlobEndpoint or AccountName is missing")
        account_url = ""
    if problems:
        raise ConfigurationError.from_fields(
            [("connection_string", p) for p in problems], prefix=_PREFIX
        )
    return ParsedConnectionString(account, account_url, key, sas.lstrip("?") if sas else None)


@dataclass(frozen=True)
class SasInfo:
    """What a SAS token grants: expiry (``se``), permissions (``sp``), scope (``sr``/``srt``)."""

    expiry: datetime | None
    permissions: str
    resource: str | None
    resource_types: str | None

    @property
    def container_scoped(self) -> bool:
        """A service SAS for one container (or blob): account-level calls would 403."""
        return self.resource is not None and self.resource in {"c", "b", "d"}

    @property
    def can_write(self) -> bool:
        """Whether any permission letter allows changing data."""
        return bool(set(self.permissions) & _WRITE_PERMISSIONS)

    @classmethod
    def parse(cls, token: str, *, field: str = "sas_token") -> SasInfo:
        """Inspect a SAS query string; :class:`ConfigurationError` if it is not one."""
        query = parse_qs(token.lstrip("?"), keep_blank_values=True)
        if "sig" not in query:
            raise _config_error(field, "is not a SAS token (no 'sig' parameter)")
        expiry: datetime | None = None
        if "se" in query:
            raw = query["se"][0]
            try:
                expiry = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise _config_error(field, "has an unreadable expiry ('se')") from None
            if expiry.tzinfo is None:
                expiry = expiry.replace(tzinfo=UTC)
        return cls(
            expiry=expiry,
            permissions=query.get("sp", [""])[0],
            resource=query.get("sr", [None])[0],
            resource_types=query.get("srt", [None])[0],
        )


def _config_error(field: str, problem: str) -> ConfigurationError:
    return ConfigurationError.from_fields([(field, problem)], prefix=_PREFIX)


def _split_container_sas_url(url: str) -> tuple[str, str, str]:
    """``https://acct…/container?sas`` → (account_url, container, sas).

    Path-style endpoints (Azurite, IP addresses) carry the account in the path:
    ``http://127.0.0.1:10000/account/container?sas``.
    """
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise _config_error("container_sas_url", "is not an http(s) URL")
    path = [p for p in split.path.split("/") if p]
    if len(path) == 1:
        account_path, container = "", path[0]
    elif len(path) == 2:
        account_path, container = "/" + path[0], path[1]
    else:
        raise _config_error("container_sas_url", "must name exactly one container")
    if not split.query:
        raise _config_error("container_sas_url", "has no SAS query string")
    account_url = urlunsplit((split.scheme, split.netloc, account_path, "", ""))
    return account_url, unquote(container), split.query


# -- configuration ------------------------------------------------------------------------------


class AzureBlobConfig(ConnectorConfig):
    """Config of an ``azure_blob`` source; exactly one auth mode."""

    container_name: str | None = Field(default=None, min_length=3, max_length=63)
    connection_string: SecretStr | None = None
    account_url: str | None = None
    account_key: SecretStr | None = None
    sas_token: SecretStr | None = None
    container_sas_url: SecretStr | None = None
    anonymous: bool = False
    tenant_id: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    use_default_credential: bool = False
    max_concurrency: int = Field(default=8, ge=1, le=64)
    chunk_size: int = Field(default=_DEFAULT_CHUNK, ge=256 * 1024, le=256 * 1024 * 1024)
    timeout: float = Field(default=60.0, gt=0, le=3600, description="Per-request seconds.")

    @field_validator("container_name")
    @classmethod
    def _container(cls, value: str | None) -> str | None:
        if value is None:
            return value
        import re

        if (
            not re.fullmatch(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", value)
            and value != "$root"
        ):
            raise ValueError("must be 3-63 lower-case letters, digits or single hyphens")
        return value

    @field_validator("account_url")
    @classmethod
    def _account_url(cls, value: str | None) -> str | None:
        if value is None:
            return value
        split = urlsplit(value)
        if split.scheme not in ("http", "https") or not split.netloc:
            raise ValueError("must be an http(s) URL such as https://ACCOUNT.blob.core.windows.net")
        if split.query or split.fragment or "@" in split.netloc:
            raise ValueError("must not carry a query, fragment or user info (use sas_token)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _one_auth_mode(self) -> AzureBlobConfig:
        modes = self.auth_modes()
        if not modes:
            raise ValueError(
                "no auth mode: give connection_string, account_url with account_key | sas_token"
                " | anonymous | tenant_id+client_id+client_secret | use_default_credential,"
                " or container_sas_url"
            )
        if len(modes) > 1:
            raise ValueError(f"give exactly one auth mode, not {' and '.join(modes)}")
        mode = modes[0]
        needs_url = mode in {
            "account_key",
            "sas_token",
            "anonymous",
            "client_secret",
            "default_credential",
        }
        if needs_url and not self.account_url:
            raise ValueError(f"account_url is required with {mode}")
        if mode in {"connection_string", "container_sas_url"} and self.account_url:
            raise ValueError(f"account_url cannot be combined with {mode}")
        if mode == "client_secret" and not (
            self.tenant_id and self.client_id and self.client_secret
        ):
            raise ValueError("tenant_id, client_id and client_secret are all required")
        if mode != "client_secret" and (self.tenant_id or self.client_id):
            raise ValueError("tenant_id and client_id belong to the client_secret auth mode")
        if mode != "container_sas_url" and not self.container_name:
            raise ValueError("container_name is required")
        return self

    def auth_modes(self) -> list[str]:
        """Every auth mode the config names (valid configs name exactly one)."""
        modes = []
        if self.connection_string is not None:
            modes.append("connection_string")
        if self.account_key is not None:
            modes.append("account_key")
        if self.sas_token is not None:
            modes.append("sas_token")
        if self.container_sas_url is not None:
            modes.append("container_sas_url")
        if self.anonymous:
            modes.append("anonymous")
        if self.client_secret is not None or (self.tenant_id and self.client_id):
            modes.append("client_secret")
        if self.use_default_credential:
            modes.append("default_credential")
        return modes

    @property
    def auth_mode(self) -> AuthMode:
        """The one auth mode."""
        return self.auth_modes()[0]  # type: ignore[return-value]


@dataclass(frozen=True)
class _Target:
    """Where to connect and with what, resolved from the config (secrets inside)."""

    mode: AuthMode
    account_url: str
    account_name: str | None
    container: str
    account_key: str | None
    sas: str | None

    def __repr__(self) -> str:
        return (
            f"_Target(mode={self.mode!r}, account_url={self.account_url!r}, "
            f"container={self.container!r})"
        )


def _resolve_target(config: AzureBlobConfig) -> _Target:
    mode = config.auth_mode
    if mode == "connection_string":
        assert config.connection_string is not None
        parsed = parse_connection_string(config.connection_string.get_secret_value())
        return _Target(
            mode,
            parsed.account_url,
            parsed.account_name,
            config.container_name or "",
            parsed.account_key,
            parsed.sas_token,
        )
    if mode == "container_sas_url":
        assert config.container_sas_url is not None
        account_url, container, container_sas = _split_container_sas_url(
            config.container_sas_url.get_secret_value()
        )
        if config.container_name and config.container_name != container:
            raise _config_error("container_name", "differs from the container in container_sas_url")
        return _Target(
            mode, account_url, _account_from_url(account_url), container, None, container_sas
        )
    assert config.account_url is not None
    key = config.account_key.get_secret_value() if config.account_key else None
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise _config_error("account_key", "is not valid base64") from None
    sas: str | None = config.sas_token.get_secret_value().lstrip("?") if config.sas_token else None
    return _Target(
        mode,
        config.account_url,
        _account_from_url(config.account_url),
        config.container_name or "",
        key,
        sas,
    )


def _account_from_url(url: str) -> str | None:
    split = urlsplit(url)
    host = split.hostname or ""
    if ".blob." in host:
        return host.split(".", 1)[0]
    path = [p for p in split.path.split("/") if p]
    return path[0] if path else None


# -- the connector --------------------------------------------------------------------------------


_RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# 403 codes that mean "who you are is fine, what you asked is not allowed".
_PERMISSION_CODES = {
    "AuthorizationPermissionMismatch",
    "AuthorizationResourceTypeMismatch",
    "AuthorizationServiceMismatch",
    "AuthorizationProtocolMismatch",
    "AuthorizationSourceIPMismatch",
}
# AuthorizationFailure is left out: Azurite (and Azure for some SAS faults) answers a bad
# signature with it, so it reads as "credentials rejected".


_REDIRECT_STATUS = frozenset({300, 301, 302, 303, 307, 308})


def _redirect_refused(what: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"The storage endpoint answered the {what} with a redirect; data sources never "
        "follow redirects (the target would escape the outbound-target policy).",
        details={"reason": "redirect"},
    )


def _no_redirects_trace() -> Any:
    """A session-wide backstop: any request that is about to follow a redirect fails."""
    import aiohttp

    async def refuse(_session: Any, _context: Any, params: Any) -> None:
        raise _redirect_refused(f"request ({params.response.status})")

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(refuse)
    return trace


def _short_retry_policy() -> Any:
    """Short exponential backoff: a chat cannot wait the SDK's 15 s first retry."""
    from azure.storage.blob.aio import ExponentialRetry

    class ShortExponentialRetry(ExponentialRetry):
        def get_backoff_time(self, settings: dict[str, Any]) -> float:
            count = int(settings["count"])
            backoff: float = min(0.2 * (2**count), 2.0) * random.uniform(0.8, 1.2)
            return backoff

    return ShortExponentialRetry(retry_total=3, initial_backoff=0, increment_base=2)


class AzureBlobConnector(BaseConnector[AzureBlobConfig]):
    """Lists, fetches and uploads blobs of one container."""

    type: ClassVar[str] = DataSourceType.AZURE_BLOB
    config_model = AzureBlobConfig
    secret_fields = frozenset(
        {"connection_string", "account_key", "sas_token", "container_sas_url", "client_secret"}
    )
    target_fields = frozenset({"account_url", "container_name", "tenant_id", "client_id"})
    list_page_size: ClassVar[int] = 5000
    """Blobs per List Blobs request when iterating (the service's maximum)."""

    def __init__(self, config: AzureBlobConfig | dict[str, Any], **kwargs: Any) -> None:
        super().__init__(config, **kwargs)
        self._container: Any = None
        self._credential: Any = None
        self._session: Any = None
        self._target: _Target | None = None
        self._sas_info: SasInfo | None = None
        self._own_sas: tuple[str, float] | None = None

    # -- configuration checks --------------------------------------------------------

    @classmethod
    def _sas_of(cls, config: AzureBlobConfig) -> SasInfo | None:
        target = _resolve_target(config)
        if target.sas is None:
            return None
        field = {
            "connection_string": "connection_string",
            "container_sas_url": "container_sas_url",
        }.get(target.mode, "sas_token")
        return SasInfo.parse(target.sas, field=field)

    @classmethod
    async def check_targets(cls, config: ConnectorConfig, policy: OutboundPolicy) -> None:
        assert isinstance(config, AzureBlobConfig)
        target = _resolve_target(config)
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
            raise _config_error(
                config.auth_mode, f"the SAS token expired on {sas.expiry:%Y-%m-%d %H:%M} UTC"
            )

    @property
    def _label(self) -> str:
        return _AUTH_LABELS[self.config.auth_mode]

    # -- lifecycle -------------------------------------------------------------------

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
        target = _resolve_target(config)
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
            trace_configs=[_no_redirects_trace()],
        )
        transport = AioHttpTransport(session=self._session, session_owner=False)
        common: dict[str, Any] = {
            "transport": transport,
            # azure-core's RedirectPolicy follows 301/302 (GET, HEAD) and 307/308 by
            # default and re-sends to wherever Location points: an allowed endpoint could
            # hand the request to an internal one. The storage pipeline builds the policy
            # from these keyword arguments (a redirect_policy= object would be ignored).
            "permit_redirects": False,
            "retry_policy": _short_retry_policy(),
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

    # -- errors ----------------------------------------------------------------------

    @contextlib.contextmanager
    def _errors(self, what: str, path: str | None = None) -> Iterator[None]:
        """Translate SDK and network errors to the error tree (the one table)."""
        from azure.core import exceptions as az

        subject = (
            f"{path!r}"
            if path is not None
            else f"container {self._target.container if self._target else ''!r}"
        )
        try:
            yield
        except DataSourceError:
            raise
        except az.ClientAuthenticationError as exc:
            raise self._refused(getattr(exc, "error_code", None), what, subject) from None
        except az.ResourceNotFoundError as exc:
            code = getattr(exc, "error_code", None) or ""
            if code == "ContainerNotFound" or path is None:
                raise NotFoundError(
                    f"The container of source {self.source_id!r} does not exist."
                ) from None
            raise NotFoundError(f"{path!r} does not exist in source {self.source_id!r}.") from None
        except az.ResourceExistsError:
            raise AlreadyExistsError(
                f"{path!r} already exists in source {self.source_id!r}; "
                "pass overwrite=True to replace it."
            ) from None
        except az.HttpResponseError as exc:
            status = getattr(exc, "status_code", None)
            logger.info(
                "Azure %s of %s failed: HTTP %s %s",
                what,
                subject,
                status,
                getattr(exc, "error_code", ""),
            )
            if status in (401, 403):
                raise self._refused(getattr(exc, "error_code", None), what, subject) from None
            if status in _REDIRECT_STATUS:
                raise _redirect_refused(what) from None
            if status in _RETRYABLE_STATUS:
                raise UnavailableError(
                    f"Azure Storage is unavailable ({what}); try again."
                ) from None
            raise DataSourceError(f"Azure Storage refused the {what} (HTTP {status}).") from None
        except (az.ServiceRequestError, az.ServiceResponseError, OSError) as exc:
            logger.info("Azure %s of %s: network error %s", what, subject, type(exc).__name__)
            raise UnavailableError(
                f"Azure Storage cannot be reached for source {self.source_id!r}."
            ) from None
        except builtins.TimeoutError:
            raise TimeoutError(f"The {what} of {subject} timed out.") from None

    def _refused(self, code: str | None, what: str, subject: str) -> DataSourceError:
        """A 401/403: bad credentials, or good ones without the permission."""
        logger.info("Azure %s of %s refused: %s", what, subject, code or "no error code")
        if code in _PERMISSION_CODES:
            return PermissionDeniedError(
                f"The {self._label} of source {self.source_id!r} does not allow {what}."
            )
        return AuthenticationError(
            f"Azure rejected the {self._label} of source {self.source_id!r} ({what})."
        )

    # -- status ----------------------------------------------------------------------

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

    # -- listing ---------------------------------------------------------------------

    def _item(self, blob: Any) -> DataItem:
        settings = getattr(blob, "content_settings", None)
        md5 = getattr(settings, "content_md5", None) if settings is not None else None
        checksum = "md5:" + base64.b64encode(bytes(md5)).decode() if md5 else None
        name: str = blob.name
        return DataItem.trusted(
            path=name,
            name=name.rstrip("/").rsplit("/", 1)[-1],
            kind=ItemKind.FILE,
            size=blob.size,
            last_modified=blob.last_modified,
            content_type=getattr(settings, "content_type", None) if settings is not None else None,
            etag=(blob.etag or "").strip('"') or None,
            checksum=checksum,
            metadata=dict(blob.metadata or {}),
        )

    @staticmethod
    def _dir(name: str) -> DataItem:
        return DataItem.trusted(
            path=name, name=name.rstrip("/").rsplit("/", 1)[-1], kind=ItemKind.DIRECTORY
        )

    async def _list_pages(
        self, prefix: str, delimiter: str | None, marker: str | None, page_size: int
    ) -> AsyncIterator[tuple[list[DataItem], str | None]]:
        """Raw List Blobs pages: (items, next marker), parsed from the XML directly.

        The SDK builds a full BlobProperties object per blob (about 1.5k blobs/s here);
        reading the few fields a DataItem needs straight from the XML is faster. The next
        page is requested as soon as its marker is known, while this one is parsed and
        consumed; at most two pages are held at once.
        """
        pending: asyncio.Task[bytes] = asyncio.create_task(
            self._list_request(prefix, delimiter, marker, page_size)
        )
        empty_in_a_row = 0
        try:
            while True:
                try:
                    body = await pending
                except _TooBig:
                    if page_size <= _MIN_PAGE:
                        raise IntegrityError(
                            f"Azure Storage sent a listing page over "
                            f"{_LISTING_MAX_BYTES // 2**20} MiB for {page_size} results; "
                            "it was refused.",
                            details={"max_bytes": _LISTING_MAX_BYTES},
                        ) from None
                    page_size = max(page_size // 8, _MIN_PAGE)
                    pending = asyncio.create_task(
                        self._list_request(prefix, delimiter, marker, page_size)
                    )
                    continue
                following = _next_marker(body)
                if following:
                    pending = asyncio.create_task(
                        self._list_request(prefix, delimiter, following, page_size)
                    )
                items, _ = await asyncio.to_thread(_parse_listing, body, page_size)
                del body
                # Azure may answer an empty page with a marker now and then; an endpoint
                # that does so without end would hold the caller forever.
                empty_in_a_row = 0 if items else empty_in_a_row + 1
                if following and empty_in_a_row >= _MAX_EMPTY_PAGES:
                    raise IntegrityError(
                        f"Azure Storage answered {_MAX_EMPTY_PAGES} empty listing pages in a "
                        "row, each pointing to another; the listing was stopped.",
                        details={"max_empty_pages": _MAX_EMPTY_PAGES},
                    )
                yield items, following
                if not following:
                    return
                marker = following
        finally:
            if not pending.done():
                pending.cancel()
                with contextlib.suppress(BaseException):
                    await pending

    async def _list_request(
        self, prefix: str, delimiter: str | None, marker: str | None, page_size: int
    ) -> bytes:
        """One List Blobs request, retried on transient failures; the XML body."""
        import aiohttp
        from yarl import URL

        target = self._target
        assert target is not None and self._session is not None
        auth_query, headers = await self._auth()
        params = [("restype", "container"), ("comp", "list"), ("include", "metadata")]
        params.append(("maxresults", str(page_size)))
        if prefix:
            params.append(("prefix", prefix))
        if delimiter:
            params.append(("delimiter", delimiter))
        if marker:
            params.append(("marker", marker))
        query = "&".join(f"{k}={quote(v, safe='')}" for k, v in params)
        if auth_query:
            query += "&" + auth_query
        url = URL(f"{target.account_url}/{quote(target.container)}?{query}", encoded=True)
        for attempt in range(_RANGE_RETRIES + 1):
            try:
                timeout = aiohttp.ClientTimeout(total=self.config.timeout)
                async with self._session.get(
                    url, headers=headers, timeout=timeout, allow_redirects=False
                ) as response:
                    status = response.status
                    if status in _RETRYABLE_STATUS:
                        raise _Transient(f"HTTP {status}")
                    if status != 200:
                        # Only the start of an error body is read (its <Code>): the rest
                        # is never buffered, and the connection is dropped with it.
                        head = await _read_capped(response, _ERROR_MAX_BYTES, cut=True)
                        raise self._listing_error(status, head)
                    body = await _read_capped(response, _LISTING_MAX_BYTES, cut=False)
                return body
            except (_Transient, aiohttp.ClientError, OSError, builtins.TimeoutError) as exc:
                if attempt == _RANGE_RETRIES:
                    logger.info("Listing failed for good: %s", type(exc).__name__)
                    if isinstance(exc, builtins.TimeoutError):
                        raise TimeoutError("The listing timed out.") from None
                    raise UnavailableError(
                        f"Azure Storage cannot be reached for source {self.source_id!r}."
                    ) from None
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0) * random.uniform(0.8, 1.2))
        raise AssertionError("unreachable")

    def _listing_error(self, status: int, body: bytes) -> DataSourceError:
        if status in _REDIRECT_STATUS:
            return _redirect_refused("listing")
        code = _error_code(body)
        if status in (401, 403):
            return self._refused(code, "listing", "the container")
        if status == 404:
            return NotFoundError(f"The container of source {self.source_id!r} does not exist.")
        logger.info("Azure listing failed: HTTP %s %s", status, code)
        # The remote refused for a reason of its own: a bad gateway (502), not our fault.
        return IntegrityError(f"Azure Storage refused the listing (HTTP {status}).")

    async def iter_items(
        self,
        prefix: str | None = None,
        *,
        delimiter: str | None = None,
        glob: str | None = None,
        start_after: str | None = None,
    ) -> AsyncIterator[DataItem]:
        query = listing_query(prefix, delimiter, glob)
        if query.empty:
            return
        # Markers are opaque, so a resume point (start_after) is skipped to locally.
        pages = self._list_pages(query.prefix, delimiter, None, self.list_page_size)
        async for items, _next in pages:
            for item in await _kept(items, query, start_after):
                yield item

    async def list_page(
        self,
        prefix: str | None = None,
        *,
        limit: int = 100,
        cursor: str | None = None,
        delimiter: str | None = None,
        glob: str | None = None,
    ) -> Page:
        """One page straight from the service's continuation token (no re-listing)."""
        check_page_limit(limit)
        token = decode_cursor(cursor) if cursor else None
        query = listing_query(prefix, delimiter, glob)
        if query.empty:
            return Page(items=[])
        async for page, following in self._list_pages(query.prefix, delimiter, token, limit):
            items = await _kept(page, query, None)
            return Page(items=items, next_cursor=encode_cursor(following) if following else None)
        return Page(items=[])

    async def get_metadata(self, path: str) -> DataItem:
        name = self._blob_name(path)
        with self._errors("reading metadata", name):
            props = await self._client().get_blob_client(name).get_blob_properties()
        return self._item(props)

    # -- transfer --------------------------------------------------------------------

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

    async def _download_range(
        self,
        url: Any,
        headers: dict[str, str],
        start: int,
        end: int,
        file: AtomicFile,
        on_bytes: Any,
    ) -> None:
        """GET [start, end) into ``file`` at ``start``, retrying transient failures."""
        import aiohttp

        wanted = end - start
        for attempt in range(_RANGE_RETRIES + 1):
            written = 0
            try:
                timeout = aiohttp.ClientTimeout(
                    sock_connect=min(self.config.timeout, 20.0), sock_read=self.config.timeout
                )
                async with self._session.get(
                    url,
                    headers={**headers, "x-ms-range": f"bytes={start}-{end - 1}"},
                    timeout=timeout,
                    allow_redirects=False,
                ) as response:
                    if response.status == 412:
                        raise _Changed()
                    if response.status in _RETRYABLE_STATUS:
                        raise _Transient(f"HTTP {response.status}")
                    self._check_download(response.status)
                    position = start
                    async for piece in response.content.iter_chunked(_READ_PIECE):
                        if written + len(piece) > wanted:
                            raise IntegrityError(
                                "Azure Storage sent more bytes than the range asked for."
                            )
                        await asyncio.to_thread(file.pwrite, piece, position)
                        position += len(piece)
                        written += len(piece)
                        on_bytes(len(piece))
                if written != wanted:
                    raise _Transient(f"short range: {written} of {wanted} bytes")
                return
            except (_Transient, aiohttp.ClientError, OSError, builtins.TimeoutError) as exc:
                on_bytes(-written)
                if attempt == _RANGE_RETRIES:
                    logger.info("Range %d-%d failed for good: %s", start, end, type(exc).__name__)
                    if isinstance(exc, builtins.TimeoutError):
                        raise TimeoutError("The download timed out.") from None
                    raise UnavailableError(
                        "Azure Storage stopped answering while downloading from source "
                        f"{self.source_id!r}."
                    ) from None
                await asyncio.sleep(min(0.2 * 2**attempt, 2.0) * random.uniform(0.8, 1.2))

    def _check_download(self, status: int) -> None:
        """Raise the error a download's HTTP status means (412 and retries are the caller's)."""
        if status in (401, 403):
            raise AuthenticationError(
                f"Azure rejected the {self._label} of source {self.source_id!r} (download)."
            )
        if status == 404:
            raise NotFoundError(
                f"The blob disappeared from source {self.source_id!r} during the download."
            )
        if status == 412:
            raise IntegrityError("The blob changed while it was being read; try again.")
        if status in _REDIRECT_STATUS:
            raise _redirect_refused("download")
        if status not in (200, 206):
            raise UnavailableError(f"Azure Storage refused the download (HTTP {status}).")

    async def open_stream(self, path: str) -> ItemStream:
        """One GET of the version just described (``If-Match``), passed on as it arrives."""
        import aiohttp
        from yarl import URL

        name = self._blob_name(path)
        item = await self.get_metadata(name)
        if item.kind != ItemKind.FILE:
            raise InvalidInputError(f"{path!r} is a folder, not a blob.")
        query, headers = await self._auth()
        if item.etag:
            headers["If-Match"] = f'"{item.etag}"'
        url = URL(self._blob_url(name, query), encoded=True)
        timeout = aiohttp.ClientTimeout(
            sock_connect=min(self.config.timeout, 20.0), sock_read=self.config.timeout
        )

        unreachable = UnavailableError(
            f"Azure Storage stopped answering while streaming from source {self.source_id!r}."
        )
        # The GET is sent and its status judged here, so a refusal (a redirect, a vanished
        # blob) is an error of this call, before a caller has started sending anything on.
        try:
            response = await self._session.get(
                url, headers=headers, timeout=timeout, allow_redirects=False
            )
        except (aiohttp.ClientError, OSError, builtins.TimeoutError):
            raise unreachable from None
        try:
            self._check_download(response.status)
        except BaseException:
            response.release()
            raise

        async def chunks() -> AsyncIterator[bytes]:
            sent = 0
            try:
                async for piece in response.content.iter_chunked(_READ_PIECE):
                    sent += len(piece)
                    yield piece
            except (aiohttp.ClientError, OSError, builtins.TimeoutError):
                raise unreachable from None
            finally:
                response.release()
            if item.size is not None and sent != item.size:
                raise IntegrityError("Azure Storage sent a different size than it announced.")

        return ItemStream.of_file(item, chunks)

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
    ) -> Path:
        name = self._blob_name(path)
        workspace = Workspace.of(workspace_dir)
        workspace.path_for(name)  # a name the workspace refuses is refused before any request
        for _attempt in range(3):
            item = await self.get_metadata(name)
            try:
                return await self._fetch_version(name, item, workspace, progress)
            except _Changed:
                logger.info("Blob %r changed during the download; fetching the new version.", name)
        raise IntegrityError(f"{path!r} kept changing during the download; try again later.")

    async def _fetch_version(
        self, name: str, item: DataItem, workspace: Workspace, progress: ProgressCallback | None
    ) -> Path:
        cached = self.reuse_if_current(name, item, workspace, progress)
        if cached is not None:
            return cached
        size = item.size or 0
        expected_md5 = md5_from_base64(item.checksum[4:]) if item.checksum else None
        query, headers = await self._auth()
        if item.etag:
            headers["If-Match"] = f'"{item.etag}"'
        from yarl import URL

        url = URL(self._blob_url(name, query), encoded=True)
        done = 0

        def on_bytes(count: int) -> None:
            nonlocal done
            done += count
            if progress is not None:
                progress(done, size)

        chunk = self.config.chunk_size
        semaphore = asyncio.Semaphore(self.config.max_concurrency)
        provenance = self.provenance(name, item)
        async with workspace.writer(
            name,
            max_bytes=self.config.max_download_bytes,
            expected_size=size,
            expected_md5=expected_md5,
            provenance=provenance,
        ) as writer:
            if progress is not None:
                progress(0, size)

            async def one(start: int) -> None:
                async with semaphore:
                    await self._download_range(
                        url, headers, start, min(start + chunk, size), writer.file, on_bytes
                    )

            tasks = [asyncio.create_task(one(start)) for start in range(0, size, chunk)]
            try:
                await asyncio.gather(*tasks)
            except BaseException:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
                raise
        return writer.path

    async def upload_data(
        self,
        local_path: Path | str,
        remote_path: str,
        *,
        overwrite: bool = False,
        content_type: str | None = None,
        metadata: dict[str, str] | None = None,
    ) -> DataItem:
        self.require_writable()
        name = safe_relative_path(remote_path).as_posix()
        source = Path(local_path)
        try:
            size = (await asyncio.to_thread(source.stat)).st_size
        except FileNotFoundError:
            raise NotFoundError(f"The local file {str(source)!r} does not exist.") from None
        if not await asyncio.to_thread(source.is_file):
            raise InvalidInputError(f"{str(source)!r} is not a regular file.")
        from azure.storage.blob import ContentSettings

        guessed = (
            content_type
            or mimetypes.guess_type(name, strict=False)[0]
            or "application/octet-stream"
        )
        blob = self._client().get_blob_client(name)
        with self._errors("upload", name):
            with open(source, "rb") as handle:  # noqa: ASYNC230 - the SDK reads it block by block
                await blob.upload_blob(
                    handle,
                    length=size,
                    overwrite=overwrite,
                    content_settings=ContentSettings(content_type=guessed),
                    metadata=metadata,
                    max_concurrency=self.config.max_concurrency,
                )
            props = await blob.get_blob_properties()
        return self._item(props)


_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}


async def _kept(
    items: list[DataItem], query: ListingQuery, start_after: str | None
) -> list[DataItem]:
    """The items of a page a listing keeps; glob matching (CPU) runs off the event loop."""

    def keep() -> list[DataItem]:
        return [
            item
            for item in items
            if (start_after is None or item.path > start_after) and query.accepts(item)
        ]

    if query.matcher is None:
        return keep()
    return await asyncio.to_thread(keep)


def _http_date(value: str | None) -> datetime | None:
    """'Tue, 26 Nov 2026 03:25:01 GMT' → aware datetime (fast path, RFC 1123 only)."""
    if not value:
        return None
    try:
        _day, day, month, year, clock, _zone = value.split()
        hour, minute, second = clock.split(":")
        return datetime(
            int(year), _MONTHS[month], int(day), int(hour), int(minute), int(second), tzinfo=UTC
        )
    except (ValueError, KeyError):
        from email.utils import parsedate_to_datetime

        try:
            return parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None


def _text(element: Any) -> str:
    text = element.text or ""
    return unquote(text) if element.get("Encoded") == "true" else text


# Elements a listing may hold per result asked for: a blob is about 30 (its properties)
# plus its metadata keys. Counted on the bytes before parsing, since an element tree costs
# ~100 bytes an element and a body of tiny elements (``<a/>``) would cost 25 times its size.
_TAGS_PER_ITEM = 400


def _parse_listing(body: bytes, max_items: int | None = None) -> tuple[list[DataItem], str | None]:
    """Items and the next marker of one List Blobs response.

    With ``max_items`` (the page size asked for), a body with more tags than such a page
    can have, or more entries than asked for, is an unreadable listing: what the parse
    builds stays proportional to the page, whatever the endpoint sends.
    """
    from xml.etree import ElementTree

    if max_items is not None and body.count(b"<") > (max_items + 10) * _TAGS_PER_ITEM:
        raise UnavailableError("Azure Storage sent an unreadable listing.")
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        raise UnavailableError("Azure Storage sent an unreadable listing.") from None
    items: list[DataItem] = []
    blobs = root.find("Blobs")
    for entry in blobs if blobs is not None else ():
        item = _entry(entry)
        if item is not None:
            items.append(item)
    if max_items is not None and len(items) > max_items:
        raise UnavailableError("Azure Storage sent an unreadable listing.")
    next_marker = root.findtext("NextMarker") or None
    # Azurite sends a page's BlobPrefix entries before its blobs; the contract is path order.
    items.sort(key=lambda item: item.path)
    return items, next_marker


def _entry(entry: Any) -> DataItem | None:
    """The DataItem of one <Blob> or <BlobPrefix> element (None for anything else)."""
    name_el = entry.find("Name")
    if name_el is None:
        return None
    name = _text(name_el)
    if entry.tag == "BlobPrefix":
        return AzureBlobConnector._dir(name)
    if entry.tag != "Blob":
        return None
    fields: dict[str, str] = {}
    props = entry.find("Properties")
    if props is not None:
        for prop in props:
            if prop.text:
                fields[prop.tag] = prop.text
    metadata_el = entry.find("Metadata")
    metadata = {m.tag: m.text or "" for m in metadata_el} if metadata_el is not None else {}
    md5 = fields.get("Content-MD5")
    size = fields.get("Content-Length")
    return DataItem.trusted(
        path=name,
        name=name.rstrip("/").rsplit("/", 1)[-1],
        kind=ItemKind.FILE,
        size=int(size) if size is not None and size.isdigit() else None,
        last_modified=_http_date(fields.get("Last-Modified")),
        content_type=fields.get("Content-Type"),
        etag=fields.get("Etag", "").strip('"') or None,
        checksum=f"md5:{md5}" if md5 else None,
        metadata=metadata,
    )


def _next_marker(body: bytes) -> str | None:
    """The NextMarker of a List Blobs body, found without parsing the whole document."""
    start = body.rfind(b"<NextMarker>")
    if start == -1:
        return None
    end = body.find(b"</NextMarker>", start)
    if end == -1:
        return None
    from html import unescape

    marker = unescape(body[start + len(b"<NextMarker>") : end].decode("utf-8", "replace"))
    return marker or None


async def _read_capped(response: Any, cap: int, *, cut: bool) -> bytes:
    """The body of an aiohttp response, never more than ``cap`` bytes of it in memory.

    Past the cap, ``cut`` returns what was read (an error body, read for its code only);
    otherwise :class:`_TooBig` is raised as soon as the cap is passed (or announced).
    """
    length = response.content_length
    if not cut and length is not None and length > cap:
        raise _TooBig()
    body = bytearray()
    async for piece in response.content.iter_chunked(_READ_PIECE):
        body += piece
        if len(body) > cap:
            if cut:
                return bytes(body[:cap])
            raise _TooBig()
    return bytes(body)


def _error_code(body: bytes) -> str | None:
    from xml.etree import ElementTree

    try:
        return ElementTree.fromstring(body).findtext("Code")
    except ElementTree.ParseError:
        return None


class _Changed(Exception):
    """The blob's ETag changed during a ranged download (HTTP 412)."""


class _Transient(Exception):
    """A retryable failure of one range."""


class _TooBig(Exception):
    """A listing body passed the cap (asked for again with fewer results)."""
