r"""Score events with a trained model version: archives in batch, or live from Kafka.

    python -m pipelines.score --spec fraud --mode batch --input 'data/fraud/*/*.jsonl' \
        --model_dir models/fraud --output out/scored --dead_letter out/dead_letter

    python -m pipelines.score --spec fraud --mode stream --bootstrap_servers localhost:9092 \
        --input_topic events --output_topic scored --dead_letter_topic dead-letters --model_dir models/fraud

    rtml demo stream --spec fraud                             # a self-contained local demo

Every input event comes out once (a stream: at least once) as a scored record (--output / --output_topic) or a dead
letter (--dead_letter / --dead_letter_topic). Both modes run the same graph; only the source and
the sinks differ. A stream runs until SIGTERM or Ctrl-C, then stops within 30 s: records already
read are scored and written, their offsets committed, and the exit status is 0 (a second signal
exits at once, with status 1, leaving what was read since the last commit to be read again). Delivery is
at-least-once: after a crash, records read since the last commit are scored again.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Sequence

import apache_beam as beam
from apache_beam.options.pipeline_options import StandardOptions

from models import registry
from pipelines import cli, graph, metrics_endpoint, runners, serving
from pipelines.options import (EXACTLY_ONCE, ArchiveOptions, EngineOptions, KafkaOptions, LiveMonitorOptions,
                               ModelOptions, MonitorOptions, ReloadOptions, ScoreOptions, SpecOptions, StreamOptions)
from transforms import kafka, kafka_transactions
from transforms.errors import UserError
from transforms.features import TOP_K
from transforms.fileio import ReadEventFiles, WriteJsonLines, WriteParquet, label_type, matched_files
from transforms.kafka_commit import CommitWhenWritten
from transforms.kafka_transactions import WriteInTransactions
from transforms.monitoring import ALERTS, WINDOWS, Monitor
from transforms.spec import Spec

VIEWS = (SpecOptions, ScoreOptions, ModelOptions, EngineOptions, ReloadOptions, ArchiveOptions, KafkaOptions,
         StreamOptions, MonitorOptions, LiveMonitorOptions)
REQUIRED = {"--mode batch": ("spec", "input", "model_dir", "output", "dead_letter"),
            "--mode stream": ("spec", "model_dir", "bootstrap_servers", "input_topic", "output_topic",
                              "dead_letter_topic")}
MIN_MODEL_POLL_S = 2.0  # reading CURRENT more often than this only costs


def scored_schema(spec: Spec):
    """The Parquet schema of scored records (``--output_format parquet``)."""
    import pyarrow as pa

    fields = [("event_id", pa.string()), ("event_time", pa.string()), (spec.entity_key, pa.string()),
              ("score", pa.float64()), ("alert", pa.bool_()), ("model_version", pa.string())]
    if spec.label:
        fields.append((spec.label, label_type(spec)))
    if spec.classes:
        fields.append((TOP_K, pa.list_(pa.struct([("class", pa.string()), ("probability", pa.float64())]))))
    return pa.schema(fields)


def run(argv=None, test_pipeline=None) -> dict[str, int]:
    """Score events; returns the run's counters (received, valid, scored, dead letters by reason)."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    runners.apply_runner_presets(options, streaming=options.view_as(ScoreOptions).mode == "stream")
    if options.view_as(ScoreOptions).mode == "stream":
        return run_stream(options, test_pipeline)
    flags = options.view_as(ArchiveOptions)
    cli.require(options, *REQUIRED["--mode batch"])
    cli.refuse(options, (KafkaOptions, StreamOptions, MonitorOptions, LiveMonitorOptions, ReloadOptions),
               "is for --mode stream")
    spec, model = graph.spec_and_model(options)
    files = matched_files(flags.input)
    workers = runners.spread_over_cores(options, len(files), sum(file.size_in_bytes for file in files))

    started = time.monotonic()
    pipeline = cli.create_pipeline(options, test_pipeline)
    model_dir, engine = options.view_as(ModelOptions).model_dir, options.view_as(EngineOptions).engine
    _, scored, dead_letters = (pipeline
                               | "ReadEvents" >> ReadEventFiles(flags.input, flags.batch_size)
                               | "ScoreRaw" >> graph.ScoreRaw(spec, model, model_dir, engine, batch_size=flags.batch_size,
                                                              model_threads=runners.model_threads(workers)))
    if flags.output_format == "parquet":
        scored | "WriteScored" >> WriteParquet(flags.output, "scored", scored_schema(spec))
    else:
        scored | "WriteScored" >> WriteJsonLines(flags.output, "scored")
    dead_letters | "WriteDeadLetters" >> WriteJsonLines(flags.dead_letter, "dead_letter")
    result = pipeline.run()
    result.wait_until_finish()

    totals = cli.counters(result)
    on_workers = f" on {workers} worker processes" if workers > 1 else ""
    print(cli.summary(f"{spec.name} batch scoring with model {model.version}{on_workers}", totals,
                      time.monotonic() - started,
                      {"scored": f"{flags.output}/scored-*.{flags.output_format}",
                       "dead letters": f"{flags.dead_letter}/dead_letter-*.jsonl"}))
    cli.check_whole_input(totals, "the rest of the input was scored")
    return totals


# ---------------------------------------------------------------------------------------------
# Stream mode


def group_id(stream: StreamOptions, spec: Spec) -> str:
    """The stream's consumer group: --group_id, by default rtml-score-<spec>."""
    return stream.group_id or f"rtml-score-{spec.name}"


def build_stream(pipeline, spec: Spec, model: registry.ModelVersion, options, model_reload_s: float = 0.0) -> None:
    """Kafka in, the shared ``graph.ScoreRaw``, Kafka out; with --monitoring_topic, monitoring too.

    ``model_reload_s`` > 0: switch to new versions in --model_dir, checked that often (``model_reload_seconds``).
    Offsets: on the DirectRunner, everything runs fused with the read, so the read commits a bundle's
    offsets once it has succeeded; on a streaming runner, events may wait in keyed state behind a
    fusion break, so offsets are committed only once the records are written (``CommitWhenWritten``).
    """
    flags, stream = options.view_as(KafkaOptions), options.view_as(StreamOptions)
    model_dir, engine = options.view_as(ModelOptions).model_dir, options.view_as(EngineOptions).engine
    monitoring_topic = options.view_as(LiveMonitorOptions).monitoring_topic
    config, max_batch = graph.kafka_config(flags), graph.stream_batch_size(options)
    group = group_id(stream, spec)
    java_io = graph.kafka_expansion_service(flags)  # --kafka_io beam: it commits what Flink checkpointed
    in_transactions = stream.delivery == EXACTLY_ONCE
    when_written = not runners.is_direct(options) and java_io is None
    read = graph.live_read(flags, stream, config, group, when_written or in_transactions, java_io,
                           on_prism=runners.is_prism(options), on_direct=runners.is_direct(options))
    batches, scored, dead_letters = (
        pipeline
        | "ReadEvents" >> graph.ReadKafkaEvents(read, max_batch, with_positions=when_written or in_transactions,
                                                value_format=graph.value_format(options, spec))
        | "ScoreRaw" >> graph.ScoreRaw(spec, model, model_dir, engine, streaming=True, batch_size=max_batch,
                                       model_reload_s=model_reload_s, live_state=runners.live_state(options)))
    if in_transactions:
        output, dead_letter = stream.output_topic, stream.dead_letter_topic
        ((scored | "ScoredMessages" >> beam.FlatMap(
            lambda records: [(output, *message) for message in graph.scored_messages(records, spec.entity_key)]),
          dead_letters | "DeadLetterMessages" >> beam.Map(
              lambda letter: (dead_letter, *graph.dead_letter_message(letter))))
         | "WriteInTransactions" >> WriteInTransactions(flags.bootstrap_servers, group, config))
        return
    written = [scored | "WriteScored" >> graph.WriteToTopic(flags.bootstrap_servers, stream.output_topic, config,
                                                            graph.scored_messages, spec.entity_key,
                                                            report_written=when_written, expansion_service=java_io),
               dead_letters | "WriteDeadLetters" >> graph.WriteToTopic(
                   flags.bootstrap_servers, stream.dead_letter_topic, config, graph.dead_letter_message,
                   one_each=True, report_written=when_written, expansion_service=java_io)]
    if when_written:
        (written
         | "WrittenPositions" >> beam.Flatten()
         | "CommitWhenWritten" >> CommitWhenWritten(flags.bootstrap_servers, group, config))
    if monitoring_topic:
        monitored = ({"scored": batches, "dead_letters": dead_letters}
                     | "Monitor" >> Monitor(spec, registry.Baselines(model_dir, spec, model), model.version,
                                            options.view_as(MonitorOptions).window_s))
        ((monitored[WINDOWS], monitored[ALERTS])
         | "MonitoringRecords" >> beam.Flatten()
         | "WriteMonitoring" >> graph.WriteToTopic(flags.bootstrap_servers, monitoring_topic, config,
                                                   graph.monitoring_message, one_each=True, expansion_service=java_io))


def run_stream(options, test_pipeline=None, stop_when=None, on_stop=None,
               before_forced_exit: Sequence[Callable[[], object]] = ()) -> dict[str, int]:
    """Score a Kafka topic live until SIGTERM / SIGINT or ``stop_when()`` (see ``serving.serve``); returns the
    counters."""
    flags, stream = options.view_as(KafkaOptions), options.view_as(StreamOptions)
    monitoring_topic = options.view_as(LiveMonitorOptions).monitoring_topic
    cli.require(options, "spec")
    if not cli.given(options, "bootstrap_servers"):  # Beam's flag defaults to localhost:9092
        raise UserError("--mode stream reads Kafka: give --bootstrap_servers and the topics (a self-contained "
                        "demo with its own local broker: rtml demo stream --spec fraud)")
    cli.require(options, *REQUIRED["--mode stream"])
    cli.refuse(options, (cli.only(ArchiveOptions, *cli.FILE_FLAGS),), "is for --mode batch")
    serving.check_kafka_io(options)
    serving.check_streaming_runner(options)
    metrics_endpoint.check_port(options)
    with serving.StopSignals(before_forced_exit) as signals:  # from here on, a signal stops the stream cleanly
        spec, model = graph.spec_and_model(options)
        config = graph.kafka_config(flags)  # a malformed item fails here, before anything starts
        model_reload_s = model_reload_seconds(options)
        options.view_as(StandardOptions).streaming = True
        stateful = " and ".join(what for what, used in (("entity features", spec.entity_features),
                                                          ("monitoring", monitoring_topic)) if used)
        serving.check_delivery(options, stateful or None)
        note = runners.choose_stream_runner(options, stateful or None)
        if note:
            print(note, file=sys.stderr, flush=True)
        serving.check_topics(flags, stream, config, group_id(stream, spec))
        if stream.delivery == EXACTLY_ONCE:
            kafka_transactions.fence(flags.bootstrap_servers, config, group_id(stream, spec))
        pipeline = cli.create_pipeline(options, test_pipeline)
        build_stream(pipeline, spec, model, options, model_reload_s)
        serving.check_fused_with_source(pipeline, options)
        group = group_id(stream, spec)
        print(f"scoring {flags.input_topic} -> {stream.output_topic} (dead letters: {stream.dead_letter_topic}) on "
              f"{flags.bootstrap_servers} with {spec.name} model {model.version}, group {group}"
              + (f", switching to new versions in --model_dir (read every {model_reload_s:g} s)"
                 if model_reload_s else "")
              + (f", entity state over {runners.live_state(options).shards} shard(s)" if spec.entity_features else "")
              + (f", kafka config {kafka.mask_config(config)}" if config else "")
              + (f", monitoring to {monitoring_topic}" if monitoring_topic else "")
              + serving.how_it_stops(options), file=sys.stderr, flush=True)
        return serving.serve(pipeline, f"{spec.name} stream scoring with model {model.version}", signals,
                             serving.group_positions(flags, config, group), stream.progress_s, stop_when,
                             on_stop)


def model_reload_seconds(options) -> float:
    """How often a stream reads --model_dir's CURRENT to switch versions (--model_poll_seconds); 0: never.

    The version is fixed with --model_version."""
    seconds, pinned = options.view_as(ReloadOptions).model_poll_seconds, options.view_as(ModelOptions).model_version
    if seconds < 0 or 0 < seconds < MIN_MODEL_POLL_S:
        raise UserError(f"--model_poll_seconds must be 0 (keep the version the stream starts with) or at least "
                        f"{MIN_MODEL_POLL_S:g}")
    if seconds > 0 and cli.given(options, "model_poll_seconds") and pinned:
        raise UserError("--model_version pins one version and --model_poll_seconds follows --model_dir's CURRENT; "
                        "give one of them")
    return 0.0 if pinned else seconds


if __name__ == "__main__":
    cli.main(run)
