"""--value_format: events in Avro or with Schema Registry framing, written by rtml produce, read by the scorers.

The confluent-* formats run against confluent-kafka's ``mock://`` registry, which lives in one process,
so the topic is read in this process, to its end, by the graph the scorers compose. The plain Avro
format needs no registry, so a live scorer runs it in its own process.
"""
from __future__ import annotations

import base64
import datetime
import json
import time
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from confluent_kafka import Producer

from models.registry import load as registry_load
from pipelines import graph, produce, score
from pipelines.generate import generate
from tests.conftest import publish_stand_in_model, read_json_lines
from tests.kafka_helpers import Outputs, make_topics, stream_scorer, unique_name
from transforms import kafka
from transforms.errors import UserError
from transforms.events import MAX_EVENT_BYTES, EventParser
from transforms.fileio import file_records
from transforms.kafka_formats import ValueFormat, registry
from transforms.spec import load_spec

@pytest.fixture(scope="module")
def day(tmp_path_factory) -> dict:
    """A day of fraud events (5% broken in every generated way), a stand-in model, and the day scored in batch."""
    root = tmp_path_factory.mktemp("formats")
    manifest = generate("fraud", 1, root / "archive", datetime.date(2026, 3, 1), 2000, 0.05, 3, compress=False)
    path, model_dir = root / "archive" / manifest["days"][0]["file"], str(root / "model")
    publish_stand_in_model(model_dir)
    score.run(["--spec", "fraud", "--input", str(path), "--model_dir", model_dir, "--output", str(root / "scored"),
               "--dead_letter", str(root / "dead")])
    return {"path": str(path), "model_dir": model_dir, "scores": {r["event_id"]: r["score"] for r in
                                                                  read_json_lines(root / "scored")},
            "broken": [raw.payload for raw in file_records(str(path)) if len(raw.payload) <= MAX_EVENT_BYTES
                       and isinstance(EventParser(load_spec("fraud")).parse(raw.payload), str)]}


@pytest.mark.parametrize("value_format", ["confluent-avro", "confluent-json"])
def test_a_registry_framed_topic_scores_as_the_bounded_run_and_names_what_it_cannot_read(value_format, day,
                                                                                          kafka_broker):
    url, topic, spec = f"mock://{unique_name('registry')}", unique_name(f"{value_format}-in"), load_spec("fraud")
    kafka_broker.create_topic(topic, 3)
    sent = produce.run(["--spec", "fraud", "--input", day["path"], "--bootstrap_servers", kafka_broker.bootstrap,
                        "--input_topic", topic, "--value_format", value_format, "--schema_registry_url", url])
    assert (sent["events"], sent["other"]) == (len(day["scores"]), len(day["broken"]))
    assert registry(url).get_subjects() == [f"{topic}-value"]
    framed = ValueFormat(value_format, spec, url).encode(_event(), topic)
    unknown_id = framed[:1] + (12345).to_bytes(4, "big") + framed[5:]
    mismatched = framed[:5] + json.dumps({**_event(), "amount": "12"}).encode()
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for value in [unknown_id, *([mismatched] if value_format == "confluent-json" else [])]:
        producer.produce(topic, value=value)
    assert producer.flush(15) == 0
    expected = Counter(f"not {value_format} (shorter than the 5-byte Schema Registry header)" if len(line) < 5 else
                       f"not {value_format} (no Schema Registry header: the first byte is {line[0]:#04x}, not 0x00)"
                       for line in day["broken"])  # broken lines, sent as they were: no framing
    expected[f"not {value_format} (Schema Not Found (HTTP status code 404, SR code 40400))"] = 1
    if value_format == "confluent-json":
        expected["not confluent-json ('12' is not of type 'number')"] = 1

    model = registry_load(day["model_dir"])
    with TestPipeline() as pipeline:  # the topic read to its end, as a bounded Kafka backfill reads it
        read = kafka.ReadFromKafka(kafka_broker.bootstrap, topic, start_timestamp_ms=0,
                                   stop_timestamp_ms=int(time.time() * 1000) + 1000)
        scored = (pipeline
                  | graph.ReadKafkaEvents(read, 512, value_format=ValueFormat(value_format, spec, url))
                  | graph.ScoreRaw(spec, model, day["model_dir"], "onnx"))
        assert_that(scored.scored | beam.FlatMap(lambda records: [(r["event_id"], r["score"]) for r in records]),
                    equal_to(list(day["scores"].items())), label="scores")
        assert_that(scored.dead_letters | beam.Map(lambda letter: letter["error"]),
                    equal_to(list(expected.elements())), label="reasons")
        assert_that(scored.dead_letters  # as it came: the bytes, not what a deserializer made of them
                    | beam.Filter(lambda letter: "Schema Not Found" in letter["error"])
                    | beam.Map(lambda letter: (letter["raw"], letter["raw_encoding"])),
                    equal_to([_as_it_came(unknown_id)]), label="kept")


@pytest.mark.slow  # a live stream
def test_an_avro_topic_is_scored_live_with_the_bounded_scores(day, kafka_broker):
    topics = make_topics(kafka_broker, "avro")
    sent = produce.run(["--spec", "fraud", "--input", day["path"], "--bootstrap_servers", kafka_broker.bootstrap,
                        "--input_topic", topics[0], "--value_format", "avro"])
    outputs = Outputs(kafka_broker.bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(day["model_dir"], kafka_broker.bootstrap, topics, unique_name("avro"),
                           "--value_format", "avro") as scorer:
            outputs.wait(lambda o: len(o.scored) + len(o.dead) >= sent["sent"], 120, "the day scored live", scorer)
            code, _ = scorer.terminate()
            assert code == 0, scorer.log()
    finally:
        outputs.close()
    assert {r["event_id"]: r["score"] for _, r in outputs.scored} == day["scores"]
    assert len(outputs.scored) == len(day["scores"]) and len(outputs.dead) == len(day["broken"])
    # a broken line, sent as it was, is not Avro of the spec's record; its dead letter keeps it as it came
    assert all(d["error"].startswith("not avro (") for _, d in outputs.dead)


def test_a_registry_format_without_a_registry_is_one_line(day, kafka_broker):
    with pytest.raises(UserError) as error:
        produce.run(["--spec", "fraud", "--input", day["path"], "--bootstrap_servers", kafka_broker.bootstrap,
                     "--input_topic", "t", "--value_format", "confluent-avro"])
    assert str(error.value) == ("--value_format confluent-avro reads the writer's schema from a registry: give "
                                "--schema_registry_url")


def _as_it_came(value: bytes) -> tuple[str, str]:
    """A dead letter's raw input for these bytes: the text if they are UTF-8 (a zero byte is), else base64."""
    try:
        return value.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        return base64.b64encode(value).decode(), "base64"


def _event() -> dict:
    return {"event_id": "framed-1", "event_time": "2026-03-01T12:00:00Z", "card_id": "c-1", "merchant_id": "m-1",
            "merchant_category": "grocery", "amount": 12.5, "currency": "EUR", "country": "DE", "channel": "pos"}
