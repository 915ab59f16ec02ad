"""/sql mentions are replaced whole, in one pass: @db:s.t1 never rewrites @db:s.t10."""

from __future__ import annotations

from datasources.chat.refs import replace_mentions


def test_mentions_are_replaced_whole_and_punctuation_kept() -> None:
    table = {("db", "s.t1"): '"s"."t1"', ("db", "s.t10"): '"s"."t10"'}
    sql = "SELECT * FROM @db:s.t1, @db:s.t10; -- @other:x.y and @db:s.t1."
    assert replace_mentions(sql, table) == (
        'SELECT * FROM "s"."t1", "s"."t10"; -- @other:x.y and "s"."t1".'
    )
