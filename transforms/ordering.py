"""Per-key state updated in event-time order: one definition, the same values bounded and live.

A stateful feature or an online model is defined once, as an ``OrderedStep``: what one key's
state becomes, and what comes out, for each of its elements taken in event-time order (ties
broken by a stable key, e.g. the event id). ``OrderedPerKey`` runs a step in either mode:

- bounded (an archive, a backfill, training): group by key, sort, fold;
- unbounded (a stream): Beam keyed state. Elements wait in a bag until the watermark passes
  their event time (an event-time timer), then go through the step in order; the step's state
  lives in the same bag, and an event-time timer forgets it after ``ttl_us`` without elements.
  At the end of the input (or a drain) whatever still waits is released, then the step finishes.

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

import copy
from typing import Any, Iterable, NamedTuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow, TimestampedValue
from apache_beam.utils.timestamp import Timestamp

_LATE = beam.metrics.Metrics.counter("rtml.ordering", "late")


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

    ``streaming`` picks keyed state and timers (unbounded input) or group-and-sort (bounded input).
    """

    def __init__(self, step: OrderedStep, streaming: bool):
        super().__init__()
        self._step, self._streaming = step, streaming

    def expand(self, keyed):
        if self._streaming:
            return (keyed
                    | "AtItsTime" >> beam.Map(_at_its_time)
                    | "InEventTimeOrder" >> beam.ParDo(_OrderedStateFn(self._step)))
        return (keyed
                | "GroupByKey" >> beam.GroupByKey()
                | "Fold" >> beam.FlatMap(_fold, self._step))


def _at_its_time(element):
    """An element timestamped at its own time, so that waiting in keyed state it holds the watermark back there.
    (Stamped with its batch's time, a later record's, a backlog's watermark could pass it before its release, and
    its outputs came late to what followed: live monitoring windows lost them, and a stream committed its last
    offsets before they were written. docs/design.md, "Live streams under load".)"""
    return TimestampedValue(element, element[1][0] / 1e6)


def _fold(keyed_elements, step: OrderedStep):
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


class _OrderedStateFn(beam.DoFn):
    """The live run of a step. What costs is state round trips: without cache tokens (Prism gives
    none) a bundle's first read of a key's state waits for the runner, and so does the write of each
    changed state at the bundle's end. So a key keeps one bag: its waiting elements and its
    ``_Stepped``. An element is a blind append and a timer; a release is one read and one write,
    however many elements it steps."""
    KEPT = userstate.BagStateSpec("kept", PickleCoder())
    # One release per distinct event time (its dynamic tag), so that adding an element needs no read
    # to find the earliest one waiting.
    RELEASE = userstate.TimerSpec("release", TimeDomain.WATERMARK)
    EXPIRE = userstate.TimerSpec("expire", TimeDomain.WATERMARK)
    # For a step with ``finish``: at the end of the input (or a drain) everything pending is
    # released, then the step finishes.
    END = userstate.TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, step: OrderedStep):
        self._step = step
        self._finishes = step.finishes

    def start_bundle(self):
        # key -> how far this bundle has released it. A key's releases of one watermark step come in one
        # bundle (a timer per event time): the first steps them all, and the rest, unless an element came
        # in between, skip reading and sorting what still waits (a hot key, like k-means' one, has many).
        self._released_to: dict = {}

    def process(self, element, kept=beam.DoFn.StateParam(KEPT),
                release=beam.DoFn.TimerParam(RELEASE), end=beam.DoFn.TimerParam(END)):
        key, (time_us, tiebreak, value) = element
        self._released_to.pop(key, None)
        kept.add((time_us, tiebreak, value))
        release_us = _timer_us(time_us)
        release.set(Timestamp(micros=release_us), dynamic_timer_tag=str(release_us))
        if self._finishes:
            end.set(GlobalWindow().max_timestamp())

    @userstate.on_timer(RELEASE)
    def on_release(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                   kept=beam.DoFn.StateParam(KEPT), expire=beam.DoFn.TimerParam(EXPIRE)):
        # The watermark has passed ``timestamp``: nothing at or before it can still arrive on time.
        if self._released_to.get(key, timestamp.micros - 1) >= timestamp.micros:
            return
        yield from self._release(key, timestamp.micros, kept, expire)
        self._released_to[key] = timestamp.micros

    @userstate.on_timer(EXPIRE)
    def on_expire(self, timestamp=beam.DoFn.TimestampParam, kept=beam.DoFn.StateParam(KEPT)):
        # The ttl check in OrderedStep.advance would reset the state anyway; this frees the memory
        # (unless an element came since: timer families need not fire in timestamp order).
        stepped, waiting = _split(kept.read())
        ttl_us = self._step.ttl_us
        # (an element still waiting within the ttl of the last one needs the state: the watermark may have
        # jumped past both, and this timer fired first)
        if (stepped is not None and stepped.last[0] + ttl_us < timestamp.micros
                and not any(time_us - stepped.last[0] <= ttl_us for time_us, _, _ in waiting)):
            _keep(kept, None, waiting)

    @userstate.on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, kept=beam.DoFn.StateParam(KEPT), expire=beam.DoFn.TimerParam(EXPIRE)):
        yield from self._release(key, None, kept, expire)
        stepped, _ = _split(kept.read())
        if stepped is not None:
            for output in self._step.finish(key, stepped.state):
                yield TimestampedValue(output, stepped.last[0] / 1e6)

    def _release(self, key, up_to_us: int | None, kept, expire):
        """Steps the waiting elements at or before ``up_to_us`` (None: all) in order. An element at or
        before the last one stepped arrived after its place in the order had passed: it is late."""
        stepped, waiting = _split(kept.read())
        ready = [w for w in waiting if up_to_us is None or w[0] <= up_to_us]
        if not ready:
            return
        current, last = stepped or (None, None)
        for time_us, tiebreak, value in ready:
            if last is not None and (time_us, tiebreak) <= last:
                _LATE.inc()
                outputs = self._step.late(key, self._step.initial_state(key) if current is None else current,
                                          time_us, value)
            else:
                current, outputs = self._step.advance(key, current, None if last is None else last[0], time_us, value)
                last = (time_us, tiebreak)
            for output in outputs:
                yield TimestampedValue(output, time_us / 1e6)
        _keep(kept, _Stepped(current, last), waiting[len(ready):])
        if self._step.ttl_us is not None:
            expire.set(Timestamp(micros=_timer_us(last[0] + self._step.ttl_us + 1)))


def _timer_us(time_us: int) -> int:
    """An event-time timer's time for ``time_us``: rounded up to the millisecond. Timers cross the Fn API in Beam's
    timestamp coder, which keeps milliseconds (it floors: ``TimestampCoderImpl``), so on Prism and Flink a timer set at
    12.000345 s fires at 12.000 s, and a release then steps nothing of an element at 12.000345 s: without later traffic
    on its key it waited for ever. Rounded up, the watermark has passed the element when its release fires."""
    return -(-time_us // 1000) * 1000


def _split(entries) -> tuple[_Stepped | None, list]:
    """A key's bag: its ``_Stepped`` (None before its first element), and its waiting elements in order."""
    stepped, waiting = None, []
    for entry in entries:
        if isinstance(entry, _Stepped):
            stepped = entry
        else:
            waiting.append(entry)
    return stepped, sorted(waiting, key=lambda element: element[:2])


def _keep(kept, stepped: _Stepped | None, waiting: list):
    kept.clear()
    if stepped is not None:
        kept.add(stepped)
    for element in waiting:
        kept.add(element)
