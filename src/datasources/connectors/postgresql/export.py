"""Streaming a table or a query's result out: Parquet or CSV files, CSV streams.

COPY … TO STDOUT is the server's fastest way out; its CSV is parsed and written as
Parquet by one worker thread, so memory stays bounded by a few chunks.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa

from datasources.connectors.base import ItemStream, ProgressCallback
from datasources.connectors.postgresql.arrow import (
    EXPORT_SETTINGS,
    ChunkPipe,
    ColumnPlan,
    ConversionError,
    ReaderGone,
    copy_select,
    csv_to_parquet,
    plan_columns,
    settle_numerics,
)
from datasources.connectors.postgresql.profile import PgProfiles
from datasources.connectors.postgresql.session import deadline
from datasources.connectors.postgresql.values import ident, jsonable
from datasources.errors import InvalidInputError
from datasources.models import DataItem, ItemKind
from datasources.sql_guard import parameter_spans
from datasources.workspace import AsyncAtomicWriter, Workspace

__all__ = ["ExportFormat", "PgExports"]


ExportFormat = Literal["parquet", "csv"]


_PIPE_CHUNK = 1 << 20


def _declared_typmods(
    attributes: Sequence[tuple[str, int, str]], decimals: Mapping[str, tuple[int, int]]
) -> list[int]:
    """Type modifiers for the numeric columns the caller declared as ``(precision, scale)``."""
    names = {name for name, _, _ in attributes}
    unknown = sorted(set(decimals) - names)
    if unknown:
        raise InvalidInputError(f"decimals names columns the result does not have: {unknown}.")
    typmods = []
    for name, _, _ in attributes:
        if name not in decimals:
            typmods.append(-1)
            continue
        precision, scale = decimals[name]
        if not (1 <= precision <= 76 and 0 <= scale <= precision):
            raise InvalidInputError(
                f"decimals[{name!r}] must be (precision, scale) with 1 <= precision <= 76 "
                "and 0 <= scale <= precision."
            )
        typmods.append(((precision << 16) | scale) + 4)
    return typmods


def _export_format(value: str) -> str:
    if value not in ("parquet", "csv"):
        raise InvalidInputError("format is 'parquet' or 'csv'.")
    return value


def _inline_parameters(sql: str, literals: Sequence[str]) -> str:
    """Put server-quoted literals in place of the ``$n`` tokens of ``sql``.

    The server's own scanner tells parameters from look-alikes inside strings, dollar
    quotes and comments, which a regular expression cannot.
    """
    spans = parameter_spans(sql)
    for _start, _end, number in spans:
        if not 1 <= number <= len(literals):
            raise InvalidInputError(f"No value for parameter ${number}.")
    for start, end, number in reversed(spans):
        sql = f"{sql[:start]}{literals[number - 1]}{sql[end:]}"
    return sql


class PgExports(PgProfiles):
    """Exports to files and streams."""

    async def fetch_data(
        self,
        path: str,
        workspace_dir: Path | str | Workspace,
        *,
        progress: ProgressCallback | None = None,
        format: ExportFormat = "parquet",
        max_rows: int | None = None,
    ) -> Path:
        """Export a whole table or view to ``schema/table.parquet`` (or ``.csv``), streamed.

        The column types come from the catalog, so ``numeric(p, s)`` becomes a decimal
        with the same precision and scale.
        """
        schema, table = self._split_table(path)
        fmt = _export_format(format)
        workspace = Workspace.of(workspace_dir)
        target = f"{schema}/{table}.{fmt}"
        workspace.path_for(target)
        item, typmods = await self._describe_table(path)  # exists and allowed, or an error
        return await self._export(
            f"SELECT * FROM {ident(schema)}.{ident(table)}",
            None,
            workspace,
            target,
            fmt=fmt,
            max_rows=max_rows,
            typmods=typmods,
            progress=progress,
            provenance=self.provenance(path, item, {"query": f"TABLE {schema}.{table}"}),
        )

    async def open_stream(self, path: str) -> ItemStream:
        """A table or view as CSV (with a header), streamed from COPY as it is produced."""
        schema, table = self._split_table(path)
        item, _ = await self._describe_table(path)
        query = f"SELECT * FROM {ident(schema)}.{ident(table)}"

        async def chunks() -> AsyncIterator[bytes]:
            queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=8)

            async def produce() -> None:
                try:
                    seconds = self.config.statement_timeout
                    with self._errors("export"):
                        async with self._transaction(
                            seconds, snapshot=True, extra=EXPORT_SETTINGS
                        ) as conn:

                            async def put(data: bytes) -> None:
                                await queue.put(bytes(data))

                            # No client deadline: the consumer may be slow, and the
                            # server's statement_timeout bounds the COPY itself.
                            await conn.copy_from_query(query, output=put, format="csv", header=True)
                except Exception as exc:
                    await queue.put(exc)
                    return
                await queue.put(None)

            producer = asyncio.create_task(produce())
            try:
                while (chunk := await queue.get()) is not None:
                    if isinstance(chunk, BaseException):
                        raise chunk
                    yield chunk
            finally:
                producer.cancel()
                with contextlib.suppress(BaseException):
                    await producer

        # Streamed as CSV: the download is named like a CSV file, not like the table.
        named = item.model_copy(update={"name": f"{item.name}.csv"})
        return ItemStream(named, chunks, "text/csv; charset=utf-8")

    async def export_query(
        self,
        sql: str,
        workspace_dir: Path | str | Workspace,
        *,
        params: Sequence[Any] | None = None,
        format: ExportFormat = "parquet",
        filename: str | None = None,
        max_rows: int | None = None,
        decimals: Mapping[str, tuple[int, int]] | None = None,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream the result of one read-only statement into a Parquet (default) or CSV file.

        The statement passes the same layers as :meth:`execute_query`. ``filename`` is a
        workspace-relative path (default ``exports/query-<hash>.<format>``); ``max_rows``
        stops the export early and the source's ``max_download_bytes`` caps the file.
        A numeric column gets the exact decimal its values need (measured from the result,
        see ``arrow.settle_numerics``) unless ``decimals`` declares ``(precision, scale)``.
        """
        await self._guard(sql)
        fmt = _export_format(format)
        workspace = Workspace.of(workspace_dir)
        if filename is None:
            digest = hashlib.sha256(repr((sql, list(params or ()))).encode()).hexdigest()[:12]
            filename = f"exports/query-{digest}.{fmt}"
        workspace.path_for(filename)
        item = DataItem(path=filename, name=filename.rsplit("/", 1)[-1], kind=ItemKind.TABLE)
        extra: dict[str, Any] = {"query": sql}
        if params:
            extra["extra"] = {"params": [jsonable(v) for v in params]}
        return await self._export(
            sql,
            params,
            workspace,
            filename,
            fmt=fmt,
            max_rows=max_rows,
            typmods=None,
            decimals=decimals,
            progress=progress,
            provenance=self.provenance(filename, item, extra),
        )

    async def _export(
        self,
        sql: str,
        params: Sequence[Any] | None,
        workspace: Workspace,
        target: str,
        *,
        fmt: str,
        max_rows: int | None,
        typmods: Sequence[int] | None,
        progress: ProgressCallback | None,
        provenance: dict[str, Any],
        decimals: Mapping[str, tuple[int, int]] | None = None,
    ) -> Path:
        if max_rows is not None and max_rows < 0:
            raise InvalidInputError("max_rows cannot be negative.")
        done = 0
        seconds = self.config.statement_timeout
        with self._errors("export"):
            async with (
                self._transaction(seconds, snapshot=True, extra=EXPORT_SETTINGS) as conn,
                # A few statements, then a COPY the server stops at statement_timeout, and
                # the Parquet writer's tail: twice the budget before the client gives up.
                asyncio.timeout(deadline(seconds) + seconds),
            ):
                inner, attributes = await self._one_statement(conn, sql, params)
                if decimals:
                    typmods = _declared_typmods(attributes, decimals)
                plans = plan_columns(attributes, typmods)
                if fmt == "csv":
                    limit = f" LIMIT {int(max_rows)}" if max_rows is not None else ""
                    query = f"SELECT * FROM (\n{inner}\n) AS q{limit}"
                else:
                    plans = await settle_numerics(conn, inner, plans, max_rows, provenance)
                    query = copy_select(inner, plans, max_rows)
                async with workspace.writer(
                    target, max_bytes=self.config.max_download_bytes, provenance=provenance
                ) as writer:
                    if fmt == "csv":

                        async def sink(chunk: bytes) -> None:
                            nonlocal done
                            await writer.write(chunk)
                            done += len(chunk)
                            if progress is not None:
                                progress(done, None)

                        await conn.copy_from_query(query, output=sink, format="csv", header=True)
                    else:
                        await self._copy_parquet(conn, query, plans, writer, progress)
        return writer.path

    async def _one_statement(
        self, conn: Any, sql: str, params: Sequence[Any] | None
    ) -> tuple[str, list[tuple[str, int, str]]]:
        """Layer 2 for exports: the server parses ``sql`` alone as exactly one statement.

        COPY cannot take bind parameters, so parameters are rendered by the server as
        literals and put in place of the ``$n`` tokens (found by the tokenizer, never in
        strings or comments); the result is checked again, by the parser and by Parse.
        """
        inner = sql.strip().rstrip(";").rstrip()
        statement = await conn.prepare(inner)  # not cached: COPY runs the text, not this
        wanted = statement.get_parameters()
        given = list(params or ())
        if len(given) != len(wanted):
            raise InvalidInputError(
                f"The statement takes {len(wanted)} parameter(s); {len(given)} given."
            )
        if wanted:
            casts = ", ".join(
                f"quote_nullable(${i}::{ident(t.schema)}.{ident(t.name)}::text)"
                for i, t in enumerate(wanted, start=1)
            )
            literals = list(await conn.fetchrow(f"SELECT {casts}", *given))
            inner = _inline_parameters(inner, literals)
            await self._guard(inner)
            statement = await conn.prepare(inner)
            if statement.get_parameters():
                raise InvalidInputError("Could not place every parameter of the statement.")
        attributes = [(a.name, a.type.oid, a.type.name) for a in statement.get_attributes()]
        if not attributes:
            raise InvalidInputError("Only a statement that returns rows can be exported.")
        return inner, attributes

    async def _copy_parquet(
        self,
        conn: Any,
        query: str,
        plans: Sequence[ColumnPlan],
        writer: AsyncAtomicWriter,
        progress: ProgressCallback | None,
    ) -> None:
        """COPY CSV from the server, parsed and written as Parquet by one worker thread."""
        pipe = ChunkPipe(depth=4)
        loop = asyncio.get_running_loop()
        multiline = any(p.csv_type == pa.string() for p in plans)
        convert = loop.run_in_executor(
            None,
            functools.partial(csv_to_parquet, pipe, writer.file.write, plans, multiline=multiline),
        )
        buffer = bytearray()
        received = 0

        async def sink(chunk: bytes) -> None:
            nonlocal received
            buffer.extend(chunk)
            received += len(chunk)
            if len(buffer) >= _PIPE_CHUNK:
                await pipe.put(bytes(buffer))
                buffer.clear()
                if progress is not None:
                    progress(received, None)

        try:
            await conn.copy_from_query(query, output=sink, format="csv")
            if buffer:
                await pipe.put(bytes(buffer))
            await pipe.put(None)
        except ReaderGone:
            pass  # the converter failed; its error is raised below
        except BaseException:
            # The COPY failed or we were cancelled: stop the thread before the atomic
            # file it writes to is thrown away.
            pipe.fail()
            with contextlib.suppress(BaseException):
                await asyncio.shield(convert)
            raise
        try:
            await convert
        except ConversionError as exc:
            raise InvalidInputError(f"The result could not be written as Parquet: {exc}") from None
        except (pa.ArrowInvalid, ValueError) as exc:
            # Arrow's text quotes the value it could not convert: the log's, at debug only.
            logging.getLogger("datasources.connectors.postgresql").debug(
                "Parquet conversion failed: %s", exc
            )
            raise InvalidInputError(
                "The result could not be written as Parquet: a value does not fit its "
                "column's type; cast that column to text."
            ) from None
        if progress is not None:
            progress(received, None)
