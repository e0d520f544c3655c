"""Mini-batch k-means: the numpy update rule, ``pipelines.cluster`` bounded, and its streaming form on TestStream.

A sensor feature model is trained once for the module on a small generated archive, with a spec
that extends ``sensor`` and only shrinks its IsolationForest: same fields and features, so the
same fingerprint as ``--spec sensor``. Clustering uses the features only, and exporting the
spec's 200-tree forest to ONNX takes minutes on these machines.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import pickle
import shutil
import sys
import time

import apache_beam as beam
import numpy as np
import orjson
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from sklearn.cluster import MiniBatchKMeans as ScikitMiniBatchKMeans
from sklearn.metrics import adjusted_rand_score

from models import registry
from models.kmeans import MiniBatchKMeans
from pipelines import cli, cluster, generate, graph, report, train
from tests.browser import drawn, render
from tests.conftest import read_json_lines
from tests.kafka_helpers import Outputs, StreamProcess, committed, make_topics, produce, unique_name
from transforms.errors import UserError
from transforms.events import Block, Raw, event_time_us_of

DAYS, EVENTS_PER_DAY, BROKEN_SHARE = 2, 1440, 0.01  # 30 machines, a reading every 30 minutes
K, MINIBATCH, SNAPSHOT_EVERY = 3, 32, 2
HOUR_US = 3_600_000_000
SMALL_FOREST = """extends: sensor
model:
  estimator: sklearn.ensemble.IsolationForest
  params: {n_estimators: 5, max_samples: 64, random_state: 0}
"""


@pytest.fixture(scope="module")
def sensor(tmp_path_factory) -> dict:
    """A 2-day sensor archive (three regimes, 1% broken lines), its manifest, and a feature model trained on it."""
    root = tmp_path_factory.mktemp("cluster")
    manifest = generate.generate("sensor", DAYS, root / "data", datetime.date(2026, 3, 1), EVENTS_PER_DAY,
                                 BROKEN_SHARE, 7, compress=False)
    spec_file = root / "sensor_small_forest.yaml"
    spec_file.write_text(SMALL_FOREST)
    model_dir = str(root / "model")
    train.run(["--spec", str(spec_file), "--input", str(root / "data" / "*" / "*.jsonl"), "--model_dir", model_dir,
               "--dead_letter", str(root / "train_dead_letters")])
    days = [root / "data" / day["file"] for day in manifest["days"]]
    return {"root": root, "manifest": manifest, "model_dir": model_dir, "days": days}


def _flags(sensor: dict, *extra: str) -> list[str]:
    return ["--spec", "sensor", "--model_dir", sensor["model_dir"], "--k", str(K), "--minibatch_size", str(MINIBATCH),
            "--snapshot_every", str(SNAPSHOT_EVERY), *extra]


def _cluster_batch(sensor: dict, out: pathlib.Path, inputs: str, *extra: str) -> dict:
    totals = cluster.run(_flags(sensor, *_batch_flags(out, inputs), *extra))
    records = (pq.read_table(out / "clusters").to_pylist() if "parquet" in extra
               else read_json_lines(out / "clusters"))
    return {"totals": totals, "records": records, "snapshots": str(out / "snapshots")}


def _batch_flags(out: pathlib.Path, inputs: str) -> list[str]:
    return ["--mode", "batch", "--input", inputs, "--output", str(out / "clusters"), "--dead_letter",
            str(out / "dead_letter"), "--snapshot_dir", str(out / "snapshots")]


@pytest.fixture(scope="module")
def batch_run(sensor) -> dict:
    """Both days clustered in batch mode: totals, assignment records, snapshot dir."""
    return _cluster_batch(sensor, sensor["root"] / "batch", str(sensor["root"] / "data" / "*" / "*.jsonl"))


@pytest.fixture(scope="module")
def hours(sensor) -> dict:
    """Day 1's first 3 hours (180 events) in two files split by event time, ``early`` [0, 2 h) and
    ``late`` [2 h, 3 h), and both clustered in one batch run. Small, because the streaming form on
    the BundleBasedDirectRunner takes 50-100 ms an event (a bundle per event-time timer firing)."""
    root = sensor["root"] / "hours"
    root.mkdir()
    midnight_us = event_time_us_of("2026-03-01T00:00:00Z")
    parts = {"early": [], "late": []}
    for line in sensor["days"][0].read_bytes().splitlines():
        hour = (_event_time_us(line, midnight_us) - midnight_us) // HOUR_US
        if hour < 3:
            parts["early" if hour < 2 else "late"].append(line)
    paths = {}
    for name, lines in parts.items():
        paths[name] = root / f"{name}.jsonl"
        paths[name].write_bytes(b"\n".join(lines) + b"\n")
    return {**paths, "both": _cluster_batch(sensor, root / "both", str(root / "*.jsonl"))}


def _event_time_us(line: bytes, otherwise: int) -> int:
    try:
        return event_time_us_of(orjson.loads(line)["event_time"])
    except Exception:  # noqa: BLE001 - any broken line
        return otherwise


def _snapshots(snapshot_dir: str) -> list[registry.ModelVersion]:
    """Every snapshot in the directory, each checked against its sha256 manifest, oldest first."""
    names = sorted(path.name for path in (pathlib.Path(snapshot_dir) / "versions").iterdir())
    return [registry.load(snapshot_dir, name) for name in names]


def _state(snapshot: registry.ModelVersion) -> dict:
    return json.loads(snapshot.read(cluster.STATE_FILE))


def _regimes(paths) -> dict[str, str]:
    """The generator's regime of each line that is a JSON object with an event id (valid or not), by event id."""
    regimes = {}
    for path in paths:
        for line in pathlib.Path(path).read_bytes().splitlines():
            try:
                event = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue
            if isinstance(event, dict) and isinstance(event.get("event_id"), str):
                regimes[event["event_id"]] = event["regime"]
    return regimes


# ---------------------------------------------------------------------------------------------
# The update rule


@pytest.mark.parametrize("rule, expected", [
    # x=4 goes to the center at 0, x=5.5 to the one at 10 (the centers at the start of the batch: once
    # 0 has moved to 2, 5.5 would be nearer it). Each center then learns its second point, v = 2.
    ({"learning_rate": "inverse_count"}, [2.0, 7.75]),  # eta = 1/2
    ({"learning_rate": "constant", "eta": 0.1}, [0.4, 9.55]),  # 0.9 * 0 + 0.1 * 4; 0.9 * 10 + 0.1 * 5.5
    ({"learning_rate": "decayed", "decay": 0.5}, [2.8284271247461903, 6.818019484660536]),  # eta = 2 ** -0.5
])
def test_sculleys_update_by_hand(rule, expected):
    model = MiniBatchKMeans(2, **rule)
    model.centers, model.counts = np.array([[0.0], [10.0]]), np.array([1, 1])
    model.partial_fit(np.array([[4.0], [5.5]]))
    assert model.centers.ravel().tolist() == pytest.approx(expected, abs=1e-12)
    assert model.counts.tolist() == [2, 2] and (model.seen, model.batches) == (2, 1)
    clusters, distances = model.predict(np.array([[3.0], [9.0]]))
    assert clusters.tolist() == [0, 1]
    assert distances.tolist() == pytest.approx([abs(3.0 - expected[0]), abs(9.0 - expected[1])], abs=1e-12)


def _blobs(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = np.concatenate([rng.normal(center, 0.5, (200, 3)) for center in (0.0, 3.0, 6.0, 9.0)])
    return rng.permutation(points)


def test_kmeans_plusplus_starts_from_the_first_mini_batch_deterministically():
    first = _blobs()[:100]
    runs = [MiniBatchKMeans(4, seed=seed) for seed in (3, 3, 4)]
    for model in runs:
        model.initialize(first)
    assert np.array_equal(runs[0].centers, runs[1].centers)
    assert not np.array_equal(runs[0].centers, runs[2].centers)
    for center in runs[0].centers:  # k-means++ picks points of the mini-batch
        assert any(np.array_equal(center, point) for point in first)
    runs[0].partial_fit(first)  # the first partial_fit: k-means++ on its mini-batch, then the update
    assert np.array_equal(MiniBatchKMeans(4, seed=3).partial_fit(first).centers, runs[0].centers)


def test_inverse_count_gives_scikit_learns_minibatch_kmeans_centers_without_reassignment():
    # The one rate where scikit-learn's batch-mean update is the same rule as Sculley's point by point.
    points = _blobs()
    ours = MiniBatchKMeans(4, seed=5)
    theirs = ScikitMiniBatchKMeans(n_clusters=4, random_state=5, batch_size=100, reassignment_ratio=0.0)
    for start in range(0, len(points), 100):
        ours.partial_fit(points[start:start + 100])
        theirs.partial_fit(points[start:start + 100])
        np.testing.assert_allclose(ours.centers, theirs.cluster_centers_, rtol=0, atol=1e-12)
        assert ours.counts.tolist() == theirs._counts.astype(int).tolist()


def test_state_round_trips_exactly_through_json():
    model = MiniBatchKMeans(4, learning_rate="decayed", decay=0.6, seed=2).partial_fit(_blobs()[:100])
    again = MiniBatchKMeans.from_dict(json.loads(json.dumps(model.to_dict())))
    assert again.to_dict() == model.to_dict() and np.array_equal(again.centers, model.centers)


# ---------------------------------------------------------------------------------------------
# Bounded


def test_bounded_clusters_separate_the_machine_regimes(sensor, batch_run):
    days = sensor["manifest"]["days"]
    valid = sum(day["valid"] for day in days)
    totals, records = batch_run["totals"], batch_run["records"]
    assert totals["rtml/received"] == sum(day["lines"] for day in days)
    assert totals["rtml/valid"] == totals["rtml/assigned"] == len(records) == valid
    assert len({record["event_id"] for record in records}) == valid
    assert len(read_json_lines(sensor["root"] / "batch" / "dead_letter")) == totals["rtml/received"] - valid
    regimes = _regimes(sensor["days"])
    score = adjusted_rand_score([regimes[r["event_id"]] for r in records], [r["cluster"] for r in records])
    print(f"adjusted Rand index of the bounded clusters against the generator's regimes: {score:.4f}")
    assert score >= 0.9
    assert {r["cluster"] for r in records} == set(range(K)) and all(r["distance"] >= 0 for r in records)


def test_snapshots_every_few_mini_batches_and_at_the_end(sensor, batch_run):
    valid = batch_run["totals"]["rtml/valid"]
    snapshots = _snapshots(batch_run["snapshots"])
    every = MINIBATCH * SNAPSHOT_EVERY
    assert [s.manifest["events"] for s in snapshots] == [*range(every, valid, every), valid]
    last = snapshots[-1]
    assert registry.load(batch_run["snapshots"]).version == last.version  # the last one is current
    feature_model = registry.load(sensor["model_dir"])
    manifest, state = last.manifest, _state(last)
    assert manifest["kind"] == "kmeans" and manifest["k"] == K and manifest["learning_rate"] == "inverse_count"
    assert manifest["feature_model_version"] == feature_model.version
    assert manifest["spec"]["fingerprint"] == feature_model.manifest["spec"]["fingerprint"]
    assert manifest["centers"] == state["model"]["centers"] and manifest["counts"] == state["model"]["counts"]
    assert sum(manifest["counts"]) == manifest["learned"] == MINIBATCH * manifest["minibatches"]
    assert len(state["pending"]) == valid - manifest["learned"] < MINIBATCH  # assigned, kept for a next run
    times = sorted(event_time_us_of(r["event_time"]) for r in batch_run["records"])
    assert state["event_time_us"] == [times[0], times[-1]]
    # each event names the snapshot written last before it was assigned
    versions = [None] + [s.version for s in snapshots]
    ordered = sorted(batch_run["records"], key=lambda r: (event_time_us_of(r["event_time"]), r["event_id"]))
    assert [r["snapshot_version"] for r in ordered] == [versions[i // every] for i in range(valid)]


def test_a_report_draws_the_current_snapshots_centers_and_the_distances_in_a_browser(sensor, batch_run, tmp_path):
    page = tmp_path / "clusters.html"
    sections = report.run(["--spec", "sensor", "--report", str(page), "--snapshots", batch_run["snapshots"],
                           "--assignments", str(sensor["root"] / "batch" / "clusters" / "*.jsonl")])
    current = registry.load(batch_run["snapshots"]).manifest
    centers, distances = sections
    assert centers.title == f"k-means centers, snapshot {current['version']}"
    assert [list(row) for row in centers.figure.data[0].z] == current["centers"]
    assert centers.figure.data[0].x == tuple(current["features"])
    records = batch_run["records"]
    assert distances.finding.startswith(f"{len(records):,} assignments; median distance "
                                        f"{np.median([r['distance'] for r in records]):.3f}")
    assert sum(sum(bars.y) for bars in distances.figure.data) == len(records)
    assert [bars.name for bars in distances.figure.data] == [f"cluster {c}" for c in range(K)]

    rendered = render(page, tmp_path / "clusters.png")
    assert len(rendered.charts) == 2 and all(drawn(dom) for dom in rendered.charts.values())
    assert rendered.console == []


# ---------------------------------------------------------------------------------------------
# The streaming form: keyed state and event-time timers, on the BundleBasedDirectRunner


def _test_stream(paths, group: int = 40, seed: int = 0) -> TestStream:
    """The lines of ``paths`` as a live source delivers them: about ``group`` events at a time, shuffled
    across 3 blocks, then the watermark moves to the group's last event time, which every later
    event is after; after the last group, a second on, as a live source's watermark moves on with the clock
    (this runner does not hold its watermark at a timer's time once the input ends, so what a release
    due then emits would come behind it). A line without a usable event time rides with the line before it."""
    rng = np.random.default_rng(seed)
    timed, last_us = [], 0
    for path in paths:
        for number, line in enumerate(pathlib.Path(path).read_bytes().splitlines(), start=1):
            last_us = _event_time_us(line, last_us)
            timed.append((last_us, Raw(line, {"file": str(path), "line": number})))
    timed.sort(key=lambda item: item[0])
    stream, start = TestStream(), 0
    while start < len(timed):
        end = min(start + group, len(timed))
        while end < len(timed) and timed[end][0] == timed[end - 1][0]:
            end += 1
        watermark = Timestamp(micros=timed[end - 1][0])
        lines = [timed[i][1] for i in rng.permutation(np.arange(start, end))]
        stream.add_elements([TimestampedValue(Block.of([lines[i] for i in part]), watermark)
                             for part in np.array_split(np.arange(len(lines)), 3)])
        stream.advance_watermark_to(watermark)
        start = end
    return stream.advance_watermark_to(Timestamp(micros=timed[-1][0] + 1_000_000)).advance_watermark_to_infinity()


def _replay(paths, clustering: cluster.Clustering, snapshot_dir: str, expected: list[dict], view=lambda r: r) -> None:
    """Replay the lines of ``paths`` through ``ClusterEvents`` in its streaming form: its assignments
    must be ``expected`` (both seen through ``view``); its snapshots go to ``snapshot_dir``."""
    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as pipeline:
        parsed = (pipeline
                  | "Replay" >> _test_stream(paths)
                  | "ParseAndEnrich" >> graph.ParseAndEnrich(clustering.spec, streaming=True))
        clustered = parsed.events | "ClusterEvents" >> cluster.ClusterEvents(clustering, streaming=True)
        clustered.snapshots | "PublishSnapshots" >> cluster.PublishSnapshots(snapshot_dir)
        assert_that(clustered.assignments | "View" >> beam.Map(view), equal_to([view(r) for r in expected]))


def _unversioned(record: dict) -> dict:
    """A record without the snapshot it names: another run names its snapshots otherwise."""
    return {**record, "snapshot_version": None}


def _clustering(sensor: dict, run: str, *extra: str) -> cluster.Clustering:
    return dataclasses.replace(cluster.clustering_for(PipelineOptions(_flags(sensor, *extra))), run=run)


def test_a_replay_through_the_streaming_form_gives_the_same_assignments_and_centers(sensor, hours, tmp_path):
    batch = hours["both"]
    batch_snapshots = _snapshots(batch["snapshots"])
    assert len(batch_snapshots) >= 3 and batch["totals"]["rtml/valid"] >= 4 * MINIBATCH
    run = batch_snapshots[0].version.rsplit("-", 1)[0]  # the batch run's snapshot names, to compare whole records
    started = time.monotonic()
    _replay([hours["early"], hours["late"]], _clustering(sensor, run), str(tmp_path / "snapshots"), batch["records"])
    print(f"streaming replay of {len(batch['records'])} events: {time.monotonic() - started:.1f} s")
    replayed = _snapshots(str(tmp_path / "snapshots"))
    assert [s.version for s in replayed] == [s.version for s in batch_snapshots]
    for ours, theirs in zip(replayed, batch_snapshots):
        assert _state(ours) == _state(theirs)  # centers, counts, pending: exactly, not approximately


def test_a_late_event_is_assigned_once_and_leaves_the_model_as_it_was(sensor):
    """Live, an event that comes after its place in the order (``OrderedStep.late``) is assigned with the
    current centers and not learned, so the model and the other events' records stay the bounded run's."""
    step = cluster._KMeansStep(dataclasses.replace(_clustering(sensor, "late"), minibatch_size=4))
    width = len(step._clustering.features.manifest["features"])
    points = [cluster.Point(f"e{i}", "2026-03-01T00:00:00Z", "m1", tuple(float(i + j) for j in range(width)))
              for i in range(6)]
    state = step.initial_state(cluster.MODEL_KEY)
    for number, point in enumerate(points[:3]):
        state, _ = step.advance(cluster.MODEL_KEY, state, number, number, point)
    before = pickle.dumps(state)
    [record] = step.late(cluster.MODEL_KEY, state, 0, points[5])
    assert record["event_id"] == "e5" and record["cluster"] is None  # no centers before the first mini-batch
    assert pickle.dumps(state) == before
    state, outputs = step.advance(cluster.MODEL_KEY, state, 3, 3, points[3])
    assert [r["event_id"] for r in outputs if isinstance(r, dict)] == ["e0", "e1", "e2", "e3"]
    before = pickle.dumps(state)
    [record] = step.late(cluster.MODEL_KEY, state, 0, points[5])
    expected_cluster, expected_distance = state.model.predict(np.array([points[5].features]))
    assert (record["cluster"], record["distance"]) == (expected_cluster[0], expected_distance[0])
    assert pickle.dumps(state) == before


def test_a_stream_started_from_a_snapshot_continues_as_the_uninterrupted_run(sensor, hours, tmp_path):
    early = _cluster_batch(sensor, tmp_path / "early", str(hours["early"]), "--output_format", "parquet")
    early_ids = set(_regimes([hours["early"]]))
    assert sorted(map(_unversioned, early["records"]), key=lambda r: r["event_id"]) == sorted(
        (_unversioned(r) for r in hours["both"]["records"] if r["event_id"] in early_ids), key=lambda r: r["event_id"])
    resumed = _clustering(sensor, "resumed", "--snapshot_dir", early["snapshots"], "--init_snapshot", "current")
    assert resumed.start.events == early["totals"]["rtml/valid"]
    assert 0 < len(resumed.start.pending) < MINIBATCH  # the snapshot cut a mini-batch in two
    late_ids = set(_regimes([hours["late"]]))
    _replay([hours["late"]], resumed, early["snapshots"],
            [record for record in hours["both"]["records"] if record["event_id"] in late_ids],
            view=_unversioned)
    final, uninterrupted = _snapshots(early["snapshots"])[-1], _snapshots(hours["both"]["snapshots"])[-1]
    assert final.manifest["started_from"] == resumed.start.snapshot
    assert _state(final) == _state(uninterrupted)


# ---------------------------------------------------------------------------------------------
# Settings, refusals and mistakes


def _copy_of(model_dir: str) -> str:
    """Another version of the current feature model (a copy under another name); its name."""
    current = registry.load(model_dir)
    name = f"{current.version}-copy"
    shutil.copytree(current.path, pathlib.Path(model_dir) / "versions" / name, dirs_exist_ok=True)
    manifest = pathlib.Path(model_dir) / "versions" / name / registry.MANIFEST
    manifest.write_text(json.dumps(dict(current.manifest, version=name)))
    return name


def test_a_snapshot_gives_its_settings_unless_flags_change_them(sensor, hours):
    snapshot_dir = hours["both"]["snapshots"]
    latest = registry.load(snapshot_dir)
    resume = ["--spec", "sensor", "--model_dir", sensor["model_dir"], "--snapshot_dir", snapshot_dir,
              "--init_snapshot", "current"]
    kept = cluster.clustering_for(PipelineOptions(resume))
    assert (kept.minibatch_size, kept.start.model.k, kept.start.model.learning_rate) == (MINIBATCH, K, "inverse_count")
    assert kept.start.model.centers.tolist() == latest.manifest["centers"]
    assert (kept.start.events, kept.start.snapshot) == (latest.manifest["events"], latest.version)
    changed = cluster.clustering_for(PipelineOptions(resume + ["--learning_rate", "constant", "--eta", "0.05"]))
    assert (changed.start.model.learning_rate, changed.start.model.eta) == ("constant", 0.05)
    assert changed.start.model.counts.tolist() == latest.manifest["counts"]
    with pytest.raises(UserError, match=f"snapshot {latest.version} has k=3, not --k 4; drop --k"):
        cluster.clustering_for(PipelineOptions(resume + ["--k", "4"]))
    other = _copy_of(sensor["model_dir"])
    with pytest.raises(UserError, match=f"clusters the features of model {latest.manifest['feature_model_version']}, "
                                        f"not of model {other}; pass --model_version"):
        cluster.clustering_for(PipelineOptions(resume + ["--model_version", other]))


def test_stream_mode_is_refused_on_the_direct_runner_in_one_line(sensor, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["pipelines.cluster", *_flags(sensor), "--mode", "stream",
                                      "--snapshot_dir", str(tmp_path / "snapshots"),
                                      "--bootstrap_servers", "127.0.0.1:9", "--input_topic", "sensor",
                                      "--output_topic", "clusters", "--dead_letter_topic", "dead-letters",
                                      "--runner", "DirectRunner"])
    started = time.monotonic()
    with pytest.raises(SystemExit) as exit_status:
        cli.main(cluster.run)
    error = capsys.readouterr().err.strip().splitlines()
    assert exit_status.value.code == 2 and time.monotonic() - started < 30
    assert len(error) == 1 and "ClusterEvents/MiniBatchKMeans" in error[0] and "PrismRunner" in error[0], error


@pytest.mark.parametrize("change, message", [
    ({"--k": None}, "missing --k (the number of clusters)"),
    ({"--k": "0"}, "--k must be at least 1, not 0"),
    ({"--minibatch_size": "2"}, "--minibatch_size must be at least --k (3)"),
    ({"--learning_rate": "constant", "--eta": "0"}, "--eta must be in (0, 1], not 0.0"),
    ({"--learning_rate": "decayed", "--decay": "1.5"}, "--decay must be in (0, 1], not 1.5"),
    ({"--snapshot_every": "0"}, "--snapshot_every must be at least 1, not 0"),
    ({"--init_snapshot": "current"}, "--init_snapshot current: no snapshot in"),
    ({"--snapshot_dir": None}, "missing --snapshot_dir"),
])
def test_bad_settings_get_one_line(sensor, tmp_path, change, message):
    flags = dict(zip(*[iter(_flags(sensor, *_batch_flags(tmp_path, str(sensor["days"][0]))))] * 2), **change)
    argv = [item for flag, value in flags.items() if value is not None for item in (flag, value)]
    with pytest.raises(UserError) as error:
        cluster.run(argv)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


@pytest.mark.parametrize("runner", ["PrismRunner", pytest.param("FlinkRunner", marks=pytest.mark.extended)])
def test_stream_mode_runs_live_with_the_batch_runs_assignments(runner, sensor, batch_run, kafka_broker, tmp_path):
    """Both days produced to three partitions (in turn), stamped with event time; the live k-means assigns every
    valid event once, exactly as the bounded run did, and stops on SIGTERM with every offset committed. (A broken
    line stamped with the time it was produced, not the last event's, took its partition's watermark to the
    present: every event of the other partitions read after it was late, and the model diverged.) The offsets are
    checked after the drain: on Prism an idle stream's commit timer once did not fire (docs/design.md, "Flakes that
    did not come back"), and the drain commits what was written."""
    lines = [line for day in sensor["days"] for line in day.read_bytes().splitlines()]
    topics = make_topics(kafka_broker, "cluster", partitions=3)
    ends = produce(kafka_broker.bootstrap, topics[0], lines, [None] * len(lines),
                   partitions=[number % 3 for number in range(len(lines))], stamp_event_time=True)
    group = unique_name("cluster")
    expected = {r["event_id"]: (r["cluster"], r["distance"]) for r in batch_run["records"]}
    outputs = Outputs(kafka_broker.bootstrap, topics[1], topics[2])
    command = [sys.executable, "-m", "pipelines.cluster", *_flags(sensor), "--mode", "stream", "--runner",
               runner, "--snapshot_dir", str(tmp_path / "snapshots"), "--bootstrap_servers",
               kafka_broker.bootstrap, "--input_topic", topics[0], "--output_topic", topics[1],
               "--dead_letter_topic", topics[2], "--group_id", group]
    try:
        with StreamProcess(command) as clusterer:
            outputs.wait(lambda o: len(o.scored) >= len(expected), 240, "every event assigned", clusterer)
            code, took = clusterer.terminate()
            assert code == 0 and took < 30, clusterer.log()
        outputs.read(1.0)
    finally:
        outputs.close()
    assert committed(kafka_broker.bootstrap, group, topics[0], 3) == ends
    assert sorted(r["event_id"] for _, r in outputs.scored) == sorted(expected)  # each once
    assert {r["event_id"]: (r["cluster"], r["distance"]) for _, r in outputs.scored} == expected
    assert len(outputs.dead) == batch_run["totals"]["rtml/received"] - batch_run["totals"]["rtml/valid"]
