"""Parse and validate raw events against a spec: valid events in batches, the rest as dead letters.

Everything downstream works on batches (``EventBatch``), because per-element Python work is
what bounds a Beam pipeline's throughput; a batch is whatever a source read at once (a block of
file lines, one Kafka poll).
"""
from __future__ import annotations

import base64
import datetime
import json
import re
from typing import Any, Callable, Iterable, NamedTuple

import apache_beam as beam
import orjson

from transforms import live_metrics
from transforms.spec import Field, Spec

MAX_EVENT_BYTES = 1 << 20  # the contract: a larger event breaks it
MAX_RAW_BYTES_KEPT = 64 << 10  # a dead letter keeps at most this much of the raw input
METRICS_NAMESPACE = "rtml"
DEAD_LETTERS = "dead_letters"
# The key of a stream's scored record or dead letter that holds its input's Raw.position; the Kafka
# sinks take it out before writing.
POSITION = "_position"

RFC3339_PATTERN = r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
_RFC3339 = re.compile(RFC3339_PATTERN + r"\Z")
_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)
FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max: features are float32


class Raw(NamedTuple):
    """One input record: JSON bytes (a file line, a Kafka message) or an already typed row (Parquet).

    ``source`` says where it came from, for dead letters: ``{"file": ..., "line": n}`` or
    ``{"topic": ..., "partition": p, "offset": o}``.
    """

    payload: bytes | dict | Decoded | Unreadable | None  # None: a Kafka message without a value (a tombstone)
    source: dict
    # A stream's: where the record sits in its log, carried to its scored record or dead letter (as
    # POSITION) so that its offset is committed only once that is written (transforms.kafka_commit).
    position: tuple | None = None


class Unreadable(NamedTuple):
    """A ``Raw`` payload standing for the rest of a file that could not be read: a dead letter."""

    reason: str


class Decoded(NamedTuple):
    """A ``Raw`` payload read from a binary format (``transforms.kafka_formats``): the record, or why it could
    not be read; and the bytes as they came, which its dead letter keeps."""

    record: dict | str
    original: bytes


class EventBatch(NamedTuple):
    """Valid events, as given, with each event's time in microseconds since the epoch (UTC)."""

    events: list[dict]
    event_time_us: list[int]
    positions: list[tuple] | None = None  # each event's Raw.position, in a stream


class ScoredBatch(NamedTuple):
    """An ``EventBatch`` as scored: its scored records, in its order, by one model version."""

    events: EventBatch
    records: list[dict]
    model_version: str


class EventParser:
    """Checks raw records against a spec's fields.

    ``parse(payload)`` returns ``(event, event_time_us)`` for a valid event, or a one-line reason
    such as ``amount: must be a finite number > 0`` for an invalid one. It never raises.
    With ``require_label`` an event without the spec's label is invalid (training needs it).
    """

    def __init__(self, spec: Spec, require_label: bool = False):
        self._time_field = spec.event_time
        self._checks = [(f.name, f.required or (require_label and f.name == spec.label), _check_for(f))
                        for f in spec.fields]

    def parse(self, payload: bytes | dict | Decoded | Unreadable | None) -> tuple[dict, int] | str:
        if isinstance(payload, dict):
            return self._validate(payload)
        if isinstance(payload, Decoded):
            if len(payload.original) > MAX_EVENT_BYTES:
                return "event larger than 1 MiB"
            return payload.record if isinstance(payload.record, str) else self._validate(payload.record)
        if payload is None:
            return "no value (a null Kafka message value)"
        if isinstance(payload, Unreadable):
            return payload.reason
        if len(payload) > MAX_EVENT_BYTES:
            return "event larger than 1 MiB"
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError as error:
            return self._refusal(payload, error)
        if not isinstance(event, dict):
            return "not a JSON object"
        return self._validate(event)

    def _refusal(self, payload: bytes, error: orjson.JSONDecodeError) -> str:
        """Why a payload that orjson refused is a dead letter. The standard library tells a precise
        reason, and reads NaN, Infinity and numbers beyond a double, so that a field at fault is
        named; such a value outside the contract's fields still makes the event a dead letter, as
        its records could not carry it."""
        event = _lenient_json(payload)
        if isinstance(event, str):
            return event
        if not isinstance(event, dict):
            return "not a JSON object"
        reason = self._validate(event)
        return reason if isinstance(reason, str) else f"not valid JSON ({error.msg} at column {error.colno})"

    def _validate(self, event: dict) -> tuple[dict, int] | str:
        for name, required, check in self._checks:
            value = event.get(name)
            if value is None:
                if required:
                    return f"{name}: missing" if name not in event else f"{name}: is null"
                continue
            error = check(value)
            if error:
                return error
        return event, event_time_us_of(event[self._time_field])


def _lenient_json(payload: bytes) -> Any:
    """The decoded JSON, or the reason it cannot be decoded."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as error:
        return f"not valid UTF-8 (byte {error.start})"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        return f"not valid JSON ({error.msg} at column {error.colno})"
    except RecursionError:
        return "not valid JSON (nested too deeply)"
    except ValueError:  # Python's limit on the digits of an integer
        return "not valid JSON (an integer of more than 4300 digits)"
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return "not valid UTF-8 (an escaped lone surrogate)"
    return value


def _check_for(field: Field) -> Callable[[Any], str | None]:
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


def _string_check(field: Field) -> Callable[[Any], str | None]:
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


def _number_check(field: Field) -> Callable[[Any], str | None]:
    bounds = [(field.exclusive_minimum, lambda v, b: v > b, "> {}"),
              (field.minimum, lambda v, b: v >= b, ">= {}"),
              (field.maximum, lambda v, b: v <= b, "<= {}")]
    bounds = [(bound, holds, text.format(_plain(bound))) for bound, holds, text in bounds if bound is not None]
    message = f"{field.name}: must be a finite number" + "".join(f" {text}" for _, _, text in bounds)

    def check(value):
        # bool is an int subclass: excluded on purpose. Features are float32, so a number beyond
        # its range is no more finite than NaN; the comparison is exact for integers of any size.
        if type(value) not in (int, float) or not abs(value) <= FLOAT32_MAX:
            return message
        return None if all(holds(value, bound) for bound, holds, _ in bounds) else message

    return check


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


def event_time_us_of(value: str | datetime.datetime) -> int:
    moment = value if isinstance(value, datetime.datetime) else datetime.datetime.fromisoformat(value)
    return (moment - _EPOCH) // _MICROSECOND


def utc_datetime(time_us: int) -> datetime.datetime:
    """An instant in microseconds since the epoch as an aware UTC datetime."""
    return _EPOCH + datetime.timedelta(microseconds=time_us)


def rfc3339(time_us: int) -> str:
    """An instant as RFC 3339 UTC with microseconds, always all six digits, so that such strings sort as
    their times do (Beam's ``Timestamp.to_rfc3339`` leaves out a zero fraction)."""
    return utc_datetime(time_us).isoformat(timespec="microseconds").replace("+00:00", "Z")


def dead_letter(payload: bytes | dict | Decoded | Unreadable | None, error: str, source: dict, spec_name: str) -> dict:
    """The contract's dead-letter record: reason, where it came from, and the raw input (cut if long)."""
    if isinstance(payload, Decoded):
        payload = payload.original
    if payload is None or isinstance(payload, Unreadable):
        raw = b""
    else:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload, default=str).encode("utf-8")
    kept = raw[:MAX_RAW_BYTES_KEPT]
    try:
        text, encoding = kept.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as decode_error:
        if len(raw) > len(kept) and decode_error.start >= len(kept) - 3:  # the cut split a character
            text, encoding = kept.decode("utf-8", errors="ignore"), "utf-8"
        else:
            text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    return {"error": error, "source": source, "spec": spec_name, "raw": text, "raw_encoding": encoding,
            "raw_bytes": len(raw), "raw_truncated": len(raw) > len(kept)}


class _ParseBatches(beam.DoFn):
    def __init__(self, spec: Spec, require_label: bool):
        self._spec = spec
        self._require_label = require_label
        self._received = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "received")
        self._valid = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "valid")

    def setup(self):
        self._parser = EventParser(self._spec, self._require_label)

    def process(self, batch: list[Raw]) -> Iterable:
        events, times, positions = [], [], []
        for payload, source, position in batch:
            parsed = self._parser.parse(payload)
            if isinstance(parsed, str):
                beam.metrics.Metrics.counter(f"{METRICS_NAMESPACE}.dead_letter", parsed).inc()
                live_metrics.DEAD_LETTERS.labels(reason=parsed).inc()
                letter = dead_letter(payload, parsed, source, self._spec.name)
                if position is not None:
                    letter[POSITION] = position
                yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)
            else:
                events.append(parsed[0])
                times.append(parsed[1])
                positions.append(position)
        self._received.inc(len(batch))
        self._valid.inc(len(events))
        live_metrics.RECEIVED.inc(len(batch))
        live_metrics.VALID.inc(len(events))
        if events:
            yield EventBatch(events, times, positions if positions[0] is not None else None)


class ParseEvents(beam.PTransform):
    """Batches of ``Raw`` records in; ``events`` (``EventBatch``) and ``dead_letters`` (dicts) out.

    Every record comes out exactly once, in one of the two outputs: received = valid + dead letters.
    """

    def __init__(self, spec: Spec, require_label: bool = False):
        super().__init__()
        self._spec = spec
        self._require_label = require_label

    def expand(self, raw_batches):
        return raw_batches | beam.ParDo(_ParseBatches(self._spec, self._require_label)).with_outputs(
            DEAD_LETTERS, main="events")


def dead_letter_time_us(letter: dict, time_field: str) -> int | None:
    """The event time a dead letter's raw input names, if it is a JSON object with a valid one; else None."""
    if letter.get("raw_encoding") != "utf-8" or letter.get("raw_truncated"):
        return None
    try:
        value = orjson.loads(letter["raw"])
    except orjson.JSONDecodeError:
        try:  # NaN, Infinity: still JSON to the standard library, and the time may be fine
            value = json.loads(letter["raw"])
        except (ValueError, RecursionError):
            return None
    if not isinstance(value, dict) or not is_event_time(value.get(time_field)):
        return None
    try:
        return event_time_us_of(value[time_field])
    except (ValueError, OverflowError):
        return None
