"""A PostgreSQL source's configuration: discrete keys or a DSN, only allowed parameters.

Only an allow-list of connection parameters is accepted: ``passfile``, ``service``,
``options``, ``sslkeylogfile`` and anything else that reads local files or changes
session settings is refused. ``sslrootcert`` is the CA certificate itself, never a path.
"""

from __future__ import annotations

import re
import ssl
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from pydantic import Field, SecretStr, model_validator

from datasources.connectors.base import ConnectorConfig
from datasources.errors import ConfigurationError

__all__ = ["PinnedNameContext", "PostgreSQLConfig", "ca_context", "parse_dsn"]


_PREFIX = "Invalid postgresql configuration"


# Connection parameters a DSN may carry; everything else is refused by name.
_ALLOWED_DSN_PARAMS = frozenset(
    {
        "host",
        "port",
        "dbname",
        "user",
        "password",
        "sslmode",
        "sslrootcert",
        "connect_timeout",
        "application_name",
    }
)


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")


def _config_error(field: str, problem: str) -> ConfigurationError:
    return ConfigurationError.from_fields([(field, problem)], prefix=_PREFIX)


_PEM_CERTIFICATE = "-----BEGIN CERTIFICATE-----"


_MAX_ROOTCERT_CHARS = 256 * 1024


class PinnedNameContext(ssl.SSLContext):
    """A TLS context that checks the certificate against one fixed host name.

    The connection goes to an address the outbound policy checked (so DNS cannot be asked
    twice and answer differently the second time), while ``verify-full`` still needs the
    server's *name* for the certificate check: every handshake uses that name, whatever
    address the socket was opened to.
    """

    pinned_name: str | None = None

    def wrap_bio(
        self,
        incoming: ssl.MemoryBIO,
        outgoing: ssl.MemoryBIO,
        server_side: bool = False,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLObject:
        name = self.pinned_name if self.pinned_name is not None else server_hostname
        return super().wrap_bio(incoming, outgoing, server_side, name, session)


def ca_context(rootcert: str | None) -> ssl.SSLContext:
    """The TLS context that trusts ``rootcert``: PEM text, ``system``, or none (system).

    A source's config comes from API users, so ``sslrootcert`` is never a path: reading
    a server file on their behalf would tell them which files exist and what they hold.
    The certificate itself is given as PEM text.
    """
    context = PinnedNameContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks names
    if rootcert is None or rootcert == "system":
        context.load_default_certs()
        return context
    if len(rootcert) > _MAX_ROOTCERT_CHARS or _PEM_CERTIFICATE not in rootcert:
        raise _config_error(
            "sslrootcert",
            "must be the CA certificate itself as PEM text (-----BEGIN CERTIFICATE-----…) "
            "or 'system'; file paths are not read",
        )
    try:
        context.load_verify_locations(cadata=rootcert)
    except (ssl.SSLError, ValueError):
        raise _config_error("sslrootcert", "is not a valid PEM certificate") from None
    return context


def parse_dsn(dsn: str) -> dict[str, str]:
    """A ``postgresql://`` URL or ``key=value`` string → allowed parameters (others refused)."""
    params: dict[str, str] = {}
    text = dsn.strip()
    if text.startswith(("postgresql://", "postgres://")):
        split = urlsplit(text)
        if split.username:
            params["user"] = unquote(split.username)
        if split.password:
            params["password"] = unquote(split.password)
        if split.hostname:
            params["host"] = split.hostname
        try:
            port = split.port
        except ValueError:
            raise _config_error("dsn", "has an invalid port") from None
        if port:
            params["port"] = str(port)
        if split.path.strip("/"):
            params["dbname"] = unquote(split.path.strip("/"))
        pairs = parse_qsl(split.query, keep_blank_values=True)
    else:
        pairs = []
        for match in re.finditer(r"(\w+)\s*=\s*('(?:\\.|[^'\\])*'|\S+)", text):
            value = match.group(2)
            if value.startswith("'"):
                value = re.sub(r"\\(.)", r"\1", value[1:-1])
            pairs.append((match.group(1), value))
        if not pairs:
            raise _config_error("dsn", "is neither a postgresql:// URL nor key=value pairs")
    refused = sorted({key for key, _ in pairs if key not in _ALLOWED_DSN_PARAMS})
    if refused:
        raise _config_error(
            "dsn",
            f"parameter(s) {', '.join(refused)} are not allowed (they read local files "
            "or change session settings)",
        )
    params.update(pairs)
    return params


class PostgreSQLConfig(ConnectorConfig):
    """Config of a ``postgresql`` source: discrete keys or a ``dsn``."""

    host: str | None = None
    port: int = Field(default=5432, ge=1, le=65535)
    database: str | None = None
    user: str | None = None
    password: SecretStr | None = None
    dsn: SecretStr | None = None
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = (
        None
    )
    sslrootcert: str | None = Field(
        default=None,
        description="The CA certificate as PEM text, or 'system'; never a file path.",
    )
    connect_timeout: float = Field(default=10.0, gt=0, le=300)
    application_name: str = Field(default="datasources", max_length=63)
    statement_timeout: float = Field(default=30.0, gt=0, le=86400)
    max_rows: int = Field(default=10_000, ge=1, le=10_000_000)
    schemas: list[str] | None = Field(default=None, description="Allow-list of schemas.")
    pgbouncer: bool = Field(default=False, description="No server-side prepared statement cache.")
    pool_min_size: int = Field(default=0, ge=0, le=100)
    pool_max_size: int = Field(default=5, ge=1, le=100)

    @model_validator(mode="after")
    def _one_way_to_connect(self) -> PostgreSQLConfig:
        discrete = [k for k in ("host", "database", "user", "password") if getattr(self, k)]
        if self.dsn is not None and discrete:
            raise ValueError(f"give either dsn or {', '.join(discrete)}, not both")
        if self.dsn is None and not (self.host and self.database and self.user):
            raise ValueError("host, database and user are required (or a dsn)")
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("pool_min_size must not exceed pool_max_size")
        if any(c in self.application_name for c in "\x00'\\"):
            raise ValueError("application_name has characters that are not allowed")
        return self

    def connection_params(self) -> dict[str, str]:
        """The allowed connection parameters, from the DSN or the discrete keys."""
        if self.dsn is not None:
            params = parse_dsn(self.dsn.get_secret_value())
        else:
            params = {
                "host": self.host or "",
                "port": str(self.port),
                "dbname": self.database or "",
                "user": self.user or "",
            }
            if self.password is not None:
                params["password"] = self.password.get_secret_value()
        if self.sslmode:
            params["sslmode"] = self.sslmode
        if self.sslrootcert:
            params["sslrootcert"] = self.sslrootcert
        if params.get("sslmode") and params["sslmode"] not in _SSLMODES:
            raise _config_error("sslmode", "is not a libpq sslmode")
        if "sslrootcert" in params:
            ca_context(params["sslrootcert"])  # PEM text or 'system', never a path
        for needed in ("host", "dbname", "user"):
            if not params.get(needed):
                raise _config_error("dsn", f"does not name a {needed}")
        return params
