"""Replies without a language model: code blocks run, ``/sql`` results shown, data briefed.

- fenced ```python blocks run in the chat's session, one after the other;
- ``/sql …`` shows the first rows of the query's result (fetched into the workspace as
  Parquet by the references step: the query ran in the database);
- otherwise each referenced file gets a brief (rows, columns, types, nulls, distinct
  counts, min/max, a preview), computed in the sandbox;
- with nothing to do, a line saying what offline mode offers.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from datasources import safefs
from datasources.chat.context import ChatContext, ReplyStep
from datasources.chat.models import Event
from datasources.errors import InvalidInputError
from datasources.sandbox.session import Part

__all__ = ["OfflineReplies", "code_steps"]

_CODE_BLOCK = re.compile(r"```(?:python|py)[ \t]*\n(.*?)```", re.DOTALL)
_TABLE_ROWS = 100
OFFLINE_HINT = (
    "No model is configured, so: put Python in ```python blocks to run it, start "
    "with /sql to query a referenced database, or reference data "
    "(@source:path) for a brief of it."
)


class OfflineReplies:
    """The :class:`~datasources.chat.context.Replier` used when no model is configured."""

    async def reply(
        self, chat: ChatContext, content: str, fetched: list[str]
    ) -> AsyncIterator[ReplyStep]:
        blocks = _CODE_BLOCK.findall(content)
        if blocks:
            for code in blocks:
                yield Event(event="code", data={"code": code}), [Part(type="code", text=code)]
                async for step in code_steps(chat, code):
                    yield step
        elif content.strip().startswith("/sql"):
            if not fetched:
                raise InvalidInputError("/sql produced no result file.")
            table = await asyncio.to_thread(
                _parquet_preview, chat.workspace_dir, fetched[0], _TABLE_ROWS
            )
            yield (
                Event(event="display", data={"type": "table", "data": table}),
                [Part(type="table", data=table)],
            )
        elif fetched:
            async for step in code_steps(chat, _brief_code(fetched[:20])):
                yield step
        else:
            yield (
                Event(event="text_delta", data={"text": OFFLINE_HINT}),
                [Part(type="text", text=OFFLINE_HINT)],
            )


async def code_steps(chat: ChatContext, code: str) -> AsyncIterator[ReplyStep]:
    """Run ``code`` in the chat; one step per part of its output."""
    result = await chat.run_code(code)
    for part in result.parts:
        kind = "output" if part.type in ("stdout", "stderr", "result", "text") else "display"
        if part.type == "error":
            kind = "error"
        yield Event(event=kind, data=part.model_dump(exclude_none=True)), [part]


def _brief_code(paths: list[str]) -> str:
    """Code (run in the sandbox) that describes each file: the data brief."""
    return _BRIEF.replace("__PATHS__", json.dumps(paths))


_BRIEF = r"""
import json as _json
import pandas as _pd
from IPython.display import display as _display

def _ds_brief(_path):
    _low = _path.lower()
    if _low.endswith(".parquet"):
        _df = _pd.read_parquet(_path)
    elif _low.endswith((".csv", ".txt")):
        _df = _pd.read_csv(_path)
    elif _low.endswith((".json", ".jsonl", ".ndjson")):
        _df = _pd.read_json(_path, lines=not _low.endswith(".json"))
    else:
        print(f"{_path}: not a table (csv, parquet or json); skipped")
        return
    _cols = []
    for _name in _df.columns:
        _s = _df[_name]
        _col = {"name": str(_name), "type": str(_s.dtype),
                "null_fraction": round(float(_s.isna().mean()), 4) if len(_s) else 0.0,
                "distinct": int(_s.nunique(dropna=True))}
        try:
            if len(_s.dropna()):
                _col["min"], _col["max"] = str(_s.min())[:100], str(_s.max())[:100]
        except TypeError:
            pass
        _cols.append(_col)
    _preview = _json.loads(
        _df.head(5).to_json(orient="split", date_format="iso", default_handler=str)
    )
    _display({"application/vnd.datasources.table+json": {
        "title": _path, "rows": int(len(_df)), "columns": _cols,
        "preview": {"columns": [str(c) for c in _preview["columns"]], "rows": _preview["data"]},
    }}, raw=True)

for _p in __PATHS__:
    try:
        _ds_brief(_p)
    except Exception as _e:
        print(f"{_p}: could not be read ({type(_e).__name__}: {_e})")
"""


def _parquet_preview(directory: Path, relative: str, rows: int) -> dict[str, Any]:
    """The first ``rows`` rows of a workspace Parquet file as a table part (bounded memory)."""
    import pyarrow.parquet as pq

    anchor = safefs.open_anchor(directory)
    try:
        opened = safefs.open_file(anchor, relative)
    finally:
        os.close(anchor)
    with opened, os.fdopen(os.dup(opened.fd), "rb") as handle:
        parquet = pq.ParquetFile(handle)
        batch = next(parquet.iter_batches(batch_size=rows), None)
        schema = parquet.schema_arrow
        total = parquet.metadata.num_rows
    shown = batch.to_pylist() if batch is not None else []
    names = schema.names
    return {
        "columns": names,
        "types": [str(field.type) for field in schema],
        "rows": [[_jsonable(row[name]) for name in names] for row in shown],
        "row_count": total,
        "truncated": total > len(shown),
        "path": relative,
    }


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)
