"""The one exception tree of ``datasources``.

Every error the library raises on purpose derives from :class:`DataSourceError` and
carries a *safe* message: text that may be shown to a user, returned in an HTTP body or
written to a log without revealing a secret. Internal detail (SDK exceptions, stack
traces) goes to the log through the redacting filter, never into ``message``.

::

    DataSourceError
    ├── ConfigurationError             bad or incomplete configuration (fields named)
    │   ├── UnknownDataSourceTypeError no connector for that type
    │   └── MissingDependencyError     connector needs an optional package (pip hint)
    ├── InvalidInputError              a request that can never succeed as sent
    │   └── UnsafePathError            traversal, absolute path, NUL, over-long name
    ├── AuthenticationError            the service rejected the credential
    ├── PermissionDeniedError          authenticated, but not allowed
    │   └── ReadOnlyError              a write to a read-only source
    ├── NotFoundError                  a missing data source, item, container, table
    ├── AlreadyExistsError             an id, name or remote path that is taken
    ├── LimitExceededError             size, row or quota limit reached
    ├── IntegrityError                 a transfer that does not verify (size, checksum)
    ├── TimeoutError                   the operation ran out of time
    ├── UnavailableError               the service cannot be reached (transient)
    └── CredentialsError               the secret store itself
        ├── MissingKeyError            no encryption key configured
        └── CredentialsUnreadableError a stored secret cannot be decrypted with any key

``code`` is a stable machine-readable name (used for RFC 9457 ``type`` URIs by the HTTP
layer); ``details`` holds extra *safe* facts (field names, limits), never secrets.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

__all__ = [
    "AlreadyExistsError",
    "AuthenticationError",
    "ConfigurationError",
    "CredentialsError",
    "CredentialsUnreadableError",
    "DataSourceError",
    "IntegrityError",
    "InvalidInputError",
    "LimitExceededError",
    "MissingDependencyError",
    "MissingKeyError",
    "NotFoundError",
    "PermissionDeniedError",
    "ReadOnlyError",
    "TimeoutError",
    "UnavailableError",
    "UnknownDataSourceTypeError",
    "UnsafePathError",
]


class DataSourceError(Exception):
    """Base of every error ``datasources`` raises on purpose.

    Args:
        message: A safe, user-facing sentence. Never put a secret in it.
        details: Extra safe facts (field names, limits) for programs.
    """

    code: ClassVar[str] = "error"
    default_message: ClassVar[str] = "The data source operation failed."
    transient: ClassVar[bool] = False

    def __init__(self, message: str | None = None, *, details: Mapping[str, Any] | None = None):
        self.message = message or self.default_message
        self.details: dict[str, Any] = dict(details or {})
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ConfigurationError(DataSourceError):
    """A data source's configuration is invalid or incomplete.

    ``details["fields"]`` lists ``{"field": ..., "problem": ...}`` for every bad field.
    """

    code = "configuration_error"
    default_message = "The data source configuration is invalid."

    @classmethod
    def from_fields(
        cls, problems: list[tuple[str, str]], *, prefix: str = ""
    ) -> ConfigurationError:
        """Build one error that names every bad field (never their values)."""
        lines = "; ".join(f"{field}: {problem}" for field, problem in problems)
        head = prefix or "Invalid configuration"
        return cls(
            f"{head}: {lines}",
            details={"fields": [{"field": f, "problem": p} for f, p in problems]},
        )


class UnknownDataSourceTypeError(ConfigurationError):
    """No connector is registered for the requested type."""

    code = "unknown_type"
    default_message = "Unknown data source type."


class MissingDependencyError(ConfigurationError):
    """A connector needs an optional package that is not installed."""

    code = "missing_dependency"
    default_message = "A package this connector needs is not installed."


class InvalidInputError(DataSourceError):
    """A request that can never succeed as sent (bad path, bad parameter)."""

    code = "invalid_input"
    default_message = "The request is invalid."


class UnsafePathError(InvalidInputError):
    """A path that could escape its root: traversal, absolute, NUL, over-long."""

    code = "unsafe_path"
    default_message = "The path is not allowed."


class AuthenticationError(DataSourceError):
    """The remote service rejected the credential."""

    code = "authentication_failed"
    default_message = "Authentication with the data source failed."


class PermissionDeniedError(DataSourceError):
    """Authenticated, but the operation is not allowed."""

    code = "permission_denied"
    default_message = "The operation is not permitted."


class ReadOnlyError(PermissionDeniedError):
    """A write was attempted on a read-only data source."""

    code = "read_only"
    default_message = "The data source is read-only."


class NotFoundError(DataSourceError):
    """A data source, item, container or table does not exist (or is not yours)."""

    code = "not_found"
    default_message = "Not found."


class AlreadyExistsError(DataSourceError):
    """An id, name or remote path is already taken."""

    code = "already_exists"
    default_message = "It already exists."


class LimitExceededError(DataSourceError):
    """A size, row count or quota limit was reached."""

    code = "limit_exceeded"
    default_message = "A limit was exceeded."


class IntegrityError(DataSourceError):
    """Transferred data does not match what the source announced."""

    code = "integrity_error"
    default_message = "The transferred data failed verification."
    transient = True


class TimeoutError(DataSourceError):
    """The operation did not finish in time."""

    code = "timeout"
    default_message = "The operation timed out."
    transient = True


class UnavailableError(DataSourceError):
    """The service cannot be reached right now; retrying later may work."""

    code = "unavailable"
    default_message = "The data source is unavailable."
    transient = True


class CredentialsError(DataSourceError):
    """A problem with the secret store itself."""

    code = "credentials_error"
    default_message = "The credential store cannot be used."


class MissingKeyError(CredentialsError):
    """No encryption key is configured, so secrets cannot be stored."""

    code = "missing_key"
    default_message = (
        "No encryption key is configured: set DATASOURCES_SECRET_KEYS or enable the key file "
        "before storing secrets."
    )


class CredentialsUnreadableError(CredentialsError):
    """A stored secret cannot be decrypted with any configured key."""

    code = "credentials_unreadable"
    default_message = (
        "A stored secret cannot be decrypted with the configured keys; "
        "restore the key it was encrypted with or register the secret again."
    )
