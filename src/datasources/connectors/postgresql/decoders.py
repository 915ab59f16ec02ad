"""Date, time and interval values that Python cannot hold, as PostgreSQL's own text.

PostgreSQL's dates run from 4713 BC to 5874897 AD and include ``±infinity``; its
timestamps reach 294276 AD; ``time`` includes ``24:00:00``; an interval can hold
2^31 months, 2^31 days and 2^63 microseconds at once. Python's ``date``/``datetime``
hold years 1 to 9999, ``time`` stops before midnight and ``timedelta`` at 999,999,999 days,
so the driver's own decoders raise ``OverflowError``/``ValueError`` on such values and a
whole answer is lost.

:func:`install` registers decoders (on every new connection) that read the server's
binary value as integers and return the Python value when Python can hold it, and
otherwise **the value as text** in PostgreSQL's ISO style — ``infinity``,
``-infinity``, ``4714-11-24 BC``, ``5874897-12-31``, ``294276-12-31 23:59:59+00``,
``24:00:00`` — and intervals that ``timedelta`` cannot hold as ISO 8601 durations
(``P178956970Y7M2147483647DT…``). The encoders take the same Python values as the
driver's own.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any

__all__ = ["install"]

_EPOCH_DATE = dt.date(2000, 1, 1)
_EPOCH = dt.datetime(2000, 1, 1)
_EPOCH_UTC = dt.datetime(2000, 1, 1, tzinfo=dt.UTC)
_POSTGRES_EPOCH_JDATE = 2451545
_INT32_MAX, _INT32_MIN = 2**31 - 1, -(2**31)
_INT64_MAX, _INT64_MIN = 2**63 - 1, -(2**63)
_US_PER_DAY = 86_400_000_000


def _j2date(jd: int) -> tuple[int, int, int]:
    """PostgreSQL's ``j2date``: a Julian day number to (year, month, day), year 0 = 1 BC."""
    julian = jd + 32044
    quad = julian // 146097
    extra = (julian - quad * 146097) * 4 + 3
    julian += 60 + quad * 3 + extra // 146097
    quad = julian // 1461
    julian -= quad * 1461
    y = julian * 4 // 1461
    julian = ((julian + 305) % 365 if y != 0 else (julian + 306) % 366) + 123
    y += quad * 4
    year = y - 4800
    quad = julian * 2141 // 65536
    day = julian - 7834 * quad // 256
    month = (quad + 10) % 12 + 1
    return year, month, day


def _date_text(days: int) -> tuple[str, bool]:
    """``(YYYY-MM-DD, bc)`` for days since 2000-01-01, as PostgreSQL prints it."""
    year, month, day = _j2date(days + _POSTGRES_EPOCH_JDATE)
    bc = year <= 0
    return f"{(1 - year) if bc else year:04d}-{month:02d}-{day:02d}", bc


def _time_text(us: int) -> str:
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    text = f"{hour:02d}:{minute:02d}:{second:02d}"
    return f"{text}.{micro:06d}".rstrip("0") if micro else text


def _zone_text(offset_seconds: int) -> str:
    sign = "+" if offset_seconds >= 0 else "-"
    minutes, seconds = divmod(abs(offset_seconds), 60)
    hours, minutes = divmod(minutes, 60)
    text = f"{sign}{hours:02d}"
    if minutes or seconds:
        text += f":{minutes:02d}"
    if seconds:
        text += f":{seconds:02d}"
    return text


def _decode_date(value: tuple[int]) -> dt.date | str:
    (days,) = value
    if days == _INT32_MAX:
        return "infinity"
    if days == _INT32_MIN:
        return "-infinity"
    try:
        return _EPOCH_DATE + dt.timedelta(days=days)
    except OverflowError:
        text, bc = _date_text(days)
        return f"{text} BC" if bc else text


def _encode_date(value: dt.date) -> tuple[int]:
    return ((value - _EPOCH_DATE).days,)


def _timestamp_text(us: int, zone: str) -> str:
    days, rest = divmod(us, _US_PER_DAY)
    date, bc = _date_text(days)
    return f"{date} {_time_text(rest)}{zone}{' BC' if bc else ''}"


def _timestamp_decoder(epoch: dt.datetime, zone: str) -> Callable[[tuple[int]], dt.datetime | str]:
    """A decoder of microseconds since ``epoch``: a datetime, or the server's text when
    Python cannot hold the value (infinities, years past 9999 or before 1)."""

    def decode(value: tuple[int]) -> dt.datetime | str:
        (us,) = value
        if us == _INT64_MAX:
            return "infinity"
        if us == _INT64_MIN:
            return "-infinity"
        try:
            return epoch + dt.timedelta(microseconds=us)
        except OverflowError:
            return _timestamp_text(us, zone)

    return decode


_decode_timestamp = _timestamp_decoder(_EPOCH, "")
_decode_timestamptz = _timestamp_decoder(_EPOCH_UTC, "+00")


def _encode_timestamp(value: dt.datetime) -> tuple[int]:
    if value.tzinfo is not None:  # the driver's own rule: aware values count as UTC
        value = value.astimezone(dt.UTC).replace(tzinfo=None)
    delta = value - _EPOCH
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds,)


def _encode_timestamptz(value: dt.datetime) -> tuple[int]:
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    delta = value - _EPOCH_UTC
    return ((delta.days * 86400 + delta.seconds) * 1_000_000 + delta.microseconds,)


def _decode_time(value: tuple[int]) -> dt.time | str:
    (us,) = value
    if us >= _US_PER_DAY:
        return _time_text(us)  # 24:00:00
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return dt.time(hour, minute, second, micro)


def _encode_time(value: dt.time) -> tuple[int]:
    return (((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond,)


def _decode_timetz(value: tuple[int, int]) -> dt.time | str:
    us, west = value  # the zone is stored in seconds *west* of UTC
    if us >= _US_PER_DAY:
        return _time_text(us) + _zone_text(-west)
    seconds, micro = divmod(us, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    zone = dt.timezone(dt.timedelta(seconds=-west))
    return dt.time(hour, minute, second, micro, tzinfo=zone)


def _encode_timetz(value: dt.time) -> tuple[int, int]:
    offset = value.utcoffset() or dt.timedelta(0)
    return (_encode_time(value)[0], -int(offset.total_seconds()))


def _decode_interval(value: tuple[int, int, int]) -> dt.timedelta | str:
    months, days, us = value
    try:
        # The driver's own reading: a month is 30 days.
        return dt.timedelta(days=months * 30 + days, microseconds=us)
    except OverflowError:
        return _duration(months, days, us)


def _duration(months: int, days: int, us: int) -> str:
    """ISO 8601, each part signed as PostgreSQL's ``iso_8601`` IntervalStyle writes it."""
    parts = ["P"]
    year_part = abs(months) // 12 * (-1 if months < 0 else 1)
    month_part = months - year_part * 12
    if year_part:
        parts.append(f"{year_part}Y")
    if month_part:
        parts.append(f"{month_part}M")
    if days:
        parts.append(f"{days}D")
    if us:
        negative = us < 0
        seconds, micro = divmod(abs(us), 1_000_000)
        minutes, second = divmod(seconds, 60)
        hours, minute = divmod(minutes, 60)
        sign = "-" if negative else ""
        parts.append("T")
        if hours:
            parts.append(f"{sign}{hours}H")
        if minute:
            parts.append(f"{sign}{minute}M")
        if second or micro:
            fraction = f".{micro:06d}".rstrip("0") if micro else ""
            parts.append(f"{sign}{second}{fraction}S")
    return "".join(parts) if len(parts) > 1 else "PT0S"


def _decode_interval_17(value: tuple[int, int, int]) -> dt.timedelta | str:
    """PostgreSQL 17 and later also have infinite intervals (all three fields at a limit)."""
    if value == (_INT32_MAX, _INT32_MAX, _INT64_MAX):
        return "infinity"
    if value == (_INT32_MIN, _INT32_MIN, _INT64_MIN):
        return "-infinity"
    return _decode_interval(value)


def _encode_interval(value: dt.timedelta) -> tuple[int, int, int]:
    return (0, value.days, value.seconds * 1_000_000 + value.microseconds)


_CODECS: tuple[tuple[str, Any, Any], ...] = (
    ("date", _encode_date, _decode_date),
    ("timestamp", _encode_timestamp, _decode_timestamp),
    ("timestamptz", _encode_timestamptz, _decode_timestamptz),
    ("time", _encode_time, _decode_time),
    ("timetz", _encode_timetz, _decode_timetz),
    ("interval", _encode_interval, _decode_interval),
)


async def install(conn: Any) -> None:
    """Register the decoders on one asyncpg connection (a pool's ``init`` step)."""
    infinite_intervals = conn.get_server_version().major >= 17
    for name, encoder, decoder in _CODECS:
        if decoder is _decode_interval and infinite_intervals:
            decoder = _decode_interval_17
        await conn.set_type_codec(
            name, schema="pg_catalog", encoder=encoder, decoder=decoder, format="tuple"
        )
