"""The parser layer of read-only SQL: what may reach a database at all.

:func:`check_read_only` parses one PostgreSQL statement with ``sqlglot`` and accepts
only ``SELECT`` / ``WITH … SELECT`` / set operations, ``VALUES``, ``TABLE``, ``SHOW`` and
``EXPLAIN`` without ``ANALYZE``. It refuses anything that writes (anywhere in the tree,
data-modifying CTEs included), ``SELECT … INTO``, row locks, and calls to functions with
side effects or file/network access. It is the first of several independent layers; the
connection, the transaction and the role stop what a parser misses.
"""

from __future__ import annotations

import re
from functools import lru_cache

from datasources.errors import InvalidInputError

__all__ = ["DENIED_FUNCTIONS", "ReadOnlyViolation", "check_read_only"]


class ReadOnlyViolation(InvalidInputError):
    """The statement could change data, or is not a single read-only statement."""

    code = "read_only_violation"
    default_message = "Only a single read-only statement is allowed."


# Exact names and prefixes (ending in '*') of functions that write, touch files, the
# network, other sessions or server state.
DENIED_FUNCTIONS = (
    "pg_read_file",
    "pg_read_binary_file",
    "pg_ls_*",
    "pg_stat_file",
    "lo_*",
    "dblink*",
    "set_config",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "query_to_xml*",
    "table_to_xml*",
    "database_to_xml*",
    "schema_to_xml*",
    "cursor_to_xml*",
    "pg_advisory*",
    "pg_try_advisory*",
    "txid_current",
    "pg_current_xact_id",
    "nextval",
    "setval",
    "pg_import_system_collations",
    "pg_sleep*",
    "pg_file_*",
    "pg_logdir_ls",
    "pg_create_*",
    "pg_drop_*",
    "pg_replication_*",
    "pg_promote",
    "pg_switch_wal",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_backup_*",
    "pg_notify",
    "pg_log_backend_memory_contexts",
    "binary_upgrade_*",
    "copy_*",
    "http*",
)

_DENIED_EXACT = frozenset(n for n in DENIED_FUNCTIONS if not n.endswith("*"))
_DENIED_PREFIXES = tuple(n[:-1] for n in DENIED_FUNCTIONS if n.endswith("*"))
_EXPLAIN_RE = re.compile(r"^\s*explain\b", re.IGNORECASE)
_SHOW_RE = re.compile(r"^\s*show\s+[a-z_][a-z0-9_.]*\s*;?\s*$", re.IGNORECASE)
_EXPLAIN_OPTIONS_RE = re.compile(
    r"^\s*explain\s*(?:\((?P<options>[^)]*)\))?\s*(?P<words>(?:(?:verbose|costs|buffers|"
    r"format\s+\w+|settings|summary|timing|wal|generic_plan|analy[sz]e)\s+)*)",
    re.IGNORECASE,
)


def _denied(name: str) -> bool:
    lowered = name.lower()
    return lowered in _DENIED_EXACT or lowered.startswith(_DENIED_PREFIXES)


def check_read_only(sql: str) -> str:
    """Accept one read-only statement and return it; raise :class:`ReadOnlyViolation`.

    Verdicts are cached by statement text: an assistant re-runs the same parameterised
    lookups, and parsing costs far more than the query itself.
    """
    if not isinstance(sql, str):
        raise ReadOnlyViolation("The query must be text.")
    problem = _verdict(sql)
    if problem is not None:
        raise ReadOnlyViolation(problem)
    return sql


@lru_cache(maxsize=2048)
def _verdict(sql: str) -> str | None:
    try:
        _check(sql)
    except ReadOnlyViolation as exc:
        return exc.message
    return None


def _check(sql: str) -> None:
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import ParseError, TokenError

    if not sql.strip():
        raise ReadOnlyViolation("The query is empty.")
    if "\x00" in sql:
        raise ReadOnlyViolation("The query contains a NUL character.")
    if _SHOW_RE.match(sql):
        return
    if _EXPLAIN_RE.match(sql):
        match = _EXPLAIN_OPTIONS_RE.match(sql)
        assert match is not None
        options = (match.group("options") or "") + " " + (match.group("words") or "")
        if re.search(r"\banaly[sz]e\b", options, re.IGNORECASE) and not re.search(
            r"\banaly[sz]e\s+(false|off|0)\b", options, re.IGNORECASE
        ):
            raise ReadOnlyViolation("EXPLAIN ANALYZE runs the statement; use EXPLAIN alone.")
        _check(sql[match.end() :])
        return
    try:
        statements = [s for s in sqlglot.parse(sql, read="postgres") if s is not None]
    except (ParseError, TokenError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else "unparseable SQL"
        raise ReadOnlyViolation(f"The query could not be parsed: {first[:300]}") from None
    if len(statements) != 1:
        raise ReadOnlyViolation(f"Exactly one statement is allowed, not {len(statements)}.")
    statement = statements[0]
    allowed_roots = (exp.Select, exp.SetOperation, exp.Values, exp.Subquery)
    if not isinstance(statement, allowed_roots):
        kind = statement.key.upper() if statement.key else type(statement).__name__
        raise ReadOnlyViolation(
            f"Only SELECT, VALUES, TABLE, SHOW and EXPLAIN are allowed, not {kind}."
        )
    writes = (
        exp.Insert,
        exp.Update,
        exp.Delete,
        exp.Merge,
        exp.Create,
        exp.Drop,
        exp.Alter,
        exp.Command,
        exp.Copy,
        exp.Set,
        exp.Transaction,
        exp.Commit,
        exp.Rollback,
        exp.Into,
        exp.Lock,
        exp.TruncateTable,
    )
    for node in statement.walk():
        if isinstance(node, writes):
            what = "SELECT … INTO" if isinstance(node, exp.Into) else node.key.upper()
            if isinstance(node, exp.Lock):
                what = "FOR UPDATE/SHARE"
            raise ReadOnlyViolation(f"The query contains {what}, which is not read-only.")
        if isinstance(node, exp.Func):
            name = node.name if isinstance(node, exp.Anonymous) else node.sql_name()
            if name and _denied(name):
                raise ReadOnlyViolation(f"The function {name.lower()}() is not allowed.")
