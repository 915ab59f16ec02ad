"""PostgreSQL result columns as Arrow types, and COPY CSV streamed into Parquet.

The export path of the PostgreSQL connector. The server formats rows as CSV (``COPY …
TO STDOUT``, its fastest output), the event loop hands the bytes to one worker thread
through a small bounded pipe, and pyarrow's C++ CSV reader parses them straight into the
final column types, which ``ParquetWriter`` writes row group by row group. Nothing holds
more than a few blocks, so memory stays flat whatever the row count.

Each result column gets a :class:`ColumnPlan`: the SQL expression the COPY selects
(most columns as they are; arrays through ``to_json``), the type the CSV reader parses
into and, for the few types CSV cannot carry natively (uuid, bytea, arrays, json), a
conversion applied per batch. A ``numeric`` without declared precision and scale gets
its type from the data (:func:`settle_numerics`). The session settings that make the
text unambiguous (UTC time zone, ISO dates, hex bytea) are :data:`EXPORT_SETTINGS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import json
import queue
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

EXPORT_SETTINGS = (
    "SET LOCAL TimeZone = 'UTC'; SET LOCAL DateStyle = 'ISO, YMD'; "
    "SET LOCAL IntervalStyle = 'iso_8601'; SET LOCAL bytea_output = 'hex'; "
    "SET LOCAL extra_float_digits = 1"
)
"""Session settings (transaction-local) under which COPY's text is parsed exactly."""

_SCALARS: dict[int, pa.DataType] = {
    16: pa.bool_(),
    20: pa.int64(),
    21: pa.int16(),
    23: pa.int32(),
    26: pa.uint32(),  # oid
    700: pa.float32(),
    701: pa.float64(),
}
# Dates, times and timestamps travel as integers (days or microseconds since 1970) that
# the server computes and clamps to what the Arrow type holds, so infinity, BC dates and
# years past 9999 arrive instead of failing the CSV reader: ±infinity (and the last
# ~30,000 years of PostgreSQL's timestamp range, beyond int64 microseconds since 1970)
# become the type's largest/smallest value, which no finite value in range reaches;
# 24:00:00 becomes 23:59:59.999999.
_TEMPORAL: dict[int, tuple[pa.DataType, pa.DataType, str]] = {
    1082: (
        pa.date32(),
        pa.int32(),
        "greatest(least(extract(epoch FROM {ref}) / 86400, 2147483647), -2147483648)::int4",
    ),
    1083: (
        pa.time64("us"),
        pa.int64(),
        "least(extract(epoch FROM {ref}) * 1000000, 86399999999)::int8",
    ),
    1114: (
        pa.timestamp("us"),
        pa.int64(),
        "greatest(least(extract(epoch FROM {ref}) * 1000000, 9223372036854775807), "
        "-9223372036854775808)::int8",
    ),
    1184: (
        pa.timestamp("us", tz="UTC"),
        pa.int64(),
        "greatest(least(extract(epoch FROM {ref}) * 1000000, 9223372036854775807), "
        "-9223372036854775808)::int8",
    ),
}
_NUMERIC, _UUID, _BYTEA, _JSON, _JSONB = 1700, 2950, 17, 114, 3802

# Array type oid -> element type. Elements that JSON cannot carry exactly (numeric,
# dates, …) are exported as text arrays: lossless, and still a list column.
_ARRAYS: dict[int, pa.DataType] = {
    1000: pa.bool_(),
    1005: pa.int16(),
    1007: pa.int32(),
    1016: pa.int64(),
    1021: pa.float32(),
    1022: pa.float64(),
}
_TEXT_ARRAYS = frozenset({1009, 1014, 1015, 1231, 2951, 1182, 1115, 1185, 3807, 199, 1183})


def numeric_type(typmod: int) -> pa.DataType | None:
    """``numeric(p, s)`` as an Arrow decimal, or None when the column has no declared bounds."""
    if typmod < 4:
        return None
    precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0x7FF
    if scale > precision or precision < 1:
        return None  # negative scales (PostgreSQL 15+) and oddities stay text
    return pa.decimal128(precision, scale) if precision <= 38 else pa.decimal256(precision, scale)


@dataclass(frozen=True)
class ColumnPlan:
    """How one result column travels: SQL expression, CSV parse type, final Arrow type."""

    name: str
    pg_type: str
    select: str
    csv_type: pa.DataType
    arrow_type: pa.DataType
    convert: Callable[[pa.Array], pa.Array] | None = field(default=None, compare=False)
    unbounded_numeric: bool = False
    """A ``numeric`` without declared precision and scale: its type is measured from the
    result by :func:`settle_numerics` before the export (text until then)."""

    @property
    def arrow_field(self) -> pa.Field:
        return pa.field(self.name, self.arrow_type, metadata={"pg_type": self.pg_type})


def _uuid_array(values: pa.Array) -> pa.Array:
    storage = pa.array(
        [None if v is None else uuid.UUID(v).bytes for v in values.to_pylist()], pa.binary(16)
    )
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


def _bytea_array(values: pa.Array) -> pa.Array:
    return pa.array(
        [None if v is None else bytes.fromhex(v[2:]) for v in values.to_pylist()], pa.binary()
    )


def _json_array(values: pa.Array) -> pa.Array:
    return pa.ExtensionArray.from_storage(pa.json_(), values.cast(pa.string()))


class ConversionError(ValueError):
    """A column the Parquet export cannot map; its message names the column, never a value."""


def _list_converter(element: pa.DataType, name: str) -> Callable[[pa.Array], pa.Array]:
    def convert(values: pa.Array) -> pa.Array:
        rows = [None if v is None else json.loads(v) for v in values.to_pylist()]
        try:
            return pa.array(rows, pa.list_(element))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise ConversionError(
                f"Column {name!r} holds a multi-dimensional or mixed array, which the Parquet "
                "export maps only for one-dimensional arrays; cast it to text or json."
            ) from exc

    return convert


def plan_columns(
    attributes: Sequence[tuple[str, int, str]], typmods: Sequence[int] | None = None
) -> list[ColumnPlan]:
    """One :class:`ColumnPlan` per ``(name, type oid, type name)`` of a prepared statement.

    ``typmods`` (from ``pg_attribute`` when the columns are a table's) give ``numeric``
    its precision and scale; a numeric without them is planned as text and marked
    ``unbounded_numeric``, for :func:`settle_numerics` to choose its type from the data.
    Duplicate names get ``_2``, ``_3`` … so the file has one column per name.
    """
    plans: list[ColumnPlan] = []
    seen: dict[str, int] = {}
    for i, (raw_name, oid, type_name) in enumerate(attributes):
        count = seen.get(raw_name, 0) + 1
        seen[raw_name] = count
        name = raw_name if count == 1 else f"{raw_name}_{count}"
        ref = f"q.c{i + 1}"
        typmod = typmods[i] if typmods is not None and i < len(typmods) else -1
        pg_type = type_name
        if oid in _SCALARS:
            plans.append(ColumnPlan(name, pg_type, ref, _SCALARS[oid], _SCALARS[oid]))
        elif oid in _TEMPORAL:
            arrow_type, carried, expression = _TEMPORAL[oid]
            plans.append(
                ColumnPlan(
                    name,
                    pg_type,
                    # greatest/least skip NULLs, so a NULL is kept NULL explicitly.
                    f"CASE WHEN {ref} IS NOT NULL THEN {expression.format(ref=ref)} END",
                    carried,
                    arrow_type,
                    functools.partial(pc.cast, target_type=arrow_type),
                )
            )
        elif oid == _NUMERIC and (decimal := numeric_type(typmod)) is not None:
            precision, scale = decimal.precision, decimal.scale
            pg_type = f"numeric({precision},{scale})"
            if precision <= 38:
                plans.append(ColumnPlan(name, pg_type, ref, decimal, decimal))
            else:  # the CSV reader parses decimal128 only; a cast does the wide ones
                plans.append(
                    ColumnPlan(
                        name,
                        pg_type,
                        ref,
                        pa.string(),
                        decimal,
                        functools.partial(pc.cast, target_type=decimal),
                    )
                )
        elif oid == _NUMERIC:
            plans.append(
                ColumnPlan(name, pg_type, ref, pa.string(), pa.string(), unbounded_numeric=True)
            )
        elif oid == _UUID:
            plans.append(ColumnPlan(name, pg_type, ref, pa.string(), pa.uuid(), _uuid_array))
        elif oid == _BYTEA:
            plans.append(ColumnPlan(name, pg_type, ref, pa.string(), pa.binary(), _bytea_array))
        elif oid in (_JSON, _JSONB):
            plans.append(ColumnPlan(name, pg_type, ref, pa.string(), pa.json_(), _json_array))
        elif oid in _ARRAYS or oid in _TEXT_ARRAYS:
            element = _ARRAYS.get(oid, pa.string())
            select = f"to_json({ref})" if oid in _ARRAYS else f"to_json({ref}::text[])"
            plans.append(
                ColumnPlan(
                    name,
                    pg_type,
                    select,
                    pa.string(),
                    pa.list_(element),
                    _list_converter(element, name),
                )
            )
        else:
            # text, varchar, char, name, enums, intervals (ISO 8601), inet, money, xml,
            # anything a plugin or extension defines: exact text.
            plans.append(ColumnPlan(name, pg_type, ref, pa.string(), pa.string()))
    return plans


def copy_select(inner_sql: str, plans: Sequence[ColumnPlan], limit: int | None) -> str:
    """The SELECT a COPY runs: the user's statement as a subquery, columns renamed by position.

    ``inner_sql`` has already been accepted by the server's Parse step as exactly one
    statement, so within the parentheses it cannot end the COPY early; the newlines
    close a trailing ``--`` comment.
    """
    aliases = ", ".join(f"c{i + 1}" for i in range(len(plans)))
    columns = ", ".join(p.select for p in plans)
    tail = f" LIMIT {int(limit)}" if limit is not None else ""
    return f"SELECT {columns} FROM (\n{inner_sql}\n) AS q({aliases}){tail}"


FLOAT_DIGITS = 308
"""Integer digits beyond which a number is out of float64's range (about 1.8e308)."""


def numeric_result_type(scale: int | None, largest: Any, specials: int) -> pa.DataType:
    """The Arrow type for an unbounded ``numeric`` column, from what its values need.

    ``scale`` is the largest number of fractional digits, ``largest`` the largest absolute
    finite value (a :class:`decimal.Decimal`, or None when every value is NULL) and
    ``specials`` the count of ``NaN`` / ``±Infinity``. Exact where the values fit one
    decimal: ``decimal128(38, scale)`` up to 38 digits, ``decimal256(76, scale)`` up to 76;
    otherwise ``float64`` (NaN and infinities are floats too), and text only for
    numbers past float64's range.
    """
    scale = scale or 0
    integer_digits = max(largest.adjusted() + 1, 0) if largest is not None else 0
    if not specials:
        if integer_digits + scale <= 38:
            return pa.decimal128(38, scale)
        if integer_digits + scale <= 76:
            return pa.decimal256(76, scale)
    if integer_digits <= FLOAT_DIGITS:
        return pa.float64()
    return pa.string()


def _settled(plan: ColumnPlan, arrow_type: pa.DataType) -> ColumnPlan:
    if pa.types.is_decimal256(arrow_type):  # the CSV reader parses decimal128 only
        convert = functools.partial(pc.cast, target_type=arrow_type)
        return ColumnPlan(plan.name, plan.pg_type, plan.select, pa.string(), arrow_type, convert)
    return ColumnPlan(plan.name, plan.pg_type, plan.select, arrow_type, arrow_type)


async def settle_numerics(
    conn: Any,
    inner_sql: str,
    plans: Sequence[ColumnPlan],
    limit: int | None,
    provenance: dict[str, Any],
) -> list[ColumnPlan]:
    """Choose a type for each unbounded ``numeric`` column; record every column's type.

    A Parquet decimal needs one scale per column and the server states none for a
    ``numeric`` without a declared scale (nor for any query column: asyncpg does not
    pass type modifiers on), so the numbers would otherwise arrive as text. One
    aggregate over the same statement, in the export's snapshot, measures the largest
    scale and magnitude of each such column, and :func:`numeric_result_type` picks the
    type. That runs the statement twice: cast in the SQL, or declare ``decimals``, to
    avoid it. A volatile statement whose second run yields a wider value stops the
    export with a clear error instead of rounding.

    The chosen Arrow type of every column goes into ``provenance`` (the manifest's
    ``extra.columns``).
    """
    settled = list(plans)
    wanted = [i for i, plan in enumerate(plans) if plan.unbounded_numeric]
    if wanted:
        aliases = ", ".join(f"c{i + 1}" for i in range(len(plans)))
        tail = f" LIMIT {int(limit)}" if limit is not None else ""
        measures = ", ".join(
            f"max(scale(c{i + 1})), max(abs(c{i + 1})) FILTER (WHERE scale(c{i + 1}) IS NOT NULL), "
            f"count(*) FILTER (WHERE c{i + 1} IS NOT NULL AND scale(c{i + 1}) IS NULL)"
            for i in wanted
        )
        record = await conn.fetchrow(
            f"SELECT {measures} FROM (SELECT * FROM (\n{inner_sql}\n) AS q({aliases}){tail}) AS q"
        )
        for n, i in enumerate(wanted):
            scale, largest, specials = record[3 * n], record[3 * n + 1], record[3 * n + 2]
            settled[i] = _settled(plans[i], numeric_result_type(scale, largest, specials))
    extra = provenance.setdefault("extra", {})
    extra["columns"] = [
        {"name": plan.name, "pg_type": plan.pg_type, "type": str(plan.arrow_type)}
        for plan in settled
    ]
    return settled


class ReaderGone(Exception):
    """The converting thread stopped (it failed); the producer must stop too."""


class ChunkPipe(io.RawIOBase):
    """A bounded byte pipe from the event loop (``put``) to a reading thread (``readinto``)."""

    def __init__(self, depth: int = 8) -> None:
        super().__init__()
        self._queue: queue.Queue[bytes | None] = queue.Queue(depth)
        self._view = memoryview(b"")
        self._eof = False
        self._failed = False
        self.abandoned = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        target = memoryview(buffer).cast("B")
        while not self._view:
            if self._eof:
                return 0
            if self._failed and self._queue.empty():
                raise OSError("The export was stopped before the data ended.")
            item = self._queue.get()
            if item is None:
                if self._failed:
                    raise OSError("The export was stopped before the data ended.")
                self._eof = True
                return 0
            self._view = memoryview(item)
        n = min(len(target), len(self._view))
        target[:n] = self._view[:n]
        self._view = self._view[n:]
        return n

    async def put(self, data: bytes | None) -> None:
        """Hand over a chunk (None ends the stream); waits while the reader is behind."""
        if self.abandoned:
            raise ReaderGone
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            await asyncio.to_thread(self._queue.put, data)

    def fail(self) -> None:
        """Writer side: the stream broke off; the reader raises instead of waiting."""
        self._failed = True
        with contextlib.suppress(queue.Full):
            # A reader blocked in get() means the queue is empty, so this wakes it.
            self._queue.put_nowait(None)

    def abandon(self) -> None:
        """Reader side: stop consuming and unblock any waiting producer for good."""
        self.abandoned = True
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return


class _Sink:
    """The file object ``ParquetWriter`` writes to: the workspace's atomic file."""

    def __init__(self, write: Callable[[bytes], Any]) -> None:
        self._write = write
        self._position = 0
        self.closed = False

    def write(self, data: Any) -> int:
        chunk = bytes(data)
        self._write(chunk)
        self._position += len(chunk)
        return len(chunk)

    def tell(self) -> int:
        return self._position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    def writable(self) -> bool:
        return True


ROW_GROUP_ROWS = 64 * 1024
"""Rows per Parquet row group: about 4 MiB of this benchmark's rows. Larger groups cost
memory (a whole group is encoded before it is written) and gained nothing measurable."""
CSV_BLOCK = 1 << 20


def _memory_pool() -> pa.MemoryPool:
    """jemalloc where pyarrow has it: it hands freed blocks back; mimalloc kept ~40 MiB more."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # pragma: no cover - a pyarrow built without jemalloc
        return pa.default_memory_pool()


def csv_to_parquet(
    pipe: ChunkPipe,
    write: Callable[[bytes], Any],
    plans: Sequence[ColumnPlan],
    *,
    multiline: bool = True,
) -> int:
    """Thread body: parse the CSV stream in ``pipe`` and write Parquet; returns the row count."""
    schema = pa.schema([p.arrow_field for p in plans])
    sink = _Sink(write)
    rows = 0
    try:
        pool = _memory_pool()
        reader = pacsv.open_csv(
            pipe,
            memory_pool=pool,
            read_options=pacsv.ReadOptions(
                column_names=[f"c{i}" for i in range(len(plans))], block_size=CSV_BLOCK
            ),
            # A row of one NULL is an empty line: it must stay a row.
            parse_options=pacsv.ParseOptions(
                newlines_in_values=multiline, ignore_empty_lines=False
            ),
            convert_options=pacsv.ConvertOptions(
                column_types={f"c{i}": p.csv_type for i, p in enumerate(plans)},
                true_values=["t"],
                false_values=["f"],
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
            ),
        )
    except pa.ArrowInvalid as exc:
        if "Empty CSV file" not in str(exc):
            pipe.abandon()
            raise
        reader = None
    try:
        with pq.ParquetWriter(sink, schema, memory_pool=pool) as writer:
            pending: list[pa.RecordBatch] = []
            pending_rows = 0
            for batch in reader or ():
                columns = [
                    p.convert(batch.column(i)) if p.convert else batch.column(i)
                    for i, p in enumerate(plans)
                ]
                pending.append(pa.RecordBatch.from_arrays(columns, schema=schema))
                pending_rows += batch.num_rows
                if pending_rows >= ROW_GROUP_ROWS:
                    writer.write_table(pa.Table.from_batches(pending, schema))
                    rows += pending_rows
                    pending, pending_rows = [], 0
            if pending:
                writer.write_table(pa.Table.from_batches(pending, schema))
                rows += pending_rows
    except BaseException:
        pipe.abandon()
        raise
    return rows
