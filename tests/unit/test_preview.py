"""Previews of files in a source: the first rows, in bounded memory, for CSV, TSV, JSON
lines, JSON and Parquet; everything else refused in words."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from datasources.connectors.local_folder import LocalFolderConnector
from datasources.errors import InvalidInputError, LimitExceededError
from datasources.preview import MAX_TEXT_BYTES, preview_item


@pytest.fixture
async def folder(tmp_path: Path) -> AsyncIterator[tuple[LocalFolderConnector, Path]]:
    root = tmp_path / "source"
    root.mkdir()
    connector = LocalFolderConnector({"root": str(root)}, source_id="s")
    async with connector:
        yield connector, root


async def test_csv_first_rows_with_quotes_and_a_sniffed_delimiter(
    folder: tuple[LocalFolderConnector, Path], tmp_path: Path
) -> None:
    connector, root = folder
    (root / "a.csv").write_text('name,note\nx,"has, comma"\ny,"two\nlines"\nz,plain\n')
    got = await preview_item(connector, "a.csv", rows=2, tmp_dir=tmp_path / "tmp")
    assert got.columns == ["name", "note"]
    assert got.rows == [["x", "has, comma"], ["y", "two\nlines"]]
    assert got.truncated and got.format == "csv"
    whole = await preview_item(connector, "a.csv", rows=50, tmp_dir=tmp_path / "tmp")
    assert len(whole.rows) == 3 and not whole.truncated
    (root / "b.csv").write_text("a;b\n1;2\n")
    assert (await preview_item(connector, "b.csv", tmp_dir=tmp_path)).rows == [["1", "2"]]
    (root / "c.tsv").write_text("a\tb\n1\t2\n")
    assert (await preview_item(connector, "c.tsv", tmp_dir=tmp_path)).columns == ["a", "b"]


async def test_a_huge_csv_is_read_only_at_its_start(
    folder: tuple[LocalFolderConnector, Path], tmp_path: Path
) -> None:
    connector, root = folder
    row = b"1," + b"x" * 100 + b"\n"
    with (root / "big.csv").open("wb") as out:
        out.write(b"id,text\n")
        for _ in range(64):  # 64 MiB: a preview must not read it all
            out.write(row * (1024 * 1024 // len(row)))
    got = await preview_item(connector, "big.csv", rows=10, tmp_dir=tmp_path)
    assert len(got.rows) == 10 and got.truncated
    assert got.bytes_read <= MAX_TEXT_BYTES + 1
    # One line longer than the limit: no partial row is made up.
    (root / "wide.csv").write_bytes(b"a\n" + b"y" * (2 * MAX_TEXT_BYTES) + b"\n")
    wide = await preview_item(connector, "wide.csv", tmp_dir=tmp_path)
    assert wide.columns == ["a"] and wide.rows == [] and wide.truncated


async def test_json_lines_json_and_parquet(
    folder: tuple[LocalFolderConnector, Path], tmp_path: Path
) -> None:
    connector, root = folder
    (root / "a.jsonl").write_text('{"a": 1, "b": "x"}\n{"a": 2, "c": {"nested": true}}\n{"a": 3}\n')
    lines = await preview_item(connector, "a.jsonl", rows=2, tmp_dir=tmp_path)
    assert lines.columns == ["a", "b", "c"]
    assert lines.rows == [[1, "x", None], [2, None, '{"nested": true}']] and lines.truncated
    (root / "a.json").write_text(json.dumps([{"k": i} for i in range(5)]))
    doc = await preview_item(connector, "a.json", rows=3, tmp_dir=tmp_path)
    assert doc.rows == [[0], [1], [2]] and doc.truncated
    (root / "big.json").write_text(json.dumps(["x" * 1000] * 2000))
    with pytest.raises(LimitExceededError):
        await preview_item(connector, "big.json", tmp_dir=tmp_path)
    table = pa.table({"region": ["n", "s", "e"], "units": [3, 5, 7]})
    pq.write_table(table, root / "t.parquet", row_group_size=2)
    parquet = await preview_item(connector, "t.parquet", rows=2, tmp_dir=tmp_path / "tmp")
    assert parquet.columns == ["region", "units"]
    assert parquet.rows == [["n", 3], ["s", 5]] and parquet.truncated
    assert list((tmp_path / "tmp").iterdir()) == []  # the spooled copy is gone


async def test_other_files_and_damaged_ones_are_refused_in_words(
    folder: tuple[LocalFolderConnector, Path], tmp_path: Path
) -> None:
    connector, root = folder
    (root / "x.bin").write_bytes(b"\x00\x01")
    (root / "bad.parquet").write_bytes(b"not parquet at all")
    (root / "bad.jsonl").write_text("{not json\n")
    for name in ("x.bin", "bad.parquet", "bad.jsonl"):
        with pytest.raises(InvalidInputError) as caught:
            await preview_item(connector, name, tmp_dir=tmp_path / "tmp")
        assert caught.value.message
    assert list((tmp_path / "tmp").iterdir()) == []
