"""transforms.kafka against a real Apache Kafka broker (``pipelines.kafka_broker``).

No mocks: every test produces to and consumes from the broker, and runs Beam pipelines on the
DirectRunner. Expected records come from the producer's delivery reports (topic, partition,
offset, timestamp as the broker assigned them), so each comparison is exact.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.runners.sdf_utils import ThreadsafeRestrictionTracker
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.display import DisplayData
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from pipelines.kafka_broker import KafkaBroker, free_port
from tests.conftest import publish_stand_in_model
from tests.kafka_helpers import committed, wait_for
from transforms import kafka
from transforms.kafka import KafkaMessage, ReadFromKafka, WriteToKafka, mask_config

ROOT = Path(__file__).resolve().parents[1]
BASE_TS = 1_700_000_000_000  # 2023-11-14, fixed message timestamps (CreateTime)
_QUIET = logging.getLogger("tests.librdkafka")  # keeps expected connection noise off stderr


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def produce(bootstrap: str, topic: str, records, **config) -> list[KafkaMessage]:
    """Produce (key, value, partition|None, timestamp_ms|None) records; return what the broker
    stored, as KafkaMessages built from the delivery reports."""
    delivered, failed = [], []

    def on_delivery(err, msg):
        if err is not None:
            failed.append(err)
        else:
            delivered.append(KafkaMessage(msg.topic(), msg.partition(), msg.offset(), msg.key(),
                                          msg.value(), msg.timestamp()[1], msg.offset()))

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, **config}, logger=_QUIET)
    records = list(records)
    for key, value, partition, ts in records:
        extra = {k: v for k, v in (("partition", partition), ("timestamp", ts)) if v is not None}
        producer.produce(topic, value=value, key=key, on_delivery=on_delivery, **extra)
    assert producer.flush(10) == 0
    assert not failed and len(delivered) == len(records), failed
    return delivered


def end_offsets(messages: list[KafkaMessage], partitions: int) -> dict[int, int]:
    """{partition: last offset + 1}, from the delivery reports."""
    ends = dict.fromkeys(range(partitions), 0)
    for m in messages:
        ends[m.partition] = max(ends[m.partition], m.offset + 1)
    return ends


def consume_all(bootstrap: str, topic: str, expect: int, timeout: float = 20.0) -> list[tuple]:
    """(key, value) of every message in the topic, once ``expect`` of them are there."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": _name("check"),
                         "enable.auto.commit": False}, logger=_QUIET)
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    got, deadline = [], time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            got += [(m.key(), m.value()) for m in consumer.consume(500, 0.2) if not m.error()]
        got += [(m.key(), m.value()) for m in consumer.consume(500, 0.5) if not m.error()]
    finally:
        consumer.close()
    return got


def with_timestamps(pcoll):
    """KafkaMessage -> (message, element timestamp in ms), to check the event times."""
    return pcoll | beam.Map(lambda m, t=beam.DoFn.TimestampParam: (m, t.micros // 1000))


# --------------------------------------------------------------------------------------------


def test_bounded_read_by_offsets_is_exact(kafka_broker):
    topic = _name("bounded")
    kafka_broker.create_topic(topic, 3)
    records = [(f"k{i % 7}".encode(), f"v{i}".encode(), None, None) for i in range(60)]
    records.append((None, b"no key", None, None))
    sent = produce(kafka_broker.bootstrap, topic, records)
    assert {m.partition for m in sent} == {0, 1, 2}  # keyed: spread over the partitions

    with beam.Pipeline("DirectRunner") as p:
        read = p | ReadFromKafka(kafka_broker.bootstrap, topic,
                                 stop_offsets=end_offsets(sent, 3))
        assert_that(with_timestamps(read), equal_to([(m, m.timestamp_ms) for m in sent]))


def test_a_setting_from_the_environment_is_read_where_the_client_is_made(kafka_broker, monkeypatch):
    topic = _name("env-secret")
    kafka_broker.create_topic(topic, 1)
    sent = produce(kafka_broker.bootstrap, topic, [(None, b"v", None, None)])
    config = {"client.id": kafka.EnvSecret("RTML_TEST_CLIENT_ID")}
    monkeypatch.setenv("RTML_TEST_CLIENT_ID", "rtml-reader")
    with beam.Pipeline("DirectRunner") as p:
        read = p | ReadFromKafka(kafka_broker.bootstrap, topic, consumer_config=config, stop_offsets={0: 1})
        assert_that(read, equal_to(sent))
    monkeypatch.delenv("RTML_TEST_CLIENT_ID")
    with pytest.raises(Exception, match="client.id: environment variable RTML_TEST_CLIENT_ID is not set"):
        with beam.Pipeline("DirectRunner") as p:
            _ = p | ReadFromKafka(kafka_broker.bootstrap, topic, consumer_config=config, stop_offsets={0: 1})


def test_a_setting_from_secret_manager_is_read_where_the_client_is_made(kafka_broker):
    """``--kafka_secret KEY=secretmanager:NAME``: the value comes from the secret version when a client is made
    (the pipeline's clients ask for it while it runs), is scrubbed like any secret although client.id's values
    are shown otherwise; a version that cannot be read is one line naming it, never a value."""
    from tests.secret_manager import SecretManagerStandIn

    topic = _name("managed-secret")
    kafka_broker.create_topic(topic, 1)
    sent = produce(kafka_broker.bootstrap, topic, [(None, b"v", None, None)])
    name = "projects/rtml-test/secrets/client-id/versions/2"
    config = {"client.id": kafka.SecretManagerSecret(name)}
    with SecretManagerStandIn({name: b"rtml-reader"}) as secret_manager:
        assert kafka.resolved(config) == {"client.id": "rtml-reader"}
        assert kafka.Secrets(config).scrub("client rtml-reader failed") == "client *** failed"
        with beam.Pipeline("DirectRunner") as p:
            read = p | ReadFromKafka(kafka_broker.bootstrap, topic, consumer_config=config, stop_offsets={0: 1})
            assert_that(read, equal_to(sent))
        assert secret_manager.accessed == [name]  # once per process
    with SecretManagerStandIn({}):  # the version is gone: the running pipeline's clients cannot be made
        with pytest.raises(Exception, match=f"client.id: Secret Manager {name}: Secret Version \\[{name}\\] "
                                            f"not found."):
            with beam.Pipeline("DirectRunner") as p:
                _ = p | ReadFromKafka(kafka_broker.bootstrap, topic, consumer_config=config, stop_offsets={0: 1})


def test_bounded_read_by_timestamps(kafka_broker):
    topic = _name("by-time")
    kafka_broker.create_topic(topic, 4)
    sent = produce(kafka_broker.bootstrap, topic, [
        (f"k{i}".encode(), f"v{i}".encode(), i % 3, BASE_TS + i * 1000) for i in range(30)])
    # Partition 3 has nothing at or after the stop: it must end by the caught-up rule.
    sent += produce(kafka_broker.bootstrap, topic, [
        (b"early", b"early", 3, BASE_TS + 500 + i * 1000) for i in range(3)])
    start, stop = BASE_TS + 10_000, BASE_TS + 20_000

    with beam.Pipeline("DirectRunner") as p:
        read = p | ReadFromKafka(kafka_broker.bootstrap, topic, start_timestamp_ms=start,
                                 stop_timestamp_ms=stop)
        expected = [m for m in sent if start <= m.timestamp_ms < stop]
        assert len(expected) == 10
        assert_that(read, equal_to(expected))


def test_partitions_are_discovered_when_the_pipeline_runs(kafka_broker):
    topic = _name("later")
    expected = [KafkaMessage(topic, i % 4, i // 4, b"k%d" % i, b"v%d" % i, BASE_TS + i, i // 4)
                for i in range(20)]
    p = beam.Pipeline("DirectRunner")
    read = p | ReadFromKafka(kafka_broker.bootstrap, topic, stop_timestamp_ms=BASE_TS + 1000)
    assert_that(read, equal_to(expected))
    # Only now does the topic exist, with a partition count the graph never saw.
    assert topic not in AdminClient({"bootstrap.servers": kafka_broker.bootstrap}
                                    ).list_topics(timeout=10).topics
    kafka_broker.create_topic(topic, 4)
    produce(kafka_broker.bootstrap, topic,
            [(m.key, m.value, m.partition, m.timestamp_ms) for m in expected])
    p.run().wait_until_finish()


def test_missing_topic_is_a_clear_error(kafka_broker):
    with pytest.raises(Exception, match=r"Kafka topic 'no-such-topic-\w+' does not exist"):
        with beam.Pipeline("DirectRunner") as p:
            p | ReadFromKafka(kafka_broker.bootstrap, _name("no-such-topic"),
                              stop_offsets={0: 1})


def test_write_to_kafka_delivers_every_record(kafka_broker):
    topic = _name("written")
    kafka_broker.create_topic(topic, 2)
    records = [(f"k{i}".encode() if i % 5 else None, f"value {i}".encode()) for i in range(50)]
    with beam.Pipeline("DirectRunner") as p:
        p | beam.Create(records) | WriteToKafka(kafka_broker.bootstrap, topic)
    assert sorted(consume_all(kafka_broker.bootstrap, topic, len(records)),
                  key=repr) == sorted(records, key=repr)


def test_write_to_kafka_fails_the_bundle_when_kafka_does_not_acknowledge():
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens here
    with pytest.raises(Exception, match=r"1 record\(s\) not delivered to 'lost'"):
        with beam.Pipeline("DirectRunner") as p:
            (p | beam.Create([(b"k", b"v")])
             | WriteToKafka(nobody, "lost", producer_config={"message.timeout.ms": 1500}))


class _ReadSlices:
    """The live read of one partition, slice by slice as a runner drives it, its watermark carried along."""

    def __init__(self, bootstrap: str, topic: str, max_delay_ms: int, partition: int = 0, partitions: int = 1,
                 read_id: str | None = None, **limits):
        read = ReadFromKafka(bootstrap, topic, offset_reset="earliest", max_delay_ms=max_delay_ms)
        self._fn = kafka._ReadLiveUncommittedPartitionFn(read._config(), commit=False, max_delay_ms=max_delay_ms,
                                                         read_id=read_id)
        for name, value in limits.items():  # e.g. slices of one message, as under a backlog
            setattr(self._fn, name, value)
        self._fn.setup()
        self._fn.start_bundle()
        self._part = kafka._PartitionRead(topic, partition, 0, kafka.UNBOUNDED, None, None, False, partitions)
        self._next, self._watermark = 0, ManualWatermarkEstimator(None)

    def slice(self) -> tuple[int, int | None]:
        """Read one slice: (messages read, the watermark in ms after it; None while it has none)."""
        tracker = ThreadsafeRestrictionTracker(kafka._PartitionTracker(OffsetRange(self._next, kafka.UNBOUNDED)))
        read = [value.value for value in self._fn.process(self._part, tracker=tracker, watermark=self._watermark)]
        if read:
            self._next = read[-1].offset + 1
        mark = self._watermark.current_watermark()
        return len(read), None if mark is None else mark.micros // 1000


def test_the_watermark_follows_message_times_holds_behind_a_backlog_and_advances_when_caught_up(kafka_broker):
    topic, delay_ms = _name("watermark"), 1_000
    kafka_broker.create_topic(topic, 1)
    hour_ago = int(time.time() * 1000) - 3_600_000
    offsets_s = [0, 5, 2, 9, 7, 3]  # out of order, as producers deliver
    produce(kafka_broker.bootstrap, topic, [(None, b"m%d" % s, 0, hour_ago + s * 1000) for s in offsets_s])

    behind = _ReadSlices(kafka_broker.bootstrap, topic, delay_ms, BATCH=1, MAX_PROCESS_S=0.0)
    marks = [behind.slice() for _ in offsets_s]
    assert [n for n, _ in marks] == [1] * len(offsets_s)  # one message a slice: always behind the end
    newest = [max(offsets_s[:i + 1]) for i in range(len(offsets_s))]
    assert [mark for _, mark in marks] == [hour_ago + s * 1000 - delay_ms for s in newest]  # never backwards

    caught_up = _ReadSlices(kafka_broker.bootstrap, topic, delay_ms)
    while caught_up.slice()[0]:
        pass
    before = time.time() * 1000
    read, mark = caught_up.slice()  # nothing new: the partition's end, so the wall clock
    assert read == 0 and before - delay_ms <= mark <= time.time() * 1000 - delay_ms


def test_with_one_watermark_a_partition_read_ahead_reports_the_slowest_partitions_watermark(kafka_broker):
    """Prism takes a read's watermark from whichever partition's bundle finished last: with one_watermark (on
    Prism), a partition read ahead of the others reports theirs, so their records are not made late."""
    topic, delay_ms = _name("one-watermark"), 1_000
    kafka_broker.create_topic(topic, 2)
    two_hours_ago = int(time.time() * 1000) - 7_200_000
    ahead, behind = two_hours_ago + 3_600_000, two_hours_ago
    produce(kafka_broker.bootstrap, topic, [(None, b"ahead %d" % s, 0, ahead + s * 1000) for s in range(3)]
            + [(None, b"behind %d" % s, 1, behind + s * 1000) for s in range(3)])
    read_id = _name("read")
    first = _ReadSlices(kafka_broker.bootstrap, topic, delay_ms, 0, 2, read_id, BATCH=1, MAX_PROCESS_S=0.0)
    second = _ReadSlices(kafka_broker.bootstrap, topic, delay_ms, 1, 2, read_id, BATCH=1, MAX_PROCESS_S=0.0)
    assert first.slice() == (1, None)  # the other partition has reported nothing yet
    assert first.slice() == (1, None)
    assert second.slice() == (1, behind - delay_ms)
    assert first.slice() == (1, behind - delay_ms)  # not ahead + 2 s - delay, the partition's own
    assert second.slice() == (1, behind + 1000 - delay_ms)

    alone = _ReadSlices(kafka_broker.bootstrap, topic, delay_ms, 0, 2, BATCH=1, MAX_PROCESS_S=0.0)
    assert alone.slice() == (1, ahead - delay_ms)  # without: each partition its own


def test_one_consumer_hands_each_partition_its_own_messages_in_order_and_goes_on_from_where_its_read_starts(
        kafka_broker):
    """The DirectRunner's live read: every partition on one consumer, assigned once, a queue each. A partition's read
    gets only its own messages, in order, from its restriction's start (also one rewound, as a retried bundle's), is
    done once it has read what the consumer had of it, or another partition has messages waiting, or it is at its
    end, and does not wait while another partition's messages are there."""
    from transforms.kafka_queues import PartitionQueues

    topic = _name("queues")
    kafka_broker.create_topic(topic, 2)
    produce(kafka_broker.bootstrap, topic, [(None, b"p%d-%d" % (p, n), p, None) for n in range(5) for p in (0, 1)])
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": _name("queues"),
                         "enable.auto.commit": False, "enable.partition.eof": True}, logger=_QUIET)
    queues = PartitionQueues(consumer)
    try:
        def read(partition: int, start: int, most: int = 500) -> tuple[list[bytes], bool]:
            queues.start(topic, partition, start)
            values, done = [], False
            deadline = time.monotonic() + 10
            while not done and time.monotonic() < deadline:  # (as _ReadPartitionFn's slices do)
                taken, done = queues.take(topic, partition, most, 0.5)
                values += [m.value() for m in taken if m.error() is None]
                done = done or 0 < len(taken) < most
            return values, done

        queues.start(topic, 1, 0)  # (a runner's first round starts every partition's read)
        assert read(0, 1, most=2) == ([b"p0-1", b"p0-2", b"p0-3", b"p0-4"], True)
        started = time.monotonic()
        assert read(1, 0) == ([b"p1-%d" % n for n in range(5)], True)  # fetched while partition 0 was read
        assert time.monotonic() - started < 0.5
        assert read(0, 5) == ([], True) and queues.at_end(topic, 0)  # at its end
        assert read(0, 3) == ([b"p0-3", b"p0-4"], True)  # rewound
        produce(kafka_broker.bootstrap, topic, [(None, b"p1-5", 1, None)])
        assert read(0, 5) == ([], True)  # done: partition 1 has a message waiting
        assert read(1, 5) == ([b"p1-5"], True)
    finally:
        consumer.close()


def test_group_offsets_are_committed_and_the_next_run_resumes_after_them(kafka_broker):
    topic, group = _name("group"), _name("group")
    kafka_broker.create_topic(topic, 2)
    first = produce(kafka_broker.bootstrap, topic,
                    [(b"a%d" % i, b"first %d" % i, None, None) for i in range(20)])
    with beam.Pipeline("DirectRunner") as p:
        read = p | ReadFromKafka(kafka_broker.bootstrap, topic, group_id=group,
                                 stop_offsets=end_offsets(first, 2))
        assert_that(read, equal_to(first))
    assert committed(kafka_broker.bootstrap, group, topic, 2) == end_offsets(first, 2)

    second = produce(kafka_broker.bootstrap, topic,
                     [(b"b%d" % i, b"second %d" % i, None, None) for i in range(10)])
    with beam.Pipeline("DirectRunner") as p:
        read = p | ReadFromKafka(kafka_broker.bootstrap, topic, group_id=group,
                                 stop_offsets=end_offsets(first + second, 2))
        assert_that(read, equal_to(second))  # not one record of the first run again
    assert committed(kafka_broker.bootstrap, group, topic, 2) == end_offsets(first + second, 2)


def _live_pipeline(bootstrap: str, source: str, sink: str, group: str) -> None:
    """The streaming pipeline test_live_read_* runs in a subprocess: source -> sink, live."""
    options = PipelineOptions(["--runner=DirectRunner", "--streaming"])
    with beam.Pipeline(options=options) as p:
        (p
         | ReadFromKafka(bootstrap, source, group_id=group)
         | beam.Map(lambda m: (m.key, m.value))
         | WriteToKafka(bootstrap, sink))


class _LivePipeline:
    """Runs _live_pipeline in a subprocess; ends it (and its process group) on exit."""

    def __init__(self, *args: str):
        self._log = tempfile.TemporaryFile()
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "tests.test_kafka_io", *args], cwd=ROOT,
            stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if self._proc.poll() is None:
            os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)
        if exc_type is not None:  # show what the pipeline said
            self._log.seek(0)
            print(self._log.read().decode(errors="replace")[-5000:])
        self._log.close()

    def check_alive(self):
        assert self._proc.poll() is None, "the live pipeline exited"
        return True


def test_group_positions_say_what_a_group_would_read_again(kafka_broker):
    topic, group = _name("left"), _name("left")
    kafka_broker.create_topic(topic, 3)
    produce(kafka_broker.bootstrap, topic, [(None, b"%d" % i, i % 2, None) for i in range(10)])  # 5 in 0, 5 in 1
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": group}, logger=_QUIET)
    consumer.commit(offsets=[TopicPartition(topic, 0, 5), TopicPartition(topic, 1, 2)], asynchronous=False)
    consumer.close()
    # (committed, end); partition 2 has no committed offset
    assert kafka.group_positions(kafka_broker.bootstrap, {}, topic, group) == {0: (5, 5), 1: (2, 5)}
    assert kafka.group_positions(f"127.0.0.1:{free_port()}", {}, topic, group, timeout_s=1) is None


def test_live_read_resumes_after_committed_offsets_on_restart(kafka_broker):
    bootstrap = kafka_broker.bootstrap
    source, sink, group = _name("live-in"), _name("live-out"), _name("live")
    kafka_broker.create_topic(source, 2)
    kafka_broker.create_topic(sink, 1)
    first = produce(bootstrap, source, [(b"a%d" % i, b"first %d" % i, None, None)
                                        for i in range(6)])

    with _LivePipeline(bootstrap, source, sink, group) as live:
        wait_for(lambda: live.check_alive() and len(consume_all(bootstrap, sink, 6, 1)) >= 6,
                 40, "the first records in the sink topic")
        # Finalization commits a bundle's offsets after the bundle: wait for that, too.
        wait_for(lambda: committed(bootstrap, group, source, 2) == end_offsets(first, 2),
                 15, "the committed offsets")

    second = produce(bootstrap, source, [(b"b%d" % i, b"second %d" % i, None, None)
                                         for i in range(4)])
    with _LivePipeline(bootstrap, source, sink, group) as live:
        wait_for(lambda: live.check_alive() and len(consume_all(bootstrap, sink, 10, 1)) >= 10,
                 40, "the second records in the sink topic")
        time.sleep(1.0)  # room for any replay of the first run to show up

    got = consume_all(bootstrap, sink, 10, 2)
    assert sorted(got) == sorted((m.key, m.value) for m in first + second)


@pytest.mark.slow
def test_read_survives_a_broker_outage():
    """The reader waits out a broker that goes away and comes back, without a restart.

    KAFKA_OUTAGE_S sets the outage (3 s by default to keep the suite short; 20 s also passes).
    The broker keeps its log and the group's committed offsets across the restart; the reader,
    which had offsets 0..4 before the outage, goes on with 5..9, produced after it.
    """
    outage_s = float(os.environ.get("KAFKA_OUTAGE_S", "3"))
    topic, group = _name("outage"), _name("outage")
    with KafkaBroker() as broker:
        broker.create_topic(topic, 1)
        before = produce(broker.bootstrap, topic,
                         [(None, b"before %d" % i, 0, None) for i in range(5)])
        p = beam.Pipeline("DirectRunner")
        read = p | ReadFromKafka(broker.bootstrap, topic, group_id=group, stop_offsets={0: 10},
                                 consumer_config={"reconnect.backoff.max.ms": 500})
        assert_that(read | beam.Map(lambda m: (m.offset, m.value)),
                    equal_to([(i, b"before %d" % i) for i in range(5)] +
                             [(i, b"after %d" % i) for i in range(5, 10)]))
        errors = []

        def run():
            try:
                p.run().wait_until_finish()
            except BaseException:
                errors.append(traceback.format_exc())

        runner = threading.Thread(target=run, daemon=True)
        runner.start()
        wait_for(lambda: committed(broker.bootstrap, group, topic, 1) == end_offsets(before, 1),
                 20, "the reader to commit the records before the outage")

        broker.stop()
        time.sleep(outage_s)
        assert runner.is_alive() and not errors, errors
        broker.start()
        assert committed(broker.bootstrap, group, topic, 1) == end_offsets(before, 1)
        produce(broker.bootstrap, topic, [(None, b"after %d" % i, 0, None) for i in range(5, 10)])
        runner.join(20 + outage_s)
        assert not runner.is_alive(), "the read did not finish after the broker came back"
        assert not errors, errors[0]


def test_a_commit_the_broker_never_answers_does_not_hold_up_the_drain(monkeypatch, caplog):
    """With the broker gone, librdkafka's synchronous commit (and a close with it pending) waits for as long as the
    broker is away; the read's bundle finalization and teardown give up after their bounds, saying so."""
    topic, group = _name("gone"), _name("gone")
    with KafkaBroker() as broker:
        broker.create_topic(topic, 1)
        read = kafka._ReadPartitionFn({"bootstrap.servers": broker.bootstrap, "group.id": group}, True, 0)
        read.setup()
        # The first commit to a fresh broker creates __consumer_offsets: slow on a loaded machine, so it gets
        # the normal bound; the short bounds are for the commit the broker never answers.
        read._commit_offsets({(topic, 0): 3})
        assert committed(broker.bootstrap, group, topic, 1) == {0: 3}
        monkeypatch.setattr(kafka, "COMMIT_WAIT_S", 1.0)
        monkeypatch.setattr(kafka, "CLOSE_WAIT_S", 1.0)
        broker.stop()
        started = time.monotonic()
        read._commit_offsets({(topic, 0): 5})
        read.teardown()
        assert time.monotonic() - started < 4
    assert "Kafka offset commit not answered within 1 s, or an earlier one still waiting" in caplog.text


def test_secrets_never_reach_reprs_errors_or_logs(kafka_broker, caplog, capfd):
    secret = "S3cret-" + uuid.uuid4().hex
    # librdkafka quotes an unsupported assignment strategy in its error: put the secret there too,
    # so the error text really holds it until the IO scrubs it (any setting may hold a secret).
    config = {"security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN", "sasl.username": "user",
              "sasl.password": secret, "partition.assignment.strategy": secret}
    read = ReadFromKafka(kafka_broker.bootstrap, "any", consumer_config=config)
    write = WriteToKafka(kafka_broker.bootstrap, "any", producer_config=config)
    for transform in (read, write):
        shown = repr(transform) + str(DisplayData.create_from(transform).items)
        assert secret not in shown and "'sasl.password': '***'" in shown
    masked = mask_config({"ssl.key.password": 1, "sasl.oauthbearer.config": f"clientSecret={secret}",
                          "sasl.username": "u", "security.protocol": "SASL_SSL"})
    assert masked == {"ssl.key.password": "***", "sasl.oauthbearer.config": "***", "sasl.username": "***",
                      "security.protocol": "SASL_SSL"}

    caplog.set_level(logging.DEBUG)
    for build in (lambda p: p | read,
                  lambda p: p | beam.Create([(b"k", b"v")]) | write):
        with pytest.raises(Exception) as failure:
            with beam.Pipeline("DirectRunner") as p:
                build(p)
        text = "".join(traceback.format_exception(failure.value))
        assert "Unsupported partition.assignment.strategy: ***" in text
        assert secret not in text
    out, err = capfd.readouterr()
    assert secret not in caplog.text + out + err


@pytest.mark.parametrize("given", [["--kafka_config", "sasl.password", "{secret}"],
                                   ["--kafka_config", "sasl.oauthbearer.config=clientSecret={secret}",
                                    "--kafka_config", "bogus.key={secret}"],
                                   ["--kafka_secret", "bogus.key=env:RTML_TEST_SECRET"],
                                   ["--kafka_secret", "sasl.password={secret}"],
                                   ["--kafka_secret", "sasl.password=secretmanager:{secret}"],
                                   ["--kafka_config_file", "{file}"]])
def test_a_secret_on_the_command_line_is_never_echoed(tmp_path, given):
    """A value without its key (a space instead of =), a config librdkafka refuses (from flags, the environment
    or a file), a secret given as a value where a reference belongs: one line, no secret."""
    secret = "S3cret-" + uuid.uuid4().hex
    publish_stand_in_model(tmp_path / "model")
    (tmp_path / "client.properties").write_text(f"security.protocol=PLAINTEXT\nbogus.key={secret}\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipelines.score", "--spec", "fraud", "--mode", "stream", "--bootstrap_servers",
         "127.0.0.1:1", "--input_topic", "a", "--output_topic", "b", "--dead_letter_topic", "c",
         "--model_dir", str(tmp_path / "model"),
         *[arg.format(secret=secret, file=tmp_path / "client.properties") for arg in given]],
        cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120,
        env={**os.environ, "RTML_TEST_SECRET": secret})
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and "Traceback" not in result.stderr
    assert secret not in result.stdout + result.stderr


if __name__ == "__main__":  # the subprocess of test_live_read_resumes_after_committed_offsets
    logging.basicConfig(level=logging.WARNING)
    _live_pipeline(*sys.argv[1:5])
