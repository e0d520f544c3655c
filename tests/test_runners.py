"""The pipelines on other runners, without any service: Dataflow translation (``--dry_run``) and the
bounded score pipeline end to end through PortableRunner against Beam's local job service.

Dataflow's ``--dry_run=True`` (it takes a value) translates offline, provided the temp/staging
location names a valid bucket (3+ characters): with an invalid one, Beam tries to create a default
bucket over the network (and retries for 120 s). It stops before staging, so the job it returns has
its type, steps and pipeline proto but no environment: the tests build that (worker pools,
autoscaling, experiments) with Beam's own ``apiclient.Environment``, offline, as the submission
would. The dry run's result has no metrics, so the pipelines' counter summary is replaced by a
sentinel that captures the result.
"""
import contextlib
import json
import os
import re
import pathlib
import socket
import subprocess
import sys
import time

import apache_beam as beam
import pytest
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import DebugOptions, DirectOptions, PipelineOptions
from apache_beam.runners.portability import prism_runner
from apache_beam.transforms.core import RestrictionProvider

from pipelines import artifacts, cli, generate, runners, score, serving, train
from transforms import ordering
from transforms.events import METRICS_NAMESPACE
from tests.conftest import publish_stand_in_model

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATAFLOW = ["--runner", "DataflowRunner", "--dry_run=True", "--project", "p-project", "--region", "us-central1",
            "--temp_location", "gs://rtml-bucket/tmp"]


class Translated(Exception):
    """Raised where a pipeline would read its counters: the dry run's result is ``args[0]``."""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Generated fraud events (3 days x 250, 4% broken) and stand-in models for fraud and fraud_entity: what
    a runner translates or runs does not depend on what a model learned."""
    root = tmp_path_factory.mktemp("runners")
    assert generate.main(["--spec", "fraud", "--days", "3", "--events_per_day", "250", "--broken_share", "0.04",
                          "--out", str(root / "data")]) == 0
    publish_stand_in_model(root / "model")
    publish_stand_in_model(root / "entity_model", spec_name="fraud_entity")
    manifest = json.loads((root / "data" / generate.MANIFEST_NAME).read_text())
    return root, manifest


def _translate(monkeypatch, run, argv):
    def capture(result):
        raise Translated(result)

    monkeypatch.setattr(cli, "counters", capture)
    # the translated jobs name an unreachable broker; listing its topics would wait out a timeout for nothing
    monkeypatch.setattr(serving, "check_topics", lambda *args: None)
    with pytest.raises(Translated) as caught:
        run(argv)
    return caught.value.args[0].job


def _environment(job):
    """The job's Environment as submitting it would build it (that step stages files, so a dry run skips it)."""
    from apache_beam.runners.dataflow.internal import apiclient

    return apiclient.Environment(packages=[], options=job.options, environment_version="8",
                                 proto_pipeline_staged_url="gs://rtml-bucket/staging/pipeline.pb",
                                 proto_pipeline=job.proto_pipeline, pipeline_proto_hash="0").proto


def _step_names(job) -> set[str]:
    return {t.unique_name.split("/")[0] for t in job.proto_pipeline.components.transforms.values()}


def test_score_batch_translates_for_dataflow(monkeypatch, trained, tmp_path):
    root, _ = trained
    job = _translate(monkeypatch, score.run, [
        "--spec", "fraud", "--input", str(root / "data" / "*" / "*.jsonl"), "--model_dir", str(root / "model"),
        "--output", "gs://rtml-bucket/scored", "--dead_letter", "gs://rtml-bucket/dead_letter", *DATAFLOW])
    assert job.proto.type_.name == "JOB_TYPE_BATCH"
    assert {"ReadEvents", "ScoreRaw", "WriteScored", "WriteDeadLetters"} <= _step_names(job)
    [pool] = _environment(job).worker_pools
    assert pool.autoscaling_settings.max_num_workers == 0  # no streaming preset in batch


def test_train_translates_for_dataflow(monkeypatch, trained, tmp_path):
    root, _ = trained
    job = _translate(monkeypatch, train.run, [
        "--spec", "fraud", "--input", str(root / "data" / "*" / "*.jsonl"), "--model_dir", str(tmp_path / "model"),
        *DATAFLOW])
    assert job.proto.type_.name == "JOB_TYPE_BATCH"
    assert {"ReadEvents", "ParseAndEnrich", "AnalyzeFeatures", "FitAndPublish"} <= _step_names(job)


def test_score_stream_translates_for_dataflow_with_streaming_presets(monkeypatch, trained):
    root, _ = trained
    job = _translate(monkeypatch, score.run, [
        "--spec", "fraud", "--mode", "stream", "--bootstrap_servers", "broker.internal:9092",
        "--input_topic", "events", "--output_topic", "scored", "--dead_letter_topic", "dead-letters",
        "--model_dir", str(root / "model"), *DATAFLOW])
    assert job.proto.type_.name == "JOB_TYPE_STREAMING"
    assert {"ReadEvents", "ScoreRaw", "WriteScored", "WriteDeadLetters"} <= _step_names(job)
    environment = _environment(job)
    [pool] = environment.worker_pools
    assert pool.autoscaling_settings.algorithm.name == "AUTOSCALING_ALGORITHM_BASIC"  # THROUGHPUT_BASED
    assert pool.autoscaling_settings.max_num_workers == 20
    assert {"enable_streaming_engine", "enable_windmill_service"} <= set(environment.experiments)


def test_entity_feature_stream_translates_for_dataflow(monkeypatch, trained):
    """Keyed state and event-time timers (per-entity features) translate into a Dataflow streaming job."""
    root, _ = trained
    model_dir = str(root / "entity_model")
    job = _translate(monkeypatch, score.run, [
        "--spec", "fraud_entity", "--mode", "stream", "--bootstrap_servers", "broker.internal:9092",
        "--input_topic", "events", "--output_topic", "scored", "--dead_letter_topic", "dead-letters",
        "--model_dir", model_dir, *DATAFLOW])
    assert job.proto.type_.name == "JOB_TYPE_STREAMING"
    stateful = [t for t in job.proto_pipeline.components.transforms.values()
                if t.unique_name.endswith("EntityHistory/InEventTimeOrder")]
    assert stateful and stateful[0].spec.urn == "beam:transform:pardo:v1"
    from apache_beam.portability.api import beam_runner_api_pb2

    pardo = beam_runner_api_pb2.ParDoPayload.FromString(stateful[0].spec.payload)
    assert set(pardo.state_specs) == {"arrivals", "pending", "log"}  # per shard (transforms/ordering.py)
    assert set(pardo.timer_family_specs) == {"ts-release", "ts-end"}


def test_presets_fill_only_what_the_user_left_unset(monkeypatch):
    monkeypatch.delenv("JDK_JAVA_OPTIONS", raising=False)
    options = PipelineOptions(["--runner", "DataflowRunner", "--max_num_workers", "5"])
    assert runners.apply_runner_presets(options, streaming=True) == {
        "enable_streaming_engine": True, "autoscaling_algorithm": "THROUGHPUT_BASED"}
    assert options.view_as(runners.WorkerOptions).max_num_workers == 5
    assert runners.apply_runner_presets(PipelineOptions(["--runner", "DataflowRunner"])) == {}  # batch
    embedded_stream = runners.apply_runner_presets(PipelineOptions(["--runner=FlinkRunner", "--streaming"]))
    checkpoints = embedded_stream.pop("state_backend_storage_path")
    assert embedded_stream == {
        "flink_master": "[local]", "flink_job_server_jar": str(artifacts.flink_job_server_jar()),
        "parallelism": os.cpu_count(), "environment_type": "LOOPBACK", "state_shards": 2 * os.cpu_count(),
        "checkpointing_interval": 60000, "max_bundle_time_mills": 50, "state_backend": "filesystem"}
    assert checkpoints.startswith("file:///") and pathlib.Path(checkpoints[len("file://"):]).is_dir()
    assert os.environ["JDK_JAVA_OPTIONS"] == runners.EMBEDDED_FLINK_JVM_OPTIONS  # the embedded Flink's JVM
    monkeypatch.setenv("JDK_JAVA_OPTIONS", "-Xmx2g")
    runners.apply_runner_presets(PipelineOptions(["--runner=FlinkRunner"]))
    assert os.environ["JDK_JAVA_OPTIONS"] == "-Xmx2g"  # the user's own stand
    assert runners.apply_runner_presets(PipelineOptions(
        ["--runner=FlinkRunner", "--flink_master=flink.internal:8081", "--parallelism=8",
         "--sdk_container_image=europe-docker.pkg.dev/p/rtml/score_stream:v1"])) == {
        "flink_job_server_jar": str(artifacts.flink_job_server_jar()),
        "environment_type": "DOCKER", "environment_config": "europe-docker.pkg.dev/p/rtml/score_stream:v1",
        "state_shards": 16}
    cluster_stream = runners.apply_runner_presets(
        PipelineOptions(["--runner=FlinkRunner", "--flink_master=flink.internal:8081"]), streaming=True)
    assert re.fullmatch(r"rtml-\d{8}-\d{6}-[0-9a-f]{6}", cluster_stream["job_name"])  # (how the cluster's job is found)
    assert "state_backend" not in cluster_stream  # (the cluster's own)
    # given on the command line, even at Beam's default: the user's choice stands
    assert runners.apply_runner_presets(PipelineOptions(["--runner=FlinkRunner", "--flink_master=localhost:8081",
                                                         "--job_endpoint=localhost:8099"])) == {
        "parallelism": os.cpu_count(), "environment_type": "LOOPBACK", "state_shards": 2 * os.cpu_count()}
    assert runners.apply_runner_presets(PipelineOptions(["--runner=PrismRunner", "--prism_location=/opt/prism",
                                                         "--state_shards=3"])) == {"environment_type": "LOOPBACK"}
    assert runners.apply_runner_presets(PipelineOptions(["--runner=PrismRunner"])) == {
        "prism_location": str(artifacts.prism_binary()), "environment_type": "LOOPBACK", "state_shards": 1}
    assert runners.live_state(PipelineOptions(["--runner=DataflowRunner"])) == ordering.LiveState()
    # a stream on Prism: no runner-made splits, besides the user's own experiments
    options = PipelineOptions(["--runner=PrismRunner", "--experiments=use_runner_v2"])
    assert runners.apply_runner_presets(options, streaming=True)["experiments"] == runners.PRISM_NO_SPLITS
    assert options.view_as(DebugOptions).experiments == ["use_runner_v2", runners.PRISM_NO_SPLITS]
    assert runners.apply_runner_presets(PipelineOptions([])) == {}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def job_service():
    port = _free_port()
    process = subprocess.Popen([sys.executable, "-m", "apache_beam.runners.portability.local_job_service_main",
                                "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"local job service did not start: {process.stderr.read().decode()[-500:]}")
        time.sleep(0.2)
    yield f"localhost:{port}"
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()


def _lines(pattern_dir: pathlib.Path, prefix: str) -> int:
    return sum(len(path.read_bytes().splitlines()) for path in pattern_dir.glob(f"{prefix}-*"))


def test_checkpoint_folders_of_streams_killed_before_their_exit_are_removed_by_the_next(monkeypatch, tmp_path):
    monkeypatch.setattr(runners.tempfile, "tempdir", str(tmp_path))
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    killed = tmp_path / f"rtml-flink-checkpoints-{int(ended.stdout)}-abc"  # (its process is gone)
    running = tmp_path / f"rtml-flink-checkpoints-{os.getppid()}-def"
    for folder in (killed, running):
        (folder / "job" / "chk-3").mkdir(parents=True)
    ours = runners.apply_runner_presets(PipelineOptions(["--runner=FlinkRunner", "--streaming"]))
    assert not killed.exists() and running.exists()
    assert pathlib.Path(ours["state_backend_storage_path"][len("file://"):]).parent == tmp_path


def test_a_large_archive_on_the_direct_runner_is_spread_over_the_cores(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    large = runners.SPREAD_MIN_BYTES

    def spread(argv, files, input_bytes):
        options = PipelineOptions(argv)
        workers = runners.spread_over_cores(options, files, input_bytes)
        direct = options.view_as(DirectOptions)
        return workers, direct.direct_running_mode, direct.direct_num_workers

    assert spread([], 30, large) == (4, "multi_processing", 4)
    assert spread([], 3, large) == (3, "multi_processing", 3)  # a worker process per file at most
    assert spread([], 30, large - 1)[:2] == (1, "in_memory")
    assert spread([], 1, 10 * large)[:2] == (1, "in_memory")
    assert spread(["--direct_num_workers", "1"], 30, large)[:2] == (1, "in_memory")  # the user's flags win
    assert spread(["--direct_running_mode", "multi_threading"], 30, large)[:2] == (1, "multi_threading")
    assert spread(["--direct_running_mode", "multi_processing", "--direct_num_workers", "2"], 1, 0)[0] == 2
    assert spread(["--runner", "FlinkRunner"], 30, large)[0] == 1
    assert [runners.model_threads(workers) for workers in (1, 2, 4, 8)] == [0, 2, 1, 1]


def test_the_direct_runner_never_hands_a_pipeline_to_prism(monkeypatch, trained, tmp_path):
    """Beam's DirectRunner would (downloading Prism when it has none); the project's runs on Beam's local engines."""
    handed = []

    def prism_run(runner, pipeline, options):
        handed.append(pipeline)
        raise RuntimeError("Prism is not what --runner DirectRunner asked for")  # then Beam falls back

    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", prism_run)
    root, manifest = trained
    totals = score.run(["--spec", "fraud", "--input", str(root / "data" / "*" / "*.jsonl"),
                        "--model_dir", str(root / "model"), "--output", str(tmp_path / "scored"),
                        "--dead_letter", str(tmp_path / "dead_letter"), "--runner", "DirectRunner"])
    assert handed == [] and totals["rtml/received"] == sum(day["lines"] for day in manifest["days"])


def test_score_batch_end_to_end_on_portable_runner(trained, job_service, tmp_path):
    root, manifest = trained
    days = manifest["days"]
    totals = score.run(["--spec", "fraud", "--input", str(root / "data" / "*" / "*.jsonl"),
                        "--model_dir", str(root / "model"), "--output", str(tmp_path / "scored"),
                        "--dead_letter", str(tmp_path / "dead_letter"),
                        "--runner", "PortableRunner", "--job_endpoint", job_service,
                        "--environment_type", "LOOPBACK"])
    lines = sum(day["lines"] for day in days)
    valid = sum(day["valid"] for day in days)
    assert lines == 750 and 0 < lines - valid < 50
    assert _lines(tmp_path / "scored", "scored") == valid
    assert _lines(tmp_path / "dead_letter", "dead_letter") == lines - valid
    assert totals.get("rtml/received") == lines and totals.get("rtml/scored") == valid


def test_a_kafka_secret_from_the_environment_is_nowhere_in_the_translated_job(monkeypatch, trained, tmp_path):
    """--kafka_secret KEY=env:NAME: the job (graph, options) holds the variable's name, never its value."""
    root, _ = trained
    secret = "S3cret-in-env-" + os.urandom(8).hex()
    monkeypatch.setenv("RTML_KAFKA_PASSWORD", secret)
    (tmp_path / "client.properties").write_text("# settings\nsecurity.protocol=SASL_PLAINTEXT\n"
                                                "sasl.mechanism=PLAIN\nsasl.username=scorer\n")
    job = _translate(monkeypatch, score.run, [
        "--spec", "fraud", "--mode", "stream", "--bootstrap_servers", "broker.internal:9092",
        "--input_topic", "events", "--output_topic", "scored", "--dead_letter_topic", "dead-letters",
        "--model_dir", str(root / "model"), "--kafka_config_file", str(tmp_path / "client.properties"),
        "--kafka_secret", "sasl.password=env:RTML_KAFKA_PASSWORD", *DATAFLOW])
    shipped = (job.proto_pipeline.SerializeToString() + _pickled_dofns(job.proto_pipeline)
               + str(job.options.get_all_options()).encode())
    assert secret.encode() not in shipped
    assert b"RTML_KAFKA_PASSWORD" in shipped and b"scorer" in shipped  # the search sees the DoFns' contents


def test_a_kafka_secret_from_secret_manager_is_nowhere_in_the_translated_job(monkeypatch, trained):
    """--kafka_secret KEY=secretmanager:NAME: the launcher checks the config with the value, the job holds the
    reference only."""
    from tests.secret_manager import SecretManagerStandIn

    root, _ = trained
    secret, name = "S3cret-in-sm-" + os.urandom(8).hex(), "projects/rtml-test/secrets/kafka-password/versions/latest"
    with SecretManagerStandIn({name: secret.encode()}) as secret_manager:
        job = _translate(monkeypatch, score.run, [
            "--spec", "fraud", "--mode", "stream", "--bootstrap_servers", "broker.internal:9092",
            "--input_topic", "events", "--output_topic", "scored", "--dead_letter_topic", "dead-letters",
            "--model_dir", str(root / "model"), "--kafka_config", "security.protocol=SASL_PLAINTEXT",
            "--kafka_config", "sasl.mechanism=PLAIN", "--kafka_config", "sasl.username=scorer",
            "--kafka_secret", f"sasl.password=secretmanager:{name}", *DATAFLOW])
    shipped = (job.proto_pipeline.SerializeToString() + _pickled_dofns(job.proto_pipeline)
               + str(job.options.get_all_options()).encode())
    assert secret_manager.accessed == [name]  # the launcher's check of the config
    assert secret.encode() not in shipped
    assert name.encode() in shipped


def _pickled_dofns(proto_pipeline) -> bytes:
    """Every ParDo's DoFn as pickled, decompressed (Beam compresses them, which would hide their text)."""
    import base64
    import bz2
    import zlib

    from apache_beam.portability.api import beam_runner_api_pb2

    found = []
    for transform in proto_pipeline.components.transforms.values():
        if transform.spec.urn == "beam:transform:pardo:v1":
            data = base64.b64decode(beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn.payload)
            found.append(bz2.decompress(data) if data.startswith(b"BZh") else zlib.decompress(data))
    return b"".join(found)


class _Offsets(RestrictionProvider):
    def initial_restriction(self, count):
        return OffsetRange(0, count)

    def create_tracker(self, restriction):
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, count, restriction):
        return restriction.size()


class _OneElementABundle(beam.DoFn):
    """An unbounded read that emits one element and checkpoints, for a bundle per element, as a live Kafka read does
    when traffic is steady."""

    @beam.DoFn.unbounded_per_element()
    def process(self, count, tracker=beam.DoFn.RestrictionParam(_Offsets())):
        position = tracker.current_restriction().start
        if tracker.try_claim(position):
            Metrics.counter(METRICS_NAMESPACE, "received").inc()
            yield position
            tracker.defer_remainder()


def test_a_direct_runner_stream_of_thousands_of_bundles_still_reports_its_counters():
    """Beam's FnApiRunner kept every bundle's metrics, one nested generator per bundle: a stream that ran for minutes
    grew 43 MB a minute and, at its stop, failed to read its counters (RecursionError, exit status 1)."""
    bundles = 3_000  # well past Python's recursion limit of 1,000
    options = PipelineOptions(["--runner", "DirectRunner"])
    runners.apply_runner_presets(options, streaming=True)
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | beam.Create([bundles]) | beam.ParDo(_OneElementABundle())
    result = pipeline.run()
    result.wait_until_finish()
    assert cli.counters(result) == {f"{METRICS_NAMESPACE}/received": bundles}
