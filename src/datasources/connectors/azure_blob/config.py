"""An Azure Blob source's configuration: exactly one auth mode, parsed and checked.

Auth modes: ``connection_string`` | ``account_url`` + ``account_key`` |
``account_url`` + ``sas_token`` | ``container_sas_url`` | ``account_url`` +
``anonymous`` | ``account_url`` + ``tenant_id`` + ``client_id`` + ``client_secret`` |
``account_url`` + ``use_default_credential``. Connection strings and SAS tokens are
parsed here, naming every bad part and never echoing a key or a signature.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from datasources.connectors.base import ConnectorConfig
from datasources.errors import ConfigurationError

__all__ = [
    "AUTH_LABELS",
    "EXPIRY_WARNING",
    "AuthMode",
    "AzureBlobConfig",
    "ParsedConnectionString",
    "SasInfo",
    "Target",
    "config_error",
    "parse_connection_string",
    "resolve_target",
]


AuthMode = Literal[
    "connection_string",
    "account_key",
    "sas_token",
    "container_sas_url",
    "anonymous",
    "client_secret",
    "default_credential",
]


AUTH_LABELS: dict[str, str] = {
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
            raise config_error(field, "is not a SAS token (no 'sig' parameter)")
        expiry: datetime | None = None
        if "se" in query:
            raw = query["se"][0]
            try:
                expiry = datetime.fromisoformat(raw.replace("Z", "+00:00"))
            except ValueError:
                raise config_error(field, "has an unreadable expiry ('se')") from None
            if expiry.tzinfo is None:
                expiry = expiry.replace(tzinfo=UTC)
        return cls(
            expiry=expiry,
            permissions=query.get("sp", [""])[0],
            resource=query.get("sr", [None])[0],
            resource_types=query.get("srt", [None])[0],
        )


def config_error(field: str, problem: str) -> ConfigurationError:
    return ConfigurationError.from_fields([(field, problem)], prefix=_PREFIX)


def _split_container_sas_url(url: str) -> tuple[str, str, str]:
    """``https://acct…/container?sas`` → (account_url, container, sas).

    Path-style endpoints (Azurite, IP addresses) carry the account in the path:
    ``http://127.0.0.1:10000/account/container?sas``.
    """
    split = urlsplit(url)
    if split.scheme not in ("http", "https") or not split.netloc:
        raise config_error("container_sas_url", "is not an http(s) URL")
    path = [p for p in split.path.split("/") if p]
    if len(path) == 1:
        account_path, container = "", path[0]
    elif len(path) == 2:
        account_path, container = "/" + path[0], path[1]
    else:
        raise config_error("container_sas_url", "must name exactly one container")
    if not split.query:
        raise config_error("container_sas_url", "has no SAS query string")
    account_url = urlunsplit((split.scheme, split.netloc, account_path, "", ""))
    return account_url, unquote(container), split.query


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
class Target:
    """Where to connect and with what, resolved from the config (secrets inside)."""

    mode: AuthMode
    account_url: str
    account_name: str | None
    container: str
    account_key: str | None
    sas: str | None

    def __repr__(self) -> str:
        return (
            f"Target(mode={self.mode!r}, account_url={self.account_url!r}, "
            f"container={self.container!r})"
        )


def resolve_target(config: AzureBlobConfig) -> Target:
    mode = config.auth_mode
    if mode == "connection_string":
        assert config.connection_string is not None
        parsed = parse_connection_string(config.connection_string.get_secret_value())
        return Target(
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
            raise config_error("container_name", "differs from the container in container_sas_url")
        return Target(
            mode, account_url, _account_from_url(account_url), container, None, container_sas
        )
    assert config.account_url is not None
    key = config.account_key.get_secret_value() if config.account_key else None
    if key is not None:
        try:
            base64.b64decode(key, validate=True)
        except (binascii.Error, ValueError):
            raise config_error("account_key", "is not valid base64") from None
    sas: str | None = config.sas_token.get_secret_value().lstrip("?") if config.sas_token else None
    return Target(
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
