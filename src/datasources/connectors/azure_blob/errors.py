"""Azure Storage failures into the error tree: one table, one context manager.

Every way a request can fail — the SDK's exceptions, a listing's status, a ranged GET's
status — goes through :func:`error_for`, keyed by the HTTP status and Azure's error
code, so a 403 means the same thing wherever it is met: a permission the credential
lacks (``AuthorizationPermissionMismatch`` and the like) is 403 ``permission_denied``,
anything else (a bad signature, an expired token) is 401 ``authentication_failed``.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from datasources.errors import (
    AlreadyExistsError,
    AuthenticationError,
    DataSourceError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)

__all__ = [
    "REDIRECT_STATUS",
    "RETRYABLE_STATUS",
    "Failure",
    "error_for",
    "redirect_refused",
    "translate",
]

logger = logging.getLogger("datasources.connectors.azure_blob")

RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUS = frozenset({300, 301, 302, 303, 307, 308})
# 403 codes that mean "who you are is fine, what you asked is not allowed".
# AuthorizationFailure is left out: Azurite (and Azure for some SAS faults) answers a bad
# signature with it, so it reads as "credentials rejected".
_PERMISSION_CODES = frozenset(
    {
        "AuthorizationPermissionMismatch",
        "AuthorizationResourceTypeMismatch",
        "AuthorizationServiceMismatch",
        "AuthorizationProtocolMismatch",
        "AuthorizationSourceIPMismatch",
    }
)
_EXISTS_CODES = frozenset({"BlobAlreadyExists", "ContainerAlreadyExists"})


@dataclass(frozen=True)
class Failure:
    """What was being done when a request failed: the words of the error."""

    what: str
    """The operation, as in "the {what} of …" ("listing", "download", "upload"…)."""
    source_id: str
    label: str
    """The auth mode's name ("account key", "SAS token"…); never the secret."""
    path: str | None = None
    """The blob, when the request was about one (None: the container)."""


def redirect_refused(what: str) -> PermissionDeniedError:
    return PermissionDeniedError(
        f"The storage endpoint answered the {what} with a redirect; data sources never "
        "follow redirects (the target would escape the outbound-target policy).",
        details={"reason": "redirect"},
    )


def _permission(f: Failure, status: int) -> DataSourceError:
    return PermissionDeniedError(
        f"The {f.label} of source {f.source_id!r} does not allow {f.what}."
    )


def _authentication(f: Failure, status: int) -> DataSourceError:
    return AuthenticationError(
        f"Azure rejected the {f.label} of source {f.source_id!r} ({f.what})."
    )


def _container_missing(f: Failure, status: int) -> DataSourceError:
    return NotFoundError(f"The container of source {f.source_id!r} does not exist.")


def _missing(f: Failure, status: int) -> DataSourceError:
    if f.path is None:
        return _container_missing(f, status)
    return NotFoundError(f"{f.path!r} does not exist in source {f.source_id!r}.")


def _exists(f: Failure, status: int) -> DataSourceError:
    return AlreadyExistsError(
        f"{f.path!r} already exists in source {f.source_id!r}; pass overwrite=True to replace it."
    )


def _changed(f: Failure, status: int) -> DataSourceError:
    return IntegrityError("The blob changed while it was being read; try again.")


def _redirect(f: Failure, status: int) -> DataSourceError:
    return redirect_refused(f.what)


def _busy(f: Failure, status: int) -> DataSourceError:
    return UnavailableError(f"Azure Storage is unavailable ({f.what}); try again.")


def _refused(f: Failure, status: int) -> DataSourceError:
    # The remote refused for a reason of its own: a bad gateway (502), not our fault.
    return IntegrityError(f"Azure Storage refused the {f.what} (HTTP {status}).")


Factory = Callable[[Failure, int], DataSourceError]

# (statuses, error codes or None for any, what it becomes); the first matching row wins.
_TABLE: tuple[tuple[frozenset[int], frozenset[str] | None, Factory], ...] = (
    (REDIRECT_STATUS, None, _redirect),
    (frozenset({401, 403}), _PERMISSION_CODES, _permission),
    (frozenset({401, 403}), None, _authentication),
    (frozenset({404}), frozenset({"ContainerNotFound"}), _container_missing),
    (frozenset({404}), None, _missing),
    (frozenset({409}), _EXISTS_CODES, _exists),
    (frozenset({412}), None, _changed),
    (RETRYABLE_STATUS, None, _busy),
)


def error_for(status: int, code: str | None, failure: Failure) -> DataSourceError:
    """The error an Azure Storage answer of ``status`` (with ``code``) means."""
    logger.info(
        "Azure %s of %s failed: HTTP %s %s",
        failure.what,
        repr(failure.path) if failure.path is not None else "the container",
        status,
        code or "",
    )
    for statuses, codes, make in _TABLE:
        if status in statuses and (codes is None or code in codes):
            return make(failure, status)
    return _refused(failure, status)


@contextmanager
def translate(failure: Failure) -> Iterator[None]:
    """Raise the SDK's and the network's failures inside the block as errors of our tree."""
    from azure.core import exceptions as az

    try:
        yield
    except DataSourceError:
        raise
    except az.HttpResponseError as exc:
        status = exc.status_code
        if status is None and isinstance(exc, az.ClientAuthenticationError):
            status = 401  # a credential that could not get a token at all
        raise error_for(status or 0, getattr(exc, "error_code", None), failure) from None
    except (az.ServiceRequestError, az.ServiceResponseError, OSError) as exc:
        logger.info("Azure %s: network error %s", failure.what, type(exc).__name__)
        raise UnavailableError(
            f"Azure Storage cannot be reached for source {failure.source_id!r}."
        ) from None
    except builtins.TimeoutError:
        subject = repr(failure.path) if failure.path is not None else "the container"
        raise TimeoutError(f"The {failure.what} of {subject} timed out.") from None
