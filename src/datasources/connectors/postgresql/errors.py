"""PostgreSQL errors into the error tree: one table, one context manager.

The table is read top to bottom; the first row whose driver exceptions match decides
the error the caller sees. Connection-class failures come before the generic server
error, so a connection closed mid-statement reads as ``unavailable`` (try again), not as
a refused statement. The driver's exception stays attached as ``__context__`` (the chat
reads its SQLSTATE class from there) and never as the message of a connection error.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import asyncpg

from datasources.errors import (
    AuthenticationError,
    DataSourceError,
    InvalidInputError,
    NotFoundError,
    PermissionDeniedError,
    TimeoutError,
    UnavailableError,
)
from datasources.sql_guard import ReadOnlyViolation

__all__ = ["PrivilegedRole", "translate"]

logger = logging.getLogger("datasources.connectors.postgresql")

# What a server restart, a failover or a dropped connection looks like to the client. A
# connection that fails like this is gone, and most likely so is every other one the pool
# holds: they are discarded together (asyncpg's expire_connections), not one per query.
DROPPED_CONNECTION: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # class 08: the connection does not exist, failed…
    asyncpg.AdminShutdownError,  # 57P01: the server is shutting down
    asyncpg.CrashShutdownError,  # 57P02
    asyncpg.CannotConnectNowError,  # 57P03: the server is starting up
    ConnectionError,  # reset, refused, aborted, broken pipe
)


def dropped(exc: BaseException, conn: Any = None) -> bool:
    """Whether ``exc`` means the connection (and likely its pool's others) is gone."""
    if isinstance(exc, DROPPED_CONNECTION):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and conn is not None:
        try:
            return bool(conn.is_closed())
        except asyncpg.InterfaceError:  # a proxy already handed back
            return True
    return False


class PrivilegedRole(PermissionDeniedError):
    """The source's role can do more than read; the operator has not allowed that."""

    code = "privileged_role"
    default_message = "The database role of this source is privileged."


def _server_text(exc: BaseException) -> str:
    return str(exc.args[0]) if exc.args else str(exc)


Rule = tuple[
    tuple[type[BaseException], ...], Callable[[BaseException, str, str], DataSourceError], bool
]
"""(driver exceptions, what they become given (exc, what, source id), log it)."""

_TABLE: tuple[Rule, ...] = (
    (
        (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError),
        lambda exc, what, source: AuthenticationError(
            f"PostgreSQL rejected the credentials of source {source!r}."
        ),
        False,
    ),
    (
        (asyncpg.InvalidCatalogNameError,),
        lambda exc, what, source: NotFoundError(
            f"The database of source {source!r} does not exist."
        ),
        False,
    ),
    (
        (asyncpg.QueryCanceledError,),
        lambda exc, what, source: TimeoutError(
            f"The {what} ran past the statement timeout and was cancelled."
        ),
        False,
    ),
    (
        (asyncpg.ReadOnlySQLTransactionError, asyncpg.ActiveSQLTransactionError),
        lambda exc, what, source: ReadOnlyViolation(f"The server refused it: {_server_text(exc)}"),
        False,
    ),
    (
        DROPPED_CONNECTION,
        lambda exc, what, source: UnavailableError(
            f"PostgreSQL cannot be reached for source {source!r}."
        ),
        True,
    ),
    (
        (asyncpg.TooManyConnectionsError,),
        lambda exc, what, source: UnavailableError(
            f"PostgreSQL has no connection left for source {source!r} "
            "(its max_connections is reached); try again."
        ),
        False,
    ),
    (
        (asyncpg.InsufficientPrivilegeError,),
        lambda exc, what, source: PermissionDeniedError(f"PostgreSQL refused the {what}: {exc}"),
        False,
    ),
    (
        (asyncpg.UndefinedTableError,),
        lambda exc, what, source: NotFoundError(str(exc)),
        False,
    ),
    (
        (
            asyncpg.PostgresSyntaxError,
            asyncpg.DataError,
            asyncpg.UndefinedColumnError,
            asyncpg.UndefinedFunctionError,
            asyncpg.WrongObjectTypeError,
        ),
        lambda exc, what, source: InvalidInputError(f"PostgreSQL refused the {what}: {exc}"),
        False,
    ),
    (
        (asyncpg.PostgresError,),
        lambda exc, what, source: InvalidInputError(f"PostgreSQL refused the {what}: {exc}"),
        True,
    ),
    (
        # The driver cannot read a column's type (a record of some built-in types).
        (asyncpg.InternalClientError, asyncpg.exceptions.UnsupportedClientFeatureError),
        lambda exc, what, source: InvalidInputError(
            f"The {what} returns a value the driver cannot read; cast that column to text."
        ),
        False,
    ),
    (
        (asyncpg.InterfaceError, OSError, builtins.TimeoutError),
        lambda exc, what, source: UnavailableError(
            f"PostgreSQL cannot be reached for source {source!r}."
        ),
        True,
    ),
)


def error_for(exc: BaseException, what: str, source_id: str) -> DataSourceError | None:
    """The error of our tree a driver or network exception becomes (None: not ours)."""
    for kinds, make, log in _TABLE:
        if isinstance(exc, kinds):
            if log:
                logger.info("PostgreSQL %s failed: %s", what, type(exc).__name__)
            return make(exc, what, source_id)
    return None


@contextmanager
def translate(what: str, source_id: str) -> Iterator[None]:
    """Raise driver and network failures inside the block as errors of our tree."""
    try:
        yield
    except DataSourceError:
        raise
    except Exception as exc:
        error = error_for(exc, what, source_id)
        if error is None:
            raise
        raise error from None
