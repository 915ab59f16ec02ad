"""PostgreSQL errors into the error tree: one table, one context manager.

Every driver call runs inside :func:`translate`, which looks the failure up in
:data:`TABLE`: a server error by its SQLSTATE (the exact code, then its class, the first
two characters), a client-side failure by its exception type. Each row gives our error
class and a *fixed* message template.

A server's message can quote the data it choked on (``invalid input syntax for type
integer: "<a cell>"``, ``Key (email)=(alice@x.com)``, a function's ``RAISE EXCEPTION '%',
secret``). So no message, detail, hint or context the server sent reaches our error's
message, details or repr, with one exception: a row marked ``located`` (the class 42
conditions, "syntax error or access rule violation") passes the server's message and its
structured identifiers (``column_name``, ``table_name``, ``schema_name``,
``constraint_name``, ``data_type_name``) when, and only when, the server also sent
``position``: an index into the query text the caller sent, which PostgreSQL sets only
while it parses and analyses that text. Such a message names tokens of the caller's own
query and catalog objects. Without ``position`` a class 42 error can come from data:
``pw::regclass`` says ``relation "<the cell>" does not exist``, ``query_to_xml(pw, …)``
makes a syntax error of a cell, and PL/pgSQL ``RAISE … USING ERRCODE = '42703', COLUMN =
<any value>`` forges both the code and the identifiers (RAISE cannot set ``position``).

Everything else reads "<what happened> (SQLSTATE 22P02 invalid_text_representation)",
the code and its condition name from :mod:`.sqlstates`; a code PostgreSQL does not define
(RAISE can choose one) is not repeated. The server's full text goes to the log at debug
level (through the redacting filter), never higher. The driver's exception stays attached
as ``__context__`` (the chat reads its SQLSTATE class from there) and is suppressed from
tracebacks.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from datasources.connectors.postgresql.sqlstates import CONDITIONS
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

__all__ = ["TABLE", "PrivilegedRole", "Rule", "error_for", "translate"]

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


@dataclass(frozen=True)
class Rule:
    """One row of :data:`TABLE`.

    ``message`` is a :meth:`str.format` template over ``what`` (``"query"``,
    ``"export"``…), ``source`` (the source id, quoted) and ``sqlstate`` (``"SQLSTATE
    22P02 invalid_text_representation"``, or ``"an SQLSTATE PostgreSQL does not
    define"``): nothing the server wrote. ``located``: the server's own message replaces
    the template when it points into the caller's query (see the module's text).
    ``log``: worth an INFO line (the connection or server is at fault, not the query).
    """

    error: type[DataSourceError]
    message: str
    located: bool = False
    log: bool = False


_UNREACHABLE = Rule(UnavailableError, "PostgreSQL cannot be reached for source {source}.", log=True)
_REFUSED = "PostgreSQL refused the {what} ({sqlstate})."

TABLE: dict[str | type[BaseException], Rule] = {
    # Exact SQLSTATEs first (looked up before their class).
    "3D000": Rule(NotFoundError, "The database of source {source} does not exist."),
    "57014": Rule(TimeoutError, "The {what} ran past the statement timeout and was cancelled."),
    "25006": Rule(
        ReadOnlyViolation, "The server refused it: the transaction is read-only ({sqlstate})."
    ),
    "25001": Rule(
        ReadOnlyViolation, "The server refused it: it cannot run in a transaction ({sqlstate})."
    ),
    "57P01": _UNREACHABLE,  # admin_shutdown
    "57P02": _UNREACHABLE,  # crash_shutdown
    "57P03": _UNREACHABLE,  # cannot_connect_now
    "53300": Rule(
        UnavailableError,
        "PostgreSQL has no connection left for source {source} "
        "(its max_connections is reached); try again.",
    ),
    "42501": Rule(
        PermissionDeniedError, "PostgreSQL refused the {what}: permission denied ({sqlstate})."
    ),
    "42P01": Rule(
        NotFoundError, "The {what} names a relation that does not exist ({sqlstate}).", located=True
    ),
    # Classes.
    "08": _UNREACHABLE,  # connection_exception
    "28": Rule(AuthenticationError, "PostgreSQL rejected the credentials of source {source}."),
    "42": Rule(InvalidInputError, _REFUSED, located=True),
    "22": Rule(
        InvalidInputError, "A value in the {what} could not be converted or computed ({sqlstate})."
    ),
    "23": Rule(InvalidInputError, "The {what} broke an integrity constraint ({sqlstate})."),
    "P0": Rule(
        InvalidInputError, "A function the {what} calls raised an error ({sqlstate}).", log=True
    ),
    "XX": Rule(
        InvalidInputError, "PostgreSQL failed internally on the {what} ({sqlstate}).", log=True
    ),
    # Client-side failures, by exception type (the nearest base class decides).
    asyncpg.InternalClientError: Rule(
        InvalidInputError,
        "The {what} returns a value the driver cannot read; cast that column to text.",
    ),
    asyncpg.exceptions.UnsupportedClientFeatureError: Rule(
        InvalidInputError,
        "The {what} returns a value the driver cannot read; cast that column to text.",
    ),
    ConnectionError: _UNREACHABLE,
    asyncpg.InterfaceError: _UNREACHABLE,
    OSError: _UNREACHABLE,
    builtins.TimeoutError: _UNREACHABLE,
}
"""The one translation table: SQLSTATE, SQLSTATE class or exception type → :class:`Rule`."""

_SERVER_DEFAULT = Rule(InvalidInputError, _REFUSED, log=True)
"""Any other server error: a fixed text and the SQLSTATE."""

_IDENTIFIERS = ("column_name", "table_name", "schema_name", "constraint_name", "data_type_name")
_MAX_SERVER_TEXT = 300


def _sqlstate(exc: BaseException) -> str | None:
    if not isinstance(exc, asyncpg.PostgresError):
        return None
    code = getattr(exc, "sqlstate", None)
    return code if isinstance(code, str) and len(code) == 5 else None


def _rule(exc: BaseException, code: str | None) -> Rule | None:
    if code is not None:
        return TABLE.get(code) or TABLE.get(code[:2]) or _SERVER_DEFAULT
    for kind in type(exc).__mro__:
        rule = TABLE.get(kind)
        if rule is not None:
            return rule
    return None


def _named(code: str | None) -> str:
    """``SQLSTATE 22P02 invalid_text_representation``: only codes PostgreSQL defines."""
    if code is None:
        return "no SQLSTATE"
    name = CONDITIONS.get(code)
    if name is None:
        return "an SQLSTATE PostgreSQL does not define"
    return f"SQLSTATE {code} {name}"


def _position(exc: BaseException) -> int | None:
    """The error's cursor in the caller's query text (sent only by parse analysis)."""
    raw = getattr(exc, "position", None)
    try:
        return int(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def error_for(exc: BaseException, what: str, source_id: str) -> DataSourceError | None:
    """The error of our tree a driver or network exception becomes (None: not ours)."""
    code = _sqlstate(exc)
    rule = _rule(exc, code)
    if rule is None:
        return None
    if code is not None:
        # The whole text, detail and hint included, for the operator; never above DEBUG.
        fields = exc.as_dict() if isinstance(exc, asyncpg.PostgresError) else {}
        logger.debug("PostgreSQL %s failed (SQLSTATE %s): %r", what, code, fields)
    if rule.log:
        logger.info("PostgreSQL %s failed: %s (%s)", what, type(exc).__name__, _named(code))
    named = _named(code)
    details: dict[str, Any] = {}
    if code is not None and code in CONDITIONS:
        details = {"sqlstate": code, "condition": CONDITIONS[code]}
    position = _position(exc)
    if rule.located and position is not None:
        server = str(getattr(exc, "message", "") or "")[:_MAX_SERVER_TEXT]
        message = f"PostgreSQL refused the {what}: {server} ({named}, at character {position})."
        details["position"] = position
        for field in _IDENTIFIERS:
            value = getattr(exc, field, None)
            if isinstance(value, str) and value:
                details[field] = value[:_MAX_SERVER_TEXT]
    else:
        message = rule.message.format(what=what, source=repr(source_id), sqlstate=named)
    return rule.error(message, details=details)


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
