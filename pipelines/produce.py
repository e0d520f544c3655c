r"""Load an archive into a Kafka topic, as a live source would write it: ``rtml produce``.

    rtml produce --spec fraud --input 'data/fraud/*/*.jsonl' --bootstrap_servers HOST:9092 \
        --input_topic events [--rate 2000 | --speedup 3600] [--kafka_config KEY=VALUE ...]

Every line (or Parquet row) becomes one message, files in name order, each in its own order. A
valid event is keyed by the spec's entity key and stamped with its event time (Kafka CreateTime),
as a live scorer's entity features and monitoring windows need, and written in --value_format (the
confluent-* formats register the spec's schema under the topic's subject); anything else goes as
it is, without a key or a time of its own, so the scorer's dead letters can be checked. An event older than the
topic's ``retention.ms`` is refused (the broker would delete it within minutes). ``--input_topic``
is the topic a scorer then reads. A progress line while it runs (on a terminal), then a summary.
"""
from __future__ import annotations

import datetime
import sys
import time

import orjson
from confluent_kafka import KafkaError, KafkaException, Producer

from pipelines import cli, graph, serving
from pipelines.options import ArchiveOptions, KafkaOptions, ProduceOptions, SpecOptions
from transforms import kafka, kafka_access
from transforms.errors import UserError
from transforms.events import EventParser, Unreadable
from transforms.fileio import UNREADABLE_NAMESPACE, check_input, file_records
from transforms.kafka_formats import ValueFormat
from transforms.spec import Spec, load_spec

VIEWS = (SpecOptions, cli.only(ArchiveOptions, "input"), KafkaOptions, ProduceOptions)
REQUIRED = {"": ("spec", "input", "bootstrap_servers", "input_topic")}
PROGRESS_EVERY_S = 0.5


class _Pace:
    """When the next message may go: at most ``rate`` a second, or at ``speedup`` times its event time's pace."""

    def __init__(self, rate: float | None, speedup: float | None):
        self._rate, self._speedup = rate, speedup
        self._started, self._sent, self._first_ms = time.monotonic(), 0, None

    def wait(self, event_ms: int | None) -> None:
        due = None
        if self._rate:
            due = self._started + self._sent / self._rate
        elif self._speedup and event_ms is not None:
            self._first_ms = event_ms if self._first_ms is None else self._first_ms
            due = self._started + (event_ms - self._first_ms) / 1000 / self._speedup
        if due is not None and (ahead_s := due - time.monotonic()) > 0:
            time.sleep(ahead_s)
        self._sent += 1


def _message(raw, parser: EventParser, spec: Spec, value_format: ValueFormat | None,
             topic: str) -> tuple[bytes | None, bytes, int | None]:
    """(key, value, timestamp ms) of one record: a valid event's entity key and event time, else none."""
    value = raw.payload if isinstance(raw.payload, bytes) else orjson.dumps(raw.payload, default=str)
    parsed = parser.parse(raw.payload)
    if isinstance(parsed, str):
        return None, value, None
    event, time_us = parsed
    if value_format is not None:
        try:
            value = value_format.encode(event, topic)
        except Exception as error:  # the registry unreachable or refusing the schema, each client its own kind
            raise UserError(f"--value_format {value_format.name}: cannot write the event at {raw.source} "
                            f"({' '.join(str(error).split())[:200]})") from None
    return str(event[spec.entity_key]).encode("utf-8"), value, time_us // 1000


def _send(producer: Producer, topic: str, key, value: bytes, extra: dict, delivered) -> bool:
    """Queue one message; False if it is larger than the producer's message.max.bytes."""
    try:
        kafka.enqueue(producer, topic, key, value, delivered, **extra)
    except KafkaException as error:
        if error.args[0].code() != KafkaError.MSG_SIZE_TOO_LARGE:
            raise
        return False
    producer.poll(0)
    return True


def _check_kept(timestamp_ms: int, retention_ms: int, topic: str, source) -> None:
    """An event older than the topic keeps messages is refused: stamped with its time, the broker would delete it at
    its next retention check (every 5 minutes by default), likely before a scorer reads it."""
    if timestamp_ms < time.time() * 1000 - retention_ms:
        when = datetime.datetime.fromtimestamp(timestamp_ms / 1000, datetime.timezone.utc)
        raise UserError(
            f"the event at {source} has its event time ({when:%Y-%m-%d %H:%M} UTC) before what {topic} keeps "
            f"(retention.ms {retention_ms:,}): the broker would delete it within minutes; for a replay of history, "
            f"set retention.ms to -1 on the topic (kafka-configs.sh --alter --entity-type topics --entity-name {topic} "
            f"--add-config retention.ms=-1)")


def run(argv=None) -> dict[str, int]:
    """Produce the archive; returns the counts: sent, events (valid), other, too large (to be a message)."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    cli.require(options, *REQUIRED[""])
    serving.check_kafka_io(options, supported=False)
    flags, pace = options.view_as(KafkaOptions), options.view_as(ProduceOptions)
    if pace.rate is not None and pace.speedup is not None:
        raise UserError("give --rate or --speedup, not both")
    for name in ("rate", "speedup"):
        value = getattr(pace, name)
        if value is not None and not 0 < value < float("inf"):
            raise UserError(f"--{name} must be a number above 0")
    spec = load_spec(options.view_as(SpecOptions).spec)
    value_format = graph.value_format(options, spec)
    paths = check_input(options.view_as(ArchiveOptions).input)
    config = graph.kafka_config(flags)
    kafka_access.check_access(flags.bootstrap_servers, config, write=[flags.input_topic])  # (None: no answer yet)
    secrets = kafka.Secrets(config)
    producer = kafka.client(Producer, {"enable.idempotence": True, "linger.ms": 5, **config,
                                             "bootstrap.servers": flags.bootstrap_servers}, secrets)
    failures: list = []

    def delivered(error, _message):
        if error is not None:
            failures.append(error)

    retention_ms = kafka.retention_ms(flags.bootstrap_servers, config, flags.input_topic)
    parser, schedule = EventParser(spec), _Pace(pace.rate, pace.speedup)
    counts, unreadable = {"sent": 0, "events": 0, "other": 0, "too large": 0}, []
    started = shown = time.monotonic()
    progress, last_ms = sys.stderr.isatty(), None
    for path in paths:
        for raw in file_records(path):
            if isinstance(raw.payload, Unreadable):
                unreadable.append(path)
                continue
            key, value, timestamp_ms = _message(raw, parser, spec, value_format, flags.input_topic)
            if timestamp_ms is not None and retention_ms is not None:
                _check_kept(timestamp_ms, retention_ms, flags.input_topic, raw.source)
            schedule.wait(timestamp_ms)
            # A line that is not a valid event is stamped with the last event's time, not now: a stream's watermark
            # comes from message timestamps, and one stamped now amid replayed history would make the rest late.
            stamp_ms = timestamp_ms if timestamp_ms is not None else last_ms
            last_ms = stamp_ms
            extra = {"timestamp": stamp_ms} if stamp_ms is not None else {}
            if not _send(producer, flags.input_topic, key, value, extra, delivered):
                counts["too large"] += 1
                continue
            counts["sent"] += 1
            counts["events" if key is not None else "other"] += 1
            if progress and time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                print(f"\rproduced {counts['sent']:,} ({counts['sent'] / (shown - started):,.0f}/s)", end="",
                      file=sys.stderr, flush=True)
    while producer.flush(1.0) > 0:
        pass
    seconds = time.monotonic() - started
    if progress:
        print(file=sys.stderr)
    if failures:
        raise UserError(f"{len(failures)} of {counts['sent']:,} messages not delivered to {flags.input_topic}: "
                        f"{secrets.scrub(failures[0].str())}")
    print(f"produced {counts['sent']:,} messages to {flags.input_topic} on {flags.bootstrap_servers} in {seconds:.1f} s "
          f"({counts['sent'] / max(seconds, 1e-9):,.0f}/s): {counts['events']:,} events keyed by {spec.entity_key} and "
          f"stamped with their event time{f' (as {value_format.name})' if value_format else ''}, {counts['other']:,} "
          f"lines that are not valid events sent as they are"
          + (f"; {counts['too large']:,} lines larger than a Kafka message may be (message.max.bytes) not sent"
             if counts["too large"] else ""))
    cli.check_whole_input({f"{UNREADABLE_NAMESPACE}/{path}": 1 for path in unreadable},
                          "the rest of the input was produced")
    return counts


if __name__ == "__main__":
    cli.main(run)
