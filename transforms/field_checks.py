"""A field's contract rules as checks: of one value, and of a block's column at once.

``value_check(field)`` gives the first rule a (non-null) value breaks, worded as its dead letter's reason, or
None. ``column_check(field, required)`` screens a column of a block of events (one value per event, None where
the event has none): True for each row whose value certainly keeps the rules (or is null where the field may
be), False for every other row, which the value check then reads one by one for its reason. The screen may
send a valid value that way too (a rare type, an integer beyond 2**53, a block with a broken value of a kind it
cannot sort out in bulk), never the reverse; so a block's dead letters are those of its events checked one at a
time (tests/test_events.py holds the two to that), and the cost of a broken value is its own row, not its
block's.
"""
from __future__ import annotations

import datetime
import itertools
import operator
import re
from typing import Any, Callable

import numpy as np

RFC3339_PATTERN = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
_RFC3339 = re.compile(RFC3339_PATTERN + r"\Z")
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max: features are float32
_EXACT_IN_FLOAT64 = 2.0 ** 53  # integers below this compare as exactly in float64 as in Python
_NONE = type(None)

ValueCheck = Callable[[Any], "str | None"]
ColumnCheck = Callable[[list], np.ndarray]


# ---------------------------------------------------------------------------------------------
# One value

def value_check(field) -> ValueCheck:
    """A function that returns the field's first broken rule for a (non-null) value, or None."""
    name = field.name
    if field.type == "string":
        return _string_check(field)
    if field.type == "timestamp":
        message = f"{name}: must be an RFC 3339 time with a zone"
        return lambda value: None if is_event_time(value) else message
    if field.type == "binary":
        message = f"{name}: must be 0 or 1"
        return lambda value: None if type(value) in (int, float) and value in (0, 1) else message
    return _number_check(field)


def _string_check(field) -> ValueCheck:
    name, enum = field.name, frozenset(field.enum or ())
    pattern = re.compile(field.pattern) if field.pattern else None

    def check(value):
        if type(value) is not str:
            return f"{name}: must be a string"
        if field.non_empty and not value:
            return f"{name}: must not be empty"
        if enum and value not in enum:
            return f"{name}: must be one of {', '.join(field.enum)}"
        if pattern and not pattern.fullmatch(value):
            return f"{name}: must match {field.pattern}"
        return None

    return check


def _number_check(field) -> ValueCheck:
    bounds = [(bound, holds, text.format(_plain(bound))) for bound, holds, text in _bounds(field)]
    message = f"{field.name}: must be a finite number" + "".join(f" {text}" for _, _, text in bounds)

    def check(value):
        # bool is an int subclass: excluded on purpose. Features are float32, so a number beyond
        # its range is no more finite than NaN; the comparison is exact for integers of any size.
        if type(value) not in (int, float) or not abs(value) <= FLOAT32_MAX:
            return message
        return None if all(holds(value, bound) for bound, holds, _ in bounds) else message

    return check


def _bounds(field) -> list[tuple]:
    """(bound, holds(value, bound), how it reads) for each of the field's bounds."""
    return [(bound, holds, text) for bound, holds, text in ((field.exclusive_minimum, lambda v, b: v > b, "> {}"),
                                                            (field.minimum, lambda v, b: v >= b, ">= {}"),
                                                            (field.maximum, lambda v, b: v <= b, "<= {}"))
            if bound is not None]


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def is_event_time(value: Any) -> bool:
    if isinstance(value, datetime.datetime):  # a typed timestamp column (Parquet)
        return value.tzinfo is not None
    if type(value) is not str or not _RFC3339.match(value):
        return False
    try:
        datetime.datetime.fromisoformat(value)
    except ValueError:  # e.g. month 13
        return False
    return True


# ---------------------------------------------------------------------------------------------
# A column

def column_check(field, required: bool) -> ColumnCheck:
    """The screen of ``field``'s column (see the module's doc); ``required``: a null fails it."""
    if field.type in ("number", "binary"):
        return _numbers(field, required)
    if field.type == "timestamp":
        times = time_column_check(required)
        return lambda column: times(column)[0]
    return _strings(field, required)


def _numbers(field, required: bool) -> ColumnCheck:
    binary = field.type == "binary"

    def check(column: list) -> np.ndarray:
        types = _Types(column)
        if not types.kinds <= {int, float, _NONE}:  # a string, a bool, a list: these rows fail
            numeric = types.where(float) | types.where(int)
            ok = np.zeros(len(column), bool)
            ok[numeric] = check(list(itertools.compress(column, numeric)))
            return ok | types.nulls(required)
        try:
            values = np.array(column, dtype=np.float64)  # a null is NaN, which every comparison fails
        except OverflowError:  # an integer beyond float64
            return np.zeros(len(column), bool)
        with np.errstate(invalid="ignore"):
            ok = np.abs(values) < _EXACT_IN_FLOAT64  # so also within float32's range
            if binary:
                ok &= (values == 0) | (values == 1)
            for bound, holds, _ in _bounds(field):
                ok &= holds(values, bound)
        return ok | types.nulls(required)

    return check


def _strings(field, required: bool) -> ColumnCheck:
    enum, pattern = frozenset(field.enum or ()), re.compile(field.pattern) if field.pattern else None

    def check(column: list) -> np.ndarray:
        types = _Types(column)
        ok = types.where(str)
        if enum or pattern:
            distinct = set(itertools.compress(column, ok))
            broken = (distinct - enum if enum else set()) | ({""} & distinct if field.non_empty else set())
            if pattern:
                broken |= {value for value in distinct - broken if not pattern.fullmatch(value)}  # each value once
        else:
            broken = {""} if field.non_empty and "" in column else set()
        if broken:
            ok[ok] = ~np.fromiter(map(broken.__contains__, itertools.compress(column, ok)), bool)
        return ok | types.nulls(required)

    return check


def time_column_check(required: bool) -> Callable[[list], tuple[np.ndarray, np.ndarray]]:
    """The screen of a timestamp field's column, which also gives each passed row's time: (passed, the time in
    microseconds since the epoch where passed and not null). Its values are RFC 3339 texts, or aware datetimes
    where the column was typed (Parquet)."""
    def check(column: list) -> tuple[np.ndarray, np.ndarray]:
        types = _Types(column)
        ok = types.where(str)
        texts = list(itertools.compress(column, ok))
        shaped = np.fromiter(map(bool, map(_RFC3339.match, texts)), bool, len(texts))
        moments, shaped[shaped] = _real_times(list(itertools.compress(texts, shaped)))  # February 30 has the shape
        ok[ok] = shaped
        times_us = np.zeros(len(column), np.int64)
        times_us[ok] = times_us_of(moments)
        dated = types.where(datetime.datetime)
        if dated.any():
            values = list(itertools.compress(column, dated))
            aware = np.fromiter((value.tzinfo is not None for value in values), bool, len(values))
            dated[dated] = aware
            times_us[dated] = times_us_of(list(itertools.compress(values, aware)))
        return ok | dated | types.nulls(required), times_us

    return check


def _real_times(texts: list[str]) -> tuple[list[datetime.datetime], np.ndarray]:
    """The moments the RFC 3339-shaped texts name, and whether each names one: all at once, and for a block with
    one that does not (February 30), by halves down to the ones that do not."""
    try:
        return list(map(datetime.datetime.fromisoformat, texts)), np.ones(len(texts), bool)
    except ValueError:
        if len(texts) == 1:
            return [], np.zeros(1, bool)
    half = len(texts) // 2
    (first, real_first), (second, real_second) = _real_times(texts[:half]), _real_times(texts[half:])
    return first + second, np.concatenate([real_first, real_second])


def times_us_of(moments: list[datetime.datetime]) -> np.ndarray:
    """Aware datetimes in microseconds since the epoch (UTC), exactly, converted by Arrow for a block at once."""
    import pyarrow as pa

    return pa.array(moments, type=pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_numpy(zero_copy_only=False)


class _Types:
    """The type of each value in a column."""

    def __init__(self, column: list):
        self._types = list(map(type, column))
        self.kinds = set(self._types)

    def where(self, kind: type) -> np.ndarray:
        """Where the column holds a ``kind`` (exactly: not a subclass); a fresh array."""
        if self.kinds == {kind} or kind not in self.kinds:
            return np.full(len(self._types), kind in self.kinds)
        return np.fromiter(map(operator.is_, self._types, itertools.repeat(kind)), bool, len(self._types))

    def nulls(self, required: bool) -> np.ndarray:
        """Where an optional field's column is null (nowhere for a required field's)."""
        return self.where(_NONE) if not required else np.zeros(len(self._types), bool)
