"""Per-entity features: how an event compares with its entity's own recent past.

A spec's ``entity_features`` add one number field each to every event, computed from the same
entity's earlier events (earlier in event time, ties broken by event id) less than ``window``
before it. The event itself is never counted, so a feature says what was known before it.

| kind                   | source | value                                         | no earlier event |
|------------------------|--------|-----------------------------------------------|------------------|
| count                  | -      | how many earlier events                       | 0                |
| seconds_since_previous | -      | seconds since the latest earlier event        | window, in s     |
| sum                    | number | sum of their source values                    | 0                |
| mean                   | number | mean of their source values                   | this event's     |
| ratio_to_mean          | number | this value / their mean (0 if the mean is 0)  | 1                |
| difference_from_mean   | number | this value - their mean                       | 0                |
| is_new                 | string | 1 if none of them had this value, else 0      | 1                |

With ``where: {field: value}`` a feature counts only the earlier events whose string ``field`` held ``value``
(``{kind: count, window: 7d, where: {category: books}}``: the entity's book events in the last week).

Every feature depends only on events within the spec's longest window before the event
(``Spec.entity_history_s``), so a backfill that also reads that much history before its start
computes exactly the values a continuous run did. The definition is ``EntityHistoryStep``, run
live by ``transforms.ordering.OrderedPerKey`` in Beam keyed state, forgotten by an event-time
timer once an entity has been quiet for longer than the longest window. Bounded, the same values
are computed in columns (``transforms.entity_columns``), a shard of entities at once.
"""
from __future__ import annotations

import collections
import itertools
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.transforms.window import TimestampedValue

from transforms.entity_columns import entity_feature_columns
from transforms.events import EventBatch
from transforms.ordering import LiveState, OrderedPerKey, OrderedStep, WithPassenger, fold, shard_of
from transforms.spec import Spec

_US = 1_000_000
# Bounded, the entities are grouped into this many shards, each computed at once: the parallelism of the step,
# and the memory it needs (a shard's events) is the input's over this.
BOUNDED_SHARDS = 16


class EntityHistoryStep(OrderedStep):
    """One entity's events within the longest window; each event out with the spec's entity features added.

    Elements are events (dicts); the state is a deque of (time_us, source values) of earlier events.
    """

    def __init__(self, spec: Spec):
        self._features = spec.entity_features
        self._sources = tuple(dict.fromkeys([*(f.source for f in spec.entity_features if f.source),
                                             *(f.where[0] for f in spec.entity_features if f.where)]))
        # per feature: where its source, and its where's field, sit in a history entry's values
        self._source_index = {f.name: self._sources.index(f.source) for f in spec.entity_features if f.source}
        self._where = {f.name: (self._sources.index(f.where[0]), f.where[1]) for f in spec.entity_features if f.where}
        self.ttl_us = spec.entity_history_s * _US

    def initial_state(self, key):
        return collections.deque()

    def step(self, key, history: collections.deque, time_us: int, event: dict):
        while history and time_us - history[0][0] >= self.ttl_us:
            history.popleft()
        enriched, within = dict(event), {}
        for feature in self._features:
            if feature.window_s not in within:
                window_us = feature.window_s * _US
                # (only a late event, see transforms/ordering.py, can have later ones in the history)
                within[feature.window_s] = [(t, values) for t, values in history if 0 <= time_us - t < window_us]
            earlier = within[feature.window_s]
            if feature.name in self._where:
                index, value = self._where[feature.name]
                earlier = [(t, values) for t, values in earlier if values[index] == value]
            enriched[feature.name] = self._value(feature, earlier, time_us, event)
        history.append((time_us, tuple(event[source] for source in self._sources)))
        return history, [(time_us, enriched)]

    def _value(self, feature, earlier: list[tuple], time_us: int, event: dict) -> float:
        kind = feature.kind
        if kind == "count":
            return float(len(earlier))
        if kind == "seconds_since_previous":
            return (time_us - earlier[-1][0]) / _US if earlier else float(feature.window_s)
        index = self._source_index[feature.name]
        values = [values[index] for _, values in earlier]
        if kind == "is_new":
            return float(event[feature.source] not in values)
        if kind == "sum":
            return float(sum(values))
        x = float(event[feature.source])
        mean = sum(values) / len(values) if values else None
        if kind == "mean":
            return x if mean is None else mean
        if kind == "ratio_to_mean":
            return 1.0 if mean is None else (x / mean if mean else 0.0)
        return 0.0 if mean is None else x - mean  # difference_from_mean


class AddEntityFeatures(beam.PTransform):
    """``EventBatch`` in; ``EventBatch`` out, every event with the spec's entity features added.

    A spec without entity features passes its batches through untouched (and stays stateless).
    ``streaming`` picks keyed state and timers (live), else the entities are grouped into ``BOUNDED_SHARDS``
    shards and each shard's features computed in columns (``transforms.entity_columns``); the values are the
    same either way. Batches out hold up to ``batch_size`` events.
    """

    def __init__(self, spec: Spec, streaming: bool, batch_size: int, live_state: LiveState = LiveState()):
        super().__init__()
        self._spec, self._streaming, self._batch_size, self._live_state = spec, streaming, batch_size, live_state

    def expand(self, batches):
        spec = self._spec
        if not spec.entity_features:
            return batches
        if not self._streaming:
            return (batches
                    | "ByShard" >> beam.FlatMap(_by_shard, spec.entity_key)
                    | "GroupByShard" >> beam.GroupByKey()
                    | "InColumns" >> beam.FlatMap(_with_entity_features, spec, self._batch_size).with_output_types(
                        EventBatch))
        # Each event rides with its position, so a stream's offsets are committed only once the event's scored
        # record is written.
        return (batches
                | "ByEntity" >> beam.FlatMap(_by_entity, spec)
                | "EntityHistory" >> OrderedPerKey(WithPassenger(EntityHistoryStep(spec)), self._streaming,
                                                   self._live_state)
                | "Rebatch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch_size)
                | "ToEventBatch" >> beam.Map(_to_event_batch).with_output_types(EventBatch))


def _by_entity(batch: EventBatch, spec: Spec):
    key = spec.entity_key
    positions = batch.positions or [None] * len(batch.events)
    for event, time_us, position in zip(batch.events, batch.event_time_us, positions):
        yield event[key], (time_us, str(event["event_id"]), (event, position))


def _by_shard(batch: EventBatch, key: str) -> Iterator[tuple[int, EventBatch]]:
    """A batch split by its events' shards (``ordering.shard_of`` their entities): ``(shard, the shard's part of the
    batch)``."""
    rows_of = collections.defaultdict(list)
    for row, event in enumerate(batch.events):
        rows_of[shard_of(event[key], BOUNDED_SHARDS)].append(row)
    for shard, rows in rows_of.items():
        yield shard, EventBatch([batch.events[row] for row in rows], [batch.event_time_us[row] for row in rows],
                                None if batch.positions is None else [batch.positions[row] for row in rows])


def _with_entity_features(sharded: tuple[int, Iterable[EventBatch]], spec: Spec,
                          batch_size: int) -> Iterator[TimestampedValue]:
    """A shard's events with their entity features (in columns; by the fold where a sum needs it), in batches."""
    _, parts = sharded
    parts = list(parts)
    events = [event for part in parts for event in part.events]
    times_us = [time_us for part in parts for time_us in part.event_time_us]
    positions = None if parts[0].positions is None else [p for part in parts for p in part.positions]
    columns = entity_feature_columns(spec, events, times_us)
    if columns is None:
        events, times_us, positions = _folded(spec, events, times_us, positions)
    else:
        names, enriched = list(columns), []
        for event, values in zip(events, zip(*(columns[name].tolist() for name in names))):
            event = dict(event)
            event.update(zip(names, values))
            enriched.append(event)
        events = enriched
    for start in range(0, len(events), batch_size):
        end = start + batch_size
        yield _timestamped(EventBatch(events[start:end], times_us[start:end],
                                      None if positions is None else positions[start:end]))


def _folded(spec: Spec, events: list[dict], times_us: list[int],
            positions: list | None) -> tuple[list[dict], list[int], list | None]:
    """(events, times, positions) as ``_with_entity_features`` computes them, by ``EntityHistoryStep`` folded per
    entity."""
    by_entity = collections.defaultdict(list)
    for event, time_us, position in zip(events, times_us, positions or itertools.repeat(None)):
        by_entity[event[spec.entity_key]].append((time_us, str(event["event_id"]), (event, position)))
    step = WithPassenger(EntityHistoryStep(spec))
    batch = _to_event_batch([output.value for keyed in by_entity.items() for output in fold(keyed, step)]).value
    return batch.events, batch.event_time_us, batch.positions


def _to_event_batch(enriched: list) -> TimestampedValue:
    """The live step's outputs, ``((time_us, event), position)``, as a batch (``_timestamped``)."""
    positions = [position for _, position in enriched]
    return _timestamped(EventBatch([event for (_, event), _ in enriched], [time_us for (time_us, _), _ in enriched],
                                   positions if positions[0] is not None else None))


def _timestamped(batch: EventBatch) -> TimestampedValue:
    """A batch, timestamped at its earliest event. (BatchElements stamps it at the end of the global window, which
    would not hold back the watermark of what comes after: windows downstream would close before it, and a
    stream's last commit would come before its records were written.)"""
    return TimestampedValue(batch, min(batch.event_time_us) / 1e6)
