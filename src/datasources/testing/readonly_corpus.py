"""Statements that try to get past the read-only query path, and which layer stops each.

Each :class:`Attempt` names the layers that must refuse it *on their own*:

- ``parser``: the statement layer of :mod:`datasources.sql_guard` (kinds of statement);
- ``catalog``: the function allow-list and the ``schemas`` allow-list;
- ``transaction``: the server's ``READ ONLY`` transaction;
- ``role``: the privileges of a least-privilege role (SELECT on ``public`` and
  ``hidden``, nothing else). A privileged role is refused before any statement runs.

What a layer does not own it may let run, and the rollback at the end of every
statement undoes it (a large object created inside the read-only transaction, a
``NOTIFY`` never delivered, a lock released); the tags say which layer *refuses*.

Tests run every attempt with all layers on, and each layer alone over the attempts it
owns, then compare a complete snapshot of the database and the server (data,
sequences, catalog, permissions, comments, large objects, settings, server-side files).
The fixture behind them: table ``canary`` (50 rows), sequence ``canary_seq``, view
``canary_view``, and ``hidden.data`` readable by the role but outside the source's
``schemas: ["public", …]`` where a test says so.
"""

from __future__ import annotations

from dataclasses import dataclass

P, C, T, R = "parser", "catalog", "transaction", "role"
ALL = frozenset({P, C, T, R})


@dataclass(frozen=True)
class Attempt:
    """One hostile statement and the layers that each stop it alone."""

    sql: str
    stops: frozenset[str]


def _a(sql: str, *layers: str) -> Attempt:
    return Attempt(sql, frozenset(layers))


ATTEMPTS: list[Attempt] = [
    # Writes, however spelled or stacked.
    _a("DELETE FROM canary", P, T, R),
    _a("UPDATE canary SET v = 'x'", P, T, R),
    _a("INSERT INTO canary VALUES (99, 'x')", P, T, R),
    _a("SELECT 1; DELETE FROM canary", *ALL),
    _a("SELECT 1; COMMIT; DELETE FROM canary", *ALL),
    _a("COMMIT; DELETE FROM canary", *ALL),
    _a("SET TRANSACTION READ WRITE; DELETE FROM canary", *ALL),
    _a("SET SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", P),
    _a("WITH d AS (DELETE FROM canary RETURNING *) SELECT * FROM d", P, T, R),
    _a("WITH u AS (UPDATE canary SET v = 'x' RETURNING *) SELECT count(*) FROM u", P, T, R),
    _a("WITH i AS (INSERT INTO canary VALUES (7, 'x') RETURNING *) SELECT * FROM i", P, T, R),
    _a(
        "WITH x AS (SELECT 1), d AS (DELETE FROM canary RETURNING 1) SELECT * FROM x",
        P,
        T,
        R,
    ),
    _a("SELECT * INTO canary_copy FROM canary", P, T, R),
    _a("SELECT * FROM canary FOR UPDATE", P, T, R),
    _a("SELECT * FROM canary FOR SHARE", P, T, R),
    _a("SELECT * FROM (SELECT * FROM canary FOR NO KEY UPDATE) s", P, T, R),
    _a("DO $$ BEGIN EXECUTE 'DELETE FROM canary'; END $$", P, T, R),
    _a("/* harmless */ DELETE /* really */ FROM canary", P, T, R),
    _a("dElEtE fRoM canary", P, T, R),
    _a("-- comment\nDELETE FROM canary", P, T, R),
    _a('DELETE FROM U&"c\\0061nary"', P, T, R),
    _a("PREPARE p AS DELETE FROM canary", P),
    _a("EXECUTE p", P),
    _a("LOCK TABLE canary IN ACCESS EXCLUSIVE MODE", P, R),
    _a("TRUNCATE canary", P, T, R),
    _a("DROP TABLE canary", P, T, R),
    _a("ALTER TABLE canary ADD COLUMN z int", P, T, R),
    _a("CREATE TABLE evil (x int)", P, T, R),
    _a("GRANT ALL ON canary TO PUBLIC", P, T),
    _a("COMMENT ON TABLE canary IS 'changed'", P, T, R),
    _a("VACUUM canary", P, T),
    _a("CALL some_procedure()", *ALL),
    _a("LISTEN channel", P),
    _a("NOTIFY channel, 'x'", P),
    _a("BEGIN", P),
    _a("RESET ALL", P),
    _a("SELECT 1 UNION ALL SELECT count(*) FROM (DELETE FROM canary RETURNING 1) d", *ALL),
    _a("REFRESH MATERIALIZED VIEW canary_view", *ALL),
    _a("SECURITY LABEL ON TABLE canary IS 'x'", *ALL),
    # EXPLAIN spellings that run ANALYZE.
    _a("EXPLAIN ANALYZE DELETE FROM canary", P, T, R),
    _a("EXPLAIN ANALYSE VERBOSE DELETE FROM canary", P, T, R),
    _a("EXPLAIN (ANALYZE) DELETE FROM canary", P, T, R),
    _a("EXPLAIN (ANALYSE) DELETE FROM canary", P, T, R),
    _a('EXPLAIN ("analyze") DELETE FROM canary', P, T, R),
    _a("EXPLAIN (ANALYZE 1) DELETE FROM canary", P, T, R),
    _a("EXPLAIN (ANALYZE on, COSTS off) INSERT INTO canary VALUES (98, 'x')", P, T, R),
    _a("EXPLAIN (ANALYZE true, FORMAT JSON) UPDATE canary SET v = 'x'", P, T, R),
    _a("EXPLAIN (FORMAT JSON, ANALYZE) SELECT nextval('canary_seq')", P, T, R),
    _a("EXPLAIN (ANALYZE false, ANALYZE) DELETE FROM canary", P, T, R),
    # Files, programs, large objects.
    _a("COPY canary TO PROGRAM 'id'", P, R),
    _a("COPY canary FROM '/etc/passwd'", P, T, R),
    _a("COPY (SELECT 1) TO '/tmp/datasources-pwned'", P, R),
    _a("SELECT lo_import('/etc/passwd')", C, R),
    _a("SELECT lo_export(1234, '/tmp/x')", C, R),
    _a("SELECT lo_from_bytea(0, 'x')", C),
    _a("SELECT lo_create(0)", C),
    _a("SELECT pg_read_file('/etc/passwd')", C, R),
    _a("SELECT pg_read_binary_file('/etc/passwd')", C, R),
    _a("SELECT pg_catalog.pg_read_file('/etc/passwd')", C, R),
    _a("SELECT \"pg_read_file\"('/etc/passwd')", C, R),
    _a("SELECT U&\"pg_read\\005ffile\"('/etc/passwd')", C, R),
    _a("SELECT U&\"!0070g_read_file\" UESCAPE '!' ('/etc/passwd')", C, R),
    _a("SELECT pg_catalog.U&\"pg\\005fls\\005fdir\"('.')", C, R),
    _a("SELECT ('/etc/passwd'::text).pg_read_file", C, R),
    _a("SELECT s.pg_ls_dir FROM (SELECT '.'::text) AS s", C, R),
    _a("SELECT pg_ls_dir('.')", C, R),
    _a("SELECT * FROM pg_ls_dir('.') AS f", C, R),
    _a("SELECT pg_stat_file('postgresql.conf')", C, R),
    # Functions that run SQL text or read by name.
    _a("SELECT query_to_xml('DELETE FROM canary RETURNING 1', true, false, '')", C, T, R),
    _a("SELECT * FROM ts_stat('DELETE FROM canary RETURNING to_tsvector(v)')", C, T, R),
    _a("SELECT * FROM ts_stat('SELECT to_tsvector(pg_read_file(''/etc/passwd''))')", C, R),
    _a(
        "SELECT ts_rewrite('a'::tsquery, "
        "'SELECT pg_read_file(''/etc/passwd'')::tsquery, ''c''::tsquery')",
        C,
        R,
    ),
    _a("SELECT dblink_exec('dbname=postgres', 'DELETE FROM canary')", C, T, R),
    # Sessions, signals, locks, settings, statistics, replication.
    _a("SELECT pg_terminate_backend(pg_backend_pid())", C),
    _a(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE usename = current_user AND pid <> pg_backend_pid()",
        C,
    ),
    _a(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity "
        "WHERE usename = current_user AND pid <> pg_backend_pid()",
        C,
    ),
    _a("SELECT pg_reload_conf()", C, R),
    _a("SELECT set_config('default_transaction_read_only', 'off', false)", C),
    _a("SELECT set_config('transaction_read_only', 'off', true)", C, T),
    _a("SELECT set_config('work_mem', '1GB', false)", C),
    _a("SELECT set_config(U&'\\0073earch_path', 'pg_temp', false)", C),
    _a("SELECT pg_advisory_lock(1)", C),
    _a("SELECT pg_try_advisory_lock(1)", C),
    _a("SELECT pg_advisory_xact_lock(1)", C),
    _a("SELECT pg_sleep(1000000)", C),
    _a("SELECT nextval('canary_seq')", C, T, R),
    _a("SELECT setval('canary_seq', 1000)", C, T, R),
    _a("SELECT txid_current()", C),
    _a("SELECT pg_notify('channel', 'x')", C),
    _a("SELECT pg_stat_reset()", C, R),
    _a("SELECT pg_stat_reset_shared('bgwriter')", C, R),
    _a("SELECT pg_catalog.pg_stat_reset_single_table_counters('canary'::regclass)", C, R),
    _a("SELECT pg_logical_emit_message(true, 'x', 'y')", C),
    _a("SELECT pg_export_snapshot()", C),
    # Reads outside the source's schemas (the sources in the tests allow "public").
    _a("SELECT * FROM hidden.data", C),
    _a('SELECT * FROM "hidden"."data"', C),
    _a('SELECT * FROM U&"hidd\\0065n".data', C),
    _a("TABLE hidden.data", C),
    _a("SELECT (SELECT count(*) FROM hidden.data)", C),
    _a("WITH data AS (SELECT 1) SELECT * FROM hidden.data", C),
    _a("WITH x AS (SELECT * FROM hidden.data) SELECT * FROM x", C),
    _a("SELECT * FROM canary c JOIN LATERAL (SELECT * FROM hidden.data) d ON true", C),
    _a("EXPLAIN SELECT * FROM hidden.data", C),
    _a("SELECT table_to_xml('hidden.data', true, false, '')", C),
    _a("SELECT * FROM pg_catalog.pg_authid", C, R),
]

BYPASS_CORPUS: list[str] = [attempt.sql for attempt in ATTEMPTS]
"""Every attempt's SQL: refused with every layer on, nothing changed afterwards."""

ALLOWED: list[str] = [
    "SELECT * FROM canary ORDER BY id",
    "select count(*) from canary where v like 'a%'",
    "WITH c AS (SELECT * FROM canary) SELECT max(id) FROM c",
    "WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 3) SELECT * FROM r",
    "SELECT 1 UNION SELECT 2",
    "VALUES (1, 'a'), (2, 'b')",
    "TABLE canary",
    "SHOW statement_timeout",
    "EXPLAIN SELECT * FROM canary",
    "EXPLAIN (FORMAT JSON) SELECT * FROM canary",
    "EXPLAIN (COSTS OFF) SELECT * FROM canary",
    "EXPLAIN (ANALYZE false, VERBOSE) SELECT 1",
    "SELECT now(), current_user, version()",
    "SELECT $1::int + 1",
    "SELECT id FROM canary;",
    "SELECT DISTINCT ON (id) id FROM canary ORDER BY id USING <",
    "SELECT XMLPARSE(CONTENT '<a>1</a>')",
    "SELECT point(1, 2) <-> point(3, 4)",
    "SELECT ROW(1, 2) < ROW(1, 3)",
    "SELECT 1 OPERATOR(pg_catalog.+) 1",
    "SELECT random() < 2, clock_timestamp() > now(), gen_random_uuid() IS NOT NULL",
    "SELECT id BETWEEN 1 AND 3, id NOT BETWEEN SYMMETRIC 5 AND 2 FROM canary",
    "SELECT CASE id WHEN 1 THEN 'one' ELSE 'many' END FROM canary",
    "SELECT count(*) FROM canary TABLESAMPLE SYSTEM (100)",
    "SELECT extract(year FROM now()), substring('abc' FROM 2), trim(both 'x' FROM 'xax')",
    "SELECT '1 day'::interval, CAST('2026-01-01' AS date), int4 '7'",
    'SELECT U&"\\0076" FROM canary',
    "SELECT (c).v, c.id FROM canary c",
    "SELECT current_setting('statement_timeout'), pg_relation_size('canary')",
    "SELECT v FROM canary WHERE id = ANY(ARRAY[1, 2]) AND v IN ('a1', 'a2')",
    "SELECT * FROM canary_view",
]
