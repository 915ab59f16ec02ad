"""Read-only SQL, decided with PostgreSQL's own grammar and the server's own catalog.

Two layers live here; the connector adds the server's (one statement per Parse, a
``READ ONLY`` transaction, a least-privilege role):

1. **The statement** (:func:`check_read_only`). The text is parsed by libpg_query — the
   server's own parser, through ``pglast`` — so identifiers, ``U&"…"`` escapes, comments,
   dollar quotes and ``EXPLAIN`` option lists mean exactly what they mean to the server.
   Accepted: exactly one ``SELECT`` / ``VALUES`` / ``TABLE`` / ``SHOW``, or ``EXPLAIN`` of
   one of those without ``ANALYZE`` (option values read as the server's
   ``defGetBoolean`` reads them); anywhere in the tree no ``INTO``, no locking clause and no
   data-modifying statement (CTEs included).

2. **The catalog** (:class:`Catalog`). Every name through which PostgreSQL can call a
   function is collected from the parse tree — calls, attribute notation (``x.f`` and
   ``(x).f`` are ``f(x)``), operators, casts, ``TABLESAMPLE`` methods — and judged
   against ``pg_proc`` of the connected server by **allow-list**: immutable and stable
   functions pass, plus a short reviewed list of volatile but harmless ones; functions
   that run SQL text or read tables by name are refused whatever their volatility, and so
   are ``SECURITY DEFINER`` functions outside ``pg_catalog``. A name is judged by *every*
   function that bears it (all schemas when unqualified, all overloads), so no choice of
   ``search_path``, schema, overload or spelling can steer the server to a function that
   was not judged; a name the catalog does not know is refused. Every relation a statement
   reads is resolved as the server resolves it (schema given, else the first schema of
   the search path holding it; CTE names shadow relations in their scope) and must lie in
   the source's ``schemas`` allow-list.

Why the parse tree and the catalog rather than the server's plan: the plan is only known
after the server has planned — and planning already runs immutable functions
(constant folding) — and ``EXPLAIN`` prints expressions as text that would have to be
parsed again. The tree names every place a function can be called from, by node type,
and the catalog names every function a name can reach; together they decide before
anything runs. What the tree cannot show (implicit casts, a type's own I/O and comparison
functions) are created only by roles that can create types and casts, and the
read-only transaction and the role stop any write they could attempt.

Length: both layers walk the same parse tree, and every node type that can call a
function must be seen by both; kept in one module so that no call site is known to one
and missed by the other.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from datasources.errors import InvalidInputError, PermissionDeniedError

__all__ = [
    "CATALOG_SQL",
    "HARMLESS_VOLATILE",
    "SQL_TEXT_FUNCTIONS",
    "Catalog",
    "ReadOnlyViolation",
    "SchemaNotAllowed",
    "Statement",
    "analyse",
    "check_read_only",
    "parameter_spans",
]

MAX_SQL_CHARS = 256 * 1024
"""Longer statements are refused before parsing: parsing is CPU-bound work."""


class ReadOnlyViolation(InvalidInputError):
    """The statement could change data, or is not a single read-only statement."""

    code = "read_only_violation"
    default_message = "Only a single read-only statement is allowed."


class SchemaNotAllowed(PermissionDeniedError):
    """The statement reads a relation outside the source's ``schemas`` allow-list."""

    code = "schema_not_allowed"
    default_message = "The statement reads a schema this source does not allow."


# Volatile functions of pg_catalog reviewed as harmless: they read clocks, random numbers
# or sizes, and change nothing anywhere. Everything else volatile is refused.
HARMLESS_VOLATILE = frozenset(
    {
        "random",
        "random_normal",
        "clock_timestamp",
        "timeofday",
        "gen_random_uuid",
        "uuidv4",
        "uuidv7",
        "pg_relation_size",
        "pg_total_relation_size",
        "pg_table_size",
        "pg_indexes_size",
        "pg_database_size",
        "pg_tablespace_size",
        # Reads of the session's, the catalog's or the server's own state.
        "currval",
        "lastval",
        "pg_xact_status",
        "pg_stat_have_stats",
        "pg_partition_tree",
        "pg_partition_ancestors",
        "pg_notification_queue_usage",
        "pg_control_checkpoint",
        "pg_control_init",
        "pg_control_recovery",
        "pg_control_system",
        "amvalidate",
        "pg_stat_get_xact_blocks_fetched",
        "pg_stat_get_xact_blocks_hit",
        "pg_stat_get_xact_function_calls",
        "pg_stat_get_xact_function_self_time",
        "pg_stat_get_xact_function_total_time",
        "pg_stat_get_xact_numscans",
        "pg_stat_get_xact_tuples_deleted",
        "pg_stat_get_xact_tuples_fetched",
        "pg_stat_get_xact_tuples_hot_updated",
        "pg_stat_get_xact_tuples_inserted",
        "pg_stat_get_xact_tuples_newpage_updated",
        "pg_stat_get_xact_tuples_returned",
        "pg_stat_get_xact_tuples_updated",
        # TABLESAMPLE SYSTEM / BERNOULLI: the sampling methods' handlers.
        "system",
        "bernoulli",
    }
)

# Functions of pg_catalog refused whatever their volatility: they run SQL text the
# guard never sees, read whole tables or schemas or rows by name (past the schema
# allow-list), assign a transaction id (a write), or expose other transactions' ids.
SQL_TEXT_FUNCTIONS = frozenset(
    {
        "ts_stat",
        "ts_rewrite",
        "query_to_xml",
        "query_to_xmlschema",
        "query_to_xml_and_xmlschema",
        "cursor_to_xml",
        "cursor_to_xmlschema",
        "table_to_xml",
        "table_to_xmlschema",
        "table_to_xml_and_xmlschema",
        "schema_to_xml",
        "schema_to_xmlschema",
        "schema_to_xml_and_xmlschema",
        "database_to_xml",
        "database_to_xmlschema",
        "database_to_xml_and_xmlschema",
        "currtid2",
        "txid_current",
        "txid_current_if_assigned",
        "pg_current_xact_id",
        "pg_current_xact_id_if_assigned",
        "txid_current_snapshot",
        "txid_snapshot_xip",
        "txid_snapshot_xmax",
        "txid_snapshot_xmin",
        "txid_visible_in_snapshot",
        "txid_status",
        "pg_current_snapshot",
        "pg_snapshot_xip",
        "pg_snapshot_xmax",
        "pg_snapshot_xmin",
        "pg_visible_in_snapshot",
    }
)

_WRITES = {
    "InsertStmt": "INSERT",
    "UpdateStmt": "UPDATE",
    "DeleteStmt": "DELETE",
    "MergeStmt": "MERGE",
}
_EXPLAIN_OPTIONS = frozenset(
    {
        "analyze",
        "verbose",
        "costs",
        "settings",
        "generic_plan",
        "buffers",
        "wal",
        "timing",
        "summary",
        "memory",
        "serialize",
        "format",
    }
)
# BETWEEN and its variants are rewritten by the server to these comparisons.
_BETWEEN_OPERATORS = ("<", ">", "<=", ">=")

Name = tuple[str | None, str]
"""``(schema or None, name)`` as the server reads it."""


@dataclass(frozen=True)
class Statement:
    """What one parsed statement is and every name in it that reaches the catalog.

    ``problem`` is the parser layer's verdict (None: a single plain read); the name sets
    are what the catalog layer judges.
    """

    problem: str | None
    functions: frozenset[Name] = frozenset()
    attributes: frozenset[str] = frozenset()
    operators: frozenset[Name] = frozenset()
    casts: frozenset[Name] = frozenset()
    relations: frozenset[Name] = frozenset()


def check_read_only(sql: str) -> str:
    """Accept one read-only statement and return it; raise :class:`ReadOnlyViolation`.

    This is the parser layer alone; :class:`Catalog` judges the names in it.
    """
    statement = analyse(sql)
    if statement.problem is not None:
        raise ReadOnlyViolation(statement.problem)
    return sql


def analyse(sql: str) -> Statement:
    """Parse ``sql`` and collect its names; raise :class:`ReadOnlyViolation` if unparseable.

    Results are cached by statement text: an assistant re-runs the same statements.
    """
    if not isinstance(sql, str):
        raise ReadOnlyViolation("The query must be text.")
    result = _analyse(sql)
    if isinstance(result, str):
        raise ReadOnlyViolation(result)
    return result


@lru_cache(maxsize=4096)
def _analyse(sql: str) -> Statement | str:
    from pglast import parser

    if not sql.strip():
        return "The query is empty."
    if "\x00" in sql:
        return "The query contains a NUL character."
    if len(sql) > MAX_SQL_CHARS:
        return f"The query is longer than {MAX_SQL_CHARS:,} characters."
    try:
        tree = json.loads(parser.parse_sql_json(sql))
    except parser.ParseError as exc:
        return f"The query could not be parsed: {str(exc)[:300]}"
    except RecursionError:
        return "The query is nested too deeply."
    statements = tree.get("stmts", [])
    if len(statements) != 1:
        return f"Exactly one statement is allowed, not {len(statements)}."
    root = statements[0].get("stmt", {})
    collector = _Collector()
    try:
        problem = _statement_problem(root)
        collector.walk(root, frozenset())
    except RecursionError:
        return "The query is nested too deeply."
    if collector.writes and problem is None:
        problem = f"The query contains {collector.writes[0]}, which is not read-only."
    return Statement(
        problem=problem,
        functions=frozenset(collector.functions),
        attributes=frozenset(collector.attributes),
        operators=frozenset(collector.operators),
        casts=frozenset(collector.casts),
        relations=frozenset(collector.relations),
    )


def _statement_problem(root: Mapping[str, Any]) -> str | None:
    (kind, body), *_ = root.items() if root else (("empty", {}),)
    if kind == "VariableShowStmt":
        return None
    if kind == "ExplainStmt":
        for option in body.get("options", []):
            element = option.get("DefElem", {})
            name = element.get("defname", "")
            if name not in _EXPLAIN_OPTIONS:
                return f"EXPLAIN option {name!r} is not allowed."
            if name == "analyze" and _true(element.get("arg")):
                return "EXPLAIN ANALYZE runs the statement; use EXPLAIN alone."
        inner = body.get("query", {})
        if "SelectStmt" not in inner:
            return "EXPLAIN is allowed only of SELECT, VALUES or TABLE."
        return None
    if kind != "SelectStmt":
        what = kind.removesuffix("Stmt").upper() or "this statement"
        return f"Only SELECT, VALUES, TABLE, SHOW and EXPLAIN are allowed, not {what}."
    return None


def _true(arg: Mapping[str, Any] | None) -> bool:
    """An option value as the server's ``defGetBoolean`` reads it (absent: true).

    Anything but an explicit false counts as true: the server refuses values it cannot
    read, so treating them as true never lets ANALYZE through.
    """
    if arg is None:
        return True
    if "Integer" in arg:
        return int(arg["Integer"].get("ival", 0)) != 0
    if "String" in arg:
        return arg["String"].get("sval", "").lower() not in ("false", "off", "0")
    return True


def _names(items: Iterable[Mapping[str, Any]]) -> list[str]:
    # libpg_query's JSON leaves out empty strings, hence get().
    return [item["String"].get("sval", "") for item in items if "String" in item]


def _qualified(names: Sequence[str]) -> Name:
    # catalog.schema.name: the server requires the catalog to be the current database.
    return (names[-2] if len(names) >= 2 else None, names[-1])


@dataclass
class _Collector:
    """Walks a parse tree (libpg_query's JSON form) collecting names by node type."""

    functions: set[Name] = field(default_factory=set)
    attributes: set[str] = field(default_factory=set)
    operators: set[Name] = field(default_factory=set)
    casts: set[Name] = field(default_factory=set)
    relations: set[Name] = field(default_factory=set)
    writes: list[str] = field(default_factory=list)

    def walk(self, node: Any, ctes: frozenset[str]) -> None:
        if isinstance(node, list):
            for item in node:
                self.walk(item, ctes)
            return
        if not isinstance(node, dict):
            return
        for kind, body in node.items():
            if not isinstance(body, dict):
                self.walk(body, ctes)
                continue
            self._visit(kind, body, ctes)

    def _visit(self, kind: str, body: dict[str, Any], ctes: frozenset[str]) -> None:
        if kind in _WRITES:
            self.writes.append(_WRITES[kind])
        elif kind == "SelectStmt":
            if body.get("intoClause"):
                self.writes.append("SELECT … INTO")
            if body.get("lockingClause"):
                self.writes.append("a locking clause (FOR UPDATE/SHARE)")
            with_clause = body.get("withClause")
            if with_clause is not None:
                ctes = self._with(with_clause.get("WithClause", with_clause), ctes)
                body = {k: v for k, v in body.items() if k != "withClause"}
            body = {k: v for k, v in body.items() if k != "intoClause"}
        elif kind == "RangeVar":
            names = [n for n in (body.get("schemaname"), body.get("relname")) if n]
            if body.get("schemaname") is None and body.get("relname") in ctes:
                return  # a CTE of an enclosing WITH, not a relation
            self.relations.add(_qualified(names))
            return
        elif kind == "FuncCall":
            self.functions.add(_qualified(_names(body.get("funcname", []))))
        elif kind == "RangeTableSample":
            self.functions.add(_qualified(_names(body.get("method", []))))
        elif kind == "ColumnRef":
            fields = body.get("fields", [])
            if len(fields) >= 2 and "String" in fields[-1]:
                self.attributes.add(fields[-1]["String"].get("sval", ""))
            return
        elif kind == "A_Indirection":
            for item in body.get("indirection", []):
                if "String" in item:
                    self.attributes.add(item["String"].get("sval", ""))
        elif kind == "A_Expr":
            names = _names(body.get("name", []))
            if "BETWEEN" in body.get("kind", ""):
                self.operators.update((None, op) for op in _BETWEEN_OPERATORS)
            elif names:
                self.operators.add(_qualified(names))
        elif kind == "SortBy":
            names = _names(body.get("useOp", []))
            if names:
                self.operators.add(_qualified(names))
        elif kind == "SubLink":
            names = _names(body.get("operName", []))
            if names:
                self.operators.add(_qualified(names))
        elif kind == "CaseExpr" and body.get("arg") is not None:
            self.operators.add((None, "="))  # CASE x WHEN y compares with =
        elif kind == "TypeCast":
            type_name = body.get("typeName", {})
            names = _names(type_name.get("names", []))
            if names:
                self.casts.add(_qualified(names))
        self.walk(list(body.values()), ctes)

    def _with(self, clause: Mapping[str, Any], outer: frozenset[str]) -> frozenset[str]:
        """Walk the CTEs with the names each can see; return the names the body sees."""
        entries = [c.get("CommonTableExpr", {}) for c in clause.get("ctes", [])]
        names = [e.get("ctename", "") for e in entries]
        everything = outer | frozenset(names)
        recursive = bool(clause.get("recursive"))
        for index, entry in enumerate(entries):
            visible = everything if recursive else outer | frozenset(names[:index])
            self.walk(entry.get("ctequery"), visible)
        return everything


def parameter_spans(sql: str) -> list[tuple[int, int, int]]:
    """``(start, end, number)`` of every ``$n`` parameter, found by the server's scanner.

    The scanner tells parameters from look-alikes inside strings, dollar quotes and
    comments, which a regular expression cannot. ``end`` is exclusive.
    """
    from pglast import parser

    try:
        tokens = parser.scan(sql)
    except parser.ParseError as exc:
        raise InvalidInputError(f"The statement could not be tokenized: {exc}") from None
    spans = []
    for token in tokens:
        if token.name == "PARAM":
            text = sql[token.start : token.end + 1]
            spans.append((token.start, token.end + 1, int(text[1:])))
    return spans


# -- the catalog layer ---------------------------------------------------------------

CATALOG_SQL = """
SELECT p.oid::int8 AS oid, n.nspname AS schema, p.proname AS name,
       p.provolatile::text AS volatility, p.prokind::text AS kind,
       p.prosecdef AS definer, p.pronargs::int AS nargs
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
"""
OPERATORS_SQL = """
SELECT n.nspname AS schema, o.oprname AS name, o.oprcode::oid::int8 AS function
FROM pg_operator o JOIN pg_namespace n ON n.oid = o.oprnamespace
"""
CASTS_SQL = """
SELECT n.nspname AS schema, t.typname AS name, c.castfunc::int8 AS function
FROM pg_cast c JOIN pg_type t ON t.oid = c.casttarget
JOIN pg_namespace n ON n.oid = t.typnamespace
WHERE c.castfunc <> 0
"""
RELATIONS_SQL = """
SELECT n.nspname AS schema, c.relname AS name
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
"""
TYPES_SQL = """
SELECT n.nspname AS schema, t.typname AS name
FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
"""
SEARCH_PATH_SQL = "SELECT current_schemas(true)"


@dataclass(frozen=True)
class _Function:
    oid: int
    schema: str
    name: str
    volatility: str
    kind: str
    definer: bool
    nargs: int


def _function_problem(function: _Function) -> str | None:
    """Why the allow-list refuses ``function`` (None: it passes)."""
    label = f"{function.schema}.{function.name}()"
    if function.schema == "pg_catalog" and function.name in SQL_TEXT_FUNCTIONS:
        return (
            f"The function {label} is not allowed: it runs SQL text, reads relations by "
            "name or exposes transaction ids."
        )
    if function.kind == "p":
        return f"{label} is a procedure; procedures are not allowed."
    if function.definer and function.schema != "pg_catalog":
        return f"The function {label} runs with its owner's rights; it is not allowed."
    if function.volatility in ("i", "s"):
        return None
    if function.schema == "pg_catalog" and function.name in HARMLESS_VOLATILE:
        return None
    return f"The function {label} is volatile (it can change state); it is not allowed."


_UNJUDGED = "\x00unjudged"
_MAX_VERDICTS = 4096


class Catalog:
    """Facts about one server's functions, operators, casts and relations, and the verdict.

    Built once per connector from :data:`CATALOG_SQL` and friends (see
    :meth:`from_rows`) and reused; a name the facts do not know makes the connector load
    them again once before the statement is refused.
    """

    def __init__(
        self,
        functions: Iterable[_Function],
        operators: Iterable[tuple[str, str, int]],
        casts: Iterable[tuple[str, str, int]],
        relations: Iterable[tuple[str, str]],
        search_path: Sequence[str],
        types: Iterable[tuple[str, str]] = (),
    ) -> None:
        self._by_oid: dict[int, _Function] = {}
        self._by_name: dict[str, list[_Function]] = {}
        for function in functions:
            self._by_oid[function.oid] = function
            self._by_name.setdefault(function.name, []).append(function)
        self._operators: dict[str, list[tuple[str, int]]] = {}
        for schema, name, oid in operators:
            self._operators.setdefault(name, []).append((schema, oid))
        self._casts: dict[str, list[tuple[str, int]]] = {}
        for schema, name, oid in casts:
            self._casts.setdefault(name, []).append((schema, oid))
        self._relations: dict[str, set[str]] = {}
        for schema, name in relations:
            self._relations.setdefault(name, set()).add(schema)
        self._types: dict[str, set[str]] = {}
        for schema, name in types:
            self._types.setdefault(name, set()).add(schema)
        self.search_path = tuple(search_path)
        self._verdicts: dict[Statement, str | None] = {}

    @classmethod
    def from_rows(
        cls,
        functions: Iterable[Mapping[str, Any]],
        operators: Iterable[Mapping[str, Any]],
        casts: Iterable[Mapping[str, Any]],
        relations: Iterable[Mapping[str, Any]],
        search_path: Sequence[str],
        types: Iterable[Mapping[str, Any]] = (),
    ) -> Catalog:
        """A catalog from the rows of the ``*_SQL`` queries of this module."""
        return cls(
            (
                _Function(
                    oid=int(r["oid"]),
                    schema=r["schema"],
                    name=r["name"],
                    volatility=r["volatility"],
                    kind=r["kind"],
                    definer=bool(r["definer"]),
                    nargs=int(r["nargs"]),
                )
                for r in functions
            ),
            ((r["schema"], r["name"], int(r["function"])) for r in operators),
            ((r["schema"], r["name"], int(r["function"])) for r in casts),
            ((r["schema"], r["name"]) for r in relations),
            search_path,
            ((r["schema"], r["name"]) for r in types),
        )

    def knows(self, statement: Statement) -> bool:
        """Whether every function, operator and relation name is in these facts."""
        return all(
            self._functions(name) or self._is_type(name) for name in statement.functions
        ) and all(self._operator_functions(name) is not None for name in statement.operators)

    def knows_relations(self, statement: Statement) -> bool:
        """Whether every unqualified relation name resolves along the search path."""
        return all(self.resolve(name) is not None for name in statement.relations)

    def judged(self, statement: Statement) -> bool:
        """Whether this statement's functions were judged already (its names are known)."""
        return statement in self._verdicts

    def check(self, statement: Statement, schemas: Sequence[str] | None = None) -> None:
        """Raise :class:`ReadOnlyViolation` or :class:`SchemaNotAllowed`; None when it passes."""
        problem = self._verdicts.get(statement, _UNJUDGED)
        if problem is _UNJUDGED:
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()  # bounded: statements are many, verdicts are cheap
            problem = self._verdicts[statement] = self._function_verdict(statement)
        if problem is not None:
            raise ReadOnlyViolation(problem)
        if schemas is not None:
            self._check_schemas(statement, schemas)

    def _functions(self, name: Name) -> list[_Function]:
        schema, bare = name
        found = self._by_name.get(bare, [])
        if schema is not None:
            found = [f for f in found if f.schema == schema]
        return found

    def _is_type(self, name: Name) -> bool:
        schema, bare = name
        holders = self._types.get(bare, set())
        return bool(holders) and (schema is None or schema in holders)

    def _operator_functions(self, name: Name) -> list[_Function] | None:
        schema, symbol = name
        entries = self._operators.get(symbol)
        if not entries:
            return None
        if schema is not None:
            entries = [e for e in entries if e[0] == schema]
            if not entries:
                return None
        return [self._by_oid[oid] for _, oid in entries if oid in self._by_oid]

    def _function_verdict(self, statement: Statement) -> str | None:
        casts = set(statement.casts)
        for name in sorted(statement.functions, key=repr):
            found = self._functions(name)
            if not found and self._is_type(name):
                casts.add(name)  # tsquery('a'): a function-style cast when no function
                continue
            if not found:
                label = ".".join(n for n in name if n)
                return f"The function {label}() is not known to the server's catalog."
            for function in found:
                problem = _function_problem(function)
                if problem is not None:
                    return problem
        for attribute in sorted(statement.attributes):
            # x.f and (x).f call f(x) when no column f exists: every one-argument f counts.
            for function in self._by_name.get(attribute, []):
                if function.nargs == 1:
                    problem = _function_problem(function)
                    if problem is not None:
                        return problem
        for name in sorted(statement.operators, key=repr):
            functions = self._operator_functions(name)
            if functions is None:
                return f"The operator {name[1]} is not known to the server's catalog."
            for function in functions:
                problem = _function_problem(function)
                if problem is not None:
                    return f"The operator {name[1]} calls a function that is not allowed: {problem}"
        for schema, type_name in sorted(casts, key=repr):
            for cast_schema, oid in self._casts.get(type_name, []):
                if schema is not None and cast_schema != schema:
                    continue
                cast_function = self._by_oid.get(oid)
                problem = _function_problem(cast_function) if cast_function else None
                if problem is not None:
                    return f"A cast to {type_name} calls a function that is not allowed: {problem}"
        return None

    def resolve(self, name: Name) -> str | None:
        """The schema a relation name reads from, as the server resolves it (None: none)."""
        schema, relation = name
        if schema is not None:
            return schema
        holders = self._relations.get(relation, set())
        for candidate in self.search_path:
            if candidate in holders:
                return candidate
        return None

    def _check_schemas(self, statement: Statement, schemas: Sequence[str]) -> None:
        allowed = set(schemas)
        for name in sorted(statement.relations, key=repr):
            schema = self.resolve(name)
            if schema is None:
                # Not in the facts even after a reload: it does not exist (the server
                # would refuse too), or it is newer than the facts; either way, not read.
                raise SchemaNotAllowed(
                    f"The relation {name[1]} is not in this source's schemas "
                    f"({', '.join(sorted(allowed))})."
                )
            if schema not in allowed:
                raise SchemaNotAllowed(
                    f"The statement reads {schema}.{name[1]}, outside this source's schemas "
                    f"({', '.join(sorted(allowed))})."
                )
