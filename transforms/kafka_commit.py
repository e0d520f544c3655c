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
                | "CommitWrittenPrefix" >> beam.ParDo(_CommitFn(self._config)))


class _Progress(NamedTuple):
    frontier: int  # the next offset not yet written
    written: dict  # written spans beyond the frontier: {first offset: offset after the last}
    scheduled: bool  # whether a flush is set


def _by_partition(position: tuple) -> tuple[str, tuple[int, int]]:
    topic, partition, covers_from, offset = position
    return f"{topic}:{partition}", (covers_from, offset + 1)  # ':' is not allowed in a topic name


class _CommitFn(beam.DoFn):
    # One state, so that a bundle reads it once (a runner without cache tokens, like Prism, serves every
    # first read of a state in a bundle with a round trip): ``_Progress``.
    PROGRESS = userstate.ReadModifyWriteStateSpec("progress", PickleCoder())
    FLUSH = userstate.TimerSpec("flush", TimeDomain.REAL_TIME)
    # At the end of the input (a drained stream) the last flush may still be waiting: commit then too.
    END = userstate.TimerSpec("end", TimeDomain.WATERMARK)

    def __init__(self, config: dict):
        self._config = config

    def setup(self):
        self._secrets = Secrets(self._config)
        self._consumer = client(Consumer, self._config, self._secrets)
        self._calls = BoundedCalls()  # commits and the close

    def process(self, element, progress=beam.DoFn.StateParam(PROGRESS), flush=beam.DoFn.TimerParam(FLUSH),
                at_end=beam.DoFn.TimerParam(END)):
        key, (start, end) = element
        current = progress.read() or _Progress(self._committed(key), {}, False)
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
    def on_flush(self, key=beam.DoFn.KeyParam, progress=beam.DoFn.StateParam(PROGRESS),
                 flush=beam.DoFn.TimerParam(FLUSH)):
        current = progress.read()
        if current is None:
            return
        if self._commit(key, current.frontier):
            progress.write(current._replace(scheduled=False))
        else:
            flush.set(Timestamp.of(time.time() + COMMIT_EVERY_S))

    @userstate.on_timer(END)
    def on_end(self, key=beam.DoFn.KeyParam, progress=beam.DoFn.StateParam(PROGRESS)):
        current = progress.read()
        if current is not None:
            self._commit(key, current.frontier)

    def _commit(self, key: str, offset: int) -> bool:
        topic, partition = _topic_partition(key)
        answered, error = self._calls.call(COMMIT_WAIT_S, self._consumer.commit,
                                           offsets=[TopicPartition(topic, partition, offset)], asynchronous=False)
        if answered and error is None:
            return True
        # The broker is away: try again; until then a restart reads more again.
        _LOG.warning("Kafka offset commit %s", f"failed: {self._secrets.scrub(error)}" if answered else
                     f"not answered within {COMMIT_WAIT_S:g} s, or an earlier one still waiting (is the broker "
                     f"reachable?)")
        return False

    def _committed(self, key: str) -> int:
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

    def teardown(self):
        consumer, self._consumer = getattr(self, "_consumer", None), None
        if consumer is not None:
            self._calls.call(CLOSE_WAIT_S, consumer.close)


def _topic_partition(key: str) -> tuple[str, int]:
    topic, partition = key.rsplit(":", 1)
    return topic, int(partition)
