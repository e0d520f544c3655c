"""--value_format: events in Avro or with Schema Registry framing, written by rtml produce, read by the scorers.

The confluent-* formats run against a real Schema Registry that takes only clients with credentials (Apicurio
Registry behind Keycloak, the ``schema_registry`` fixture), which the commands log in to with
``--schema_registry_secret basic.auth.user.info=env:NAME``: a bounded read of a topic in this process, live
streams on the DirectRunner (against a ``SASL_SSL`` broker) and Prism through a registry outage and a schema
evolved mid-stream, and the one-line refusals.
"""
from __future__ import annotations

import base64
import dataclasses
import datetime
import http.server
import json
import subprocess
import sys
import threading
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
from pipelines.kafka_broker import free_port
from tests.conftest import publish_stand_in_model, read_json_lines
from tests.kafka_helpers import (ROOT, Outputs, committed, make_topics, produce as produce_values, secure_login,
                                 stream_scorer, unique_name)
from transforms import kafka
from transforms.contract import avro_schema
from transforms.errors import UserError
from transforms.events import MAX_EVENT_BYTES, EventParser
from transforms.fileio import file_records
from transforms.kafka_formats import ValueFormat, registry
from transforms.spec import Field, load_spec

REGISTRY_ENV = "RTML_TEST_REGISTRY_USER_INFO"
UNKNOWN_ID = 12345
UNKNOWN_ID_REASON = f"No content with id/hash 'contentId-{UNKNOWN_ID}' was found"  # Apicurio's words for it

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
            "valid": [json.loads(raw.payload) for raw in file_records(str(path)) if len(raw.payload) <= MAX_EVENT_BYTES
                      and not isinstance(EventParser(load_spec("fraud")).parse(raw.payload), str)],
            "broken": [raw.payload for raw in file_records(str(path)) if len(raw.payload) <= MAX_EVENT_BYTES
                       and isinstance(EventParser(load_spec("fraud")).parse(raw.payload), str)]}


@pytest.fixture
def registry_login(schema_registry, monkeypatch) -> tuple[dict, list[str]]:
    """The registry's client settings, and the flags that log in to it with the credentials in
    $RTML_TEST_REGISTRY_USER_INFO."""
    monkeypatch.setenv(REGISTRY_ENV, schema_registry.user_info)
    return ({"url": schema_registry.url, "basic.auth.user.info": schema_registry.user_info},
            ["--schema_registry_url", schema_registry.url,
             f"--schema_registry_secret=basic.auth.user.info=env:{REGISTRY_ENV}"])


@pytest.mark.parametrize("value_format", ["confluent-avro", "confluent-json"])
def test_a_registry_framed_topic_scores_as_the_bounded_run_and_names_what_it_cannot_read(value_format, day,
                                                                                          kafka_broker, registry_login):
    config, login = registry_login
    topic, spec = unique_name(f"{value_format}-in"), load_spec("fraud")
    kafka_broker.create_topic(topic, 3)
    sent = produce.run(["--spec", "fraud", "--input", day["path"], "--bootstrap_servers", kafka_broker.bootstrap,
                        "--input_topic", topic, "--value_format", value_format, *login])
    assert (sent["events"], sent["other"]) == (len(day["scores"]), len(day["broken"]))
    assert f"{topic}-value" in registry(config).get_subjects()
    framed = ValueFormat(value_format, spec, config).encode(_event(), topic)
    unknown_id = framed[:1] + UNKNOWN_ID.to_bytes(4, "big") + framed[5:]
    mismatched = framed[:5] + json.dumps({**_event(), "amount": "12"}).encode()
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap})
    for value in [unknown_id, *([mismatched] if value_format == "confluent-json" else [])]:
        producer.produce(topic, value=value)
    assert producer.flush(15) == 0
    expected = Counter(f"not {value_format} (shorter than the 5-byte Schema Registry header)" if len(line) < 5 else
                       f"not {value_format} (no Schema Registry header: the first byte is {line[0]:#04x}, not 0x00)"
                       for line in day["broken"])  # broken lines, sent as they were: no framing
    expected[f"not {value_format} ({UNKNOWN_ID_REASON})"] = 1
    if value_format == "confluent-json":
        expected["not confluent-json ('12' is not of type 'number')"] = 1

    model = registry_load(day["model_dir"])
    with TestPipeline() as pipeline:  # the topic read to its end, as a bounded Kafka backfill reads it
        read = kafka.ReadFromKafka(kafka_broker.bootstrap, topic, start_timestamp_ms=0,
                                   stop_timestamp_ms=int(time.time() * 1000) + 1000)
        scored = (pipeline
                  | graph.ReadKafkaEvents(read, 512, value_format=ValueFormat(value_format, spec, config))
                  | graph.ScoreRaw(spec, model, day["model_dir"], "onnx"))
        assert_that(scored.scored | beam.FlatMap(lambda records: [(r["event_id"], r["score"]) for r in records]),
                    equal_to(list(day["scores"].items())), label="scores")
        assert_that(scored.dead_letters | beam.Map(lambda letter: letter["error"]),
                    equal_to(list(expected.elements())), label="reasons")
        assert_that(scored.dead_letters  # as it came: the bytes, not what a deserializer made of them
                    | beam.Filter(lambda letter: UNKNOWN_ID_REASON in letter["error"])
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


@pytest.mark.slow  # two live streams
@pytest.mark.parametrize("value_format, runner, secure", [("confluent-avro", "DirectRunner", True),
                                                          ("confluent-json", "PrismRunner", False)])
def test_a_stream_waits_out_a_registry_outage_and_reads_a_schema_evolved_mid_stream(
        value_format, runner, secure, day, schema_registry, registry_login, kafka_broker, secure_broker, monkeypatch):
    """The day scored live with the bounded scores (on the DirectRunner over ``SASL_SSL``); then the producer's
    spec grows a field (its schema registered as the subject's second version), the registry goes away, and events
    of the new version and one of an id the registry never gave arrive: nothing is scored or dead-lettered while
    the scorer waits, saying so; once the registry is back, the new events score as their originals did and the
    unknown id is a dead letter."""
    config, registry_flags = registry_login
    broker = secure_broker if secure else kafka_broker
    topics, group = make_topics(broker, value_format), unique_name(value_format)
    kafka_login = (secure_login(broker, monkeypatch, read=[topics[0]], write=topics[1:], groups=[group])[1]
                   if secure else [])
    sent = produce.run(["--spec", "fraud", "--input", day["path"], "--bootstrap_servers", broker.bootstrap,
                        "--input_topic", topics[0], "--value_format", value_format, *registry_flags])
    spec = load_spec("fraud")
    grown = dataclasses.replace(spec, fields=(*spec.fields, Field("terminal_id", "string", required=False)))
    evolved = ValueFormat(value_format, grown, config)
    later = day["valid"][:100]
    values = [evolved.encode({**event, "event_id": f"{event['event_id']}-v2", "terminal_id": "t-7"}, topics[0])
              for event in later]  # (the second version registered here, while the registry is up)
    assert len(registry(config).get_versions(f"{topics[0]}-value")) == 2
    unknown_id = values[0][:1] + UNKNOWN_ID.to_bytes(4, "big") + values[0][5:]
    expected = {**day["scores"], **{f"{event['event_id']}-v2": day["scores"][event["event_id"]] for event in later}}
    outputs = Outputs(broker.bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(day["model_dir"], broker.secure_bootstrap if secure else broker.bootstrap, topics, group,
                           "--runner", runner, "--value_format", value_format, *registry_flags,
                           *kafka_login) as scorer:
            outputs.wait(lambda o: len(o.scored) + len(o.dead) >= sent["sent"], 180, "the day scored live", scorer)
            schema_registry.stop()
            produce_values(broker.bootstrap, topics[0], [*values, unknown_id],
                           [event["card_id"].encode() for event in [*later, later[0]]])
            outputs.wait(lambda _: "cannot answer" in scorer.log(None), 60,
                         "the scorer's word that it waits for the registry", scorer)
            time.sleep(3)
            outputs.read()
            assert (len(outputs.scored), len(outputs.dead)) == (len(day["scores"]), len(day["broken"]))
            schema_registry.start()
            outputs.wait(lambda o: len(o.scored) + len(o.dead) >= sent["sent"] + len(values) + 1, 120,
                         "the new version's events scored once the registry is back", scorer)
            code, _ = scorer.terminate()
            log = scorer.log(None)
    finally:
        outputs.close()
        schema_registry.start()  # (for the other tests, if this one failed while it was stopped)
    assert code == 0 and "answers again after" in log and schema_registry.user_info not in log, log
    assert {r["event_id"]: r["score"] for _, r in outputs.scored} == expected and len(outputs.scored) == len(expected)
    reasons = Counter(letter["error"] for _, letter in outputs.dead)
    assert reasons[f"not {value_format} ({UNKNOWN_ID_REASON})"] == 1 and sum(reasons.values()) == len(day["broken"]) + 1


@pytest.mark.slow  # two live streams
@pytest.mark.parametrize("runner", ["DirectRunner", "PrismRunner"])
def test_a_stop_while_an_event_waits_for_the_registry_is_one_line_and_a_restart_scores_it(runner, day, schema_registry,
                                                                                        registry_login, kafka_broker):
    config, registry_flags = registry_login
    topics, group = make_topics(kafka_broker, "registry-stop", partitions=1), unique_name("registry-stop")
    event = day["valid"][0]
    value = ValueFormat("confluent-avro", load_spec("fraud"), config).encode(event, topics[0])
    scorer_args = (day["model_dir"], kafka_broker.bootstrap, topics, group, "--runner", runner, "--value_format",
                   "confluent-avro", *registry_flags)
    outputs = Outputs(kafka_broker.bootstrap, topics[1], topics[2])
    try:
        with stream_scorer(*scorer_args) as scorer:
            produce_values(kafka_broker.bootstrap, topics[0], [b"not framed"], [b"k"])  # needs no registry
            outputs.wait(lambda o: len(o.dead) == 1, 120, "the unframed message's dead letter", scorer)
            schema_registry.stop()
            produce_values(kafka_broker.bootstrap, topics[0], [value], [event["card_id"].encode()])
            outputs.wait(lambda _: "cannot answer" in scorer.log(None), 60, "the wait for the registry", scorer)
            code, took = scorer.terminate()
            log = scorer.log()
        assert code == 2 and took < 30, log
        assert log.strip().splitlines()[-1] == (
            f"error: Schema Registry {schema_registry.url} cannot answer ([Errno 111] Connection refused): the stream "
            f"stopped without the events that wait for it, which it reads again when it restarts"), log
        assert committed(kafka_broker.bootstrap, group, topics[0], 1)[0] <= 1  # not past the waiting event
        schema_registry.start()
        with stream_scorer(*scorer_args) as scorer:
            outputs.wait(lambda o: len(o.scored) == 1, 120, "the waiting event scored after the restart", scorer)
            code, _ = scorer.terminate()
        assert code == 0, scorer.log()
    finally:
        outputs.close()
        schema_registry.start()
    assert [record["score"] for _, record in outputs.scored] == [day["scores"][event["event_id"]]]
    assert len(outputs.dead) == 1


def test_a_registry_that_refuses_the_credentials_or_cannot_be_reached_is_one_line(day, kafka_broker, schema_registry,
                                                                                  monkeypatch):
    monkeypatch.setenv(REGISTRY_ENV, "scorer:not-the-password")
    topics = make_topics(kafka_broker, "refused")
    command = [sys.executable, "-m", "pipelines.rtml", "score", "--mode", "stream", "--spec", "fraud",
               "--model_dir", day["model_dir"], "--bootstrap_servers", kafka_broker.bootstrap, "--input_topic",
               topics[0], "--output_topic", topics[1], "--dead_letter_topic", topics[2], "--value_format",
               "confluent-avro"]
    started = time.monotonic()
    done = subprocess.run([*command, "--schema_registry_url", schema_registry.url,
                           f"--schema_registry_secret=basic.auth.user.info=env:{REGISTRY_ENV}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and time.monotonic() - started < 30, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: --schema_registry_url {schema_registry.url}: the registry refused the credentials (HTTP 401); give "
        f"them with --schema_registry_secret basic.auth.user.info=env:NAME (its value ID:PASSWORD)")
    assert "not-the-password" not in done.stdout + done.stderr
    nobody = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(UserError) as error:
        produce.run(["--spec", "fraud", "--input", day["path"], "--bootstrap_servers", kafka_broker.bootstrap,
                     "--input_topic", "t", "--value_format", "confluent-json", "--schema_registry_url", nobody])
    assert str(error.value) == (f"--schema_registry_url {nobody}: cannot reach the registry ([Errno 111] Connection "
                                f"refused)")


@pytest.mark.parametrize("answer", [b"<html><body>502 Bad Gateway</body></html>", b'{"schemaType": "AVRO"}'])
def test_a_registry_answer_that_is_not_a_schema_is_a_dead_letter_per_record(answer):
    """A registry, or a proxy before it, that answers a schema id with something other than a schema costs each
    record of that id a dead letter naming it, never a crash; records of a good id read on."""
    spec = load_spec("fraud")
    good = json.dumps({"schema": json.dumps(avro_schema(spec))}).encode()

    class Registry(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # schema 1, schema 7, and nothing else (as a registry without the associations API)
            body = {"/schemas/ids/1": good, "/schemas/ids/7": answer}.get(self.path.split("?")[0])
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body or b'{"error_code": 404, "message": "HTTP 404 Not Found"}')

        def log_message(self, *_):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Registry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        reader = ValueFormat("confluent-avro", spec, {"url": f"http://127.0.0.1:{server.server_port}"})
        body = ValueFormat("avro", spec).encode(_event(), "t")
        records = [reader.decode(b"\0" + schema_id.to_bytes(4, "big") + body, "t").record for schema_id in (7, 1, 7)]
    finally:
        server.shutdown()
    reason = records[0]
    assert reason.startswith("not confluent-avro (the Schema Registry's answer for schema id 7 is not a schema (")
    assert records[2] == reason and records[1]["event_id"] == _event()["event_id"], records


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
