"""Commit a stream's Kafka offsets once what was read from them is written.

``ReadFromKafka`` commits by bundle finalization, which is safe only while the sinks run in the
read's own bundle (fused with it, as on the DirectRunner). Behind a fusion break, an event waits in
keyed state (entity features, k-means) or a window after its read bundle has finished; a commit then
and a crash before it is written lose it. So, on a streaming runner: every output record carries its
input's position, the Kafka sinks report the positions they have written (``WriteToKafka(...,
report_written=True)``), and ``CommitWhenWritten`` commits, per partition, the offset below which
every record read is written: scored or dead-lettered. A record written twice (a retried bundle)
counts once; a restart reads again from the committed offset, so nothing is lost and a crash costs
only duplicates of what was written after the last commit.

The commit itself waits for the runner's finalization of the bundle that decided it (Beam's bundle finalization):
on Prism and the DirectRunner, once that bundle's results are committed; on Flink, once the next checkpoint is
complete, so a committed offset never runs ahead of the keyed state that the checkpoint holds. A job restarted
without a checkpoint (it failed before its first) reads again from where its keyed state is empty, so entity
histories are rebuilt from the same events. A commit that fails is not retried: the partition's next one covers it,
and until then a restart reads more again. At the end of the input (a drained stream) the last offsets are
committed at once: a drained job's state is released, not kept.

A position is ``(topic, partition, covers_from, offset)``: the record covers offsets
``[covers_from, offset]`` (``KafkaMessage.covers_from``), so a partition's records cover its log
without holes, transaction markers and compacted records included. The count starts at the group's
committed offset, which is where the read began (the read commits its start for a group that has none).
"""
from __future__ import annotations

import logging
import time
from typing import NamedTuple, Tuple

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.transforms import userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import Consumer, KafkaException, TopicPartition

from transforms.kafka import CLOSE_WAIT_S, COMMIT_WAIT_S, BoundedCalls, Secrets, client

_LOG = logging.getLogger(__name__)
COMMIT_EVERY_S = 1.0  # how long a written offset may wait for its commit


class CommitWhenWritten(beam.PTransform):
    """Positions of written records in; nothing out. Commits each partition's written prefix for ``group_id``."""

    def __init__(self, bootstrap_servers: str, group_id: str, consumer_config: dict | None = None):
        super().__init__()
        self._config = {**(consumer_config or {}), "bootstrap.servers": bootstrap_servers, "group.id": group_id,
                        "enable.auto.commit": False}

    def expand(self, positions):
        return (positions
                | "ByPartition" >> beam.Map(_by_partition).with_output_types(Tuple[str, Tuple[int, int]])
                | "WrittenPrefix" >> beam.ParDo(_WrittenPrefixFn(self._config))
                # Prism finalizes a bundle only where a transform that asks for it reads the stage's input (Beam
                # 2.77, prism/internal/preprocess.go), not behind another one fused before it: a stage of its own.
                | "ToCommitStage" >> beam.Reshuffle()
                | "CommitWhenFinalized" >> beam.ParDo(_CommitWhenFinalizedFn(self._config)))


class _Progress(NamedTuple):
    frontier: int  # the next offset not yet written
    written: dict  # written spans beyond the frontier: {first offset: offset after the last}
    scheduled: bool  # whether a flush is set


def _by_partition(position: tuple) -> tuple[str, tuple[int, int]]:
    topic, partition, covers_from, offset = position
    return f"{topic}:{partition}", (covers_from, offset + 1)  # ':' is not allowed in a topic name


class _Group:
    """The group's committed offsets, read and written through one consumer."""

    def __init__(self, config: dict):
        self._secrets = Secrets(config)
        self._consumer = client(Consumer, config, self._secrets)
        self._calls = BoundedCalls()  # commits and the close

    def commit(self, key: str, offset: int) -> bool:
        topic, partition = _topic_partition(key)
        answered, error = self._calls.call(COMMIT_WAIT_S, self._consumer.commit,
                                           offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        if answered and error is None:
            return True
        _LOG.warning("Kafka offset commit %s", f"failed: {self._secrets.scrub(error)}" if answered else
                     f"not answered within {COMMIT_WAIT_S:g} s, or an earlier one still waiting (is the broker "
                     f"reachable?)")
        return False

    def committed(self, key: str) -> int:
        topic, partition = _topic_partition(key)
        while True:
            try:
                [found] = self._consumer.committed([TopicPartition(topic, partition)], timeout=10)
                if found.offset < 0:
                    raise RuntimeError(f"no committed offset for {key}: the read commits where it starts")
                return found.offset
            except KafkaException as error:
                _LOG.warning("Kafka committed-offset lookup failed (%s); retrying", self._secrets.scrub(error))
                time.sleep(1.0)

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            self._calls.call(CLOSE_WAIT_S, consumer.close)


class _WrittenPrefixFn(beam.DoFn):
    """``(partition key, written span)`` in; every ``COMMIT_EVERY_S`` while spans come, ``(partition key, offset
    below which all is written)`` out, to be committed when its bundle is finalized. At the end of the input (a
    drained stream, whose state is not kept) it commits the last such offset itself."""
    # One state, so that a bundle reads it once (a runner without cache tokens, like Prism, serves every
    # first read of a state in a bundle with a round trip): ``_Progress``.
    PROGRESS = userstate.ReadModifyWriteStateSpec("progress", PickleCoder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.REAL_TIME)
    END = userstate.TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, config: dict):
        self._config = config

    def setup(self):
        self._group = _Group(self._config)

    def process(self, element, progress=beam.DoFn.StateParam(PROGRESS), flush=beam.DoFn.TimerParam(FLUSH),
                at_end=beam.DoFn.TimerParam(END)):
        key, (start, end) = element
        current = progress.read() or _Progress(self._group.committed(key), {}, False)
        if end <= current.frontier:
            return  # written again (a retried bundle, a replay)
        spans, done = current.written, current.frontier
        start = max(start, done)
        spans[start] = max(end, spans.get(start, end))
        while done in spans:
            done = spans.pop(done)
        if not current.scheduled:
            flush.set(Timestamp.of(time.time() + COMMIT_EVERY_S))
            at_end.set(GlobalWindow().max_timestamp())
        progress.write(_Progress(done, spans, True))

    @userstate.on_timer(FLUSH)
    def on_flush(self, key=beam.DoFn.KeyParam, progress=beam.DoFn.StateParam(PROGRESS)):
        current = progress.read()
        if current is not None:
            progress.write(current._replace(scheduled=False))
            yield key, current.frontier

    @userstate.on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, progress=beam.DoFn.StateParam(PROGRESS)):
        current = progress.read()
        if current is not None:
            self._group.commit(key, current.frontier)

    def teardown(self):
        if hasattr(self, "_group"):
            self._group.close()


class _CommitWhenFinalizedFn(beam.DoFn):
    """``(partition key, offset)`` in; commits it when the runner finalizes the bundle (see the module's docstring),
    never below an offset this worker committed before (finalizations may come out of order)."""

    def __init__(self, config: dict):
        self._config = config

    def setup(self):
        self._group = _Group(self._config)
        self._committed: dict[str, int] = {}

    def process(self, element, bundle_finalizer=beam.DoFn.BundleFinalizerParam):
        key, offset = element
        bundle_finalizer.register(lambda: self._commit(key, offset))

    def _commit(self, key: str, offset: int) -> None:
        # (a failure is not retried: the partition's next commit covers it; until then a restart reads more again)
        if offset > self._committed.get(key, -1) and self._group.commit(key, offset):
            self._committed[key] = offset

    def teardown(self):
        if hasattr(self, "_group"):
            self._group.close()


def _topic_partition(key: str) -> tuple[str, int]:
    topic, partition = key.rsplit(":", 1)
    return topic, int(partition)
