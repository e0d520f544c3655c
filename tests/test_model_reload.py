"""Hot model reload: a running scorer switches to a newly published model version without a restart.

Two real fraud versions: ``old``, the session's model (14 days), and ``new``, trained here on two
small days, which scores the same events differently. Scores are checked against each version's
own batch-mode scores. The live test runs the stream scorer as a user does, on the DirectRunner and
on Prism, against Apache Kafka, and publishes versions while it runs.
"""
from __future__ import annotations

import collections
import datetime
import logging
import os
import pathlib
import shutil
import time

import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.test_pipeline import TestPipeline

from models import registry
from models.inference import VersionWatch
from pipelines import score
from tests.conftest import publish_stand_in_model, read_json_lines, stand_in_baseline
from tests.kafka_helpers import Outputs, make_topics, produce, read_topic, stream_scorer, unique_name
from transforms.errors import UserError
from transforms.events import EventParser
from transforms.spec import load_spec

SPEC = load_spec("fraud")
EVENTS = 120
POLL_S = 2


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
def versions(events, tmp_path_factory) -> dict:
    """A model directory holding ``old`` and ``new`` (current): stand-in fraud models that score every event
    differently, so each record shows which one scored it, each with a monitoring baseline of its own."""
    root = tmp_path_factory.mktemp("reload")
    sample = [orjson.loads(line) for line in events.read_bytes().splitlines()]
    old, new = (publish_stand_in_model(root / "model", scale=scale, baseline=stand_in_baseline(
        SPEC, sample, lambda event: event["amount"] / (event["amount"] + scale))) for scale in (100.0, 50.0))
    return {"dir": root / "model", "old": old, "new": new}


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


def _publish(model_dir: str, version: str) -> None:
    """Make ``version`` current the way training does: a new CURRENT file renamed into place."""
    staged = pathlib.Path(model_dir) / f".{registry.CURRENT}.new"
    staged.write_text(version + "\n")
    os.replace(staged, pathlib.Path(model_dir) / registry.CURRENT)


@pytest.mark.parametrize("runner", ["DirectRunner", "PrismRunner", pytest.param("FlinkRunner", marks=pytest.mark.extended)])
def test_a_running_scorer_switches_versions_mid_stream_scoring_each_event_once(runner, versions, events, batch_scores,
                                                                                kafka_broker, tmp_path):
    """On a streaming runner, with monitoring too: each version's events are counted in windows compared with its own
    training baseline, not the first version's (the DirectRunner cannot monitor a stream)."""
    old, new = versions["old"], versions["new"]
    # every event's score tells which version scored it, not only the record's model_version
    assert all(abs(batch_scores[old][e] - batch_scores[new][e]) > 1e-6 for e in batch_scores[old])
    model_dir = _copy(versions, tmp_path, current="old")
    lines = events.read_bytes().splitlines()
    topics = make_topics(kafka_broker, "reload")
    monitoring = [] if runner == "DirectRunner" else ["--monitoring_topic", unique_name("reload-monitoring"),
                                                      "--window_s", "3600"]
    if monitoring:
        kafka_broker.create_topic(monitoring[1], 1)
    outputs = Outputs(kafka_broker.bootstrap, topics[1], topics[2])
    expected = {}
    try:
        with stream_scorer(model_dir, kafka_broker.bootstrap, topics, unique_name("reload"), "--runner", runner,
                           "--model_poll_seconds", str(POLL_S), *monitoring) as scorer:
            for number, version in enumerate((old, new, old)):  # a new version, then a rollback
                if number:
                    _publish(model_dir, version)
                    time.sleep(POLL_S + 1)  # the scorer reads CURRENT at its next batch after POLL_S
                now = datetime.datetime.now(datetime.timezone.utc).isoformat()  # (the windows stay open till the end)
                part = [orjson.dumps(orjson.loads(line) | {"event_time": now})
                        for line in lines[number * EVENTS // 3:(number + 1) * EVENTS // 3]]
                produce(kafka_broker.bootstrap, topics[0], part, stamp_event_time=True)
                expected |= {EventParser(SPEC).parse(line)[0]["event_id"]: version for line in part}
                outputs.wait(lambda o: len(o.scored) >= len(expected), 120, f"events scored by {version}", scorer)
            code, _ = scorer.terminate()
            assert code == 0, scorer.log()
    finally:
        outputs.close()
    assert sorted(record["event_id"] for _, record in outputs.scored) == sorted(expected)  # each once
    for _, record in outputs.scored:
        version = expected[record["event_id"]]
        assert record["model_version"] == version, record
        assert abs(record["score"] - batch_scores[version][record["event_id"]]) <= 1e-6, record
    if monitoring:
        windows = [record for _, record in read_topic(kafka_broker.bootstrap, monitoring[1]) if record["kind"] == "window"]
        counted = collections.Counter()
        for record in windows:
            counted[record["baseline_version"]] += record["events"]
        assert counted == collections.Counter(expected.values()), windows


def _alerts(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("model alert")]


@pytest.mark.parametrize("problem", ["tampered", "other spec", "unsigned"])
def test_a_bad_new_version_is_refused_with_an_alert_and_the_old_one_keeps_serving(problem, versions, tmp_path,
                                                                                  caplog, monkeypatch):
    model_dir = _copy(versions, tmp_path, current="new")
    spec, signing_key_env = SPEC, None
    if problem == "unsigned":  # the stream verified its start version with a key; the new one is not signed
        monkeypatch.setenv("RTML_KEY", "k")
        signing_key_env, reason = "RTML_KEY", f"model {versions['new']} in {model_dir}: not signed"
    elif problem == "tampered":
        reason = f"model {versions['new']} in {model_dir}: model.onnx does not match its sha256"
        onnx_file = pathlib.Path(model_dir) / "versions" / versions["new"] / "model.onnx"
        data = bytearray(onnx_file.read_bytes())
        data[-10] ^= 1
        onnx_file.write_bytes(bytes(data))
    else:  # the scorer's spec has other features than the one the new version was trained for
        other = tmp_path / "fraud_v2.yaml"
        other.write_text(pathlib.Path(SPEC.source).read_text().replace("top_k: 30", "top_k: 31"))
        spec, reason = load_spec(str(other)), f"model {versions['new']} was trained on spec fraud with other fields"

    watch = VersionWatch(model_dir, spec, interval_s=0, signing_key_env=signing_key_env)
    with caplog.at_level(logging.ERROR, logger="models.inference"):
        assert [watch.newer(versions["old"]) for _ in range(5)] == [None] * 5
    alerts = _alerts(caplog)
    assert len(alerts) == 1  # checked 5 times, reported once
    assert reason in alerts[0] and alerts[0].endswith(f"model {versions['old']} keeps serving")


def test_a_good_new_version_is_verified_and_taken_and_checks_wait_for_the_interval(versions, tmp_path, caplog):
    model_dir = _copy(versions, tmp_path, current="old")
    watch = VersionWatch(model_dir, SPEC, interval_s=3600)
    assert watch.newer(versions["old"]) is None  # the first check: CURRENT names the serving version
    _publish(model_dir, versions["new"])
    assert watch.newer(versions["old"]) is None  # not read again within the interval
    watch = VersionWatch(model_dir, SPEC, interval_s=0)
    with caplog.at_level(logging.ERROR, logger="models.inference"):
        assert watch.newer(versions["old"]).version == versions["new"]
    assert not _alerts(caplog)


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
    with pytest.raises(UserError, match="--model_poll_seconds is for --mode stream"):
        score.run(["--spec", "fraud", "--input", str(events), "--model_dir", model_dir, "--model_poll_seconds", "1",
                   "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead_letter")])
    score.run(["--spec", "fraud", "--input", str(events), "--model_dir", model_dir,
               "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead_letter")],
              test_pipeline=_PublishesWhenRun(model_dir, versions["new"]))
    assert registry.current(model_dir)[0] == versions["new"]
    records = read_json_lines(tmp_path / "scored")
    assert {r["event_id"]: (r["model_version"], r["score"]) for r in records} == {
        event_id: (versions["old"], value) for event_id, value in batch_scores[versions["old"]].items()}


def test_reload_flags():
    def reload_s(*argv: str) -> float:
        return score.model_reload_seconds(PipelineOptions(list(argv)))

    assert reload_s() == 60
    assert reload_s("--runner", "PrismRunner", "--model_poll_seconds", "5") == 5
    assert reload_s("--model_poll_seconds", "0") == 0
    assert reload_s("--model_version", "20261121T150102Z-3fa9") == 0  # pinned
    with pytest.raises(UserError, match="give one of them"):
        reload_s("--model_version", "20261121T150102Z-3fa9", "--model_poll_seconds", "5")
    for too_small in ("-1", "0.5"):
        with pytest.raises(UserError, match="must be 0 .* or at least 2"):
            reload_s("--model_poll_seconds", too_small)
