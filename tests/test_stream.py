"""``python -m pipelines.score --mode stream`` against a real Apache Kafka broker, in subprocesses, no mocks.

A stand-in fraud model (``publish_stand_in_model``: what is under test is the stream, not what a model learned)
is published once for the module. Each test produces a labelled archive with
broken lines (keyed by card_id) to a 3-partition topic, runs the stream scorer as a user would,
and reads what it wrote to the output and dead-letter topics.
"""
from __future__ import annotations

import datetime
import re
import signal
import threading
import time
import urllib.request
import uuid
from collections import Counter
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipelines import generate
from pipelines.kafka_broker import KafkaBroker, free_port
from tests.conftest import publish_stand_in_model
from tests.kafka_helpers import (Outputs, committed, entity_key, event_id, grow_topic, json_lines, make_topics,
                                 produce, stream_scorer, unique_name, wait_for)

TOMBSTONE_KEY = b"card-tombstone"


@pytest.fixture(scope="module")
def stream_model(tmp_path_factory) -> str:
    """A stand-in fraud model's model_dir."""
    model_dir = tmp_path_factory.mktemp("stream_model") / "model"
    publish_stand_in_model(model_dir)
    return str(model_dir)


@pytest.fixture(scope="module")
def archive(tmp_path_factory, stream_model) -> dict:
    """2,000 lines, 20 broken in every generated way (oversized, invalid UTF-8 ...), and what batch mode makes of
    them: ``lines``, ``scores`` {event_id: score}, ``errors`` (dead-letter reasons)."""
    from pipelines import score

    root = tmp_path_factory.mktemp("stream_archive")
    generate.generate("fraud", 1, root / "data", datetime.date(2026, 4, 1), 2000, 0.01, 11, compress=False)
    path = root / "data" / "dt=2026-04-01" / "events.jsonl"
    score.run(["--spec", "fraud", "--mode", "batch", "--input", str(path), "--model_dir", stream_model,
               "--output", str(root / "scored"), "--dead_letter", str(root / "dead_letter")])
    scored = json_lines(root / "scored")
    return {"lines": path.read_bytes().splitlines(), "scores": {r["event_id"]: r["score"] for r in scored},
            "errors": Counter(d["error"] for d in json_lines(root / "dead_letter"))}


# --------------------------------------------------------------------------------------------


def test_stream_scores_like_batch_dead_letters_broken_messages_and_stops_on_sigterm(kafka_broker, stream_model,
                                                                                  archive):
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "clean")
    group = unique_name("clean")
    lines = archive["lines"]
    ends = produce(bootstrap, topics[0], [*lines, None], [*map(entity_key, lines), TOMBSTONE_KEY])
    expected_dead = sum(archive["errors"].values()) + 1  # + the tombstone
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(stream_model, bootstrap, topics, group) as scorer:
            outputs.wait(lambda o: len(o.scored) >= len(archive["scores"]) and len(o.dead) >= expected_dead,
                         60, "every event scored or dead-lettered", scorer)
            code, took = scorer.terminate()  # the last bundles' offsets are committed on the way out
            log = scorer.log()
        outputs.read(1.0)  # nothing more may come
    finally:
        outputs.close()

    assert code == 0, log
    assert took < 30, took
    assert "stopped on SIGTERM" in log and "offsets committed" in log, log
    assert "Traceback" not in log, log
    assert committed(bootstrap, group, topics[0], 3) == ends

    ids = Counter(record["event_id"] for _, record in outputs.scored)
    assert ids == Counter(archive["scores"].keys())  # every valid event exactly once in a clean run
    for key, record in outputs.scored:
        assert key == record["card_id"].encode()
        assert abs(record["score"] - archive["scores"][record["event_id"]]) <= 1e-6

    assert len(outputs.dead) == expected_dead
    assert Counter(d["error"] for _, d in outputs.dead) == archive["errors"] + Counter(
        ["no value (a null Kafka message value)"])
    for key, letter in outputs.dead:
        source = letter["source"]
        assert set(source) == {"topic", "partition", "offset"} and source["topic"] == topics[0]
        # keyed by the original message's key: the card_id where the broken line still has one
        if letter["error"].startswith("no value"):
            assert key == TOMBSTONE_KEY
        elif letter["raw_encoding"] == "utf-8" and not letter["raw_truncated"]:
            assert key == entity_key(letter["raw"].encode())


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    """{(sample name, its labels): value} of a metrics endpoint."""
    with urllib.request.urlopen(f"http://localhost:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


@pytest.mark.parametrize("runner", ["DirectRunner", "PrismRunner"])
def test_the_metrics_endpoint_counts_what_the_output_topics_hold(runner, kafka_broker, stream_model, archive):
    """What the steps count in the command's process (where both runners run them), read while the stream runs."""
    bootstrap, port = kafka_broker.bootstrap, free_port()
    topics = make_topics(kafka_broker, "metrics")
    lines = archive["lines"]
    ends = produce(bootstrap, topics[0], lines, list(map(entity_key, lines)))
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(stream_model, bootstrap, topics, unique_name("metrics"), "--metrics_port",
                           str(port), "--runner", runner, "--progress_s", "1") as scorer:
            outputs.wait(lambda o: len(o.scored) >= len(archive["scores"]) and
                         len(o.dead) >= sum(archive["errors"].values()), 60, "every event written", scorer)

            def lag() -> dict[str, float]:
                found = _scrape(port)
                return {dict(labels)["partition"]: value for (name, labels), value in found.items()
                        if name == "rtml_consumer_lag_messages"}

            outputs.wait(lambda o: lag() == {str(p): 0 for p in ends}, 30, "every offset committed", scorer)
            outputs.wait(lambda o: "p99 from event time to scored" in scorer.log(), 10, "a progress line", scorer)
            metrics = _scrape(port)
            scorer.terminate()
            log = scorer.log()
    finally:
        outputs.close()

    def value(name: str, **labels) -> float:
        return metrics[(name, tuple(sorted(labels.items())))]

    assert value("rtml_events_received_total") == len(lines)
    assert value("rtml_events_valid_total") == value("rtml_events_scored_total") == len(outputs.scored)
    assert value("rtml_records_written_total", topic=topics[1]) == len(outputs.scored) == len(archive["scores"])
    assert value("rtml_records_written_total", topic=topics[2]) == len(outputs.dead)
    reasons = {dict(labels)["reason"]: count for (name, labels), count in metrics.items()
               if name == "rtml_dead_letters_total"}
    assert reasons == dict(archive["errors"])
    assert value("rtml_event_to_scored_seconds_count") == len(outputs.scored)
    assert value("rtml_event_to_scored_seconds_sum") > 0
    [version] = {record["model_version"] for _, record in outputs.scored}
    assert value("rtml_model_version", version=version) == 1
    # (the archive's events happened months ago)
    assert re.search(r"lag [\d,]+ messages not yet committed, p99 from event time to scored over an hour\n", log), log


DISCOVERY_S = 2.0


@pytest.mark.parametrize("runner", ["PrismRunner", "FlinkRunner"])
def test_a_partition_added_mid_stream_is_read_from_its_start_within_the_discovery_interval(runner, kafka_broker,
                                                                                          stream_model, archive):
    """A stream that starts at the end of its 2 partitions (--offset_reset latest) is scoring; the topic grows to 3
    and events go to the new partition at once, before the stream can have looked: every one of them is scored,
    once, within --partition_discovery_s and a few seconds (a new partition is read from its beginning)."""
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "grow", partitions=2)
    valid = [line for line in archive["lines"] if event_id(line) in archive["scores"]]
    probes, later = valid[:200], valid[200:700]
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(stream_model, bootstrap, topics, unique_name("grow"), "--runner", runner,
                           "--offset_reset", "latest", "--partition_discovery_s", str(DISCOVERY_S)) as scorer:
            for probe in probes:  # until the stream reads (it starts at the partitions' ends)
                produce(bootstrap, topics[0], [probe], partitions=[0])
                if outputs.read(0.5).scored:
                    break
            outputs.wait(lambda o: o.scored, 5, "a probe scored", scorer)
            grow_topic(bootstrap, topics[0], 3)
            grown = time.monotonic()
            produce(bootstrap, topics[0], later, partitions=[2] * len(later))
            before = len(outputs.scored)
            outputs.wait(lambda o: len(o.scored) >= before + len(later), DISCOVERY_S + 30,
                         "the added partition's events", scorer)
            took = time.monotonic() - grown
        outputs.read(1.0)
    finally:
        outputs.close()
    scored = Counter(record["event_id"] for _, record in outputs.scored)
    assert {event_id(line) for line in later} <= set(scored) and max(scored.values()) == 1
    assert all(abs(record["score"] - archive["scores"][record["event_id"]]) <= 1e-6 for _, record in outputs.scored)
    assert took <= DISCOVERY_S + 15, took


def test_sigkill_mid_stream_then_restart_scores_every_event_at_least_once(kafka_broker, stream_model, archive):
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "kill")
    group = unique_name("kill")
    lines = archive["lines"]
    head, rest = lines[:300], lines[300:]
    produce(bootstrap, topics[0], head)
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(stream_model, bootstrap, topics, group) as scorer:
            outputs.wait(lambda o: len(o.scored) > 0, 60, "the first scored records", scorer)
            # The rest arrives at 600 events/s while the scorer is killed.
            producer = threading.Thread(target=produce, args=(bootstrap, topics[0], rest, None, 600.0))
            producer.start()
            time.sleep(1.0)
            scorer.kill()
            seen_before_kill = len({r["event_id"] for _, r in outputs.read(0.5).scored})
        producer.join(30)
        assert seen_before_kill < len(archive["scores"])  # killed mid-stream
        with stream_scorer(stream_model, bootstrap, topics, group) as scorer:
            outputs.wait(lambda o: {r["event_id"] for _, r in o.scored} >= archive["scores"].keys(),
                         60, "every valid event scored after the restart", scorer)
            # Then SIGTERM while events are still coming in (500/s): what was read must come out, and be committed.
            tail = [line.replace(b'"event_id":"', b'"event_id":"tail-', 1)
                    for line in rest if event_id(line) in archive["scores"]][:1500]
            delivered: list = []
            producer = threading.Thread(target=produce, kwargs=dict(
                bootstrap=bootstrap, topic=topics[0], values=tail, rate=500.0, delivered=delivered))
            producer.start()
            outputs.wait(lambda o: any(r["event_id"].startswith("tail-") for _, r in o.scored), 30,
                         "the first events sent after the restart", scorer)
            code, took = scorer.terminate()
            assert code == 0 and took < 30, scorer.log()
            producer.join(30)
        committed_offsets = committed(bootstrap, group, topics[0], 3)
        outputs.read(1.0)
    finally:
        outputs.close()
    scored_ids = {r["event_id"] for _, r in outputs.scored}
    dead_at = {(d["source"]["partition"], d["source"]["offset"]) for _, d in outputs.dead}
    read = [(p, o, v) for p, o, v in delivered if o < committed_offsets[p]]
    assert 0 < len(read) < len(tail)  # stopped mid-stream
    for partition, offset, value in read:  # committed means scored or dead-lettered
        identifier = event_id(value)
        assert identifier in scored_ids or (partition, offset) in dead_at, (partition, offset, value[:80])
    broken = {(d["source"]["partition"], d["source"]["offset"]) for _, d in outputs.dead}
    assert len(broken) == sum(archive["errors"].values())  # every broken line dead-lettered at least once


@pytest.mark.parametrize("runner", ["DirectRunner", "PrismRunner"])
def test_exactly_once_three_sigkills_then_a_restart_write_every_events_record_once(runner, kafka_broker, stream_model,
                                                                                   archive):
    """--delivery exactly_once, with events arriving at 1,000/s: three times a scorer is started and SIGKILLed while
    it writes, then one runs to the end with the same group. A read_committed reader of the outputs sees every valid
    event's record once and every broken line's dead letter once, with the scores of the bounded run, and the group's
    offsets reach the topic's end. (With --delivery at_least_once the same test finds records written twice.)"""
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "once")
    group = unique_name("once")
    copies = [line.replace(b'"event_id":"', f'"event_id":"copy{n}-'.encode(), 1)
              for n in range(1, 10) for line in archive["lines"] if event_id(line) in archive["scores"]]
    valid = {*archive["scores"], *map(event_id, copies)}
    ends: dict[int, int] = {}
    producer = threading.Thread(target=lambda: ends.update(
        produce(bootstrap, topics[0], [*archive["lines"], *copies], None, 1000.0)))
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        producer.start()
        for _ in range(3):
            with stream_scorer(stream_model, bootstrap, topics, group, "--delivery", "exactly_once",
                               "--runner", runner) as scorer:
                before = len(outputs.read().scored)
                outputs.wait(lambda o: len(o.scored) >= before + 500, 60, "records written", scorer)
                scorer.kill()
        producer.join(60)
        with stream_scorer(stream_model, bootstrap, topics, group, "--delivery", "exactly_once",
                           "--runner", runner) as scorer:
            outputs.wait(lambda o: len(o.scored) >= len(valid) and len(o.dead) >= sum(archive["errors"].values()),
                         90, "every event scored or dead-lettered after the restarts", scorer)
            wait_for(lambda: committed(bootstrap, group, topics[0], 3) == ends, 30, "the offsets of every event")
            code, took = scorer.terminate()
            assert code == 0 and took < 30, scorer.log()
            assert "Traceback" not in scorer.log(), scorer.log()
        outputs.read(2.0)  # nothing more may come
    finally:
        outputs.close()
    scored = Counter(r["event_id"] for _, r in outputs.scored)
    assert not [i for i, n in scored.items() if n > 1] and scored.keys() == valid
    for _, record in outputs.scored:
        original = record["event_id"].split("-", 1)[1] if record["event_id"].startswith("copy") else record["event_id"]
        assert abs(record["score"] - archive["scores"][original]) <= 1e-6
    dead_at = Counter((d["source"]["partition"], d["source"]["offset"]) for _, d in outputs.dead)
    assert set(dead_at.values()) == {1} and Counter(d["error"] for _, d in outputs.dead) == archive["errors"]


def test_exactly_once_a_second_scorer_of_the_group_fences_the_first_which_stops_in_one_line(
        kafka_broker, stream_model, archive):
    """Two scorers with one group and --delivery exactly_once: the second one's start fences the first, whose next
    transaction fails, so it stops in one line; what it had not committed is invisible, and the second writes it.
    Events arrive at 200/s for 30 s, so that the first has transactions left after the second has started."""
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "fenced")
    group = unique_name("fenced")
    valid = [line.replace(b'"event_id":"', f'"event_id":"copy{n}-'.encode(), 1)
             for n in range(3) for line in archive["lines"] if event_id(line) in archive["scores"]]
    ends: dict[int, int] = {}
    producer = threading.Thread(target=lambda: ends.update(produce(bootstrap, topics[0], valid, None, 200.0)))
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        producer.start()
        with stream_scorer(stream_model, bootstrap, topics, group, "--delivery", "exactly_once") as first:
            outputs.wait(lambda o: len(o.scored) > 0, 60, "the first scorer's records", first)
            with stream_scorer(stream_model, bootstrap, topics, group, "--delivery", "exactly_once") as second:
                code = first.wait(60)
                log = first.log()
                producer.join(30)
                outputs.wait(lambda o: len(o.scored) >= len(valid), 60, "every event scored", second)
                wait_for(lambda: committed(bootstrap, group, topics[0], 3) == ends, 30, "the offsets of every event")
                assert second.terminate()[0] == 0, second.log()
        outputs.read(1.0)
    finally:
        outputs.close()
    assert code == 2, log
    assert re.search(r"^error: Kafka transaction of \d+ record\(s\) not committed: .*fenced.*another producer took "
                     rf"transactional id {group}-transactions-0: is a second stream running for group {group}\?\); "
                     r"the stream stopped", log.strip().splitlines()[-1]), log
    assert Counter(r["event_id"] for _, r in outputs.scored) == Counter(map(event_id, valid))


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_scorer_waits_out_a_broker_outage_without_a_restart(stream_model, archive, delivery):
    """The broker goes away and comes back on the same port with its data; the scorer goes on by itself,
    with its idempotent or transactional producers. Then the broker goes away again, and a SIGTERM still
    stops the scorer within 30 s. Exactly once: every record once."""
    valid = [line for line in archive["lines"] if event_id(line) in archive["scores"]]
    first, rest = valid[:600], valid[600:1200]
    with KafkaBroker() as broker:
        topics = make_topics(broker, "outage")
        produce(broker.bootstrap, topics[0], first, partitions=[i % 3 for i in range(len(first))])
        outputs = Outputs(broker.bootstrap, topics[1], topics[2])
        try:
            with stream_scorer(stream_model, broker.bootstrap, topics, unique_name("outage"),
                               "--kafka_config", "reconnect.backoff.max.ms=500", "--delivery", delivery) as scorer:
                outputs.wait(lambda o: len(o.scored) >= len(first), 60, "the events before the outage", scorer)
                outputs.close()
                broker.stop()
                time.sleep(3)
                scorer.check_alive()
                broker.start()
                produce(broker.bootstrap, topics[0], rest, partitions=[i % 3 for i in range(len(rest))])
                outputs = Outputs(broker.bootstrap, topics[1], topics[2])
                outputs.wait(lambda o: {r["event_id"] for _, r in o.scored} >= set(map(event_id, rest)),
                             60, "the events after the outage", scorer)
                assert not outputs.dead
                if delivery == "exactly_once":
                    written = Counter(r["event_id"] for _, r in outputs.read(1.0).scored)
                    assert written == Counter(map(event_id, first + rest))
                outputs.close()
                broker.stop()
                time.sleep(1)
                code, took = scorer.terminate()
                assert code == 0 and took < 30, scorer.log()
        finally:
            outputs.close()


def test_records_the_broker_refuses_stop_the_stream_in_one_line_with_their_offsets_uncommitted(
        kafka_broker, stream_model, archive):
    """The output topic takes messages of at most 100 bytes; a scored record is longer. (Beam logs the failed
    bundle with its traceback first; the command's last line says what happened.)"""
    valid = [line for line in archive["lines"] if event_id(line) in archive["scores"]][:50]
    topics = (unique_name("refused-in"), unique_name("refused-scored"), unique_name("refused-dead"))
    kafka_broker.create_topic(topics[0], 1)
    kafka_broker.create_topic(topics[1], 1, config={"max.message.bytes": "100"})
    kafka_broker.create_topic(topics[2], 1)
    produce(kafka_broker.bootstrap, topics[0], valid, stamp_event_time=True)
    group = unique_name("refused")
    with stream_scorer(stream_model, kafka_broker.bootstrap, topics, group) as scorer:
        code = scorer.wait(120)
        log = scorer.log()
    assert code == 2, log
    assert log.strip().splitlines()[-1].startswith(f"error: {len(valid)} record(s) not delivered to '{topics[1]}': "
                                                   f"Broker: Message size too large; the stream stopped"), log
    assert committed(kafka_broker.bootstrap, group, topics[0], 1)[0] < 0  # nothing committed: all is read again


def test_a_graph_the_direct_runner_cannot_stream_is_refused_not_left_hanging():
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipelines import serving
    from transforms.errors import UserError

    options = PipelineOptions(["--streaming"])
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | beam.Create([("k", 1)]) | "Group" >> beam.GroupByKey()
    with pytest.raises(UserError, match="Group.*streaming runner"):
        serving.check_fused_with_source(pipeline, options)
    serving.check_fused_with_source(pipeline, PipelineOptions(["--streaming", "--runner", "FlinkRunner"]))


def test_stream_mode_flags_are_checked_before_anything_starts(stream_model):
    from pipelines import score
    from transforms.errors import UserError

    with pytest.raises(UserError, match="missing --input_topic"):
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", stream_model,
                   "--bootstrap_servers", "127.0.0.1:1"])
    secret = "hunter2-" + uuid.uuid4().hex
    with pytest.raises(UserError) as raised:
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", stream_model, "--bootstrap_servers",
                   "127.0.0.1:1", "--input_topic", "a", "--output_topic", "b", "--dead_letter_topic", "c",
                   "--kafka_config", f"sasl.password{secret}"])
    assert secret not in str(raised.value) and "--kafka_config #1" in str(raised.value)
    with pytest.raises(UserError, match="^--metrics_port serves what the steps in this process count; on a Flink "
                                        r"cluster the steps run in its workers \(Flink's own metrics reporters serve "
                                        r"them\)$"):
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", stream_model, "--bootstrap_servers",
                   "127.0.0.1:1", "--input_topic", "a", "--output_topic", "b", "--dead_letter_topic", "c",
                   "--metrics_port", "9108", "--runner", "FlinkRunner", "--flink_master", "localhost:1",
                   "--environment_type", "EXTERNAL", "--environment_config", "localhost:1"])
    with pytest.raises(UserError, match=r"^--partition_discovery_s needs a streaming runner \(Prism, Flink, Dataflow\)"):
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", stream_model, "--bootstrap_servers",
                   "127.0.0.1:1", "--input_topic", "a", "--output_topic", "b", "--dead_letter_topic", "c",
                   "--partition_discovery_s", "10", "--runner", "DirectRunner"])
    with pytest.raises(UserError, match=r"^--delivery exactly_once: a stream with monitoring keeps events in state "
                                        r"past the bundle that read them, so one transaction cannot hold an event's "
                                        r"record and its offset; use --delivery at_least_once"):
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", stream_model, "--bootstrap_servers",
                   "127.0.0.1:1", "--input_topic", "a", "--output_topic", "b", "--dead_letter_topic", "c",
                   "--monitoring_topic", "d", "--delivery", "exactly_once"])
    with pytest.raises(UserError, match=r"^--delivery exactly_once: it runs on the DirectRunner and Prism with "
                                        r"--environment_type LOOPBACK, whose bundles run in this process; Flink"):
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", stream_model, "--bootstrap_servers",
                   "127.0.0.1:1", "--input_topic", "a", "--output_topic", "b", "--dead_letter_topic", "c",
                   "--delivery", "exactly_once", "--runner", "FlinkRunner", "--flink_master", "localhost:1",
                   "--environment_type", "EXTERNAL", "--environment_config", "localhost:1"])


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler of its own for SIGTERM (its SigCgt mask, /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_sigterm_during_start_up_exits_cleanly_before_anything_is_read(stream_model):
    """SIGTERM as soon as the command handles it (before the model's load; here the start-up then waits up to 10 s
    for an unreachable broker's topic list): exit status 0 and one line, not death by the signal's default action."""
    scorer = stream_scorer(stream_model, "127.0.0.1:1", ("in", "out", "dead"), unique_name("early"))
    with scorer:
        deadline = time.monotonic() + 60
        while not _catches_sigterm(scorer.proc.pid):
            assert time.monotonic() < deadline and scorer.proc.poll() is None, scorer.log()
            time.sleep(0.01)
        code, _ = scorer.terminate()
        assert code == 0, scorer.log()
        assert "stopped on SIGTERM before it started; nothing was read" in scorer.log(), scorer.log()
        assert "Traceback" not in scorer.log()


def test_the_stop_summary_names_what_the_group_has_not_committed():
    from pipelines.serving import _summary

    counts = {"rtml/received": 10, "rtml/scored": 7, "rtml.dead_letter/amount": 1}
    assert _summary(counts, {0: (5, 5), 1: (2, 3), 2: (7, 9)}, cancelled=False) == (
        "10 received, 7 scored, 1 dead-lettered; 3 messages not committed (partition 1 offset 2, partition 2 offsets "
        "7-8): not yet written or not yet read, read again on restart")
    assert _summary({}, {0: (5, 5)}, cancelled=True) == (
        "no counts (the runner reports none for a cancelled job); cancelled after draining; all written, offsets "
        "committed")
    assert _summary(counts, None, cancelled=False).endswith("the committed offsets could not be read (is the cluster "
                                                            "reachable?)")
