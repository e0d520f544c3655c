"""The self-contained demo of live scoring: ``rtml demo stream [--spec fraud_entity] [--demo_seconds 30]``.

Starts a local Apache Kafka broker, creates the topics (events with 3 partitions), trains a small
model on generated data in a temporary folder (or scores with the one in --model_dir, never
training into it), produces generated events (1% broken) at a steady rate, runs the stream scorer
(``pipelines.score --mode stream``) against them and prints every scored record and dead letter as
it arrives on the output topics; --demo_seconds after the first one (or on SIGTERM / Ctrl-C) it
stops the scorer cleanly, then the producer, the printer and the broker. The model, Kafka and
monitoring flags (--monitoring_topic, --window_s, --max_delay_s ...) and Beam's (--runner ...) go to
the scorer.
"""
from __future__ import annotations

import datetime
import logging
import pathlib
import shutil
import sys
import tempfile
import threading
import time

import orjson
from apache_beam.options.pipeline_options import PipelineOptions
from confluent_kafka import Consumer, Producer, TopicPartition

from models import registry
from pipelines import artifacts, cli, generate, score, train
from pipelines.options import (DemoOptions, EngineOptions, KafkaOptions, LiveMonitorOptions, ModelOptions,
                               MonitorOptions, ReloadOptions, SpecOptions, StreamOptions)
from pipelines.kafka_broker import KafkaBroker
from transforms.errors import UserError
from transforms.spec import load_spec

INPUT_TOPIC, OUTPUT_TOPIC, DEAD_LETTER_TOPIC = "rtml-demo-events", "rtml-demo-scored", "rtml-demo-dead-letters"
EVENTS_PER_SECOND = 25
TRAIN_DAYS, TRAIN_EVENTS_PER_DAY = 3, 1500
STARTUP_ALLOWANCE_S = 120.0  # for the scorer to start (imports, model load) before --demo_seconds count
_QUIET = logging.getLogger("pipelines.stream_demo.librdkafka")
_QUIET.setLevel(logging.CRITICAL)


def _say(text: str) -> None:
    print(f"[demo] {text}", file=sys.stderr, flush=True)


# The demo's producer writes JSON to a broker of its own: no other value format, and --bootstrap_servers only to be
# refused in words.
VIEWS = (SpecOptions, DemoOptions, ModelOptions, EngineOptions, ReloadOptions,
         cli.only(KafkaOptions, "bootstrap_servers", "kafka_config", "kafka_config_file", "kafka_secret", "kafka_io"),
         StreamOptions, MonitorOptions, LiveMonitorOptions)


def run(argv=None, test_pipeline=None) -> dict[str, int]:
    """Run the demo; returns the scorer's counters."""
    options = cli.parse(argv, VIEWS, __doc__)
    if not options.view_as(SpecOptions).spec:
        options.view_as(SpecOptions).spec = "fraud"
    if cli.given(options, "bootstrap_servers"):
        raise UserError("the stream demo starts its own broker; to score a running cluster: "
                        "rtml score --mode stream --bootstrap_servers ...")
    user_model_dir = options.view_as(ModelOptions).model_dir
    if user_model_dir and not (pathlib.Path(user_model_dir) / registry.CURRENT).exists():
        raise UserError(f"--model_dir {user_model_dir} holds no model; the demo trains its own when --model_dir "
                        f"is not given")
    spec = load_spec(options.view_as(SpecOptions).spec)
    events = _generator_for(spec)
    if events is None:
        raise UserError(f"the stream demo generates events of the built-in use cases only "
                        f"({', '.join(generate.MODELS)}); to score --spec {options.view_as(SpecOptions).spec} from a running "
                        f"cluster: rtml score --mode stream --bootstrap_servers ...")
    seconds = options.view_as(DemoOptions).demo_seconds
    if not seconds > 0:
        raise UserError("--demo_seconds must be > 0")
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="rtml-stream-demo-"))
    broker = KafkaBroker()
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def cleanup():
        broker.close()
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        try:
            broker.start()
        except artifacts.MissingArtifact as error:
            raise UserError(f"the stream demo needs a local broker: {error}") from None
        _say(f"started a local Apache Kafka broker on {broker.bootstrap}")
        broker.create_topic(INPUT_TOPIC, 3)
        broker.create_topic(OUTPUT_TOPIC, 1)
        broker.create_topic(DEAD_LETTER_TOPIC, 1)

        model_dir = user_model_dir or str(workdir / "model")
        if not user_model_dir:
            _say(f"no model in {model_dir}: training one on {TRAIN_DAYS} days of generated {spec.name} events "
                 f"(one to two minutes). For a real one: python -m pipelines.generate --spec {events} --days 14 "
                 f"--out data/{spec.name} && python -m pipelines.train --spec {spec.name} "
                 f"--input 'data/{spec.name}/*/*.jsonl' --model_dir models/{spec.name}")
            generate.generate(events, TRAIN_DAYS, workdir / "train", datetime.date(2026, 3, 1),
                              TRAIN_EVENTS_PER_DAY, 0.0, 7, compress=False)
            train.run(["--spec", spec.name, "--input", str(workdir / "train" / "*" / "*.jsonl"),
                       "--model_dir", model_dir, "--dead_letter", str(workdir / "train_dead_letters")])

        count = int(EVENTS_PER_SECOND * (seconds + 60))  # enough for a slow start too
        generate.generate(events, 1, workdir / "live", datetime.date(2026, 4, 1), max(count, 100), 0.01, 11,
                          compress=False)
        lines = (workdir / "live" / "dt=2026-04-01" / "events.jsonl").read_bytes().splitlines()
        first_output: list[float] = []  # when the printer saw the first record
        threads = [threading.Thread(target=_produce, args=(broker.bootstrap, lines, spec.entity_key, stop),
                                    name="demo-producer", daemon=True),
                   threading.Thread(target=_print_outputs, args=(broker.bootstrap, stop, first_output),
                                    name="demo-printer", daemon=True)]
        for thread in threads:
            thread.start()
        _say(f"producing {EVENTS_PER_SECOND} generated {spec.name} events/s (1% broken) to {INPUT_TOPIC}; scoring "
             f"to {OUTPUT_TOPIC} and {DEAD_LETTER_TOPIC} for {seconds:g} s (Ctrl-C stops earlier)")
        argv = [*options._flags, "--spec", spec.name, "--bootstrap_servers", broker.bootstrap, "--input_topic", INPUT_TOPIC,
                "--output_topic", OUTPUT_TOPIC, "--dead_letter_topic", DEAD_LETTER_TOPIC,
                "--group_id", "rtml-demo", "--offset_reset", "earliest", "--model_dir", model_dir]
        started = time.monotonic()

        def stop_when() -> str | None:  # --demo_seconds of scoring, counted from the first scored record
            if first_output and time.monotonic() - first_output[0] >= seconds:
                return f"the demo's {seconds:g} s"
            if not first_output and time.monotonic() - started >= seconds + STARTUP_ALLOWANCE_S:
                return f"no scored record within {seconds + STARTUP_ALLOWANCE_S:g} s"
            return None

        return score.run_stream(PipelineOptions(argv), test_pipeline, stop_when,
                                on_stop=lambda: time.sleep(1.0),  # the printer catches the last records
                                before_forced_exit=(cleanup,))
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
        cleanup()
        _say("stopped the producer, the printer and the broker")


def _generator_for(spec) -> str | None:
    """The built-in generator whose events fit ``spec`` (the same entity key and fields), e.g. fraud's for
    fraud_entity."""
    fields = {field.name for field in spec.fields}
    return next((name for name in generate.MODELS if load_spec(name).entity_key == spec.entity_key
                 and {field.name for field in load_spec(name).fields} == fields), None)


def _produce(bootstrap: str, lines: list[bytes], entity_key: str, stop: threading.Event) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.max.bytes": 4 << 20},
                        logger=_QUIET)
    started = time.monotonic()
    for number, line in enumerate(lines):
        if stop.is_set():
            break
        delay = started + number / EVENTS_PER_SECOND - time.monotonic()
        if delay > 0 and stop.wait(delay):
            break
        try:
            key = orjson.loads(line).get(entity_key)
        except (orjson.JSONDecodeError, AttributeError):
            key = None
        producer.produce(INPUT_TOPIC, value=line, key=key.encode("utf-8") if isinstance(key, str) else None)
        producer.poll(0)
    producer.flush(5)


def _print_outputs(bootstrap: str, stop: threading.Event, first_output: list[float]) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "rtml-demo-printer",
                         "enable.auto.commit": False}, logger=_QUIET)
    consumer.assign([TopicPartition(OUTPUT_TOPIC, 0, 0), TopicPartition(DEAD_LETTER_TOPIC, 0, 0)])
    try:
        while not stop.is_set():
            for message in consumer.consume(200, 0.2):
                if message.error() is None:
                    if not first_output:
                        first_output.append(time.monotonic())
                    _print_record(message.topic(), message.value())
    finally:
        consumer.close()


def _print_record(topic: str, value: bytes) -> None:
    record = orjson.loads(value)
    if topic == OUTPUT_TOPIC:
        flag = "ALERT" if record.get("alert") else "     "
        print(f"scored      {flag} {record.get('score'):.4f}  "
              + "  ".join(f"{k}={v}" for k, v in record.items() if k not in ("score", "alert", "model_version")),
              flush=True)
    else:
        source = record.get("source", {})
        print(f"dead letter  {record.get('error')}  (partition {source.get('partition')}, "
              f"offset {source.get('offset')})", flush=True)


if __name__ == "__main__":
    cli.main(run)
