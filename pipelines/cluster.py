r"""Cluster events online with mini-batch k-means: archives in batch, or live from Kafka.

    python -m pipelines.cluster --spec sensor --mode batch --input 'data/sensor/*/*.jsonl' \
        --model_dir models/sensor --k 3 --snapshot_dir models/sensor-kmeans \
        --output out/clusters --dead_letter out/dead_letter

    python -m pipelines.cluster --spec sensor --mode stream --bootstrap_servers HOST:9092 \
        --input_topic sensor --output_topic clusters --dead_letter_topic dead-letters \
        --model_dir models/sensor --snapshot_dir models/sensor-kmeans --init_snapshot current \
        --runner FlinkRunner

Features: those of a trained model version of the same spec (--model_dir, --model_version;
``pipelines.train``), i.e. its entity features and its analyzed feature plan compiled to ONNX,
as training and scoring compute them. Then one mini-batch k-means model (``models/kmeans.py``)
learns from every valid event, in event-time order (ties broken by event_id), --minibatch_size
events at a time; the first mini-batch chooses the initial centers by k-means++.

Every valid event comes out once as ``{event_id, event_time, <entity key>, cluster, distance,
snapshot_version}``: its nearest center, and the distance to it, with the centers as they were
before its mini-batch was learned. Sculley's rule assigns a whole mini-batch with the centers at
its start, so an event is assigned as soon as its turn comes; only the first mini-batch waits for
the initial centers. A distance far from every center is an anomaly signal. ``snapshot_version``
is the latest snapshot written (or started from) before the event was assigned.

Snapshots: every --snapshot_every mini-batches, and at the end of the input (an archive's end, a
drained stream), the model is published to --snapshot_dir as a versioned directory, as model
versions are (``models/registry.py``: sha256 manifest, CURRENT). ``kmeans.json`` holds the centers,
counts and settings, and the features of events already assigned but not yet learned (less than a
mini-batch), so a run with ``--init_snapshot`` continues exactly as an uninterrupted run would have.
A snapshot records the feature model version; starting from one with other features or another
--k is refused.

One model, one key: the whole stream is one model, so it runs under a single key through
``transforms.ordering.OrderedPerKey``. Bounded, all events are grouped on one worker, sorted and
folded; live, they wait in keyed state until the watermark passes them. Either way the model
takes the events one at a time in the same order, so a batch run and a replay of the same events
through the streaming form give the same assignments and the same centers, bit for bit
(tests/test_cluster.py). The price: nothing after the features runs in parallel.

Live: the order is event time as the watermark sees it, and the Kafka read takes its watermark
from message timestamps, so producers should stamp messages with the event time; an event that
comes after the watermark has passed it is assigned with the current centers at once and not
learned (counted as ``rtml.ordering/late``), so the model stays the bounded run's. Keyed
state and timers need a streaming runner (Prism, Flink, Dataflow): on the DirectRunner the stream
is refused with one line (../shared/notes/local-runners.md). A snapshot does not record Kafka
offsets: a stream started from one learns whatever its consumer group reads next.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import pathlib
import shutil
import sys
import time
from typing import NamedTuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from models import registry
from models.kmeans import DEFAULTS, MiniBatchKMeans
from pipelines import cli, graph, metrics_endpoint, runners, serving
from pipelines.options import (ArchiveOptions, ClusterOptions, KafkaOptions, ModelOptions, ScoreOptions, SpecOptions,
                               StreamOptions)
from transforms import storage
from transforms.errors import UserError
from transforms.events import METRICS_NAMESPACE, POSITION, EventBatch, rfc3339
from transforms.features import FEATURES_OUTPUT, feature_graph, raw_columns
from transforms.fileio import ReadEventFiles, WriteJsonLines, WriteParquet, check_input
from transforms.kafka_commit import CommitWhenWritten
from transforms.ordering import OrderedPerKey, OrderedStep
from transforms.spec import Spec

VIEWS = (SpecOptions, ScoreOptions, ClusterOptions, ModelOptions, ArchiveOptions, KafkaOptions, StreamOptions)
REQUIRED = {"--mode batch": ("spec", "input", "model_dir", "snapshot_dir", "output", "dead_letter"),
            "--mode stream": ("spec", "model_dir", "snapshot_dir", "bootstrap_servers", "input_topic", "output_topic",
                              "dead_letter_topic")}
MODEL_KEY = "kmeans"  # the one key: the whole stream is one model
STATE_FILE = "kmeans.json"  # in a snapshot version: everything a run needs to continue from it
KIND = "kmeans"  # a snapshot manifest's kind
SNAPSHOTS = "snapshots"
SETTINGS = ("k", "minibatch_size", "learning_rate", "eta", "decay", "seed")
# An event given its cluster and distance: serving.serve and cli.summary report this counter.
_ASSIGNED = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "assigned")


class Point(NamedTuple):
    """One valid event as the model takes it: who it is, for its record, and its features."""

    event_id: str
    event_time: str
    entity: str
    features: tuple[float, ...]
    position: tuple | None = None  # a stream's Kafka position, for its assignment record (see score.build_stream)


class Snapshot(NamedTuple):
    """A model snapshot to publish: its version, its manifest, and the contents of ``kmeans.json``."""

    version: str
    manifest: dict
    state: dict


@dataclasses.dataclass
class Progress:
    """The model key's state: the model, and the events it has not learned yet."""

    model: MiniBatchKMeans
    pending: list[tuple[float, ...]] = dataclasses.field(default_factory=list)  # assigned, not yet learned
    unassigned: list[Point] = dataclasses.field(default_factory=list)  # waiting for the initial centers
    events: int = 0  # assigned so far, counting those of the snapshots this run continues
    first_us: int | None = None
    last_us: int | None = None
    snapshot: str | None = None  # the latest snapshot, written or started from
    snapshot_events: int = 0  # ``events`` when it was taken


@dataclasses.dataclass(frozen=True)
class Clustering:
    """A clustering run, resolved from the flags and checked: what ``ClusterEvents`` runs.

    ``run`` prefixes the run's snapshot versions (``<run>-<events assigned>``).
    """

    spec: Spec
    features: registry.ModelVersion
    start: Progress
    minibatch_size: int
    snapshot_every: int
    run: str = dataclasses.field(default_factory=registry.new_version)


def clustering_for(options) -> Clustering:
    """The run the flags describe: spec, feature model, k-means settings, and where it starts.

    Raises UserError (one line) for bad settings, or a snapshot of another spec, features or k.
    """
    flags = options.view_as(ClusterOptions)
    missing = not flags.init_snapshot and cli.missing_extra("train", "sklearn")
    if missing:  # a new model starts with scikit-learn's k-means++
        raise UserError(f"a new k-means model (no --init_snapshot): {missing}")
    spec, features = graph.spec_and_model(options)
    if flags.snapshot_dir:
        storage.check_committable("--snapshot_dir", flags.snapshot_dir)
    given = {name: getattr(flags, name) for name in SETTINGS if getattr(flags, name) is not None}
    snapshot, saved = None, {}
    if flags.init_snapshot:
        if not flags.snapshot_dir:
            raise UserError("--init_snapshot needs --snapshot_dir (where the snapshot is)")
        snapshot = load_snapshot(flags.snapshot_dir, flags.init_snapshot, spec, features)
        saved = json.loads(snapshot.read(STATE_FILE))
        if given.get("k", saved["model"]["k"]) != saved["model"]["k"]:
            raise UserError(f"snapshot {snapshot.version} has k={saved['model']['k']}, not --k {given['k']}; drop "
                            f"--k to continue it, or start without --init_snapshot")
    resumed = dict(saved["model"], minibatch_size=saved["minibatch_size"]) if saved else {}
    settings = {name: given.get(name, resumed.get(name, DEFAULTS.get(name))) for name in SETTINGS}
    _check(settings, flags.snapshot_every)
    rule = {name: settings[name] for name in ("learning_rate", "eta", "decay", "seed")}
    if snapshot is None:
        start = Progress(MiniBatchKMeans(settings["k"], **rule))
    else:  # the saved model and the events it has not learned yet, learning on with the rule chosen now
        first_us, last_us = saved["event_time_us"]
        start = Progress(MiniBatchKMeans.from_dict(dict(saved["model"], **rule)),
                         [tuple(row) for row in saved["pending"]], events=saved["events"], first_us=first_us,
                         last_us=last_us, snapshot=snapshot.version, snapshot_events=saved["events"])
    return Clustering(spec, features, start, settings["minibatch_size"], flags.snapshot_every)


def _check(settings: dict, snapshot_every: int) -> None:
    if settings.get("k") is None:
        raise UserError("missing --k (the number of clusters); see --help")
    if settings["k"] < 1:
        raise UserError(f"--k must be at least 1, not {settings['k']}")
    if settings["minibatch_size"] < settings["k"]:
        raise UserError(f"--minibatch_size must be at least --k ({settings['k']}): k-means++ picks the initial "
                        f"centers from the first mini-batch")
    if snapshot_every < 1:
        raise UserError(f"--snapshot_every must be at least 1, not {snapshot_every}")
    for name in ("eta", "decay"):
        if not 0 < settings[name] <= 1:
            raise UserError(f"--{name} must be in (0, 1], not {settings[name]}")


def load_snapshot(snapshot_dir: str, version: str, spec: Spec, features: registry.ModelVersion):
    """The snapshot ``version`` (or ``current``) of ``snapshot_dir``, checked against the run's spec and features."""
    if version == "current" and not FileSystems.exists(FileSystems.join(snapshot_dir, registry.CURRENT)):
        raise UserError(f"--init_snapshot current: no snapshot in {snapshot_dir} (no {registry.CURRENT} file)")
    snapshot = registry.load_for_spec(snapshot_dir, spec, None if version == "current" else version)
    manifest = snapshot.manifest
    if manifest.get("kind") != KIND:
        raise UserError(f"--init_snapshot {snapshot.version}: not a k-means snapshot (made by pipelines.cluster)")
    if manifest["feature_model_version"] != features.version:
        raise UserError(f"snapshot {snapshot.version} clusters the features of model "
                        f"{manifest['feature_model_version']}, not of model {features.version}; pass --model_version "
                        f"{manifest['feature_model_version']}, or start without --init_snapshot")
    return snapshot


# ---------------------------------------------------------------------------------------------
# The graph


class _FeatureRows(beam.DoFn):
    """``EventBatch`` in; ``(MODEL_KEY, (event time us, event_id, Point))`` out, one per event.

    One ONNX call per event, not per batch: onnxruntime's vectorised Log rounds differently from
    its scalar loop over a call's last rows, so a row's features would depend on its place in the
    batch (measured: 1-ulp float32 differences on about a tenth of the sensor rows), and a live
    stream's batches are not an archive's. Alone in its call, an event's features are always the same.
    """

    def __init__(self, spec: Spec, plan: dict):
        self._spec, self._plan = spec, plan

    def setup(self):
        import onnxruntime as ort

        self._session = ort.InferenceSession(feature_graph(self._spec, self._plan).SerializeToString(),
                                             providers=["CPUExecutionProvider"])

    def process(self, batch: EventBatch):
        spec = self._spec
        columns = raw_columns(batch, spec)
        positions = batch.positions or [None] * len(batch.events)
        for row, (event, time_us, position) in enumerate(zip(batch.events, batch.event_time_us, positions)):
            features = self._session.run([FEATURES_OUTPUT], {name: values[row:row + 1]
                                                             for name, values in columns.items()})[0][0]
            point = Point(event["event_id"], event[spec.event_time], event[spec.entity_key],
                          tuple(features.astype(np.float64).tolist()), position)
            yield MODEL_KEY, (time_us, str(event["event_id"]), point)


class _KMeansStep(OrderedStep):
    """The model key's step: assign each event, learn each full mini-batch, snapshot now and then."""

    def __init__(self, clustering: Clustering):
        self._clustering, spec = clustering, clustering.spec
        self._about = {"kind": KIND,
                       "spec": {"name": spec.name, "fingerprint": spec.fingerprint, "source": spec.source},
                       "feature_model_version": clustering.features.version,
                       "features": clustering.features.manifest["features"],
                       "started_from": clustering.start.snapshot}

    def initial_state(self, key) -> Progress:
        return copy.deepcopy(self._clustering.start)

    def step(self, key, state: Progress, time_us: int, point: Point):
        state.events += 1
        state.first_us = time_us if state.first_us is None else min(state.first_us, time_us)
        state.last_us = time_us if state.last_us is None else max(state.last_us, time_us)
        state.pending.append(point.features)
        state.unassigned.append(point)
        model, minibatch_size = state.model, self._clustering.minibatch_size
        if not model.initialized:
            if len(state.pending) < minibatch_size:
                return state, []
            model.initialize(np.array(state.pending))  # k-means++ on the first mini-batch
        outputs = self._assign(state)
        if len(state.pending) == minibatch_size:
            model.partial_fit(np.array(state.pending))
            state.pending = []
            if model.batches % self._clustering.snapshot_every == 0:
                outputs.append(self._snapshot(state))
        return state, outputs

    def finish(self, key, state: Progress):
        """The events still waiting for initial centers get them (k-means++ on fewer events than a
        mini-batch), or, fewer than k, no cluster; then the last snapshot. A partial mini-batch is
        not learned: it stays pending in the snapshot, for a run that continues from it."""
        model = state.model
        if not model.initialized:
            if len(state.pending) < model.k:
                return [self._record(point, None, None, state) for point in state.unassigned]
            model.initialize(np.array(state.pending))
        outputs = self._assign(state)
        if state.events != state.snapshot_events:
            outputs.append(self._snapshot(state))
        return outputs

    def late(self, key, state: Progress, time_us: int, point: Point):
        """A late event is assigned with the current centers (no cluster before there are any) and
        not learned: learning it now would change the model out of event-time order."""
        if not state.model.initialized:
            return [self._record(point, None, None, state)]
        clusters, distances = state.model.predict(np.array([point.features]))
        return [self._record(point, clusters.tolist()[0], distances.tolist()[0], state)]

    def _assign(self, state: Progress) -> list[dict]:
        points, state.unassigned = state.unassigned, []
        if not points:
            return []
        clusters, distances = state.model.predict(np.array([point.features for point in points]))
        return [self._record(point, cluster, distance, state)
                for point, cluster, distance in zip(points, clusters.tolist(), distances.tolist())]

    def _record(self, point: Point, cluster: int | None, distance: float | None, state: Progress) -> dict:
        record = {"event_id": point.event_id, "event_time": point.event_time,
                  self._clustering.spec.entity_key: point.entity, "cluster": cluster, "distance": distance,
                  "snapshot_version": state.snapshot}
        if point.position is not None:
            record[POSITION] = point.position
        return record

    def _snapshot(self, state: Progress) -> Snapshot:
        model, minibatch_size = state.model, self._clustering.minibatch_size
        version = f"{self._clustering.run}-{state.events:010d}"
        state.snapshot, state.snapshot_events = version, state.events
        manifest = dict(self._about, version=version, k=model.k, learning_rate=model.learning_rate,
                        eta=model.eta, decay=model.decay, minibatch_size=minibatch_size,
                        centers=model.centers.tolist(), counts=model.counts.tolist(), events=state.events,
                        learned=model.seen, minibatches=model.batches,
                        event_time={"from": rfc3339(state.first_us), "to": rfc3339(state.last_us)})
        contents = {"model": model.to_dict(), "minibatch_size": minibatch_size,
                    "pending": [list(row) for row in state.pending], "events": state.events,
                    "event_time_us": [state.first_us, state.last_us]}
        return Snapshot(version, manifest, contents)


def _split(output):
    if isinstance(output, Snapshot):
        yield beam.pvalue.TaggedOutput(SNAPSHOTS, output)
    else:
        _ASSIGNED.inc()
        yield output


class ClusterEvents(beam.PTransform):
    """``EventBatch`` (with its entity features: ``graph.ParseAndEnrich``) in; ``assignments`` (one record
    per event) and ``snapshots`` (``Snapshot``) out.

    ``streaming`` picks keyed state and timers (live) or group, sort and fold (bounded); the
    outputs are the same either way.
    """

    def __init__(self, clustering: Clustering, streaming: bool):
        super().__init__()
        self._clustering, self._streaming = clustering, streaming

    def expand(self, batches):
        clustering = self._clustering
        return (batches
                | "Features" >> beam.ParDo(_FeatureRows(clustering.spec, clustering.features.manifest["feature_plan"]))
                | "MiniBatchKMeans" >> OrderedPerKey(_KMeansStep(clustering), self._streaming)
                | "Split" >> beam.FlatMap(_split).with_outputs(SNAPSHOTS, main="assignments"))


class PublishSnapshots(beam.PTransform):
    """``Snapshot``s in; each published as a version of ``snapshot_dir`` and made current; their versions out.

    Snapshots come from the one model key in order, so the last one published is current.
    """

    def __init__(self, snapshot_dir: str):
        super().__init__()
        self._snapshot_dir = snapshot_dir

    def expand(self, snapshots):
        return snapshots | "Publish" >> beam.ParDo(_PublishSnapshot(self._snapshot_dir))


class _PublishSnapshot(beam.DoFn):
    def __init__(self, snapshot_dir: str):
        self._snapshot_dir = snapshot_dir

    def process(self, snapshot: Snapshot):
        manifest = storage.read_file(FileSystems.join(self._snapshot_dir, "versions", snapshot.version,
                                                      registry.MANIFEST))
        if manifest is not None:  # published by an earlier attempt at this bundle, which may have died before CURRENT
            registry.advance_current(self._snapshot_dir, snapshot.version, hashlib.sha256(manifest).hexdigest())
            yield snapshot.version
            return
        if storage.is_local(self._snapshot_dir):  # left by a failed attempt
            shutil.rmtree(pathlib.Path(self._snapshot_dir, ".staging", snapshot.version), ignore_errors=True)
        staging = registry.staging_dir(self._snapshot_dir, snapshot.version)
        try:
            (staging / STATE_FILE).write_text(json.dumps(snapshot.state) + "\n")
            yield registry.publish(self._snapshot_dir, staging, snapshot.manifest).version
        finally:  # gone once published; a failed attempt's temporary one (gs://) is not left on the worker
            shutil.rmtree(staging, ignore_errors=True)


def assignment_schema(spec: Spec):
    """The Parquet schema of assignment records (``--output_format parquet``)."""
    import pyarrow as pa

    return pa.schema([("event_id", pa.string()), ("event_time", pa.string()), (spec.entity_key, pa.string()),
                      ("cluster", pa.int64()), ("distance", pa.float64()), ("snapshot_version", pa.string())])


# ---------------------------------------------------------------------------------------------
# Modes


def run(argv=None, test_pipeline=None) -> dict[str, int]:
    """Cluster events; returns the run's counters (received, valid, assigned, dead letters by reason)."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    streaming = options.view_as(ScoreOptions).mode == "stream"
    runners.apply_runner_presets(options, streaming=streaming)
    if streaming:
        return _run_stream(options, test_pipeline)
    cli.require(options, *REQUIRED["--mode batch"])
    cli.refuse(options, (KafkaOptions, StreamOptions), "is for --mode stream")
    flags, snapshot_dir = options.view_as(ArchiveOptions), options.view_as(ClusterOptions).snapshot_dir
    clustering = clustering_for(options)
    check_input(flags.input)

    started = time.monotonic()
    pipeline = cli.create_pipeline(options, test_pipeline)
    parsed = (pipeline
              | "ReadEvents" >> ReadEventFiles(flags.input, flags.batch_size)
              | "ParseAndEnrich" >> graph.ParseAndEnrich(clustering.spec, streaming=False, batch_size=flags.batch_size))
    clustered = parsed.events | "ClusterEvents" >> ClusterEvents(clustering, streaming=False)
    if flags.output_format == "parquet":
        (clustered.assignments
         | "Batch" >> beam.BatchElements(min_batch_size=flags.batch_size, max_batch_size=flags.batch_size)
         | "WriteAssignments" >> WriteParquet(flags.output, "clusters", assignment_schema(clustering.spec)))
    else:
        clustered.assignments | "WriteAssignments" >> WriteJsonLines(flags.output, "clusters")
    clustered.snapshots | "PublishSnapshots" >> PublishSnapshots(snapshot_dir)
    parsed.dead_letters | "WriteDeadLetters" >> WriteJsonLines(flags.dead_letter, "dead_letter")
    result = pipeline.run()
    result.wait_until_finish()

    totals = cli.counters(result)
    print(cli.summary(f"{clustering.spec.name} clustering with the features of model {clustering.features.version}",
                      totals, time.monotonic() - started,
                      {"assignments": f"{flags.output}/clusters-*.{flags.output_format}",
                       "dead letters": f"{flags.dead_letter}/dead_letter-*.jsonl"}))
    print(_last_snapshot(snapshot_dir, clustering.run))
    cli.check_whole_input(totals, "the rest of the input was clustered")
    return totals


def _last_snapshot(snapshot_dir: str, run: str) -> str:
    """The summary line of the snapshot this run published last."""
    has_current = FileSystems.exists(FileSystems.join(snapshot_dir, registry.CURRENT))
    manifest = registry.load(snapshot_dir).manifest if has_current else {}
    if not manifest.get("version", "").startswith(run):
        return "  snapshot     none written: no valid events, or fewer than --k to start from"
    return (f"  snapshot     {manifest['version']} is current in {snapshot_dir}: k={manifest['k']}, "
            f"{manifest['events']:,} events, {manifest['learned']:,} learned, counts {manifest['counts']}")


def group_id(stream: StreamOptions, spec) -> str:
    """The stream's consumer group: --group_id, by default rtml-cluster-<spec>."""
    return stream.group_id or f"rtml-cluster-{spec.name}"


def build_stream(pipeline, clustering: Clustering, options) -> None:
    """Kafka in, ``ClusterEvents`` live, assignments and dead letters to Kafka, snapshots to --snapshot_dir.

    Offsets as in ``score.build_stream``: on a streaming runner, committed once the assignments are written.
    """
    flags, stream, spec = options.view_as(KafkaOptions), options.view_as(StreamOptions), clustering.spec
    config, batch_size = graph.kafka_config(flags), graph.stream_batch_size(options)
    group, when_written = group_id(stream, spec), not runners.is_direct(options)
    read = graph.live_read(flags, stream, config, group, when_written, on_prism=runners.is_prism(options),
                           on_direct=runners.is_direct(options))
    parsed = (pipeline
              | "ReadEvents" >> graph.ReadKafkaEvents(read, batch_size, with_positions=when_written,
                                                      value_format=graph.value_format(options, spec))
              | "ParseAndEnrich" >> graph.ParseAndEnrich(spec, streaming=True, batch_size=batch_size,
                                                         live_state=runners.live_state(options)))
    clustered = parsed.events | "ClusterEvents" >> ClusterEvents(clustering, streaming=True)
    written = [clustered.assignments | "WriteAssignments" >> graph.WriteToTopic(
                   flags.bootstrap_servers, stream.output_topic, config, _assignment_message, spec.entity_key,
                   one_each=True, report_written=when_written),
               parsed.dead_letters | "WriteDeadLetters" >> graph.WriteToTopic(
                   flags.bootstrap_servers, stream.dead_letter_topic, config, graph.dead_letter_message,
                   one_each=True, report_written=when_written)]
    if when_written:
        written | "WrittenPositions" >> beam.Flatten() | "CommitWhenWritten" >> CommitWhenWritten(
            flags.bootstrap_servers, group, config)
    clustered.snapshots | "PublishSnapshots" >> PublishSnapshots(options.view_as(ClusterOptions).snapshot_dir)


def _assignment_message(record: dict, entity_key: str) -> tuple[bytes, bytes, tuple | None]:
    [message] = graph.scored_messages([record], entity_key)
    return message


def _run_stream(options, test_pipeline) -> dict[str, int]:
    cli.require(options, *REQUIRED["--mode stream"])
    if not cli.given(options, "bootstrap_servers"):  # Beam's flag defaults to localhost:9092
        raise UserError("missing --bootstrap_servers; see --help")
    flags, stream = options.view_as(KafkaOptions), options.view_as(StreamOptions)
    cli.refuse(options, (cli.only(ArchiveOptions, *cli.FILE_FLAGS),), "is for --mode batch")
    serving.check_kafka_io(options, supported=False)
    serving.check_streaming_runner(options)
    serving.check_delivery(options, "online k-means")
    metrics_endpoint.check_port(options)
    with serving.StopSignals() as signals:  # from here on, a signal stops the stream cleanly
        clustering = clustering_for(options)
        config = graph.kafka_config(flags)
        note = runners.choose_stream_runner(options, "online k-means")
        if note:
            print(note, file=sys.stderr, flush=True)
        pipeline = cli.create_pipeline(options, test_pipeline)
        build_stream(pipeline, clustering, options)
        serving.check_fused_with_source(pipeline, options)  # the model's keyed state: refused on the DirectRunner
        serving.check_topics(flags, stream, config, group_id(stream, clustering.spec))
        print(f"clustering {flags.input_topic} -> {stream.output_topic} (dead letters: {stream.dead_letter_topic}) on "
              f"{flags.bootstrap_servers} with k={clustering.start.model.k} and the features of {clustering.spec.name} "
              f"model {clustering.features.version}; snapshots to {options.view_as(ClusterOptions).snapshot_dir}"
              + serving.how_it_stops(options), file=sys.stderr, flush=True)
        return serving.serve(pipeline, f"{clustering.spec.name} stream clustering", signals,
                             serving.group_positions(flags, config, group_id(stream, clustering.spec)),
                             stream.progress_s)


if __name__ == "__main__":
    cli.main(run)
