"""A Flink session cluster with its Python workers in processes of their own (``rtml flink-cluster``), as Flink on
Kubernetes runs them: batch and stream jobs sent to it with ``--flink_master``, a stream that runs on after the
command that sent it, stopped with a savepoint (``rtml jobs stop``) and resumed from it with a new model version.
"""
from __future__ import annotations

import datetime
import re
import shutil
import subprocess
import sys
from collections import Counter

import pytest

from models import registry
from pipelines import generate, jobs, score, train
from pipelines.flink_cluster import FlinkCluster
from pipelines.flink_rest import FlinkRest
from tests.conftest import publish_stand_in_model
from tests.kafka_helpers import ROOT, Outputs, entity_key, json_lines, make_topics, produce, unique_name
from transforms.errors import UserError

pytestmark = pytest.mark.flink


@pytest.fixture(scope="module")
def cluster():
    with FlinkCluster(taskmanagers=2) as running:
        yield running


def _rtml(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.rtml", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _bounded(model_dir, files: str, out, version: str, *flags: str) -> tuple[dict[str, float], Counter]:
    """A bounded run's scores by event id, and its dead letters' reasons."""
    score.run(["--spec", "fraud_entity", "--mode", "batch", "--input", files, "--model_dir",
               str(model_dir), "--output", str(out / "scored"), "--dead_letter", str(out / "dead"),
               "--model_version", version, *flags])
    return ({record["event_id"]: record["score"] for record in json_lines(out / "scored")},
            Counter(letter["error"] for letter in json_lines(out / "dead")))


def _job_id(sent: subprocess.CompletedProcess) -> str:
    assert sent.returncode == 0, sent.stderr
    return sent.stderr.split(" as job ")[1].split(";")[0]


def test_a_stream_on_the_cluster_outlives_its_command_and_resumes_from_a_savepoint_with_its_histories(
        cluster, kafka_broker, entity_model, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(entity_model, model_dir)  # (a version is published into it below)
    first_version = registry.load(str(model_dir)).version
    days = []
    for index, day in enumerate((datetime.date(2026, 4, 1), datetime.date(2026, 4, 2))):
        generate.generate("fraud", 1, tmp_path / "data", day, 700, 0.01, 21 + index, compress=False)
        days.append(tmp_path / "data" / f"dt={day}" / "events.jsonl")
    lines = [path.read_bytes().splitlines() for path in days]
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "cluster")
    stream = ["score", "--spec", "fraud_entity", "--mode", "stream", "--model_dir", str(model_dir),
              "--bootstrap_servers", bootstrap, "--input_topic", topics[0], "--output_topic", topics[1],
              "--dead_letter_topic", topics[2], "--group_id", unique_name("cluster"), *cluster.flags]
    outputs = Outputs(bootstrap, topics[1], topics[2])
    try:
        produce(bootstrap, topics[0], lines[0], list(map(entity_key, lines[0])), stamp_event_time=True)
        job_id = _job_id(_rtml(*stream))
        # The command has ended; the job scores on without it, until the watermark holds the day's last events.
        outputs.wait(lambda o: len(o.read().dead) >= 7 and len(o.scored) >= 600, 120, "the first day scored")
        while len(outputs.scored) < len(outputs.read(3.0).scored):
            pass
        stopped = _rtml("jobs", "stop", job_id, "--flink_master", cluster.master)
        assert stopped.returncode == 0, stopped.stderr
        before_stop = len(outputs.read(1.0).scored)

        new_version = publish_stand_in_model(model_dir, scale=50.0, spec_name="fraud_entity")
        produce(bootstrap, topics[0], lines[1], list(map(entity_key, lines[1])), stamp_event_time=True)
        job_id = _job_id(_rtml(*stream, "--savepoint_path", stopped.stdout.strip()))
        expected, both_days = {}, str(tmp_path / "data" / "*" / "*.jsonl")
        for version in (first_version, new_version):
            expected[version], reasons = _bounded(model_dir, both_days, tmp_path / version, version)
        outputs.wait(lambda o: len(o.read().scored) >= len(expected[new_version]) - 3, 120, "both days scored")
        outputs.read(5.0)  # (the last events wait for the watermark; nothing else comes)
        assert _rtml("jobs", "cancel", job_id, "--flink_master", cluster.master).returncode == 0
    finally:
        outputs.close()

    ids = Counter(record["event_id"] for _, record in outputs.scored)
    assert max(ids.values()) == 1, "an event was scored twice"
    assert Counter(letter["error"] for _, letter in outputs.dead) == reasons
    versions = [record["model_version"] for _, record in outputs.scored]
    assert versions == [first_version] * before_stop + [new_version] * (len(versions) - before_stop)
    # Scores equal a bounded run over both days with the version that scored them: no card's history restarted ...
    for _, record in outputs.scored:
        assert abs(record["score"] - expected[record["model_version"]][record["event_id"]]) <= 1e-6, record
    # ... where histories begun afresh at the resume would have given other scores (to 87 of 693 events in one run:
    # the stand-in version's score saturates for most cards).
    afresh, _ = _bounded(model_dir, str(days[1]), tmp_path / "afresh", new_version)
    after = [record for _, record in outputs.scored[before_stop:] if record["event_id"] in afresh]
    assert sum(abs(record["score"] - afresh[record["event_id"]]) > 1e-6 for record in after) > len(after) / 20


@pytest.mark.extended  # (for make test's time: one more path on the cluster)
def test_bounded_scoring_on_the_cluster_gives_the_direct_runners_records(cluster, entity_model, tmp_path):
    generate.generate("fraud", 1, tmp_path / "data", datetime.date(2026, 4, 1), 700, 0.01, 21, compress=False)
    files = str(tmp_path / "data" / "*" / "*.jsonl")
    version = registry.load(entity_model).version
    on_cluster = _bounded(entity_model, files, tmp_path / "cluster", version, *cluster.flags)
    assert on_cluster == _bounded(entity_model, files, tmp_path / "direct", version)


@pytest.mark.extended  # (for make test's time: one more path on the cluster)
def test_training_on_the_cluster_publishes_a_version_that_the_direct_runner_scores_with(cluster, tmp_path):
    """The fit runs in a Python worker of the cluster; the launcher reads only the published manifest."""
    generate.generate("fraud", 3, tmp_path / "data", datetime.date(2026, 3, 1), 1000, 0.01, 5, compress=False)
    files = str(tmp_path / "data" / "*" / "*.jsonl")
    trained = {where: train.run(["--spec", "fraud", "--input", files, "--model_dir", str(tmp_path / where),
                                 "--dead_letter", str(tmp_path / where / "dead"), *flags])
               for where, flags in (("cluster", cluster.flags), ("direct", []))}
    on_cluster, on_direct = (trained[where].manifest for where in ("cluster", "direct"))
    assert on_cluster["training"] == on_direct["training"]
    holdout = on_direct["metrics"]["holdout"]
    assert holdout["positives"] > 0 and on_cluster["metrics"]["holdout"] == pytest.approx(holdout, abs=1e-6)
    scores = {}
    for where, model in trained.items():
        score.run(["--spec", "fraud", "--mode", "batch", "--input", files, "--model_dir", str(tmp_path / where),
                   "--output", str(tmp_path / where / "scored"), "--dead_letter", str(tmp_path / where / "dead")])
        records = json_lines(tmp_path / where / "scored")
        assert {record["model_version"] for record in records} == {model.version}
        scores[where] = {record["event_id"]: record["score"] for record in records}
    assert scores["cluster"].keys() == scores["direct"].keys() and len(scores["direct"]) > 2900
    # tensorflow-transform's means and variances may differ in their last bits with the order that workers summed in
    apart = [i for i, s in scores["direct"].items() if abs(scores["cluster"][i] - s) > 1e-6]
    assert len(apart) <= len(scores["direct"]) / 1000, apart


def test_what_a_cluster_cannot_do_is_one_line(cluster, tmp_path):
    for action in ("stop", "cancel"):
        unknown = _rtml("jobs", action, "0" * 32, "--flink_master", cluster.master)
        assert unknown.returncode == 2 and unknown.stderr.strip() == (
            f"error: Flink at http://{cluster.master} knows no job {'0' * 32} (rtml jobs list shows its jobs)")
    with pytest.raises(UserError, match="no Flink cluster answers at http://127.0.0.1:1 "):
        jobs.run(["list", "--flink_master", "127.0.0.1:1"])
    stream = ["--spec", "fraud", "--mode", "stream", "--bootstrap_servers", "127.0.0.1:1", "--input_topic", "a",
              "--output_topic", "b", "--dead_letter_topic", "c", "--model_dir", str(tmp_path)]
    with pytest.raises(UserError, match=r"its Python workers cannot run in this process \(--environment_type LOOPBACK"):
        score.run([*stream, "--runner", "FlinkRunner", "--flink_master", cluster.master])
    with pytest.raises(UserError, match="--savepoint_path: only a stream on a Flink cluster"):
        score.run([*stream, "--runner", "PrismRunner", "--savepoint_path", str(tmp_path)])



def test_a_savepoint_that_is_not_there_is_flinks_reason_in_one_line(cluster, kafka_broker, entity_model, tmp_path):
    topics = make_topics(kafka_broker, "nosavepoint")
    missing = (tmp_path / "no-such-savepoint").as_uri()
    sent = _rtml("score", "--spec", "fraud_entity", "--mode", "stream", "--model_dir", entity_model,
                 "--bootstrap_servers", kafka_broker.bootstrap, "--input_topic", topics[0], "--output_topic", topics[1],
                 "--dead_letter_topic", topics[2], "--savepoint_path", missing, *cluster.flags)
    assert sent.returncode == 2
    assert "Really starting service" not in sent.stderr  # (Beam's note of its job server's start: not for a user)
    [error] = [line for line in sent.stderr.splitlines() if "rror" in line]
    master = re.escape(cluster.master)
    assert re.fullmatch(rf"error: the job rtml-\S+ \(\w{{32}}\) is FAILED on Flink at http://{master}: "
                        rf"java\.io\.FileNotFoundException: Cannot find checkpoint or savepoint file/directory "
                        rf"'{re.escape(missing)}' on file system 'file'\.", error), sent.stderr


# (a TaskManager killed restores from a checkpoint as the savepoint test does from a savepoint: extended for time)
@pytest.mark.parametrize("failure", [pytest.param("a TaskManager", marks=pytest.mark.extended), "the worker pool"])
def test_a_process_of_the_cluster_killed_mid_stream_loses_no_event_and_no_history(
        failure, cluster, kafka_broker, entity_model, tmp_path):
    """Flink restores the job from its last checkpoint (every 3 s here): read positions and keyed state together, so
    what was scored after it is scored again, with the same scores. A killed worker pool takes every task's Python
    workers with it; the cluster starts it again, as Kubernetes restarts a container."""
    generate.generate("fraud", 1, tmp_path / "data", datetime.date(2026, 4, 1), 700, 0.01, 21, compress=False)
    files = str(tmp_path / "data" / "*" / "*.jsonl")
    expected, reasons = _bounded(entity_model, files, tmp_path / "bounded", registry.load(entity_model).version)
    lines = (tmp_path / "data" / "dt=2026-04-01" / "events.jsonl").read_bytes().splitlines()
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "failover")
    outputs = Outputs(bootstrap, topics[1], topics[2])
    pool_starts = cluster.worker_pool_starts
    try:
        produce(bootstrap, topics[0], lines[:350], list(map(entity_key, lines[:350])), stamp_event_time=True)
        job_id = _job_id(_rtml("score", "--spec", "fraud_entity", "--mode", "stream", "--model_dir", entity_model,
                               "--bootstrap_servers", bootstrap, "--input_topic", topics[0], "--output_topic",
                               topics[1], "--dead_letter_topic", topics[2], "--group_id", unique_name("failover"),
                               "--checkpointing_interval", "3000", *cluster.flags))
        outputs.wait(lambda o: len(o.read().scored) >= 250, 120, "the first half scored")
        flink = FlinkRest(cluster.master)
        outputs.wait(lambda o: flink.call(f"jobs/{job_id}/checkpoints")["counts"]["completed"] >= 1, 60,
                     "a checkpoint")
        if failure == "a TaskManager":
            cluster.kill_taskmanager(1)
        else:
            cluster.kill_worker_pool()
        produce(bootstrap, topics[0], lines[350:], list(map(entity_key, lines[350:])), stamp_event_time=True)
        if failure == "a TaskManager":
            cluster.start_taskmanager(1)
        outputs.wait(lambda o: {r["event_id"] for _, r in o.read().scored} >= set(expected) - _last(expected, 3), 180,
                     "every event scored after the failover")
        assert _rtml("jobs", "cancel", job_id, "--flink_master", cluster.master).returncode == 0
    finally:
        outputs.close()
    failures = flink.call(f"jobs/{job_id}/exceptions")["exceptionHistory"]["entries"]
    assert failures, f"the job did not notice the end of {failure}"
    assert cluster.worker_pool_starts == pool_starts + (failure == "the worker pool")
    for _, record in outputs.scored:
        assert abs(record["score"] - expected[record["event_id"]]) <= 1e-6, record
    assert set(Counter(letter["error"] for _, letter in outputs.dead)) == set(reasons)


def _last(scores: dict[str, float], count: int) -> set[str]:
    """The ids of the last ``count`` events (by id, which follows event time): they may still wait for the
    watermark."""
    return set(sorted(scores)[-count:])
