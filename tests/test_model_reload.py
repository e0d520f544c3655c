"""Hot model reload: a running scorer switches model versions (RunInference's model-update side input).

Two real fraud versions: ``old``, the session's model (14 days), and ``new``, trained here on two
small days, which scores the same events differently. Scores are checked against each version's
own batch-mode scores.

What the local runners can run (measured with Beam 2.77):
- The live DirectRunner (FnApiRunner) runs a stage that reads a side input only once that side
  input is complete; ``WatchModelVersions`` polls forever, so next to a Kafka read nothing was
  scored at all. The stream scorer therefore keeps its start version there (a note, or a one-line
  error when --model_poll_seconds is asked for).
- The BundleBasedDirectRunner makes a side input in the global window available only when its
  watermark passes the end of that window, every pane accumulated: RunInference's singleton read
  then fails on two versions. It does update side inputs per event-time window while a TestStream
  runs, so the switching test sends versions in fixed windows. What switches is the code a
  streaming runner runs (RunInference reloading through the handler's ``update_model_path``, each
  batch scored and tagged by one version); there the versions come in the global window with a
  processing-time trigger, from ``WatchModelVersions``, as from Beam's ``WatchFilePattern``.
"""
from __future__ import annotations

import datetime
import logging
import pathlib
import shutil
from collections import Counter

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import window

from models import registry
from models.inference import MODEL_METRICS_NAMESPACE, ScoreEvents, WatchModelVersions, model_metadata
from pipelines import generate, score, train
from tests.conftest import read_json_lines
from transforms.errors import UserError
from transforms.events import EventBatch, EventParser
from transforms.spec import Spec, load_spec

SPEC = load_spec("fraud")
EVENTS, BATCH = 120, 20
WINDOW_S = 10


@pytest.fixture(scope="module")
def versions(fraud_model, tmp_path_factory) -> dict:
    """A model directory holding ``old`` (the session's fraud model) and ``new`` (current; trained here)."""
    root = tmp_path_factory.mktemp("reload")
    shutil.copytree(fraud_model[0], root / "model")
    generate.generate("fraud", 2, root / "data", datetime.date(2026, 3, 1), 500, 0.0, 8, compress=False)
    new = train.run(["--spec", "fraud", "--input", str(root / "data" / "*" / "*.jsonl"),
                     "--model_dir", str(root / "model")])
    return {"dir": root / "model", "old": fraud_model[1].version, "new": new.version}


@pytest.fixture(scope="module")
def events(fraud_archive, tmp_path_factory) -> pathlib.Path:
    """An archive of the first valid events of a later day."""
    parser = EventParser(SPEC)
    day = pathlib.Path(fraud_archive["root"]) / "later" / pathlib.Path(fraud_archive["later_days"][0]["file"])
    lines = [line for line in day.read_bytes().splitlines() if not isinstance(parser.parse(line), str)][:EVENTS]
    path = tmp_path_factory.mktemp("reload_events") / "events.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


@pytest.fixture(scope="module")
def batch_scores(versions, events, tmp_path_factory) -> dict[str, dict[str, float]]:
    """Each version's scores of ``events`` in batch mode: {version: {event_id: score}}."""
    scores = {}
    for name in ("old", "new"):
        out = tmp_path_factory.mktemp(f"reload_batch_{name}")
        score.run(["--spec", "fraud", "--input", str(events), "--model_dir", str(versions["dir"]),
                   "--model_version", versions[name], "--output", str(out / "scored"),
                   "--dead_letter", str(out / "dead_letter")])
        records = read_json_lines(out / "scored")
        assert {r["model_version"] for r in records} == {versions[name]}
        scores[versions[name]] = {r["event_id"]: r["score"] for r in records}
    return scores


def _copy(versions: dict, tmp_path: pathlib.Path, current: str) -> str:
    """A copy of the model directory with ``versions[current]`` as its CURRENT version."""
    model_dir = tmp_path / "model"
    shutil.copytree(versions["dir"], model_dir)
    (model_dir / registry.CURRENT).write_text(versions[current] + "\n")
    return str(model_dir)


def _batches(path: pathlib.Path) -> list[EventBatch]:
    parsed = [EventParser(SPEC).parse(line) for line in path.read_bytes().splitlines()]
    return [EventBatch([event for event, _ in parsed[i:i + BATCH]], [time for _, time in parsed[i:i + BATCH]])
            for i in range(0, len(parsed), BATCH)]


def _scored_once_each(expected: dict[str, tuple[str, float]]):
    """A matcher: every event scored exactly once, by the expected version, with that version's batch score."""
    def check(batches_of_records):
        records = [record for records in batches_of_records for record in records]
        assert Counter(r["event_id"] for r in records) == Counter(expected.keys())
        for record in records:
            version, expected_score = expected[record["event_id"]]
            assert record["model_version"] == version, (record, version)
            assert abs(record["score"] - expected_score) <= 1e-6, (record, expected_score)
    return check


def test_a_running_scorer_switches_versions_mid_stream_scoring_each_event_once(versions, events, batch_scores):
    old, new = (registry.load(str(versions["dir"]), versions[name]) for name in ("old", "new"))
    # every event's score tells which version scored it, not only the record's model_version
    old_scores, new_scores = batch_scores[old.version], batch_scores[new.version]
    assert all(abs(old_scores[event_id] - new_scores[event_id]) > 1e-6 for event_id in old_scores)
    batches = _batches(events)
    serving = [old, new, old]  # one version per window: a new version, then a rollback
    stream = TestStream(output_tags={"batches", "models"})
    expected = {}
    for number, model in enumerate(serving):
        start = number * WINDOW_S
        in_window = batches[2 * number:2 * number + 2]
        stream = (stream
                  .add_elements([window.TimestampedValue(model_metadata(model), start)], tag="models")
                  .add_elements([window.TimestampedValue(b, start + 1 + i) for i, b in enumerate(in_window)],
                                tag="batches")
                  .advance_watermark_to(start + WINDOW_S, tag="models")
                  .advance_watermark_to(start + WINDOW_S, tag="batches"))
        expected |= {event["event_id"]: (model.version, batch_scores[model.version][event["event_id"]])
                     for batch in in_window for event in batch.events}
    assert len(expected) == EVENTS
    stream = stream.advance_watermark_to_infinity(tag="models").advance_watermark_to_infinity(tag="batches")

    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as pipeline:
        inputs = pipeline | stream
        updates = inputs["models"] | "ModelsInWindows" >> beam.WindowInto(window.FixedWindows(WINDOW_S))
        scored = (inputs["batches"]
                  | "BatchesInWindows" >> beam.WindowInto(window.FixedWindows(WINDOW_S))
                  | ScoreEvents(SPEC, old, str(versions["dir"]), model_updates=updates))
        assert_that(scored, _scored_once_each(expected))


def _watch(model_dir: str, spec: Spec, start: registry.ModelVersion, expected: list) -> int:
    """Runs WatchModelVersions for 1 s (a poll every 0.2 s), checks what it emits; returns the refused counter."""
    pipeline = TestPipeline()
    updates = pipeline | WatchModelVersions(model_dir, spec, start, interval_s=0.2, duration_s=1.0)
    assert_that(updates, equal_to(expected))
    result = pipeline.run()
    refused = result.metrics().query(MetricsFilter().with_namespace(MODEL_METRICS_NAMESPACE).with_name("refused"))
    return sum(counter.committed for counter in refused["counters"])


def _alerts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("model alert")]


@pytest.mark.parametrize("problem", ["tampered", "other spec"])
def test_a_bad_new_version_is_refused_with_an_alert_and_the_old_one_keeps_serving(problem, versions, tmp_path,
                                                                                  caplog):
    model_dir = _copy(versions, tmp_path, current="new")
    start = registry.load(model_dir, versions["old"])
    if problem == "tampered":
        spec, reason = SPEC, f"model {versions['new']} in {model_dir}: model.onnx does not match its sha256"
        onnx_file = pathlib.Path(model_dir) / "versions" / versions["new"] / "model.onnx"
        data = bytearray(onnx_file.read_bytes())
        data[-10] ^= 1
        onnx_file.write_bytes(bytes(data))
    else:  # the scorer's spec has other features than the one the new version was trained for
        other = tmp_path / "fraud_v2.yaml"
        other.write_text(pathlib.Path(SPEC.source).read_text().replace("top_k: 30", "top_k: 31"))
        spec, reason = load_spec(str(other)), f"model {versions['new']} was trained on spec fraud with other fields"

    with caplog.at_level(logging.ERROR, logger="models.inference"):
        refused = _watch(model_dir, spec, start, [model_metadata(start)])
    alerts = _alerts(caplog)
    assert refused == 1 and len(alerts) == 1  # polled 5 times, reported once
    assert reason in alerts[0] and alerts[0].endswith(f"model {versions['old']} keeps serving")


def test_a_good_new_version_is_verified_and_taken(versions, tmp_path, caplog):
    model_dir = _copy(versions, tmp_path, current="new")
    with caplog.at_level(logging.ERROR, logger="models.inference"):
        refused = _watch(model_dir, SPEC, registry.load(model_dir, versions["old"]),
                         [model_metadata(registry.load(model_dir, versions["new"]))])
    assert refused == 0 and not _alerts(caplog)


class _PublishesWhenRun(TestPipeline):
    """A pipeline that makes another version current when it starts running: published during the run."""

    def __init__(self, model_dir: str, version: str):
        super().__init__()
        self._model_dir, self._version = model_dir, version

    def run(self, test_runner_api=True):
        (pathlib.Path(self._model_dir) / registry.CURRENT).write_text(self._version + "\n")
        return super().run(test_runner_api)


def test_bounded_scoring_keeps_the_version_it_started_with(versions, events, batch_scores, tmp_path):
    model_dir = _copy(versions, tmp_path, current="old")
    score.run(["--spec", "fraud", "--input", str(events), "--model_dir", model_dir, "--model_poll_seconds", "1",
               "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead_letter")],
              test_pipeline=_PublishesWhenRun(model_dir, versions["new"]))
    assert registry.current_version(model_dir) == versions["new"]
    records = read_json_lines(tmp_path / "scored")
    assert {r["event_id"]: (r["model_version"], r["score"]) for r in records} == {
        event_id: (versions["old"], value) for event_id, value in batch_scores[versions["old"]].items()}


def test_hot_reload_runs_on_streaming_runners_and_the_direct_runner_keeps_its_start_version(capsys):
    def reload_s(*argv: str) -> float:
        return score.model_reload_seconds(PipelineOptions(list(argv)))

    assert reload_s("--runner", "FlinkRunner") == 60
    assert reload_s("--runner", "DataflowRunner", "--model_poll_seconds", "5") == 5
    assert reload_s("--runner", "DataflowRunner", "--model_poll_seconds", "0") == 0
    assert reload_s("--runner", "DataflowRunner", "--model_version", "20261121T150102Z-3fa9") == 0  # pinned
    capsys.readouterr()
    assert reload_s() == 0
    assert capsys.readouterr().err == ("note: hot model reload needs a streaming runner (--runner DataflowRunner, "
                                       "FlinkRunner or PrismRunner); the DirectRunner keeps the version it starts "
                                       "with\n")
    with pytest.raises(UserError, match="^--model_poll_seconds: hot model reload needs a streaming runner"):
        reload_s("--model_poll_seconds", "5")
    with pytest.raises(UserError, match="give one of them"):
        reload_s("--runner", "FlinkRunner", "--model_version", "20261121T150102Z-3fa9", "--model_poll_seconds", "5")
    for too_small in ("-1", "0.5"):
        with pytest.raises(UserError, match="must be 0 .* or at least 2"):
            reload_s("--runner", "FlinkRunner", "--model_poll_seconds", too_small)
