"""What of a chat's data a language model may see: the disclosure rules of the assistant.

What reaches the model: schemas and column profiles by default; raw rows (query results,
previews, code output) only from sources whose config sets ``share_samples_with_llm``.
For a source that does not share, what reaches the model is only what the service
itself decided, from a fixed vocabulary — never a string produced by sandboxed code or
by model-written SQL running over the data, never an exact count:

- tool errors carry our error code (a ``DataSourceError`` class attribute), the
  SQLSTATE's two-character class with a fixed description, or a builtin exception name;
  never a message (a server message can quote a value: ``invalid input syntax for type
  integer: "…"``), never the full SQLSTATE (which the SQL can steer among hundreds);
- ``profile`` is for tables only (catalog facts of the owner's schema, through an
  allow-list of fields); a profile of arbitrary SQL is refused;
- ``run_sql`` returns the statement's result columns and types (fixed by the SQL, not
  the data) and a bucketed row count (:data:`BUCKETS`);
- once any non-sharing source has data in the chat's workspace, what ``run_python``
  returns is ok / timed out, an error class from :data:`ERROR_CLASSES` (else
  ``Exception``), and bucketed sizes: how much text, how many tables and rows, how many
  images. No names, paths, column names or exact lengths. The user still sees all of it.

What is left is a few bits per tool call (the choice among those fixed answers), and tool
calls are bounded per message by ``llm_max_steps``: docs/security.md gives the numbers.

Everything that comes from data — column names, cell values, blob names and metadata —
is wrapped in ``<data>`` tags and the system prompt says that what is inside is data,
never instructions.
"""

from __future__ import annotations

import builtins
import json
from typing import Any

from datasources.errors import DataSourceError
from datasources.sandbox.session import Execution

__all__ = [
    "BUCKETS",
    "COLUMN_FIELDS",
    "ERROR_CLASSES",
    "NOT_SHARED",
    "PROFILE_FIELDS",
    "WITHHELD",
    "as_data",
    "bucket",
    "error_for_model",
    "reduced_output",
]

_RESULT_CHARS = 8000

PROFILE_FIELDS = frozenset({"subject", "method", "estimated_rows", "sampled_rows"})
COLUMN_FIELDS = frozenset({"name", "type", "null_fraction", "distinct_estimate"})
WITHHELD = "withheld: this source does not share rows with the model"

BUCKETS = ("0", "1-9", "10-99", "100-999", "1000+")
"""The only sizes the model learns of non-sharing data: an order of magnitude."""

ERROR_CLASSES = frozenset(
    {
        name
        for name, value in vars(builtins).items()
        if isinstance(value, type) and issubclass(value, BaseException)
    }
    # The names the sandbox session itself gives to failures it reports.
    | {"Timeout", "SessionDied", "SessionGone", "DisplayError"}
)
"""Exception names the model may see from code over non-sharing data; others: ``Exception``.

Sandboxed code can define a class with any name (``type('E_' + secret, ...)``): only a
name from this fixed vocabulary is passed on."""

# PostgreSQL's SQLSTATE classes (errcodes.txt): the model learns which class a failure
# is in, never the full code (which the SQL can steer among some 250) nor its message.
_SQLSTATE_CLASSES = {
    "01": "warning", "02": "no data", "03": "SQL statement not yet complete",
    "08": "connection exception", "09": "triggered action exception",
    "0A": "feature not supported", "0B": "invalid transaction initiation",
    "0F": "locator exception", "0L": "invalid grantor", "0P": "invalid role specification",
    "0Z": "diagnostics exception", "20": "case not found", "21": "cardinality violation",
    "22": "data exception", "23": "integrity constraint violation",
    "24": "invalid cursor state", "25": "invalid transaction state",
    "26": "invalid SQL statement name", "27": "triggered data change violation",
    "28": "invalid authorization specification", "2B": "dependent privilege descriptors",
    "2D": "invalid transaction termination", "2F": "SQL routine exception",
    "34": "invalid cursor name", "38": "external routine exception",
    "39": "external routine invocation exception", "3B": "savepoint exception",
    "3D": "invalid catalog name", "3F": "invalid schema name",
    "40": "transaction rollback", "42": "syntax error or access rule violation",
    "44": "WITH CHECK OPTION violation", "53": "insufficient resources",
    "54": "program limit exceeded", "55": "object not in prerequisite state",
    "57": "operator intervention (e.g. statement timeout)", "58": "system error",
    "72": "snapshot failure", "F0": "configuration file error",
    "HV": "foreign data wrapper error", "P0": "PL/pgSQL error", "XX": "internal error",
}  # fmt: skip


# A refusal the service decides before touching data: its words are fixed, so the model
# reads them (the answer is a tool result, not an error of the error tree: it never
# reaches the HTTP API).
NOT_SHARED = json.dumps(
    {
        "error": "not_shared",
        "message": "This source does not share its data with you: profile takes a table "
        "('schema.table') here, not SQL. Profile a table, or fetch the query and analyse "
        "it with run_python (its output goes to the user, reduced for you to its shape).",
    }
)


def bucket(n: int, *, top: int = 1000) -> str:
    """``n`` as an order of magnitude from :data:`BUCKETS`, the last one ``f"{top}+"``."""
    if n <= 0:
        return "0"
    if n >= top:
        return f"{top}+"
    return BUCKETS[min(len(str(n)), len(BUCKETS) - 1)]


def _known_codes() -> set[str]:
    """Every ``code`` our error classes declare: the vocabulary of error codes."""
    codes: set[str] = set()
    stack: list[type[DataSourceError]] = [DataSourceError]
    while stack:
        cls = stack.pop()
        codes.add(cls.code)
        stack.extend(cls.__subclasses__())
    return codes


def _driver_error(exc: BaseException) -> BaseException | None:
    """The driver's own exception behind ``exc`` (kept as its cause or context)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current is not exc and not isinstance(current, DataSourceError):
            return current
        current = current.__cause__ or current.__context__
    return None


def error_for_model(exc: BaseException, *, private: bool) -> str:
    """A tool error as the model sees it; for a private source, fixed words only.

    A non-sharing source's errors keep our error code (a class attribute), the SQLSTATE's
    class with its fixed description, and a builtin exception name; every message is
    dropped (server messages can quote the values they choke on).
    """
    if not private:
        if isinstance(exc, DataSourceError):
            return json.dumps({"error": exc.code, "message": exc.message})
        return json.dumps({"error": "bad_arguments", "message": str(exc)[:300]})
    out: dict[str, Any] = {}
    if isinstance(exc, DataSourceError):
        code = type(exc).code  # the class's, never an attribute set on the instance
        out["error"] = code if code in _known_codes() else "error"
    else:
        out["error"] = "bad_arguments"
        out["error_class"] = _error_class(type(exc).__name__)
    driver = _driver_error(exc)
    sqlstate = getattr(driver, "sqlstate", None) if driver is not None else None
    if isinstance(sqlstate, str) and sqlstate[:2] in _SQLSTATE_CLASSES:
        out["sqlstate_class"] = sqlstate[:2]
        out["sqlstate_class_means"] = _SQLSTATE_CLASSES[sqlstate[:2]]
    out["message"] = "withheld: this source does not share its data (or error text) with you"
    return json.dumps(out)


def _error_class(name: str | None) -> str:
    return name if name in ERROR_CLASSES else "Exception"


def reduced_output(result: Execution) -> dict[str, Any]:
    """What the model may know of code output built from non-sharing data.

    Only what the service decides: ok / timed out, an error class from a fixed
    vocabulary, and sizes as orders of magnitude. Nothing the code chose as a string
    (column names, exception names, paths, text) and no exact size passes.
    """
    chars = tables = rows = images = 0
    error: str | None = None
    for part in result.parts:
        if part.type == "error":
            error = _error_class(part.name)  # the last one: a timeout is reported last
        elif part.type == "table":
            tables += 1
            data = part.data.get("rows") if isinstance(part.data, dict) else None
            rows += len(data) if isinstance(data, list) else 0
        elif part.type == "image":
            images += 1
        elif part.text is not None:
            chars += len(part.text)
    out: dict[str, Any] = {"ok": result.ok, "timed_out": result.timed_out}
    if error is not None:
        out["error_class"] = error
    out["output"] = {
        "text_chars": bucket(chars),
        "tables": bucket(tables),
        "table_rows": bucket(rows),
        "images": bucket(images),
    }
    out["note"] = (
        "output shown to the user, reduced for you to its shape (sizes are orders of "
        "magnitude): data of a source that does not share rows with the model is in this chat"
    )
    return out


def as_data(source: str, value: Any) -> str:
    """``value`` as JSON inside a <data> element; a closing tag inside cannot end it."""
    text = json.dumps(value, default=str, ensure_ascii=False)[:_RESULT_CHARS]
    text = text.replace("</data", "<\\/data")
    return f'<data source="{source}">{text}</data>'
