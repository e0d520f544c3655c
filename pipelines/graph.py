"""The graph every command composes: sources of ``Block``s of raw records, the scoring graph, Kafka sinks.

    raw = pipeline | ReadEventFiles(...)          # or ReadKafkaEvents(...), live or bounded
    scored = raw | ScoreRaw(spec, model, ...)     # Scored(batches, scored, dead_letters)
    scored.scored | WriteToTopic(..., scored_messages, ...)   # or WriteJsonLines / WriteParquet

Batch and stream run the same ``ParseAndEnrich`` and ``ScoreRaw``; only sources and sinks differ.
"""
from __future__ import annotations

import pathlib
import re
import time
from typing import NamedTuple

import apache_beam as beam
import orjson
from apache_beam.transforms.window import GlobalWindows, TimestampedValue

from models import registry
from models.inference import ScoreEvents
from pipelines import cli
from pipelines.options import ArchiveOptions, EngineOptions, KafkaOptions, ModelOptions, SpecOptions, StreamOptions
from pipelines import artifacts
from transforms import kafka, kafka_beam, storage
from transforms.entity import AddEntityFeatures
from transforms.errors import UserError
from transforms.events import POSITION, Block, ParseEvents, Raw
from transforms.fileio import DEFAULT_BATCH_SIZE
from transforms.kafka_formats import ValueFormat, registry_problem
from transforms.ordering import LiveState
from transforms.spec import Spec, load_spec

STREAM_MAX_BATCH = 256  # events per batch in a stream
STREAM_MAX_WAIT_S = 0.05  # the longest a stream event waits for its batch to fill


def spec_and_model(options) -> tuple[Spec, registry.ModelVersion]:
    """The --spec and the --model_dir version to score with (ModelError for a model of other fields or
    features; a one-line error for --engine sklearn without the train extra)."""
    model_flags = options.view_as(ModelOptions)
    missing = options.view_as(EngineOptions).engine == "sklearn" and cli.missing_extra("train", "sklearn", "tensorflow_transform")
    if missing:
        raise UserError(f"--engine sklearn: {missing}")
    spec = load_spec(options.view_as(SpecOptions).spec)
    storage.check_readable("--model_dir", model_flags.model_dir)
    return spec, registry.load_for_spec(model_flags.model_dir, spec, model_flags.model_version,
                                        signing_key_env=model_flags.model_signing_key_env)


_SECRET_VERSION = re.compile(r"projects/[a-z0-9][-a-z0-9]{4,28}[a-z0-9]/secrets/[A-Za-z0-9_-]{1,255}/versions/"
                             r"([1-9][0-9]*|latest)\Z")  # also what the stream template's kafka_secret takes


def kafka_config(flags: KafkaOptions) -> dict[str, str]:
    """--kafka_config KEY=VALUE items as a librdkafka config, checked by librdkafka (with --kafka_io beam, as Java
    client properties, unchecked); errors never quote a value."""
    config = _properties(flags.kafka_config_file) if flags.kafka_config_file else {}
    config.update(_settings("--kafka_config", flags.kafka_config))
    config.update(_secret_references("--kafka_secret", flags.kafka_secret))
    try:
        error = kafka.config_error(config) if flags.kafka_io == "python" else None
    except kafka.KafkaSecretError as secret_error:
        raise UserError(f"--kafka_secret: {secret_error}") from None
    if error:
        raise UserError(f"--kafka_config: {error}")
    return config


def _settings(flag: str, items: list[str] | None) -> dict[str, str]:
    """A repeated flag's KEY=VALUE items."""
    settings = {}
    for number, item in enumerate(items or [], start=1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"{flag} #{number} is not KEY=VALUE")
        settings[key.strip()] = value
    return settings


def _secret_references(flag: str, items: list[str] | None) -> dict:
    """A repeated flag's KEY=env:NAME and KEY=secretmanager:NAME items, as references resolved where a client is
    made."""
    references = {}
    for number, item in enumerate(items or [], start=1):
        key, _, reference = item.partition("=")
        kind, _, name = reference.partition(":")
        if not key.strip() or not (kind == "env" and name or kind == "secretmanager" and _SECRET_VERSION.match(name)):
            raise UserError(f"{flag} #{number} is not KEY=env:NAME or "
                            f"KEY=secretmanager:projects/P/secrets/S/versions/V")
        references[key.strip()] = kafka.EnvSecret(name) if kind == "env" else kafka.SecretManagerSecret(name)
    return references


def _properties(path: str) -> dict[str, str]:
    """A properties file's KEY=VALUE lines (blank lines and # or ! comments skipped); errors never quote a value."""
    try:
        text = pathlib.Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"--kafka_config_file {path}: cannot be read ({getattr(error, 'strerror', None) or error})") \
            from None
    config = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith(("#", "!")):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--kafka_config_file {path}: line {number} is not KEY=VALUE")
        if value.rstrip().endswith("\\"):
            raise UserError(f"--kafka_config_file {path}: line {number} continues on the next line (a trailing "
                            f"backslash), which this reader does not take: write the setting on one line")
        config[key.strip()] = value.strip()
    return config


# ---------------------------------------------------------------------------------------------
# Sources


def kafka_raw(message: kafka.KafkaMessage, with_position: bool = False, with_timestamp: bool = False,
              value_format: ValueFormat | None = None) -> Raw:
    """A Kafka message as the graph's input, its value read in ``value_format`` (else as JSON). Its source: topic,
    partition, offset (the contract's), the key (taken out again by the dead-letter sink, which writes under it)
    and, ``with_timestamp``, the message's timestamp; ``with_position``: where it sits in its partition (see
    ``transforms.kafka_commit``)."""
    source = {"topic": message.topic, "partition": message.partition, "offset": message.offset, "key": message.key}
    if with_timestamp:
        source["timestamp_ms"] = message.timestamp_ms
    value = message.value if value_format is None else value_format.decode(message.value, message.topic)
    return Raw(value, source,
               (message.topic, message.partition, message.covers_from, message.offset) if with_position else None)


class BatchWithinBundle(beam.DoFn):
    """Raw records in; ``Block``s of up to ``max_size`` out, none held longer than ``max_wait_s``.

    Stateless (no GroupByKey, no state), so it fuses with the Kafka source and runs live on the
    DirectRunner. A batch goes out when it is full, when its first record has waited
    ``max_wait_s`` (checked as records arrive), or when the bundle ends (a live read ends its
    bundles every fraction of a second), whichever comes first.
    """

    def __init__(self, max_size: int, max_wait_s: float = STREAM_MAX_WAIT_S):
        self._max_size, self._max_wait_s = max_size, max_wait_s

    def start_bundle(self):
        self._batch, self._timestamp, self._since = [], None, 0.0

    def process(self, raw: Raw, timestamp=beam.DoFn.TimestampParam):
        if not self._batch:
            self._since, self._timestamp = time.monotonic(), timestamp
        self._batch.append(raw)
        self._timestamp = min(self._timestamp, timestamp)  # a batch holds the watermark back at its earliest record
        if len(self._batch) >= self._max_size or time.monotonic() - self._since >= self._max_wait_s:
            batch, self._batch = self._batch, []
            yield TimestampedValue(Block.of(batch), self._timestamp)

    def finish_bundle(self):
        if self._batch:
            batch, self._batch = self._batch, []
            yield GlobalWindows.windowed_value(Block.of(batch), self._timestamp)


def stream_batch_size(options) -> int:
    """Events per batch in a stream: --batch_size, at most STREAM_MAX_BATCH."""
    return max(1, min(options.view_as(ArchiveOptions).batch_size, STREAM_MAX_BATCH))


def value_format(options, spec: Spec) -> ValueFormat | None:
    """The events' --value_format (None for JSON). For a confluent-* format, a one-line error without a registry, or
    when the registry cannot be reached or refuses the credentials."""
    flags = options.view_as(KafkaOptions)
    if flags.value_format == "json":
        return None
    if not flags.value_format.startswith("confluent-"):
        return ValueFormat(flags.value_format, spec)
    if not flags.schema_registry_url:
        raise UserError(f"--value_format {flags.value_format} reads the writer's schema from a registry: give "
                        f"--schema_registry_url")
    config = {**_settings("--schema_registry_config", flags.schema_registry_config),
              **_secret_references("--schema_registry_secret", flags.schema_registry_secret),
              "url": flags.schema_registry_url}
    try:
        problem = registry_problem(config)
    except kafka.KafkaSecretError as secret_error:
        raise UserError(f"--schema_registry_secret: {secret_error}") from None
    if problem:
        raise UserError(f"--schema_registry_url {flags.schema_registry_url}: {problem}")
    return ValueFormat(flags.value_format, spec, config)


def kafka_expansion_service(flags: KafkaOptions):
    """With --kafka_io beam, the expansion service of Beam's Java Kafka IO, whose transforms Flink's job server
    runs in its own JVM (an EMBEDDED environment); else None. The read is KafkaIO's UnboundedSource
    (``use_deprecated_read``), which Flink runs natively: its splittable-DoFn read gave no record in 60 s on
    the embedded Flink here."""
    from apache_beam.transforms.external import JavaJarExpansionService

    if flags.kafka_io != "beam":
        return None
    jar = artifacts.require(artifacts.kafka_io_expansion_jar(), "Beam's Java Kafka IO")
    return JavaJarExpansionService(str(jar), extra_args=["{{PORT}}", "--defaultEnvironmentType=EMBEDDED",
                                                         "--experiments=use_deprecated_read"])


def live_read(flags: KafkaOptions, stream: StreamOptions, config: dict, group_id: str, sinks_commit: bool,
              expansion_service=None, on_prism: bool = False, on_direct: bool = False):
    """--input_topic read live for ``group_id``. ``sinks_commit``: the read commits nothing itself
    (``CommitWhenWritten`` or the sinks' transactions do); else it commits what its finished bundles read.
    With ``expansion_service`` (``kafka_expansion_service``), Beam's Java KafkaIO reads instead. ``on_prism``:
    one watermark for all partitions (``ReadFromKafka``'s ``one_watermark``); ``on_direct``: one consumer for
    all partitions (its ``one_consumer``)."""
    if expansion_service is not None:
        return kafka_beam.ReadWithBeamKafkaIO(flags.bootstrap_servers, flags.input_topic, group_id, stream.offset_reset,
                                              config, expansion_service)
    return kafka.ReadFromKafka(flags.bootstrap_servers, flags.input_topic, group_id, stream.offset_reset, config,
                               max_delay_ms=round(stream.max_delay_s * 1000), commit_on_finalize=not sinks_commit,
                               one_watermark=on_prism, one_consumer=on_direct,
                               partition_discovery_s=stream.partition_discovery_s)


class ReadKafkaEvents(beam.PTransform):
    """A topic as ``Block``s of up to ``batch_size``: the pipeline in, the blocks out.

    ``read`` is the configured ``transforms.kafka.ReadFromKafka`` (live for a group, or a bounded
    time range), or ``transforms.kafka_beam.ReadWithBeamKafkaIO``. ``with_positions``: every Raw carries its
    position, for a ``CommitWhenWritten`` fed by the sinks (the read then commits nothing itself).
    ``with_timestamps``: its source carries the message's timestamp. ``value_format``: the values' format
    (``value_format(options, spec)``; None: JSON).
    """

    def __init__(self, read: beam.PTransform, batch_size: int, with_positions: bool = False,
                 with_timestamps: bool = False, value_format: ValueFormat | None = None):
        super().__init__()
        self._read, self._batch_size = read, batch_size
        self._with_positions, self._with_timestamps, self._value_format = with_positions, with_timestamps, value_format

    def expand(self, pipeline):
        return (pipeline
                | "Read" >> self._read
                | "ToRaw" >> beam.Map(kafka_raw, self._with_positions, self._with_timestamps, self._value_format)
                | "Batch" >> beam.ParDo(BatchWithinBundle(self._batch_size)).with_output_types(Block))


# ---------------------------------------------------------------------------------------------
# The scoring graph


class Parsed(NamedTuple):
    events: beam.PCollection  # EventBatch, with the spec's entity features
    dead_letters: beam.PCollection  # dicts


class Scored(NamedTuple):
    batches: beam.PCollection  # ScoredBatch: the events with their scored records (what Monitor takes)
    scored: beam.PCollection  # lists of scored records
    dead_letters: beam.PCollection  # dicts


class ParseAndEnrich(beam.PTransform):
    """``Block``s in; ``Parsed``: the valid events with the spec's entity features (keyed state when
    ``streaming``), and the dead letters."""

    def __init__(self, spec: Spec, streaming: bool, batch_size: int = DEFAULT_BATCH_SIZE, require_label: bool = False,
                 live_state: LiveState = LiveState()):
        super().__init__()
        self._spec, self._streaming, self._batch_size, self._require_label = spec, streaming, batch_size, require_label
        self._live_state = live_state

    def expand(self, raw):
        parsed = raw | "ParseEvents" >> ParseEvents(self._spec, require_label=self._require_label)
        events = parsed.events | "AddEntityFeatures" >> AddEntityFeatures(self._spec, self._streaming, self._batch_size,
                                                                          self._live_state)
        return Parsed(events, parsed.dead_letters)


class ScoreRaw(beam.PTransform):
    """``Block``s in; ``Scored`` out: parse, entity features, the model.

    ``model_reload_s`` > 0: switch to new good versions in ``model_dir``, read that often (see ``ScoreEvents``).
    ``model_threads``: the ONNX engine's threads in each worker process (0: onnxruntime's default).
    """

    def __init__(self, spec: Spec, model: registry.ModelVersion, model_dir: str, engine: str, streaming: bool = False,
                 batch_size: int = DEFAULT_BATCH_SIZE, model_reload_s: float = 0.0, live_state: LiveState = LiveState(),
                 model_threads: int = 0):
        super().__init__()
        self._spec, self._model, self._model_dir, self._engine = spec, model, model_dir, engine
        self._streaming, self._batch_size, self._model_reload_s = streaming, batch_size, model_reload_s
        self._live_state, self._model_threads = live_state, model_threads

    def expand(self, raw):
        parsed = raw | "ParseAndEnrich" >> ParseAndEnrich(self._spec, self._streaming, self._batch_size,
                                                          live_state=self._live_state)
        batches = parsed.events | "ScoreEvents" >> ScoreEvents(self._spec, self._model, self._model_dir, self._engine,
                                                              self._model_reload_s, self._model_threads)
        return Scored(batches, batches | "Records" >> beam.Map(lambda scored: scored.records), parsed.dead_letters)


# ---------------------------------------------------------------------------------------------
# Kafka sinks: each takes records; with ``report_written``, returns the positions written


def scored_messages(records: list[dict], entity_key: str) -> list[tuple[bytes, bytes, tuple | None]]:
    """Scored records as Kafka (key, value, position): keyed by the entity id, UTF-8."""
    return [(str(record[entity_key]).encode("utf-8"), orjson.dumps(_without(record, POSITION)), record.get(POSITION))
            for record in records]


def dead_letter_record(letter: dict) -> tuple[bytes | None, dict]:
    """A dead letter as written: the original Kafka message's key (None for a file's line), and the record
    without it and without its position."""
    source = dict(letter["source"])
    key = source.pop("key", None)
    return key, dict(_without(letter, POSITION), source=source)


def dead_letter_message(letter: dict) -> tuple[bytes | None, bytes, tuple | None]:
    """A dead letter as Kafka (key, value, position): keyed by the original message's key."""
    key, record = dead_letter_record(letter)
    return key, orjson.dumps(record), letter.get(POSITION)


def monitoring_message(record: dict) -> tuple[bytes, bytes]:
    """A monitoring or alert record as Kafka (key, value): keyed by its window, ``<size>s/<start>``."""
    return f"{record['window_s']}s/{record['window_start']}".encode("utf-8"), orjson.dumps(record)


def _without(record: dict, name: str) -> dict:
    # A copy: the same record may also feed another branch (monitoring).
    return {k: v for k, v in record.items() if k != name} if name in record else record


class WriteToTopic(beam.PTransform):
    """Records in, each made a Kafka (key, value[, position]) by ``to_messages`` (one record to a list of
    messages, or with ``one_each``, to one message), written to ``topic``. With ``expansion_service``
    (``kafka_expansion_service``), Beam's Java KafkaIO writes them, and a missing key is written empty."""

    def __init__(self, bootstrap_servers: str, topic: str, config: dict, to_messages, *args,
                 one_each: bool = False, report_written: bool = False, expansion_service=None):
        super().__init__()
        if expansion_service is not None:
            self._write = (beam.Map(lambda message: message[:2])
                           | kafka_beam.WriteWithBeamKafkaIO(bootstrap_servers, topic, config, expansion_service))
        else:
            self._write = kafka.WriteToKafka(bootstrap_servers, topic, config, report_written=report_written)
        self._to_messages, self._args, self._one_each = to_messages, args, one_each

    def expand(self, records):
        make = beam.Map if self._one_each else beam.FlatMap
        return records | "Messages" >> make(self._to_messages, *self._args) | "Write" >> self._write
