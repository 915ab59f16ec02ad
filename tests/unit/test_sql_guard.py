"""The guard's two layers without a server: the statement layer, and the catalog layer
over hand-written catalog facts (the real catalog is tried in the integration tests)."""

from __future__ import annotations

from typing import Any

import pytest

from datasources.sql_guard import (
    Catalog,
    ReadOnlyViolation,
    SchemaNotAllowed,
    analyse,
    check_read_only,
    parameter_spans,
)
from datasources.testing.readonly_corpus import ALLOWED, ATTEMPTS, BYPASS_CORPUS

PARSER_STOPS = [a.sql for a in ATTEMPTS if "parser" in a.stops]


def test_the_corpus_is_big_enough() -> None:
    assert len(BYPASS_CORPUS) >= 100
    assert len(PARSER_STOPS) >= 50


@pytest.mark.parametrize("sql", PARSER_STOPS)
def test_the_statement_layer_refuses_what_it_owns(sql: str) -> None:
    with pytest.raises(ReadOnlyViolation) as info:
        check_read_only(sql)
    assert info.value.message


@pytest.mark.parametrize("sql", ALLOWED)
def test_reads_are_accepted(sql: str) -> None:
    assert check_read_only(sql) == sql


@pytest.mark.parametrize(
    "sql", ["", "   ", "SELECT 'a\x00b'", "SELEC * FRM", "SELECT (((", 42, "SELECT 1" * 200_000]
)
def test_garbage_is_refused_with_a_clear_message(sql: object) -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only(sql)  # type: ignore[arg-type]


def test_deep_nesting_is_refused_not_crashed() -> None:
    with pytest.raises(ReadOnlyViolation):
        check_read_only("SELECT " + "(SELECT " * 5000 + "1" + ")" * 5000)


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("SELECT U&\"pg_read\\005ffile\"('x')", (None, "pg_read_file")),
        ("SELECT U&\"!0070g_ls_dir\" UESCAPE '!' ('.')", (None, "pg_ls_dir")),
        ("SELECT pg_catalog.\"set_config\"('a', 'b', false)", ("pg_catalog", "set_config")),
        ("SELECT mydb.pg_catalog.lo_import('x')", ("pg_catalog", "lo_import")),
        ("SELECT * FROM ts_stat('x')", (None, "ts_stat")),
        ("SELECT count(*) FROM t TABLESAMPLE bernoulli (1)", (None, "bernoulli")),
    ],
)
def test_function_names_are_read_as_the_server_reads_them(
    sql: str, expected: tuple[str | None, str]
) -> None:
    assert expected in analyse(sql).functions


def test_attribute_notation_operators_casts_and_relations_are_collected() -> None:
    statement = analyse(
        "WITH w AS (SELECT 1) SELECT ('x'::text).pg_read_file, s.f, a OPERATOR(myschema.+) 1, "
        "b BETWEEN 1 AND 2, c ~~ 'x' FROM w, public.t, u JOIN hidden.v ON true "
        "ORDER BY 1 USING <"
    )
    assert {"pg_read_file", "f"} <= statement.attributes
    assert {("myschema", "+"), (None, "<="), (None, ">="), (None, "~~"), (None, "<")} <= (
        statement.operators
    )
    assert (None, "text") in statement.casts or ("pg_catalog", "text") in statement.casts
    assert statement.relations == {("public", "t"), (None, "u"), ("hidden", "v")}


def test_cte_names_shadow_only_in_their_scope() -> None:
    inner = analyse("SELECT * FROM (WITH x AS (SELECT 1) SELECT * FROM x) a, x")
    assert inner.relations == {(None, "x")}  # the outer x is a relation
    plain = analyse("WITH a AS (SELECT * FROM b), b AS (SELECT 1) SELECT * FROM a")
    assert plain.relations == {(None, "b")}  # not recursive: b is not yet visible in a
    recursive = analyse("WITH RECURSIVE a AS (SELECT * FROM b), b AS (SELECT 1) SELECT 1")
    assert recursive.relations == frozenset()


def test_parameters_are_found_by_the_scanner() -> None:
    sql = "SELECT $1, '$2', $$ $3 $$, \"$4\" -- $5\n, 'é', $12"
    spans = parameter_spans(sql)
    assert [(sql[s:e], n) for s, e, n in spans] == [("$1", 1), ("$12", 12)]


# -- the catalog layer over hand-written facts ---------------------------------------


def _fn(oid: int, name: str, volatility: str = "i", schema: str = "pg_catalog", **kw: Any) -> Any:
    return {
        "oid": oid,
        "schema": schema,
        "name": name,
        "volatility": volatility,
        "kind": kw.get("kind", "f"),
        "definer": kw.get("definer", False),
        "nargs": kw.get("nargs", 1),
    }


@pytest.fixture
def catalog() -> Catalog:
    functions = [
        _fn(1, "lower"),
        _fn(2, "now", "s", nargs=0),
        _fn(3, "random", "v", nargs=0),
        _fn(4, "pg_read_file", "v"),
        _fn(5, "int4pl"),
        _fn(6, "query_to_xml", "v", nargs=4),
        _fn(7, "table_to_xml", "s", nargs=4),
        _fn(8, "lower", "v", schema="public"),  # a volatile overload in another schema
        _fn(9, "evil_plus", "v", schema="public", nargs=2),
        _fn(10, "report", "s", schema="public", definer=True),
        _fn(11, "text"),
        _fn(12, "touch", "v", schema="public"),
        _fn(13, "upper"),
    ]
    operators = [
        {"schema": "pg_catalog", "name": "+", "function": 5},
        {"schema": "public", "name": "#~#", "function": 9},
    ]
    casts = [
        {"schema": "pg_catalog", "name": "text", "function": 11},
        {"schema": "public", "name": "mytype", "function": 12},
    ]
    relations = [
        {"schema": "public", "name": "t"},
        {"schema": "hidden", "name": "t"},
        {"schema": "hidden", "name": "secret"},
        {"schema": "pg_catalog", "name": "pg_class"},
    ]
    return Catalog.from_rows(functions, operators, casts, relations, ["pg_catalog", "public"])


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT upper('a'), now(), random(), 1 + 2",
        "SELECT 1 OPERATOR(pg_catalog.+) 2",
        "SELECT x::text FROM t",
        "SELECT t.v FROM t",
    ],
)
def test_the_catalog_passes_immutable_stable_and_reviewed_functions(
    catalog: Catalog, sql: str
) -> None:
    catalog.check(analyse(sql), ["public"])


@pytest.mark.parametrize(
    ("sql", "fragment"),
    [
        ("SELECT pg_read_file('x')", "volatile"),
        ("SELECT ('x'::text).pg_read_file", "volatile"),
        ("SELECT lower('A')", "volatile"),  # one overload of the name is volatile
        ("SELECT pg_catalog.query_to_xml('x', true, false, '')", "SQL text"),
        ("SELECT table_to_xml('hidden.secret', true, false, '')", "SQL text"),
        ("SELECT public.report()", "owner's rights"),
        ("SELECT 1 #~# 2", "operator #~#"),
        ("SELECT 'a'::public.mytype", "cast to mytype"),
        ("SELECT no_such_function()", "not known"),
        ("SELECT 1 #?# 2", "not known"),
    ],
)
def test_the_catalog_refuses_by_allow_list(catalog: Catalog, sql: str, fragment: str) -> None:
    with pytest.raises(ReadOnlyViolation) as info:
        catalog.check(analyse(sql))
    assert fragment in info.value.message


def test_qualified_names_are_judged_in_their_schema_only(catalog: Catalog) -> None:
    catalog.check(analyse("SELECT pg_catalog.lower('A')"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM hidden.secret",
        "SELECT * FROM pg_class",  # pg_catalog comes first on the search path
        "SELECT * FROM t, hidden.t",
        "WITH t AS (SELECT 1) SELECT * FROM hidden.t",
    ],
)
def test_the_catalog_enforces_the_schema_allow_list(catalog: Catalog, sql: str) -> None:
    with pytest.raises(SchemaNotAllowed):
        catalog.check(analyse(sql), ["public"])
    catalog.check(analyse(sql), None)


def test_unqualified_relations_resolve_along_the_search_path(catalog: Catalog) -> None:
    assert catalog.resolve((None, "t")) == "public"
    assert catalog.resolve((None, "secret")) is None  # hidden is not on the search path
    assert catalog.resolve((None, "pg_class")) == "pg_catalog"
    catalog.check(analyse("WITH secret AS (SELECT 1) SELECT * FROM secret, t"), ["public"])
