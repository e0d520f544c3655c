"""``rtml produce``: an archive into a topic as a live source writes it (valid events keyed by entity and
stamped with their event time, broken lines as they are), at a given rate or pace of event time."""
from __future__ import annotations

import datetime
import gzip
import itertools
import time

import pytest
from confluent_kafka import Consumer, TopicPartition

from pipelines import produce
from pipelines.generate import generate
from tests.kafka_helpers import unique_name
from transforms.errors import IncompleteInput, UserError
from transforms.events import EventParser
from transforms.spec import load_spec


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("produce")
    generate("fraud", 2, root, datetime.date(2026, 3, 1), 150, 0.04, 3, compress=True)
    files = sorted(root.glob("*/*.jsonl.gz"))
    return {"glob": str(root / "*" / "*.jsonl.gz"), "files": files,
            "lines": [line for path in files for line in gzip.decompress(path.read_bytes()).splitlines()]}


def _read(bootstrap: str, topic: str, expect: int) -> list:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("check")})
    consumer.assign([TopicPartition(topic, 0, 0)])
    got, deadline = [], time.monotonic() + 20
    while len(got) < expect and time.monotonic() < deadline:
        got += [m for m in consumer.consume(500, 0.2) if m.error() is None]
    consumer.close()
    return got


def _produce(kafka_broker, topic, glob, *flags) -> dict:
    return produce.run(["--spec", "fraud", "--input", glob, "--bootstrap_servers", kafka_broker.bootstrap,
                        "--input_topic", topic, *flags])


def test_every_line_is_sent_in_order_valid_events_keyed_and_stamped_with_their_time_the_rest_with_the_last(
        kafka_broker, archive, capsys):
    topic = unique_name("produce")
    kafka_broker.create_topic(topic, 1)
    counts = _produce(kafka_broker, topic, archive["glob"])
    parser = EventParser(load_spec("fraud"))
    lines = [line for line in archive["lines"] if len(line) < 1_000_000]  # a larger one cannot be a message
    parsed = [parser.parse(line) for line in lines]
    valid = sum(not isinstance(p, str) for p in parsed)
    assert counts == {"sent": len(lines), "events": valid, "other": len(lines) - valid,
                      "too large": len(archive["lines"]) - len(lines)}
    assert 0 < counts["other"] and counts["too large"] == 1
    assert f"produced {len(lines):,} messages to {topic}" in capsys.readouterr().out
    messages = _read(kafka_broker.bootstrap, topic, len(lines))
    assert [m.value() for m in messages] == lines
    last_ms = None  # a line that is no event is stamped like the event before it (a replay's watermark stays put)
    for message, result in zip(messages, parsed):
        if isinstance(result, str):
            assert message.key() is None
            if last_ms is not None:
                assert message.timestamp()[1] == last_ms
        else:
            assert message.key() == result[0]["card_id"].encode()
            last_ms = result[1] // 1000
            assert message.timestamp()[1] == last_ms


def test_rate_and_speedup_pace_the_messages(kafka_broker, archive):
    lines = len(archive["lines"])
    started = time.monotonic()
    _produce(kafka_broker, unique_name("rate"), archive["glob"], "--rate", str(lines))
    assert 0.9 < time.monotonic() - started < 4  # a second's worth
    span_s = 2 * 86_400  # the generated days, whose events are spread over both
    started = time.monotonic()
    _produce(kafka_broker, unique_name("speedup"), archive["glob"], "--speedup", str(span_s))
    assert 0.8 < time.monotonic() - started < 4


def test_the_pace_holds_when_the_clock_moves_between_its_reads(monkeypatch):
    """A busy machine can let a message's due time pass between the pace's look at the clock and its sleep;
    the producer then sends at once (it once failed with "sleep length must be non-negative")."""
    clock = itertools.count(0.0, 0.4)  # each read of the clock is 0.4 s after the one before
    slept = []
    monkeypatch.setattr(produce.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(produce.time, "sleep", slept.append)
    pace = produce._Pace(rate=1.0, speedup=None)  # one a second from 0.0
    for _ in range(4):
        pace.wait(None)
    assert slept and all(seconds > 0 for seconds in slept), slept


def test_mistakes_and_unreadable_files_are_one_line(kafka_broker, archive, tmp_path):
    with pytest.raises(UserError, match="give --rate or --speedup, not both"):
        _produce(kafka_broker, "t", archive["glob"], "--rate", "5", "--speedup", "2")
    with pytest.raises(UserError, match="--rate must be a number above 0"):
        _produce(kafka_broker, "t", archive["glob"], "--rate", "0")
    (tmp_path / "cut.jsonl.gz").write_bytes(archive["files"][0].read_bytes()[:300])
    topic = unique_name("cut")
    with pytest.raises(IncompleteInput, match="1 input file could not be read to the end"):
        _produce(kafka_broker, topic, str(tmp_path / "cut.jsonl.gz"))


def test_events_older_than_the_topic_keeps_messages_are_refused_in_one_line(kafka_broker, archive):
    """Stamped with their event time, events from March are past a 7-day topic's retention: the broker would delete
    them at its next retention check, before a scorer reads them (the cause of replays that scored nothing)."""
    topic = unique_name("week")
    kafka_broker.create_topic(topic, 1, config={"retention.ms": str(7 * 86_400_000)})
    with pytest.raises(UserError, match=rf"^the event at .* \(2026-03-01 .* UTC\) before what {topic} keeps \("
                                        r"retention.ms 604,800,000\): .* set retention.ms to -1 on the topic"):
        _produce(kafka_broker, topic, archive["glob"])
    assert _read(kafka_broker.bootstrap, topic, expect=1) == []
    kafka_broker.create_topic(kept := unique_name("kept"), 1, config={"retention.ms": "-1"})
    counts = _produce(kafka_broker, kept, archive["glob"])
    assert counts["sent"] + counts["too large"] == len(archive["lines"])
