"""The first rows of a file in a source, read in bounded memory: CSV, JSON lines, JSON
and Parquet.

Text formats are read from the start of the item's stream and the stream is closed as
soon as enough rows (or :data:`MAX_TEXT_BYTES`) have arrived: a 10 GB CSV costs one
megabyte. Parquet keeps its schema at the end of the file, so it is streamed to a
private temporary file (refused past :data:`MAX_PARQUET_BYTES`) and only its first row
group batch is decoded. Parsing runs off the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import itertools
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from datasources.connectors.base import BaseConnector
from datasources.errors import InvalidInputError, LimitExceededError, MissingDependencyError

__all__ = ["MAX_PARQUET_BYTES", "MAX_TEXT_BYTES", "Preview", "preview_item"]

MAX_TEXT_BYTES = 1024 * 1024
MAX_PARQUET_BYTES = 64 * 1024 * 1024
MAX_CELL_CHARS = 1000

Format = Literal["csv", "tsv", "jsonl", "json", "parquet"]
_FORMATS: dict[str, Format] = {
    ".csv": "csv",
    ".txt": "csv",
    ".tsv": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
}


class Preview(BaseModel):
    """The first rows of a file, as columns and rows of JSON values."""

    path: str
    format: Format
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = Field(description="The file has more rows than shown (or may have).")
    bytes_read: int = Field(description="Bytes read from the source to make this preview.")


def format_of(path: str) -> Format:
    """The preview format of a path, by its extension."""
    suffix = Path(path).suffix.lower()
    found = _FORMATS.get(suffix)
    if found is None:
        raise InvalidInputError(
            "Only CSV, TSV, JSON, JSON lines and Parquet files have a preview.",
            details={"path": path},
        )
    return found


def _cell(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return value[:MAX_CELL_CHARS]
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)[:MAX_CELL_CHARS]
    return str(value)[:MAX_CELL_CHARS]


async def _read_head(chunks: Any, *, lines: int, limit: int) -> tuple[bytes, bool]:
    """The start of a stream: until ``lines`` newlines or ``limit`` bytes; and whether the
    stream ended (the whole item was read)."""
    buffer = bytearray()
    iterator = chunks().__aiter__()
    complete = False
    try:
        while True:
            try:
                chunk = await iterator.__anext__()
            except StopAsyncIteration:
                complete = True
                break
            buffer += chunk
            if len(buffer) > limit or buffer.count(b"\n") > lines:
                break
    finally:
        close = getattr(iterator, "aclose", None)
        if close is not None:
            with contextlib.suppress(Exception):
                await close()
    return bytes(buffer[: limit + 1]), complete


def _text(head: bytes, complete: bool) -> str:
    if not complete:  # the last line may be cut in half
        cut = head.rfind(b"\n")
        head = head[: cut + 1] if cut >= 0 else b""
    return head.decode("utf-8-sig", errors="replace")


def _csv(text: str, rows: int, delimiter: str | None) -> tuple[list[str], list[list[Any]], bool]:
    if delimiter is None:
        try:
            delimiter = csv.Sniffer().sniff(text[:4096], delimiters=",;\t|").delimiter
        except csv.Error:
            delimiter = ","
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    head = list(itertools.islice(reader, rows + 2))
    if not head:
        return [], [], False
    columns = [_cell(c) or f"column_{i + 1}" for i, c in enumerate(head[0])]
    body = [[_cell(v) for v in row] for row in head[1 : rows + 1]]
    return columns, body, len(head) > rows + 1


def _records(records: list[Any]) -> tuple[list[str], list[list[Any]]]:
    columns: dict[str, None] = {}
    for record in records:
        for key in record if isinstance(record, dict) else ["value"]:
            columns.setdefault(str(key), None)
    names = list(columns)
    rows = [
        [_cell(r.get(n)) for n in names] if isinstance(r, dict) else [_cell(r)] for r in records
    ]
    return names, rows


def _jsonl(text: str, rows: int) -> tuple[list[str], list[list[Any]], bool]:
    lines = [line for line in text.splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines[:rows], start=1):
        try:
            records.append(json.loads(line))
        except ValueError:
            raise InvalidInputError(f"Line {number} is not JSON.") from None
    names, body = _records(records)
    return names, body, len(lines) > rows


def _json(text: str, rows: int) -> tuple[list[str], list[list[Any]], bool]:
    try:
        data = json.loads(text)
    except ValueError:
        raise InvalidInputError("The file is not valid JSON.") from None
    records = data if isinstance(data, list) else [data]
    names, body = _records(records[:rows])
    return names, body, len(records) > rows


def _parquet(path: Path, rows: int) -> tuple[list[str], list[list[Any]], bool]:
    try:
        import pyarrow.parquet as pq
    except ModuleNotFoundError:
        raise MissingDependencyError(
            "Parquet previews need pyarrow: pip install 'datasources[postgresql]'"
        ) from None
    try:
        parquet = pq.ParquetFile(path)
        batch = next(parquet.iter_batches(batch_size=rows), None)
    except Exception:  # pyarrow raises several unrelated types for a damaged file
        raise InvalidInputError("The file is not a readable Parquet file.") from None
    names = [str(n) for n in parquet.schema_arrow.names]
    records = batch.to_pylist() if batch is not None else []
    body = [[_cell(r.get(n)) for n in names] for r in records]
    return names, body, parquet.metadata.num_rows > len(body)


async def preview_item(
    connector: BaseConnector[Any], path: str, *, rows: int = 50, tmp_dir: Path
) -> Preview:
    """The first ``rows`` rows of the item at ``path``.

    Raises:
        InvalidInputError: not a previewable format, or not parseable as one.
        LimitExceededError: a Parquet file over :data:`MAX_PARQUET_BYTES`, or a JSON
            document (not JSON lines) over :data:`MAX_TEXT_BYTES`.
    """
    kind = format_of(path)
    stream = await connector.open_stream(path)
    if kind != "parquet":
        head, complete = await _read_head(stream.chunks, lines=rows + 2, limit=MAX_TEXT_BYTES)
        if kind == "json":
            if not complete:
                raise LimitExceededError(
                    "This JSON file is larger than 1 MiB: only JSON lines, CSV and Parquet "
                    "files of any size have a preview.",
                    details={"limit": MAX_TEXT_BYTES},
                )
            text = head.decode("utf-8-sig", errors="replace")
            columns, body, more = await asyncio.to_thread(_json, text, rows)
        else:
            text = _text(head, complete)
            if kind == "jsonl":
                columns, body, more = await asyncio.to_thread(_jsonl, text, rows)
            else:
                delimiter = "\t" if kind == "tsv" else None
                columns, body, more = await asyncio.to_thread(_csv, text, rows, delimiter)
        return Preview(path=path, format=kind, columns=columns, rows=body,
                       truncated=more or not complete, bytes_read=len(head))  # fmt: skip
    if stream.size is not None and stream.size > MAX_PARQUET_BYTES:
        raise LimitExceededError(
            f"Parquet files over {MAX_PARQUET_BYTES // (1024 * 1024)} MiB have no preview.",
            details={"limit": MAX_PARQUET_BYTES},
        )
    await asyncio.to_thread(tmp_dir.mkdir, parents=True, exist_ok=True, mode=0o700)
    fd, name = await asyncio.to_thread(tempfile.mkstemp, dir=tmp_dir, prefix="preview-")
    local = Path(name)
    written = 0
    try:
        with os.fdopen(fd, "wb") as out:
            async for chunk in stream.chunks():
                written += len(chunk)
                if written > MAX_PARQUET_BYTES:
                    raise LimitExceededError(
                        f"Parquet files over {MAX_PARQUET_BYTES // (1024 * 1024)} MiB have "
                        "no preview.",
                        details={"limit": MAX_PARQUET_BYTES},
                    )
                await asyncio.to_thread(out.write, chunk)
        columns, body, more = await asyncio.to_thread(_parquet, local, rows)
    finally:
        with contextlib.suppress(OSError):
            await asyncio.to_thread(local.unlink)
    return Preview(path=path, format=kind, columns=columns, rows=body, truncated=more,
                   bytes_read=written)  # fmt: skip
