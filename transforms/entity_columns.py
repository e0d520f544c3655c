"""Entity features of a bounded set of events in columns: the values ``EntityHistoryStep`` folds, at numpy's pace.

The events are sorted once by (entity, event time, event id), as the fold takes them; each feature's window is then
a range of that order, ``[start, event)``, found for every event at once with ``searchsorted``, and its value is
computed over the ranges of all events together: counts from cumulative sums, the latest earlier event from a
running maximum, "is new" from each value's previous occurrence. Sums add a range's values one position at a time,
oldest first, across all events at once, so they round exactly as the fold's ``sum`` does (a cumulative sum would
not, nor would Python's ``sum`` after 3.11, which this project pins); ``tests/test_entity.py`` holds every value
equal to the fold's, bit for bit. Numbers whose sums the fold
would keep as exact integers beyond float64's (integers of 2**53 and more) are left to the fold itself.
"""
from __future__ import annotations

import itertools
import operator
from typing import Iterable, Iterator

import numpy as np

from transforms.spec import EntityFeature, Spec

_US = 1_000_000
_EXACT_IN_FLOAT64 = 2.0 ** 53
_KEY_ROOM = 2 ** 62  # the most event time (us) one pass of searchsorted keys may span


def entity_feature_columns(spec: Spec, events: list[dict], times_us: list[int]) -> dict[str, np.ndarray] | None:
    """Each of the spec's entity features for each event (in the given order), as the fold computes it; None if
    a sum could differ from the fold's (see the module's doc)."""
    n = len(events)
    order, entities, times = _fold_order(events, times_us, spec.entity_key)
    ordered = [events[i] for i in order]
    features, starts = {}, {}
    for feature in spec.entity_features:
        if feature.window_s not in starts:
            starts[feature.window_s] = _window_starts(entities, times, feature.window_s * _US)
        values = _feature(feature, ordered, entities, times, starts[feature.window_s])
        if values is None:
            return None
        features[feature.name] = values
    in_given_order = np.empty(n, np.int64)
    in_given_order[order] = np.arange(n)
    return {name: values[in_given_order] for name, values in features.items()}


def _fold_order(events: list[dict], times_us: list[int], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The positions of ``events`` in the fold's order (by entity, then event time, then event id as a string), and
    in that order each one's entity (as a number) and time."""
    codes = _codes(map(operator.itemgetter(key), events))
    times = np.asarray(times_us, dtype=np.int64)
    order = np.lexsort((times, codes))
    tied = np.flatnonzero((codes[order][1:] == codes[order][:-1]) & (times[order][1:] == times[order][:-1]))
    for run in _runs(tied):  # the same entity at the same time: by event id, as the fold's sort
        positions = order[run[0]:run[-1] + 2]
        order[run[0]:run[-1] + 2] = sorted(positions, key=lambda i: str(events[i]["event_id"]))
    return order, codes[order], times[order]


def _runs(tied: np.ndarray) -> Iterator[list[int]]:
    """Consecutive runs in ``tied`` (each i: element i equals element i + 1)."""
    for _, run in itertools.groupby(enumerate(tied.tolist()), key=lambda item: item[1] - item[0]):
        yield [i for _, i in run]


def _codes(values: Iterable) -> np.ndarray:
    """Each value as a number, equal numbers for equal values (numbered in order of first appearance)."""
    index: dict = {}
    return np.array([index.setdefault(value, len(index)) for value in values], dtype=np.int64)


def _window_starts(entities: np.ndarray, times: np.ndarray, window_us: int) -> np.ndarray:
    """For each event (in fold order), the first position of its entity whose time is within ``window_us`` before
    it: its window is ``[start, position)``. Each entity's times are laid end to end, more than a window apart, so
    that one ``searchsorted`` finds every start; in passes, if they would span more than int64 can hold."""
    n = len(times)
    first = np.flatnonzero(np.r_[True, entities[1:] != entities[:-1]])
    spans = np.diff(np.r_[first, n])
    span_us = np.maximum.reduceat(times, first) - times[first] + window_us + 1  # an entity's keys and its gap
    starts = np.empty(n, np.int64)
    group = 0
    while group < len(first):
        room = np.cumsum(span_us[group:])
        last = group + max(1, int(np.searchsorted(room, _KEY_ROOM, side="right")))
        begin, end = first[group], first[last] if last < len(first) else n
        offsets = np.repeat(np.r_[0, room[:last - group - 1]] - times[first[group:last]], spans[group:last])
        keys = times[begin:end] + offsets
        starts[begin:end] = begin + np.searchsorted(keys, keys - window_us, side="right")
        group = last
    return starts


def _feature(feature: EntityFeature, ordered: list[dict], entities: np.ndarray, times: np.ndarray,
             starts: np.ndarray) -> np.ndarray | None:
    n = len(ordered)
    positions = np.arange(n)
    counted = np.ones(n, bool) if feature.where is None else np.fromiter(
        map(feature.where[1].__eq__, map(dict.get, ordered, itertools.repeat(feature.where[0]))), bool, n)
    before = np.r_[0, np.cumsum(counted)]  # before[i]: counted events at positions < i
    count = before[positions] - before[starts]
    if feature.kind == "count":
        return count.astype(np.float64)
    if feature.kind == "seconds_since_previous":
        latest = np.r_[-1, np.maximum.accumulate(np.where(counted, positions, -1))[:-1]]
        found = latest >= starts
        return np.where(found, (times - times[np.maximum(latest, 0)]) / _US, float(feature.window_s))
    values = [event[feature.source] for event in ordered]
    if feature.kind == "is_new":
        return _is_new(values, entities, counted, starts)
    numbers = np.asarray(values, dtype=np.float64)
    if any(type(value) is int for value in values) and np.abs(numbers).sum() >= _EXACT_IN_FLOAT64:
        return None
    total = _window_sums(np.where(counted, numbers, 0.0), starts)
    if feature.kind == "sum":
        return total
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = total / count
        if feature.kind == "mean":
            return np.where(count > 0, mean, numbers)
        if feature.kind == "ratio_to_mean":
            return np.where(count == 0, 1.0, np.where(mean != 0, numbers / mean, 0.0))
    return np.where(count > 0, numbers - mean, 0.0)  # difference_from_mean


def _window_sums(values: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``sum(values[start:i])`` for each i, added oldest first as Python's ``sum`` does (0.0 where empty)."""
    n = len(values)
    positions = np.arange(n)
    total = np.zeros(n)
    for step in range(int((positions - starts).max(initial=0))):
        adding = starts + step < positions
        total[adding] += values[starts[adding] + step]
    return total


def _is_new(values: list, entities: np.ndarray, counted: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """1.0 where no counted event in the window had the event's value, else 0.0."""
    n = len(values)
    same = _codes(zip(entities.tolist(), values))
    by_value = np.argsort(same, kind="stable")  # each (entity, value) together, in fold order
    run_start = np.maximum.accumulate(np.where(np.r_[True, same[by_value][1:] != same[by_value][:-1]],
                                               np.arange(n), 0))
    latest = np.r_[-1, np.maximum.accumulate(np.where(counted[by_value], np.arange(n), -1))[:-1]]
    previous = np.full(n, -1)
    seen = latest >= run_start
    previous[by_value[seen]] = by_value[latest[seen]]
    return np.where(previous >= starts, 0.0, 1.0)
