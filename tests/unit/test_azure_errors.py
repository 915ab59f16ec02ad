"""One error table for every Azure request: a status and error code mean one thing."""

from __future__ import annotations

import pytest

from datasources.connectors.azure_blob.errors import Failure, error_for
from datasources.errors import (
    AlreadyExistsError,
    AuthenticationError,
    DataSourceError,
    IntegrityError,
    NotFoundError,
    PermissionDeniedError,
    UnavailableError,
)

WHATS = ("listing", "download", "reading metadata", "upload")


@pytest.mark.parametrize("what", WHATS)
@pytest.mark.parametrize(
    ("status", "code", "path", "expected"),
    [
        (403, "AuthorizationPermissionMismatch", "a.csv", PermissionDeniedError),
        (403, "AuthorizationFailure", "a.csv", AuthenticationError),
        (403, None, "a.csv", AuthenticationError),
        (401, "InvalidAuthenticationInfo", None, AuthenticationError),
        (404, "ContainerNotFound", "a.csv", NotFoundError),
        (404, "BlobNotFound", "a.csv", NotFoundError),
        (409, "BlobAlreadyExists", "a.csv", AlreadyExistsError),
        (412, "ConditionNotMet", "a.csv", IntegrityError),
        (302, None, "a.csv", PermissionDeniedError),
        (503, "ServerBusy", "a.csv", UnavailableError),
        (400, "InvalidQueryParameterValue", None, IntegrityError),
        (409, "LeaseIdMissing", "a.csv", IntegrityError),
    ],
)
def test_the_same_answer_means_the_same_error_wherever_it_is_met(
    what: str, status: int, code: str | None, path: str | None, expected: type[DataSourceError]
) -> None:
    error = error_for(status, code, Failure(what, "lake", "account key", path))
    assert type(error) is expected, (what, status, code, error)


def test_messages_name_the_mode_and_the_blob_never_a_secret() -> None:
    denied = error_for(
        403, "AuthorizationPermissionMismatch", Failure("download", "lake", "SAS token", "x/y")
    )
    assert denied.message == "The SAS token of source 'lake' does not allow download."
    missing = error_for(404, "BlobNotFound", Failure("download", "lake", "SAS token", "x/y"))
    assert missing.message == "'x/y' does not exist in source 'lake'."
    container = error_for(404, "ContainerNotFound", Failure("listing", "lake", "SAS token"))
    assert container.message == "The container of source 'lake' does not exist."
