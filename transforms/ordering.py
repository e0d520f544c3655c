"""Per-key state updated in event-time order: one definition, the same values bounded and live.

A stateful feature or an online model is defined once, as an ``OrderedStep``: what one key's
state becomes, and what comes out, for each of its elements taken in event-time order (ties
broken by a stable key, e.g. the event id). ``OrderedPerKey`` runs a step in either mode:

- bounded (an archive, a backfill, training): group by key, sort, fold;
- unbounded (a stream): Beam keyed state, keys spread over a few shards (``_OrderedStateFn``).
  Elements wait until the watermark passes their event time (an event-time timer for each 20 ms of
  event time, so up to 20 ms more), then go through the step in order; a key's state is forgotten
  once ``ttl_us`` has passed without elements. At the end of the input (or a drain) whatever still
  waits is released, then the step finishes.

So a key sees the same sequence in both modes and every output is the same. The exception is a
late element, one that arrives after its key has moved past its place in the order (bounded data
has none): when released (at once: the watermark has passed it) it goes to the step's ``late``,
which must leave the key's state as it was, so the other elements' outputs stay those of the
bounded run without it; it is counted as ``rtml.ordering/late``. Outputs carry the event time
of the element that produced them.

Live, "the watermark passes" means the source's watermark: for the Kafka read, message timestamps.
Producers must stamp messages with the event time for the order to be event time.
"""
from __future__ import annotations

import bisect
import collections
import contextlib
import copy
import dataclasses
import logging
import os
import pickle
import threading
import zlib
from typing import Any, Iterable, NamedTuple

import apache_beam as beam
from apache_beam.coders import BytesCoder, PickleCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from transforms.errors import UnreadableState, first_line

_LOG = logging.getLogger(__name__)
DEFAULT_SHARDS = 4
# A shard's log is compacted once the events it logged since its snapshot outweigh the snapshot (pickled), and not
# before this many bytes: a snapshot costs what it holds, a rebuild replays what was logged since.
COMPACT_AT_LEAST_BYTES = 1 << 20
# Live, an element waits up to this much longer than the watermark makes it (``_timer_us``).
RELEASE_GRAIN_US = 20_000
_LATE = beam.metrics.Metrics.counter("rtml.ordering", "late")
_DROPPED = beam.metrics.Metrics.counter("rtml.ordering", "shards_dropped")


class LiveState(NamedTuple):
    """How a live ``OrderedPerKey`` keeps its keys: spread over ``shards`` keys of keyed state; of those, a worker
    process keeps up to ``cache_mb`` between bundles (counted as their state's size in the runner, pickled), and
    past it drops the shards used least recently (all but the last), rebuilt from the runner's state when next
    needed."""
    shards: int = DEFAULT_SHARDS
    cache_mb: int = 256


class OrderedStep:
    """What one key does with its elements, in event-time order. Subclass and override.

    ``initial_state(key)`` is a key's state before its first element (and after it expires), never None;
    ``step(key, state, time_us, value)`` returns ``(new state, outputs)``; ``finish(key, state)``
    returns outputs at the end of the input (the end of an archive, a drained stream);
    ``late(key, state, time_us, value)`` returns the outputs of a late element without changing
    ``state`` (by default: ``step`` on a copy). States and outputs must pickle.
    """

    ttl_us: int | None = None  # forget a key's state after this much event time without elements

    def initial_state(self, key):
        raise NotImplementedError

    def step(self, key, state, time_us: int, value) -> tuple[Any, Iterable]:
        raise NotImplementedError

    def finish(self, key, state) -> Iterable:
        return ()

    def late(self, key, state, time_us: int, value) -> Iterable:
        return self.step(key, copy.deepcopy(state), time_us, value)[1]

    @property
    def finishes(self) -> bool:
        """Whether ``finish`` may output anything (live, a key then keeps a timer until the end)."""
        return type(self).finish is not OrderedStep.finish

    def advance(self, key, state, last_us: int | None, time_us: int, value):
        """``step``, from the initial state if ``state`` is None or expired (``last_us``: the key's previous
        element). Both modes, and a late element, go through here; subclasses override ``step``."""
        if state is None or (self.ttl_us is not None and last_us is not None and time_us - last_us > self.ttl_us):
            state = self.initial_state(key)
        return self.step(key, state, time_us, value)


class WithPassenger(OrderedStep):
    """``step`` over ``(value, passenger)`` elements: ``step`` sees the value, and each output it makes for
    an element comes out as ``(output, passenger)``. A passenger rides through the ordering untouched
    (a stream's Kafka position, so that its offset is committed only once its output is written)."""

    def __init__(self, step: OrderedStep):
        self._step, self.ttl_us = step, step.ttl_us

    def initial_state(self, key):
        return self._step.initial_state(key)

    def step(self, key, state, time_us: int, value):
        inner, passenger = value
        state, outputs = self._step.step(key, state, time_us, inner)
        return state, [(output, passenger) for output in outputs]

    def late(self, key, state, time_us: int, value):
        inner, passenger = value
        return [(output, passenger) for output in self._step.late(key, state, time_us, inner)]

    def finish(self, key, state):
        return [(output, None) for output in self._step.finish(key, state)]

    @property
    def finishes(self) -> bool:
        return self._step.finishes


class OrderedPerKey(beam.PTransform):
    """``(key, (time_us, tiebreak, value))`` in; the step's outputs out, timestamped by event time.

    ``streaming`` picks keyed state and timers (unbounded input) or group-and-sort (bounded input);
    ``live_state``: how the keys are kept live.
    """

    def __init__(self, step: OrderedStep, streaming: bool, live_state: LiveState = LiveState()):
        super().__init__()
        self._step, self._streaming, self._live_state = step, streaming, live_state

    def expand(self, keyed):
        if self._streaming:
            return (keyed
                    | "AtItsTimeInItsShard" >> beam.Map(_at_its_time_in_its_shard,
                                                        self._live_state.shards).with_output_types(
                        tuple[int, tuple])  # (so the shard's coder is deterministic: state is found by its bytes)
                    | "InEventTimeOrder" >> beam.ParDo(_OrderedStateFn(self._step, self._live_state.cache_mb)))
        return (keyed
                | "GroupByKey" >> beam.GroupByKey()
                | "Fold" >> beam.FlatMap(fold, self._step))


def _at_its_time_in_its_shard(element, shards: int):
    """``(shard, (time_us, tiebreak, key, pickled value))`` (``shard_of``), timestamped at its own time, so that waiting in keyed state it holds the watermark
    back there. (Stamped with its batch's time, a later record's, a backlog's watermark could pass it before its release, and
    its outputs came late to what followed: live monitoring windows lost them, and a stream committed its last
    offsets before they were written. docs/design.md, "Live streams under load".)"""
    key, (time_us, tiebreak, value) = element
    shard = shard_of(key, shards)
    # (pickled once here: moved to pending and compacted, what waits is copied as bytes, unpickled when stepped)
    return TimestampedValue((shard, (time_us, tiebreak, key, pickle.dumps(value, pickle.HIGHEST_PROTOCOL))),
                            time_us / 1e6)


def shard_of(key, shards: int) -> int:
    """The shard of ``key``, by a hash stable across processes and Python versions (not ``hash()``): every worker
    sends a key's elements to the same shard. (Live, keyed state is found by it: changing it loses histories.)"""
    return zlib.crc32(repr(key).encode()) % shards


def fold(keyed_elements, step: OrderedStep):
    """A key's elements, ``(key, [(time_us, tiebreak, value), ...])``, through ``step`` in order: its outputs,
    timestamped by event time (the bounded mode of ``OrderedPerKey``)."""
    key, elements = keyed_elements
    state, last_us = None, None
    for time_us, _, value in sorted(elements, key=lambda element: element[:2]):
        state, outputs = step.advance(key, state, last_us, time_us, value)
        last_us = time_us
        for output in outputs:
            yield TimestampedValue(output, time_us / 1e6)
    if state is not None:
        for output in step.finish(key, state):
            yield TimestampedValue(output, last_us / 1e6)


class _Stepped(NamedTuple):
    """What a key has stepped so far: the step's state, and (time_us, tiebreak) of its last element."""
    state: Any
    last: tuple


class _Token(NamedTuple):
    """The token of a shard's last release: the worker's copy of the shard is current while it holds the same."""
    token: bytes


@dataclasses.dataclass
class _Shard:
    """A shard as this worker last left it, trusted while ``token`` is the one in the shard's state."""
    token: bytes | None = None
    stepped: dict = dataclasses.field(default_factory=dict)  # key -> _Stepped
    waiting: list = dataclasses.field(default_factory=list)  # elements not yet released, in (time, tiebreak) order
    seq: int = 0  # the number of its last release
    snapshot_bytes: int = 0  # its log's snapshot, pickled
    released_bytes: int = 0  # the events released since the snapshot, pickled: what its log and pending grew by


# (instance id, shard) -> _Shard, for every DoFn instance of the stage in this worker process (a runner may give
# a shard's consecutive bundles to different instances), the least recently opened first.
_SHARDS: collections.OrderedDict = collections.OrderedDict()
_SHARDS_LOCK = threading.Lock()
_CACHE_FULL = threading.Event()  # (said once a process)
_RELEASE_ALL = 2 ** 62  # the cutoff of the release at the end of the input
# What unpickling raises for bytes that are not a pickle, or for a pickle of classes that have changed since.
_UNPICKLING_ERRORS = (pickle.UnpicklingError, AttributeError, ImportError, EOFError, IndexError, KeyError, TypeError,
                      ValueError)


class _OrderedStateFn(beam.DoFn):
    """The live run of a step, over keys sharded by a stable hash. What costs is state round trips to the runner,
    and a key rarely has two elements in one bundle, so state is per shard, and only appended to, read back
    only after a restart or a failure. Per shard, three bags:

    - ``arrivals``: elements as they come (blind appends), and the token of the shard's last release;
    - ``pending``: a release's first step in a bundle moves the arrivals here, numbered with its ``seq``, and
      leaves a new token in ``arrivals``;
    - ``log``: each release appends its cutoff and the elements it stepped (not late ones). An element is
      released once a release numbered at or after its own has a cutoff at or after its time, so ``pending``
      and ``log`` say what still waits, and the keys' states are the log's snapshot with its events stepped
      again. Once the events outweigh the snapshot, both bags are compacted: a new snapshot, what still waits.

    The shard lives in worker memory (``_SHARDS``) between bundles, trusted only while its token is the one in
    ``arrivals``: a bundle that failed, a restart, or a shard that moved leave another token (or none), and the
    shard is then rebuilt from ``pending`` and ``log``. So an arrival bundle costs a shard one append; a release
    bundle, one small read and three appends, however many elements and keys it steps.
    """
    ARRIVALS = userstate.BagStateSpec("arrivals", PickleCoder())
    PENDING = userstate.BagStateSpec("pending", PickleCoder())
    LOG = userstate.BagStateSpec("log", BytesCoder())  # (pickled here: their sizes decide compaction)
    # One release per grain of event time that has elements (its dynamic tag), so that adding an element needs no
    # read to find the earliest one waiting.
    RELEASE = userstate.TimerSpec("release", TimeDomain.WATERMARK)
    # For a step with ``finish``: at the end of the input (or a drain) everything pending is
    # released, then the step finishes.
    END = userstate.TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, step: OrderedStep, cache_mb: int = LiveState().cache_mb):
        self._step = step
        self._finishes = step.finishes
        self._cache_bytes = cache_mb << 20
        self._id = os.urandom(8)

    def start_bundle(self):
        self._open: dict = {}  # shard -> _Shard, for those whose arrivals this bundle has moved to pending
        self._timers_set: set = set()

    def process(self, element, arrivals=beam.DoFn.StateParam(ARRIVALS), pending=beam.DoFn.StateParam(PENDING),
                release=beam.DoFn.TimerParam(RELEASE), end=beam.DoFn.TimerParam(END)):
        shard, entry = element
        if shard in self._open:  # (a runner that mixes elements and timers in a bundle: Flink)
            cached = self._open[shard]
            pending.add((cached.seq + 1, [entry]))
            bisect.insort(cached.waiting, entry, key=_order)
        else:
            arrivals.add(entry)
        release_us = _timer_us(entry[0])
        if (shard, release_us) not in self._timers_set:
            self._timers_set.add((shard, release_us))
            release.set(Timestamp(micros=release_us), dynamic_timer_tag=str(release_us))
        if self._finishes and (shard, None) not in self._timers_set:
            self._timers_set.add((shard, None))
            end.set(GlobalWindow().max_timestamp())

    @userstate.on_timer(RELEASE)
    def on_release(self, shard=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                   arrivals=beam.DoFn.StateParam(ARRIVALS), pending=beam.DoFn.StateParam(PENDING),
                   log=beam.DoFn.StateParam(LOG)):
        # The watermark has passed ``timestamp``: nothing at or before it can still arrive on time. (An element of
        # this grain that comes later in the bundle, late, sets the timer again: it fires at once.)
        self._timers_set.discard((shard, timestamp.micros))
        yield from self._release(self._opened(shard, arrivals, pending, log), timestamp.micros, pending, log)

    @userstate.on_timer(END)
    def on_end(self, shard=beam.DoFn.KeyParam, arrivals=beam.DoFn.StateParam(ARRIVALS),
               pending=beam.DoFn.StateParam(PENDING), log=beam.DoFn.StateParam(LOG)):
        cached = self._opened(shard, arrivals, pending, log)
        yield from self._release(cached, _RELEASE_ALL, pending, log)
        for key, stepped in cached.stepped.items():
            for output in self._step.finish(key, stepped.state):
                yield TimestampedValue(output, stepped.last[0] / 1e6)

    def _opened(self, shard, arrivals, pending, log) -> _Shard:
        """The shard, current, with its arrivals moved to pending (once a bundle)."""
        if shard in self._open:
            return self._open[shard]
        with _SHARDS_LOCK:
            cached = _SHARDS.get((self._id, shard))
            if cached is not None:
                _SHARDS.move_to_end((self._id, shard))
        token, arrived = None, []
        with self._readable(shard):
            entries = list(arrivals.read())
        for entry in entries:
            if isinstance(entry, _Token):
                token = entry.token
            else:
                arrived.append(entry)
        if token is None or cached is None or cached.token != token:
            with self._readable(shard):
                waiting = list(pending.read())
                logged = [(pickle.loads(entry), len(entry)) for entry in log.read()]
            cached = _rebuilt(waiting, logged, self._step)
            with _SHARDS_LOCK:
                _SHARDS[(self._id, shard)] = cached
        self._open[shard] = cached
        cached.token = os.urandom(8)
        arrivals.clear()
        arrivals.add(_Token(cached.token))
        if arrived:
            pending.add((cached.seq + 1, arrived))
            cached.waiting = sorted(cached.waiting + arrived, key=_order)
        return cached

    @contextlib.contextmanager
    def _readable(self, shard):
        """Reads of the shard's state: one that does not unpickle (written by other code, or damaged) stops the stream
        in one line naming the shard, rather than start its keys afresh. (Beam logs the failed bundle first.)"""
        try:
            yield
        except _UNPICKLING_ERRORS as error:
            message = (f"live keyed state of {type(self._step).__name__}: shard {shard} cannot be read back "
                       f"({type(error).__name__}: {first_line(error)}); it was written by other code or is damaged, "
                       f"and its keys' histories would start empty: restore state this version wrote, or start the "
                       f"job without its state")
            _LOG.error(message)  # (on Flink, the job restarts from its last checkpoint and fails again: said each time)
            raise UnreadableState(message) from None

    def _release(self, cached: _Shard, up_to_us: int, pending, log):
        """Steps the shard's waiting elements at or before ``up_to_us`` in order. An element at or before its
        key's last one stepped arrived after its place in the order had passed: it is late."""
        waiting = cached.waiting
        ready = bisect.bisect_right(waiting, up_to_us, key=_time)
        if not ready:
            return
        stepped = cached.stepped
        advanced, late_bytes = [], 0
        for entry in waiting[:ready]:
            outputs = _stepped_in(stepped, entry, self._step)
            if outputs is None:
                _LATE.inc()
                time_us, _, key, pickled = entry
                outputs = self._step.late(key, stepped[key].state, time_us, pickle.loads(pickled))
                late_bytes += len(pickled)
            else:
                advanced.append(entry)
            for output in outputs:
                yield TimestampedValue(output, entry[0] / 1e6)
        del waiting[:ready]
        cached.seq += 1
        logged = pickle.dumps((cached.seq, up_to_us, None, advanced), pickle.HIGHEST_PROTOCOL)
        cached.released_bytes += len(logged) + late_bytes
        if cached.released_bytes > max(cached.snapshot_bytes, COMPACT_AT_LEAST_BYTES):
            # Compacted, without the keys whose ttl has passed (OrderedStep.advance would start them afresh).
            if self._step.ttl_us is not None:
                for key in [key for key, kept in stepped.items() if up_to_us - kept.last[0] > self._step.ttl_us]:
                    del stepped[key]
            snapshot = pickle.dumps((cached.seq, up_to_us, stepped, []), pickle.HIGHEST_PROTOCOL)
            log.clear()
            log.add(snapshot)
            pending.clear()
            pending.add((cached.seq + 1, list(waiting)))
            cached.snapshot_bytes, cached.released_bytes = len(snapshot), 0
        else:
            log.add(logged)
        _keep_within(self._cache_bytes)


def _keep_within(limit_bytes: int) -> None:
    """Drops the shards opened least recently until the rest's logs (pickled) fit in ``limit_bytes``. A bundle that
    has a dropped shard open goes on with it; the next one rebuilds it from state."""
    with _SHARDS_LOCK:
        total = sum(shard.snapshot_bytes + shard.released_bytes for shard in _SHARDS.values())
        while total > limit_bytes and len(_SHARDS) > 1:
            _, dropped = _SHARDS.popitem(last=False)
            total -= dropped.snapshot_bytes + dropped.released_bytes
            _DROPPED.inc()
            if not _CACHE_FULL.is_set():
                _CACHE_FULL.set()
                _LOG.warning("live keyed state: this worker's shards outgrow --state_cache_mb %d; the least recently "
                             "used are dropped and rebuilt from the runner's state (slower); give a larger "
                             "--state_cache_mb, or more workers", limit_bytes >> 20)


def _stepped_in(stepped: dict, entry: tuple, step: OrderedStep) -> Iterable | None:
    """Steps ``entry`` into its key's state in ``stepped``; its outputs, or None if it is late (at or before its
    key's last element stepped: it arrived after its place in the order had passed), which changes nothing."""
    time_us, tiebreak, key, pickled = entry
    current, last = stepped.get(key) or (None, None)
    if last is not None and (time_us, tiebreak) <= last:
        return None
    current, outputs = step.advance(key, current, None if last is None else last[0], time_us, pickle.loads(pickled))
    stepped[key] = _Stepped(current, (time_us, tiebreak))
    return outputs


def _rebuilt(pending_entries, log_entries, step: OrderedStep) -> _Shard:
    """A shard from its pending elements and its log's entries (unpickled, with their sizes): the snapshot with the
    events logged since stepped again in their order, and what no release has passed yet (a release passes an
    element numbered at or before it, at or before its cutoff)."""
    shard = _Shard()
    log_entries = sorted(log_entries, key=lambda entry: entry[0][0])
    for (_, _, snapshot, advanced), size in log_entries:
        if snapshot is not None:
            shard.stepped, shard.snapshot_bytes = snapshot, size
        else:
            for entry in advanced:
                _stepped_in(shard.stepped, entry, step)
            shard.released_bytes += size
    # (seq, the highest cutoff of the releases numbered seq or later), latest first
    reach, highest = [], -1
    for (seq, cutoff, _, _), _ in reversed(log_entries):
        highest = max(highest, cutoff)
        reach.append((seq, highest))
    reach.reverse()
    for seq, elements in pending_entries:
        at = bisect.bisect_left(reach, seq, key=lambda pair: pair[0])
        cutoff = reach[at][1] if at < len(reach) else -1
        shard.waiting.extend(element for element in elements if element[0] > cutoff)
    shard.waiting.sort(key=_order)
    shard.seq = max([entry[0][0] for entry in log_entries] + [seq - 1 for seq, _ in pending_entries] + [0])
    return shard


def _order(entry) -> tuple:
    return entry[:2]


def _time(entry) -> int:
    return entry[0]


def _timer_us(time_us: int) -> int:
    """An element's release time: the last millisecond of its grain of ``RELEASE_GRAIN_US`` (grains end 1 ms before
    each multiple of it) at or after its event time, so the watermark has passed the element when its release fires.
    - A timer per grain, not per event: a timer per event (1,000 firings a second at 1,000 events/s) left Flink
      seconds behind now and then (docs/design.md, "Release timers in grains").
    - Whole milliseconds: timers cross the Fn API in Beam's timestamp coder, which floors to them
      (``TimestampCoderImpl``); an element at 12.000345 s released at 12.000 s waited for ever on a quiet key.
    - A grain's last millisecond: the timer holds the step's output watermark at its own time while the grain's
      outputs carry their earlier ones, so a grain must not end on the end of a window (whole seconds, or 20 ms)
      that its elements fall in, or those outputs could come after the window closed (still possible for an
      element stamped in microseconds within such a window's last millisecond)."""
    return -(-(time_us + 1000) // RELEASE_GRAIN_US) * RELEASE_GRAIN_US - 1000
