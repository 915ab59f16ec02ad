"""PostgreSQL ``numeric`` arrives in the workspace as numbers (issue 12, paper cut 4).

A ``numeric`` without a declared scale — a column declared ``numeric``, and every
numeric column of a query, whose type modifiers the driver does not pass on — used to
arrive as text, so ``df.price.mean()`` raised. Now its type is measured from the result:
an exact decimal where the values fit one, float64 where they cannot (NaN, infinities,
more than 76 digits), and the choice is in the Parquet schema and the manifest.
"""

from __future__ import annotations

import decimal
from collections.abc import AsyncIterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasources.connectors.postgresql import PostgreSQLConnector
from datasources.connectors.postgresql.arrow import numeric_result_type
from datasources.workspace import Workspace
from tests.integration.pg import reader_connector

pytestmark = pytest.mark.integration

D = decimal.Decimal

TABLES = """
CREATE TABLE sales (id int, price numeric, fixed numeric(12, 2));
INSERT INTO sales VALUES (1, 19.99, 19.99), (2, 5.5, 5.50), (3, 100, 100.00), (4, NULL, NULL);
"""


@pytest.fixture
async def connector(
    postgres_database: str, postgres_reader: str
) -> AsyncIterator[PostgreSQLConnector]:
    async with reader_connector(postgres_database, postgres_reader, TABLES) as connector:
        yield connector


async def test_a_table_numeric_without_scale_is_a_number(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    workspace = Workspace(tmp_path / "ws")
    local = await connector.fetch_data("public.sales", workspace)
    df = pd.read_parquet(local)
    assert float(df.price.mean()) == pytest.approx((19.99 + 5.5 + 100) / 3)
    table = pq.read_table(local)
    assert table.schema.field("price").type == pa.decimal128(38, 2)
    assert table.schema.field("fixed").type == pa.decimal128(12, 2)  # declared: as before
    assert table.column("price").to_pylist() == [D("19.99"), D("5.50"), D("100.00"), None]
    entry = workspace.manifest()["public/sales.parquet"]
    columns = {c["name"]: c for c in entry.extra["columns"]}
    assert columns["price"] == {"name": "price", "pg_type": "numeric", "type": "decimal128(38, 2)"}
    assert columns["fixed"]["type"] == "decimal128(12, 2)" and columns["id"]["type"] == "int32"


async def test_query_columns_are_numbers_too(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    """The chat's /sql and query references export queries: their numerics count most."""
    sql = (
        "SELECT fixed, price * 3 AS tripled, avg(price) OVER () AS mean, "
        "1 / 3::numeric AS third, sum(fixed) OVER () AS total FROM sales ORDER BY id"
    )
    workspace = Workspace(tmp_path / "ws")
    local = await connector.export_query(sql, workspace, filename="q.parquet")
    table = pq.read_table(local)
    types = {f.name: f.type for f in table.schema}
    assert types["fixed"] == pa.decimal128(38, 2)  # the query lost (12, 2); the data has 2
    assert types["tripled"] == pa.decimal128(38, 2)
    assert pa.types.is_decimal128(types["mean"]) and types["mean"].scale >= 16
    assert types["third"] == pa.decimal128(38, 20)
    first = table.to_pylist()[0]
    assert first["fixed"] == D("19.99") and first["tripled"] == D("59.97")
    assert first["third"] == D("0.33333333333333333333") and first["total"] == D("125.49")
    df = pd.read_parquet(local)
    assert float(df.tripled.mean()) == pytest.approx(3 * (19.99 + 5.5 + 100) / 3)
    recorded = {c["name"]: c["type"] for c in workspace.manifest()["q.parquet"].extra["columns"]}
    assert recorded["third"] == "decimal128(38, 20)"
    limited = await connector.export_query(sql, workspace, filename="one.parquet", max_rows=1)
    assert pq.read_table(limited).num_rows == 1


async def test_values_that_fit_no_decimal_are_floats(
    connector: PostgreSQLConnector, tmp_path: Path
) -> None:
    sql = """
    SELECT * FROM (VALUES
      ('NaN'::numeric, 1.5::numeric, ('1' || repeat('0', 50) || '.5')::numeric,
       ('1' || repeat('0', 80) || '.5')::numeric, ('1' || repeat('0', 400))::numeric),
      ('-Infinity', 2, 1, 1, 1),
      (2.25, NULL, NULL, NULL, NULL)
    ) AS v(special, small, wide, huge, vast)
    """
    local = await connector.export_query(sql, tmp_path / "ws", filename="f.parquet")
    table = pq.read_table(local)
    types = {f.name: f.type for f in table.schema}
    assert types["special"] == pa.float64() and types["small"] == pa.decimal128(38, 1)
    assert types["wide"] == pa.decimal256(76, 1) and types["huge"] == pa.float64()
    assert types["vast"] == pa.string()  # past float64's range: exact text, not infinity
    special = table.column("special").to_pylist()
    assert special[0] != special[0] and special[1:] == [float("-inf"), 2.25]
    assert table.column("wide").to_pylist()[0] == D("1" + "0" * 50 + ".5")
    assert table.column("huge").to_pylist()[0] == pytest.approx(1e80)


def test_the_choice_of_type() -> None:
    assert numeric_result_type(None, None, 0) == pa.decimal128(38, 0)  # all NULL
    assert numeric_result_type(2, D("123.45"), 0) == pa.decimal128(38, 2)
    assert numeric_result_type(0, D("9" * 38), 0) == pa.decimal128(38, 0)
    assert numeric_result_type(1, D("9" * 38), 0) == pa.decimal256(76, 1)
    assert numeric_result_type(3, D("0.001"), 0) == pa.decimal128(38, 3)
    assert numeric_result_type(2, D("1.5"), 1) == pa.float64()
    assert numeric_result_type(40, D("1" * 40), 0) == pa.float64()
