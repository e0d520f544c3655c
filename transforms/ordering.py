"""Per-key state updated in event-time order: one definition, the same values bounded and live.

A stateful feature or an online model is defined once, as an ``OrderedStep``: what one key's
state becomes, and what comes out, for each of its elements taken in event-time order (ties
broken by a stable key, e.g. the event id). ``OrderedPerKey`` runs a step in either mode:

- bounded (an archive, a backfill, training): group by key, sort, fold;
- unbounded (a stream): Beam keyed state. Elements wait in a bag until the watermark passes
  their event time (an event-time timer), then go through the step in order; the step's state
  lives in keyed state, and an event-time timer forgets it after ``ttl_us`` without elements.
  At the end of the input (or a drain) whatever still waits is released, then the step finishes.

So a key sees the same sequence in both modes and every output is the same. The exception is a
late element, one that arrives after its key has moved past its place in the order (bounded data
has none): it goes to the step's ``late`` at once, which must leave the key's state as it was, so
the other elements' outputs stay those of the bounded run without it; it is counted as
``rtml.ordering/late``. Outputs carry the event time of the element that produced them.

Live, "the watermark passes" means the source's watermark: for the Kafka read, message timestamps.
Producers must stamp messages with the event time for the order to be event time.
"""
from __future__ import annotations

import copy
from typing import Any, Iterable

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
            return keyed | "InEventTimeOrder" >> beam.ParDo(_OrderedStateFn(self._step))
        return (keyed
                | "GroupByKey" >> beam.GroupByKey()
                | "Fold" >> beam.FlatMap(_fold, self._step))


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


class _OrderedStateFn(beam.DoFn):
    PENDING = userstate.BagStateSpec("pending", PickleCoder())
    STATE = userstate.ReadModifyWriteStateSpec("state", PickleCoder())
    # (time_us, tiebreak) of the last element stepped: anything at or before it is late
    DONE = userstate.ReadModifyWriteStateSpec("done", PickleCoder())
    # when RELEASE is set for: the earliest pending event time (read, rather than the whole bag, per element)
    NEXT = userstate.ReadModifyWriteStateSpec("next", PickleCoder())
    RELEASE = userstate.TimerSpec("release", TimeDomain.WATERMARK)
    EXPIRE = userstate.TimerSpec("expire", TimeDomain.WATERMARK)
    # For a step with ``finish``: at the end of the input (or a drain) everything pending is
    # released, then the step finishes.
    END = userstate.TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, step: OrderedStep):
        self._step = step
        self._finishes = step.finishes

    def process(self, element, pending=beam.DoFn.StateParam(PENDING), state=beam.DoFn.StateParam(STATE),
                done=beam.DoFn.StateParam(DONE), next_release=beam.DoFn.StateParam(NEXT),
                release=beam.DoFn.TimerParam(RELEASE), end=beam.DoFn.TimerParam(END)):
        key, (time_us, tiebreak, value) = element
        last = done.read()
        if last is not None and (time_us, tiebreak) <= tuple(last):
            # Its place in the order has passed; the sequence every other element sees stays the bounded one.
            _LATE.inc()
            current = state.read()
            for output in self._step.late(key, self._step.initial_state(key) if current is None else current,
                                          time_us, value):
                yield TimestampedValue(output, time_us / 1e6)
            return
        pending.add((time_us, tiebreak, value))
        earliest = next_release.read()
        if earliest is None or time_us < earliest:
            next_release.write(time_us)
            release.set(Timestamp(micros=time_us))
        if self._finishes:
            end.set(GlobalWindow().max_timestamp())

    @userstate.on_timer(RELEASE)
    def on_release(self, key=beam.DoFn.KeyParam, timestamp=beam.DoFn.TimestampParam,
                   pending=beam.DoFn.StateParam(PENDING), state=beam.DoFn.StateParam(STATE),
                   done=beam.DoFn.StateParam(DONE), next_release=beam.DoFn.StateParam(NEXT),
                   release=beam.DoFn.TimerParam(RELEASE), expire=beam.DoFn.TimerParam(EXPIRE)):
        # The watermark has passed ``timestamp``: nothing at or before it can still arrive on time.
        later = yield from self._release(key, timestamp.micros, pending, state, done, expire)
        if later:
            next_release.write(later[0][0])
            release.set(Timestamp(micros=later[0][0]))
        else:
            next_release.clear()

    @userstate.on_timer(EXPIRE)
    def on_expire(self, timestamp=beam.DoFn.TimestampParam, state=beam.DoFn.StateParam(STATE),
                  done=beam.DoFn.StateParam(DONE)):
        # The ttl check in OrderedStep.advance would reset the state anyway; this frees the memory
        # (unless an element came since: timer families need not fire in timestamp order).
        last = done.read()
        if last is None or last[0] + self._step.ttl_us < timestamp.micros:
            state.clear()
            done.clear()

    @userstate.on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, pending=beam.DoFn.StateParam(PENDING),
               state=beam.DoFn.StateParam(STATE), done=beam.DoFn.StateParam(DONE),
               next_release=beam.DoFn.StateParam(NEXT), expire=beam.DoFn.TimerParam(EXPIRE)):
        yield from self._release(key, None, pending, state, done, expire)
        next_release.clear()
        current, last = state.read(), done.read()
        if current is not None:
            for output in self._step.finish(key, current):
                yield TimestampedValue(output, last[0] / 1e6)

    def _release(self, key, up_to_us: int | None, pending, state, done, expire):
        """Steps the pending elements at or before ``up_to_us`` (None: all) in order; returns the rest."""
        waiting = sorted(pending.read(), key=lambda element: element[:2])
        ready = [w for w in waiting if up_to_us is None or w[0] <= up_to_us]
        later = waiting[len(ready):]
        pending.clear()
        for element in later:
            pending.add(element)
        for time_us, tiebreak, value in ready:
            last = tuple(done.read() or (time_us, tiebreak))
            current, outputs = self._step.advance(key, state.read(), last[0], time_us, value)
            state.write(current)
            done.write(max(last, (time_us, tiebreak)))
            if self._step.ttl_us is not None:
                expire.set(Timestamp(micros=max(last[0], time_us) + self._step.ttl_us + 1))
            for output in outputs:
                yield TimestampedValue(output, time_us / 1e6)
        return later
