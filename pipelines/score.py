"""Score events with a trained model version: archives in batch, or live from Kafka.

    python -m pipelines.score --spec fraud --mode batch --input 'data/fraud/*/*.jsonl' \
        --model_dir models/fraud --output out/scored --dead_letter out/dead_letter

    python -m pipelines.score --spec fraud --mode stream --bootstrap_servers localhost:9092 \
        --input_topic events --output_topic scored --dead_letter_topic dead-letters --model_dir models/fraud

    python -m pipelines.score --spec fraud --mode stream      # a self-contained local demo

Every input event comes out once (a stream: at least once) as a scored record (--output / --output_topic) or a dead
letter (--dead_letter / --dead_letter_topic). Both modes run the same graph; only the source and
the sinks differ. A stream runs until SIGTERM or Ctrl-C, then stops within 30 s: records already
read are scored and written, their offsets committed, and the exit status is 0 (a second signal
exits at once, with status 1, leaving what was read since the last commit to be read again). Delivery is
at-least-once: after a crash, records read since the last commit are scored again.
Beam's flags (--runner, --direct_num_workers, --temp_location ...) pass through.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

import apache_beam as beam
import orjson
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions
from apache_beam.transforms import userstate
from apache_beam.transforms.window import GlobalWindows

from models import registry
from models.inference import ScoreEvents
from pipelines import cli, runners
from pipelines.options import ArchiveOptions, KafkaOptions, ModelOptions, MonitorOptions, ScoreOptions, SpecOptions
from transforms import kafka
from transforms.entity import AddEntityFeatures
from transforms.errors import UserError
from transforms.events import METRICS_NAMESPACE, POSITION, ParseEvents, Raw
from transforms.fileio import DEFAULT_BATCH_SIZE, ReadEventFiles, WriteJsonLines, WriteParquet, check_input
from transforms.kafka_commit import CommitWhenWritten
from transforms.monitoring import ALERTS, WINDOWS, Monitor
from transforms.spec import Spec, load_spec

VIEWS = (SpecOptions, ScoreOptions, ModelOptions, ArchiveOptions, KafkaOptions, MonitorOptions)
STREAM_MAX_BATCH = 256  # events per batch in a stream
STREAM_MAX_WAIT_S = 0.05  # the longest a stream event waits for its batch to fill
STOP_TIMEOUT_S = 25.0  # a stop that takes longer ends the process (exit status 1)
DRAIN_TIMEOUT_S = 20.0  # after this long draining, a runner's job is cancelled
FLINK_DRAIN_S = 5.0
MIN_MODEL_POLL_S = 2.0  # reading CURRENT more often than this only costs


def score_events(raw_batches, spec: Spec, model: registry.ModelVersion, model_dir: str, engine: str,
                 streaming: bool = False, batch_size: int = DEFAULT_BATCH_SIZE, model_reload_s: float = 0.0):
    """The graph every mode shares: ``list[Raw]`` blocks in; the valid events (``EventBatch``, as scored),
    the scored record lists and the dead letters out.

    A spec with entity features adds them first (keyed state when ``streaming``).
    ``model_reload_s`` > 0: switch to new good versions in ``model_dir``, read that often (see ``ScoreEvents``).
    """
    parsed = raw_batches | "ParseEvents" >> ParseEvents(spec)
    events = parsed.events | "AddEntityFeatures" >> AddEntityFeatures(spec, streaming, batch_size)
    scored = events | "ScoreEvents" >> ScoreEvents(spec, model, model_dir, engine, model_reload_s)
    return events, scored, parsed.dead_letters


def score_archive(pipeline, spec: Spec, model: registry.ModelVersion, options):
    """--input read and put through ``score_events``: (valid events, scored record lists, dead letters)."""
    flags, model_flags = options.view_as(ArchiveOptions), options.view_as(ModelOptions)
    raw = pipeline | "ReadEvents" >> ReadEventFiles(flags.input, flags.batch_size)
    return score_events(raw, spec, model, model_flags.model_dir, model_flags.engine, batch_size=flags.batch_size)


def scored_schema(spec: Spec):
    """The Parquet schema of scored records (``--output_format parquet``)."""
    import pyarrow as pa

    fields = [("event_id", pa.string()), ("event_time", pa.string()), (spec.entity_key, pa.string()),
              ("score", pa.float64()), ("alert", pa.bool_()), ("model_version", pa.string())]
    if spec.label:
        fields.append((spec.label, pa.int8()))
    return pa.schema(fields)


def load_model_for(options) -> tuple[Spec, registry.ModelVersion]:
    """The --spec and the model version to score with.

    Raises ModelError when the model was trained on a spec with other fields or features.
    """
    model_flags = options.view_as(ModelOptions)
    missing = model_flags.engine == "sklearn" and cli.missing_extra("train", "sklearn", "tensorflow_transform")
    if missing:
        raise UserError(f"--engine sklearn: {missing}")
    spec = load_spec(options.view_as(SpecOptions).spec)
    return spec, registry.load_for_spec(model_flags.model_dir, spec, model_flags.model_version)


def run(argv=None, test_pipeline=None) -> dict[str, int]:
    """Score events; returns the run's counters (received, valid, scored, dead letters by reason)."""
    options = cli.parse(argv, VIEWS, __doc__)
    runners.apply_runner_presets(options, streaming=options.view_as(ScoreOptions).mode == "stream")
    if options.view_as(ScoreOptions).mode == "stream":
        return run_stream(options, test_pipeline)
    flags = options.view_as(ArchiveOptions)
    cli.require(options, "spec", "input", "model_dir", "output", "dead_letter")
    spec, model = load_model_for(options)
    check_input(flags.input)

    started = time.monotonic()
    pipeline = cli.create_pipeline(options, test_pipeline)
    _, scored, dead_letters = score_archive(pipeline, spec, model, options)
    if flags.output_format == "parquet":
        scored | "WriteScored" >> WriteParquet(flags.output, "scored", scored_schema(spec))
    else:
        scored | "WriteScored" >> WriteJsonLines(flags.output, "scored")
    dead_letters | "WriteDeadLetters" >> WriteJsonLines(flags.dead_letter, "dead_letter")
    result = pipeline.run()
    result.wait_until_finish()

    totals = cli.counters(result)
    print(cli.summary(f"{spec.name} batch scoring with model {model.version}", totals, time.monotonic() - started,
                      {"scored": f"{flags.output}/scored-*.{flags.output_format}",
                       "dead letters": f"{flags.dead_letter}/dead_letter-*.jsonl"}))
    return totals


# ---------------------------------------------------------------------------------------------
# Stream mode


def kafka_config(flags: KafkaOptions) -> dict[str, str]:
    """--kafka_config KEY=VALUE items as a librdkafka config (errors never quote a value)."""
    config = {}
    for number, item in enumerate(flags.kafka_config or [], start=1):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--kafka_config #{number} is not KEY=VALUE")
        config[key.strip()] = value
    return config


def kafka_raw(message: kafka.KafkaMessage, with_position: bool = False) -> Raw:
    """A Kafka message as the shared graph's input; the key rides along for the dead-letter sink, and with
    ``with_position`` where it sits in its partition (see ``transforms.kafka_commit``)."""
    return Raw(message.value, {"topic": message.topic, "partition": message.partition, "offset": message.offset,
                               "key": message.key},
               (message.topic, message.partition, message.covers_from, message.offset) if with_position else None)


class BatchWithinBundle(beam.DoFn):
    """Raw records in; lists of up to ``max_size`` out, none held longer than ``max_wait_s``.

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
            self._since = time.monotonic()
        self._batch.append(raw)
        self._timestamp = timestamp
        if len(self._batch) >= self._max_size or time.monotonic() - self._since >= self._max_wait_s:
            batch, self._batch = self._batch, []
            yield batch

    def finish_bundle(self):
        if self._batch:
            batch, self._batch = self._batch, []
            yield GlobalWindows.windowed_value(batch, self._timestamp)


def scored_messages(records: list[dict], entity_key: str) -> list[tuple[bytes, bytes, tuple | None]]:
    """Scored records as Kafka (key, value, position): keyed by the entity id, UTF-8."""
    return [(str(record[entity_key]).encode("utf-8"), orjson.dumps(_without(record, POSITION)), record.get(POSITION))
            for record in records]


def dead_letter_message(letter: dict) -> tuple[bytes | None, bytes, tuple | None]:
    """A dead letter as Kafka (key, value, position): keyed by the original message's key."""
    source = dict(letter["source"])
    key = source.pop("key", None)
    return key, orjson.dumps(dict(_without(letter, POSITION), source=source)), letter.get(POSITION)


def _without(record: dict, name: str) -> dict:
    # A copy: the same record may also feed another branch (monitoring).
    return {k: v for k, v in record.items() if k != name} if name in record else record


def monitoring_message(record: dict) -> tuple[bytes, bytes]:
    """A monitoring or alert record as Kafka (key, value): keyed by its window, ``<size>s/<start>``."""
    return f"{record['window_s']}s/{record['window_start']}".encode("utf-8"), orjson.dumps(record)


def stream_batch_size(options) -> int:
    """Events per batch in a stream: --batch_size, at most STREAM_MAX_BATCH."""
    return max(1, min(options.view_as(ArchiveOptions).batch_size, STREAM_MAX_BATCH))


def read_stream(pipeline, flags: KafkaOptions, config: dict, group_id: str, batch_size: int,
                commit_when_written: bool = False):
    """--input_topic, read live for consumer group ``group_id``, as ``list[Raw]`` blocks of up to ``batch_size``.

    ``commit_when_written``: the read commits nothing itself; every Raw carries its position, for a
    ``CommitWhenWritten`` fed by the sinks (``write_dead_letters`` and the like return what they wrote).
    """
    return (pipeline
            | "ReadEvents" >> kafka.ReadFromKafka(flags.bootstrap_servers, flags.input_topic, group_id,
                                                  flags.offset_reset, config,
                                                  max_delay_ms=round(flags.max_delay_s * 1000),
                                                  commit_on_finalize=not commit_when_written)
            | "ToRaw" >> beam.Map(kafka_raw, commit_when_written)
            | "Batch" >> beam.ParDo(BatchWithinBundle(batch_size)))


def write_dead_letters(dead_letters, flags: KafkaOptions, config: dict, report_written: bool = False):
    """Dead letters to --dead_letter_topic, keyed by the original message's key; with ``report_written``,
    returns the positions written."""
    return (dead_letters
            | "DeadLetterMessages" >> beam.Map(dead_letter_message)
            | "WriteDeadLetters" >> kafka.WriteToKafka(flags.bootstrap_servers, flags.dead_letter_topic, config,
                                                       report_written=report_written))


def build_stream(pipeline, spec: Spec, model: registry.ModelVersion, options, model_reload_s: float = 0.0) -> None:
    """Kafka in, the shared ``score_events`` graph, Kafka out; with --monitoring_topic, monitoring too.

    ``model_reload_s`` > 0: switch to new versions in --model_dir, checked that often (``model_reload_seconds``).
    Offsets: on the DirectRunner, everything runs fused with the read, so the read commits a bundle's
    offsets once it has succeeded; on a streaming runner, events may wait in keyed state behind a
    fusion break, so offsets are committed only once the records are written (``CommitWhenWritten``).
    """
    flags, model_flags = options.view_as(KafkaOptions), options.view_as(ModelOptions)
    config, max_batch = kafka_config(flags), stream_batch_size(options)
    group = flags.group_id or f"rtml-score-{spec.name}"
    when_written = not runners.is_direct(options)
    raw = read_stream(pipeline, flags, config, group, max_batch, commit_when_written=when_written)
    events, scored, dead_letters = score_events(raw, spec, model, model_flags.model_dir, model_flags.engine,
                                                streaming=True, batch_size=max_batch, model_reload_s=model_reload_s)
    written = [scored
               | "ScoredMessages" >> beam.FlatMap(scored_messages, spec.entity_key)
               | "WriteScored" >> kafka.WriteToKafka(flags.bootstrap_servers, flags.output_topic, config,
                                                     report_written=when_written),
               write_dead_letters(dead_letters, flags, config, report_written=when_written)]
    if when_written:
        (written
         | "WrittenPositions" >> beam.Flatten()
         | "CommitWhenWritten" >> CommitWhenWritten(flags.bootstrap_servers, group, config))
    if flags.monitoring_topic:
        monitored = ({"events": events, "scored": scored, "dead_letters": dead_letters}
                     | "Monitor" >> Monitor(spec, model.baseline(), model.version, options.view_as(MonitorOptions).window_s))
        ((monitored[WINDOWS], monitored[ALERTS])
         | "MonitoringRecords" >> beam.Flatten()
         | "MonitoringMessages" >> beam.Map(monitoring_message)
         | "WriteMonitoring" >> kafka.WriteToKafka(flags.bootstrap_servers, flags.monitoring_topic, config))


def run_stream(options, test_pipeline=None, stop_when=None, on_stop=None) -> dict[str, int]:
    """Score a Kafka topic live until SIGTERM / SIGINT or ``stop_when()`` (see ``serve``); returns the counters."""
    flags = options.view_as(KafkaOptions)
    cli.require(options, "spec")
    if not cli.given(options, "bootstrap_servers"):  # Beam's flag defaults to localhost:9092
        raise UserError("--mode stream reads Kafka: give --bootstrap_servers and the topics (a self-contained "
                        "demo with its own local broker: rtml demo stream --spec fraud)")
    cli.require(options, "model_dir", "input_topic", "output_topic", "dead_letter_topic")
    spec, model = load_model_for(options)
    config = kafka_config(flags)  # a malformed item fails here, before anything starts
    model_reload_s = model_reload_seconds(options)
    options.view_as(StandardOptions).streaming = True
    stateful = " and ".join(what for what, used in (("entity features", spec.entity_features),
                                                      ("monitoring", flags.monitoring_topic)) if used)
    note = runners.choose_stream_runner(options, stateful or None)
    if note:
        print(note, file=sys.stderr, flush=True)
    _check_local_streaming(options)
    check_topics(flags, config)
    pipeline = cli.create_pipeline(options, test_pipeline)
    build_stream(pipeline, spec, model, options, model_reload_s)
    check_fused_with_source(pipeline, options)
    group = flags.group_id or f"rtml-score-{spec.name}"
    print(f"scoring {flags.input_topic} -> {flags.output_topic} (dead letters: {flags.dead_letter_topic}) on "
          f"{flags.bootstrap_servers} with {spec.name} model {model.version}, group {group}"
          + (f", switching to new versions in --model_dir (read every {model_reload_s:g} s)" if model_reload_s else "")
          + (f", kafka config {kafka.mask_config(config)}" if config else "")
          + (f", monitoring to {flags.monitoring_topic}" if flags.monitoring_topic else "")
          + "; SIGTERM or Ctrl-C stops", file=sys.stderr, flush=True)
    return serve(pipeline, f"{spec.name} stream scoring with model {model.version}", stop_when, on_stop)


def check_topics(flags: KafkaOptions, config: dict) -> None:
    """A missing input topic is a one-line error before anything starts; missing output topics a warning
    (a cluster may create them on first write). An unreachable cluster is waited for by the pipeline."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    secrets = kafka.Secrets(config)
    try:
        admin = AdminClient({**config, "bootstrap.servers": flags.bootstrap_servers}, logger=secrets)
        found = admin.list_topics(timeout=10).topics
    except (KafkaException, ValueError, TypeError) as error:
        print(f"warning: cannot list the topics on {flags.bootstrap_servers} yet ({secrets.scrub(error)}); "
              f"starting anyway", file=sys.stderr, flush=True)
        return
    if flags.input_topic not in found:
        raise UserError(f"Kafka topic {flags.input_topic!r} (--input_topic) does not exist on "
                        f"{flags.bootstrap_servers}")
    for flag, topic in (("--output_topic", flags.output_topic), ("--dead_letter_topic", flags.dead_letter_topic)):
        if topic not in found:
            print(f"warning: Kafka topic {topic!r} ({flag}) does not exist yet; writes fail unless the cluster "
                  f"creates topics on first use", file=sys.stderr, flush=True)


def model_reload_seconds(options) -> float:
    """How often a stream reads --model_dir's CURRENT to switch versions (--model_poll_seconds); 0: never.

    The version is fixed with --model_version."""
    flags = options.view_as(ModelOptions)
    seconds = flags.model_poll_seconds
    if seconds < 0 or 0 < seconds < MIN_MODEL_POLL_S:
        raise UserError(f"--model_poll_seconds must be 0 (keep the version the stream starts with) or at least "
                        f"{MIN_MODEL_POLL_S:g}")
    if seconds > 0 and cli.given(options, "model_poll_seconds") and flags.model_version:
        raise UserError("--model_version pins one version and --model_poll_seconds follows --model_dir's CURRENT; "
                        "give one of them")
    return 0.0 if flags.model_version else seconds


def _check_local_streaming(options) -> None:
    """On the DirectRunner a stream runs in this process, where SIGTERM can drain it."""
    if runners.is_direct(options) and options.view_as(DirectOptions).direct_running_mode == "multi_processing":
        raise UserError("--mode stream on the DirectRunner runs in this process; drop "
                        "--direct_running_mode multi_processing (or use a streaming runner)")


def check_fused_with_source(pipeline, options) -> None:
    """Refuse, rather than hang, a streaming graph the DirectRunner cannot run live.

    The DirectRunner runs an unbounded Kafka read on the FnApiRunner stage by stage: whatever sits
    behind a GroupByKey or a stateful DoFn would never run. Such steps need a streaming runner.
    """
    if not runners.is_direct(options):
        return
    found = []

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node):
            transform = node.transform
            if isinstance(transform, beam.GroupByKey) or (
                    isinstance(transform, beam.ParDo) and userstate.is_stateful_dofn(transform.dofn)):
                found.append(node.full_label)

    pipeline.visit(Visitor())
    if found:
        stages = ", ".join(dict.fromkeys(label.split("/")[0] for label in found))
        raise UserError(f"--mode stream: these stages group or keep state: {stages} (first: {found[0]}), which the "
                        f"DirectRunner cannot run behind an unbounded source (it would wait forever); use a streaming "
                        f"runner: --runner PrismRunner (python -m pipelines.artifacts builds it), FlinkRunner or "
                        f"DataflowRunner")


_SIGNALS = ("SIGTERM", "SIGINT")
BEFORE_FORCED_EXIT: list = []  # callables run (best effort) before force_exit, e.g. stopping a local broker


def force_exit(code: int) -> None:
    """Leave the process now, without waiting for the pipeline's threads (a stuck one would block a normal exit)."""
    for hook in reversed(BEFORE_FORCED_EXIT):
        try:
            hook()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _missing_topic(error: BaseException) -> str | None:
    """The one-line reason if ``error`` (as the runner wrapped it) says a Kafka topic does not exist."""
    text = str(error)
    marker = "Kafka topic "
    if "KafkaTopicNotFoundError" in text or isinstance(error, kafka.KafkaTopicNotFoundError):
        start = text.find(marker)
        end = text.find("does not exist", start)
        if start >= 0 and end > start:
            return text[start:end + len("does not exist")] + "; create it, or check --input_topic"
        return "a Kafka topic does not exist; create it, or check --input_topic"
    return None


def serve(pipeline, title: str, stop_when=None, on_stop=None) -> dict[str, int]:
    """Run a streaming pipeline until SIGTERM / SIGINT (or ``stop_when()`` returns a reason), then stop it cleanly.

    The pipeline runs in a thread, because on the DirectRunner ``pipeline.run()`` only returns when
    the pipeline has finished. To stop, live Kafka reads in this process (the DirectRunner's, and
    Prism's and Flink's LOOPBACK workers) are drained: they stop claiming records; what they read is
    scored, written and committed, keyed state is flushed by its end-of-window timers, and the
    pipeline ends. A job that has not ended after ``DRAIN_TIMEOUT_S`` is cancelled: Flink's streaming
    jobs never end by themselves (their sources stay open for checkpoints), so on Flink the drain gets
    ``FLINK_DRAIN_S`` to write what is in flight. A cancel loses nothing: on a streaming runner offsets
    are committed only once records are written, so a restart reads the rest again. Prints a one-line
    summary to stderr and returns the counters.
    """
    kafka.reset_drain()
    state: dict = {}
    drain_s = FLINK_DRAIN_S if runners.runner_name(pipeline.options) == "FlinkRunner" else DRAIN_TIMEOUT_S

    # The DirectRunner's run() returns only when the pipeline has finished, so it runs in the thread; a
    # portable runner's (Prism, Flink) returns at once and must be called here: it installs signal handlers.
    if not runners.is_direct(pipeline.options):
        state["result"] = pipeline.run()

    def target():
        try:
            if "result" not in state:
                state["result"] = pipeline.run()
            state["result"].wait_until_finish()
        except BaseException as error:  # reported by the main thread
            state["error"] = error

    stop = threading.Event()
    reason = {"why": None}

    def on_signal(signum, _frame):
        if stop.is_set() and reason["why"] in _SIGNALS:  # a second Ctrl-C: leave now
            print(f"{signal.Signals(signum).name} again: exiting without waiting (records since the last commit "
                  f"will be read again)", file=sys.stderr, flush=True)
            force_exit(1)
        if reason["why"] is None:
            reason["why"] = signal.Signals(signum).name
        stop.set()

    handlers = {}
    if threading.current_thread() is threading.main_thread():
        handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    started = time.monotonic()
    runner = threading.Thread(target=target, name="pipeline", daemon=True)
    runner.start()
    try:
        while runner.is_alive() and not stop.wait(0.2):
            why = stop_when() if stop_when is not None else None
            if why:
                reason["why"] = why
                break
        stopping = time.monotonic()
        if runner.is_alive():
            print(f"stopping on {reason['why']}: finishing records in flight ...", file=sys.stderr, flush=True)
            kafka.drain_live_reads()
            runner.join(drain_s)
            if runner.is_alive() and state.get("result") is not None:
                state["cancelled"] = True
                try:
                    state["result"].cancel()
                except Exception:  # noqa: BLE001 - not every runner can cancel
                    pass
                runner.join(STOP_TIMEOUT_S - drain_s)
            if runner.is_alive():
                print(f"error: the pipeline did not stop within {STOP_TIMEOUT_S:g} s of {reason['why']}; exiting "
                      f"without it (records since the last commit will be read again)", file=sys.stderr, flush=True)
                force_exit(1)
        if on_stop is not None:
            on_stop()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    if "error" in state and not (state.get("cancelled") and "CANCELLED" in str(state["error"])):
        error = state["error"]
        missing = _missing_topic(error)
        if missing:
            raise UserError(missing) from None
        raise error
    totals = cli.counters(state["result"])
    received = totals.get(f"{METRICS_NAMESPACE}/received", 0)
    out = (f"{totals[f'{METRICS_NAMESPACE}/assigned']:,} assigned" if f"{METRICS_NAMESPACE}/assigned" in totals
           else f"{totals.get(f'{METRICS_NAMESPACE}/scored', 0):,} scored")
    dead = sum(count for key, count in totals.items() if key.startswith(f"{METRICS_NAMESPACE}.dead_letter/"))
    how = f"stopped on {reason['why']} in {time.monotonic() - stopping:.1f} s" if reason["why"] else "finished"
    done = ("cancelled after draining; what was not yet written is read again on restart" if state.get("cancelled")
            else "all written, offsets committed")
    print(f"{title}: {how} after {time.monotonic() - started:.0f} s; {received:,} received, {out}, "
          f"{dead:,} dead-lettered; {done}", file=sys.stderr, flush=True)
    return totals


if __name__ == "__main__":
    cli.main(run)
