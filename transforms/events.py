"""Parse and validate raw events against a spec: valid events in batches, the rest as dead letters.

Everything downstream works on batches (``EventBatch``), because per-element Python work is
what bounds a Beam pipeline's throughput; a batch is whatever a source read at once (a block of
file lines, one Kafka poll).
"""
from __future__ import annotations

import base64
import datetime
import itertools
import json
import pickle
from typing import Any, Iterable, NamedTuple, Sequence

import apache_beam as beam
import numpy as np
import orjson

from transforms import live_metrics
from transforms.field_checks import column_check, is_event_time, time_column_check, value_check
from transforms.spec import Spec

MAX_EVENT_BYTES = 1 << 20  # the contract: a larger event breaks it
MAX_RAW_BYTES_KEPT = 64 << 10  # a dead letter keeps at most this much of the raw input
# A smaller block's events are checked one by one: numpy's cost per call outweighs the rows' below about this many
# (measured: 1 event 109 us screened against 5 us alone; 64 events 264 us against 296 us).
MIN_SCREENED_BLOCK = 64
METRICS_NAMESPACE = "rtml"
DEAD_LETTERS = "dead_letters"
# The key of a stream's scored record or dead letter that holds its input's Raw.position; the Kafka
# sinks take it out before writing.
POSITION = "_position"

_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
_MICROSECOND = datetime.timedelta(microseconds=1)


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


class Block(NamedTuple):
    """Records read at once (a block of a file's lines, a stream's batch): their payloads (as ``Raw.payload``),
    where each came from (``sources[i]``, as ``Raw.source``), and in a stream where each sits in its log."""

    payloads: list
    sources: Sequence[dict]
    positions: list | None = None

    @classmethod
    def of(cls, raws: list[Raw]) -> Block:
        positions = [raw.position for raw in raws]
        return cls([raw.payload for raw in raws], [raw.source for raw in raws],
                   positions if raws and positions[0] is not None else None)


class FileSpan(Sequence):
    """The sources of a block of a file's records: ``{"file": path, unit: first + i}``, made only when asked for (a
    dead letter's)."""

    def __init__(self, path: str, unit: str, first: int, count: int):
        self.path, self.unit, self.first, self.count = path, unit, first, count

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.count:
            raise IndexError(index)
        return {"file": self.path, self.unit: self.first + index}

    def __len__(self) -> int:
        return self.count


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


class ParsedBlock(NamedTuple):
    """A ``Block`` checked: its valid events (``EventBatch``, in the block's order, with ``rows``: where each
    sat in the block) and the others' ``(row, reason)``."""

    events: EventBatch
    rows: list[int]
    broken: list[tuple[int, str]]


class ScoredBatch(NamedTuple):
    """An ``EventBatch`` as scored: its scored records, in its order, by one model version."""

    events: EventBatch
    records: list[dict]
    model_version: str


class BlockCoder(beam.coders.Coder):
    """Blocks of events (``Block``, ``EventBatch``, ``ScoredBatch``) pickled; their size estimated from their first
    event's, not by pickling them whole. (Beam samples the size of the elements each step outputs, all of the first
    ten and fewer later; pickling blocks of thousands of events to measure them took 0.8 s of a 5 s batch run.)"""

    def encode(self, value) -> bytes:
        return pickle.dumps(value, pickle.HIGHEST_PROTOCOL)

    def decode(self, encoded: bytes):
        return pickle.loads(encoded)

    def estimate_size(self, value) -> int:
        items = value.events.events if isinstance(value, ScoredBatch) else value[0]
        return len(items) * len(pickle.dumps(items[0], pickle.HIGHEST_PROTOCOL)) if items else 16

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return Any


for _block in (Block, EventBatch, ScoredBatch):
    beam.coders.registry.register_coder(_block, BlockCoder)


class EventParser:
    """Checks raw records against a spec's fields.

    ``parse(payload)`` returns ``(event, event_time_us)`` for a valid event, or a one-line reason
    such as ``amount: must be a finite number > 0`` for an invalid one. It never raises.
    ``parse_block(payloads)`` gives the same answers for a block at once: every field is screened as a
    column (``transforms.field_checks``), and only the rows the screen does not pass go through
    ``parse`` one by one, for their reasons.
    With ``require_label`` an event without the spec's label is invalid (training needs it).
    """

    def __init__(self, spec: Spec, require_label: bool = False):
        self._time_field = spec.event_time
        required = {f.name: f.required or (require_label and f.name == spec.label) for f in spec.fields}
        self._checks = [(f.name, required[f.name], value_check(f)) for f in spec.fields]
        self._column_checks = [(f.name, column_check(f, required[f.name])) for f in spec.fields
                               if f.name != spec.event_time]
        self._time_check = time_column_check(required=True)

    def parse_block(self, payloads: list) -> ParsedBlock:
        rows, events, times = self._screened(payloads)
        rest = np.ones(len(payloads), bool)
        rest[rows] = False
        broken, recovered = [], {}
        for row in np.flatnonzero(rest).tolist():
            parsed = self.parse(payloads[row])
            if isinstance(parsed, str):
                broken.append((row, parsed))
            else:  # one the screen sent here though valid
                recovered[row] = parsed
        if recovered:
            merged = sorted([*zip(rows, zip(events, times)), *recovered.items()])
            rows, events, times = [row for row, _ in merged], [e for _, (e, _) in merged], [t for _, (_, t) in merged]
        return ParsedBlock(EventBatch(events, times), rows, broken)

    def _screened(self, payloads: list) -> tuple[list[int], list[dict], list[int]]:
        """The rows that certainly hold valid events, in order, their events and their times."""
        if len(payloads) < MIN_SCREENED_BLOCK:
            return [], [], []
        decoded = _decoded(payloads)
        rows = [row for row, event in enumerate(decoded) if event is not None]
        candidates = [decoded[row] for row in rows]
        passed, times = self._time_check(list(map(dict.get, candidates, itertools.repeat(self._time_field))))
        for name, check in self._column_checks:
            passed &= check(list(map(dict.get, candidates, itertools.repeat(name))))
        return (list(itertools.compress(rows, passed)), list(itertools.compress(candidates, passed)),
                times[passed].tolist())

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


def _decoded(payloads: list) -> list[dict | None]:
    """Each payload's JSON object, if it is one of at most MAX_EVENT_BYTES; else None (``EventParser.parse`` says
    why). (One loop, not a call per payload: this runs for every event.)"""
    decoded, loads = [], orjson.loads
    for payload in payloads:
        event = None
        if type(payload) is bytes:
            if len(payload) <= MAX_EVENT_BYTES:
                try:
                    event = loads(payload)
                except orjson.JSONDecodeError:
                    pass
        elif type(payload) is dict:
            event = payload
        elif isinstance(payload, Decoded) and len(payload.original) <= MAX_EVENT_BYTES:
            event = payload.record
        decoded.append(event if type(event) is dict else None)
    return decoded


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

    def process(self, block: Block) -> Iterable:
        parsed = self._parser.parse_block(block.payloads)
        for row, reason in parsed.broken:
            beam.metrics.Metrics.counter(f"{METRICS_NAMESPACE}.dead_letter", reason).inc()
            live_metrics.DEAD_LETTERS.labels(reason=reason).inc()
            letter = dead_letter(block.payloads[row], reason, block.sources[row], self._spec.name)
            if block.positions is not None:
                letter[POSITION] = block.positions[row]
            yield beam.pvalue.TaggedOutput(DEAD_LETTERS, letter)
        received, valid = len(block.payloads), len(parsed.rows)
        self._received.inc(received)
        self._valid.inc(valid)
        live_metrics.RECEIVED.inc(received)
        live_metrics.VALID.inc(valid)
        if valid:
            positions = None if block.positions is None else [block.positions[row] for row in parsed.rows]
            yield parsed.events._replace(positions=positions)


class ParseEvents(beam.PTransform):
    """``Block``s in; ``events`` (``EventBatch``) and ``dead_letters`` (dicts) out.

    Every record comes out exactly once, in one of the two outputs: received = valid + dead letters.
    """

    def __init__(self, spec: Spec, require_label: bool = False):
        super().__init__()
        self._spec = spec
        self._require_label = require_label

    def expand(self, raw_batches):
        return raw_batches | beam.ParDo(_ParseBatches(self._spec, self._require_label)).with_output_types(
            EventBatch).with_outputs(DEAD_LETTERS, main="events")


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
