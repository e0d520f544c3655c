"""Model directories on Cloud Storage (the emulator of ``tests/gcs.py``): training publishes there, scoring
reads there, a publish killed half way leaves the previous version current, and of two publishers racing
for CURRENT the newer version wins; the backfill's lock object against other machines. Backfills to gs://
are in ``test_backfill.py``."""
from __future__ import annotations

import datetime
import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from models import registry
from pipelines import generate, locks
from pipelines.kafka_broker import free_port
from tests.conftest import publish_stand_in_model, read_json_lines
from transforms import storage
from transforms.errors import UserError

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def model_dir(gcs, request) -> str:
    return f"{gcs}/{request.node.name.split('[')[0][-40:]}-{os.urandom(4).hex()}/model"


@pytest.mark.slow
def test_training_publishes_to_cloud_storage_and_scoring_reads_the_model_there(gcs, model_dir, tmp_path):
    from pipelines import score, train

    generate.generate("fraud", 3, tmp_path / "archive", datetime.date(2026, 3, 1), 600, 0.01, 5, compress=False)
    archive = str(tmp_path / "archive" / "*" / "*.jsonl")
    # The emulator cannot finalize Beam's file sinks (their batch calls), so the dead letters stay local here.
    model = train.run(["--spec", "fraud", "--input", archive, "--model_dir", model_dir,
                       "--dead_letter", str(tmp_path / "training_dead_letters")])
    assert model.made_current and model.path == f"{model_dir}/versions/{model.version}"
    assert registry.current(model_dir)[0] == model.version
    assert registry.load(model_dir).manifest["files"] == model.manifest["files"]
    assert not pathlib.Path("gs:").exists() and not (ROOT / "gs:").exists()

    totals = score.run(["--spec", "fraud", "--mode", "batch", "--input", archive, "--model_dir", model_dir,
                        "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead_letter")])
    records = read_json_lines(tmp_path / "scored")
    assert len(records) == totals["rtml/scored"] == totals["rtml/valid"] > 0
    assert {r["model_version"] for r in records} == {model.version}


KILL_AT_MANIFEST = textwrap.dedent("""
    import os, signal, sys
    from transforms import storage
    original = storage.write_file
    def killing(path, data):
        if path.endswith("/manifest.json"):  # every other file of the version is uploaded by now
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path, data)
    storage.write_file = killing
    from tests.conftest import publish_stand_in_model
    publish_stand_in_model(sys.argv[1], scale=7.0)
""")


def test_a_publish_killed_before_its_manifest_leaves_the_previous_version_current(model_dir):
    version = publish_stand_in_model(model_dir)
    killed = subprocess.run([sys.executable, "-c", KILL_AT_MANIFEST, model_dir], cwd=ROOT, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    half = [path for path in storage_paths(f"{model_dir}/versions") if "-s7/" in path]
    assert [path.rsplit("/", 1)[1] for path in half] == ["model.onnx"]  # uploaded, with no manifest
    assert registry.load(model_dir).version == version
    with pytest.raises(registry.ModelError, match="missing, or its manifest.json is missing"):
        registry.load(model_dir, half[0].split("/")[-2])
    assert registry.load(model_dir, publish_stand_in_model(model_dir, scale=9.0)).version.endswith("-s9")
    assert registry.load(model_dir).version.endswith("-s9")  # and the next training publishes as usual


def test_of_two_publishers_racing_for_current_the_newer_version_wins(model_dir, monkeypatch):
    """The older publisher reads CURRENT, then the newer one publishes before the older one writes: its write
    of the generation it read fails (the emulator checks ifGenerationMatch), it reads again and stands back."""
    spec = {"name": "fraud", "fingerprint": "f", "source": "fraud"}
    older, newer = registry.new_version(), registry.new_version()
    staged = {}
    for version in (older, newer):
        staged[version] = registry.staging_dir(model_dir, version)
        (staged[version] / "model.onnx").write_bytes(version.encode())
    registry.publish(model_dir, registry.staging_dir(model_dir, "0-first"), {"version": "0-first", "spec": spec})
    read, reads = storage.read_generation, []

    def read_then_let_the_newer_publish(path):
        found = read(path)
        reads.append(found)
        if len(reads) == 1:
            monkeypatch.setattr(storage, "read_generation", read)
            assert registry.publish(model_dir, staged[newer], {"version": newer, "spec": spec}).made_current
        return found

    monkeypatch.setattr(storage, "read_generation", read_then_let_the_newer_publish)
    assert not registry.publish(model_dir, staged[older], {"version": older, "spec": spec}).made_current
    assert reads[0][0].startswith(b"0-first ")
    assert registry.current(model_dir)[0] == newer
    assert registry.load(model_dir, older).version == older  # published all the same


@pytest.mark.parametrize("where, message", [
    ("s3://bucket/models", "error: --model_dir s3://bucket/models: results are committed on a local or mounted "
                           "filesystem or on Cloud Storage (gs://), where a commit cannot be seen half done; s3:// is "
                           "not supported"),
    ("gs://no-such-bucket/models", "error: --model_dir gs://no-such-bucket/models: bucket no-such-bucket does not "
                                   "exist"),
])
def test_a_model_dir_that_cannot_be_published_to_is_one_line_before_training(gcs, tmp_path, where, message):
    (tmp_path / "events.jsonl").write_text(json.dumps({"event_id": "e1"}) + "\n")
    result = subprocess.run([sys.executable, "-m", "pipelines.rtml", "train", "--spec", "fraud", "--input",
                             str(tmp_path / "events.jsonl"), "--model_dir", where], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [message], result.stderr
    assert list(tmp_path.iterdir()) == [tmp_path / "events.jsonl"]  # no folder called gs: or s3:


def storage_paths(prefix: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for m in FileSystems.match([f"{prefix}/**"])[0].metadata_list)


# ---------------------------------------------------------------------------------------------
# The backfill's lock object (its everyday use, refused and taken over from a dead process, is in test_backfill.py)


@pytest.fixture
def short_lease(monkeypatch):
    monkeypatch.setattr(locks.ObjectLock, "RENEW_S", 0.2)
    monkeypatch.setattr(locks.ObjectLock, "LEASE_S", 1.0)


def _lock_record(path: str, host: str, renewed: float, token: str = "theirs") -> int:
    data, generation = storage.read_generation(path)
    return storage.write_if_generation(path, json.dumps({"pid": 1, "host": host, "token": token,
                                                         "renewed": renewed}).encode(), generation)


# (Beam retries for 30 s in each: the second command is extended, for make test's time)
@pytest.mark.parametrize("module", [pytest.param("pipelines.train", marks=pytest.mark.extended), "pipelines.score"])
def test_cloud_storage_without_credentials_is_one_line_and_the_json_log_keeps_beams_retries(module, tmp_path):
    """No credentials and nothing listening where Cloud Storage should be: Beam retries the credentials for about 25 s,
    each try a warning with a traceback. The terminal shows the command's one line; --log_format json keeps them.
    (Training publishes into the model directory; scoring reads from it.)"""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("GOOGLE", "CLOUDSDK"))} | {
        "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
        "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{free_port()}"}
    (tmp_path / "events.jsonl").write_text("{}\n")
    command = [sys.executable, "-m", module, "--spec", "fraud", "--input", str(tmp_path / "events.jsonl"),
               "--model_dir", "gs://rtml-nowhere/models"]
    if module == "pipelines.score":
        command += ["--mode", "batch", "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead")]
    runs = {log_format: subprocess.Popen([*command, "--log_format", log_format], env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, text=True) for log_format in ("text", "json")}
    (_, text), (_, logged) = (run.communicate(timeout=120) for run in runs.values())
    assert [run.returncode for run in runs.values()] == [2, 2]
    [line] = text.splitlines()
    assert line.startswith("error: --model_dir gs://rtml-nowhere/models: cannot list it on Cloud Storage ("), text
    loggers = [json.loads(line)["logger"] for line in logged.splitlines() if line.startswith("{")]
    assert loggers.count("apache_beam.utils.retry") >= 3 and "apache_beam.internal.gcp.auth" in loggers, logged
    assert logged.splitlines()[-1] == line


def test_a_lock_of_another_machine_is_taken_over_only_after_a_whole_lease_unrenewed(model_dir, short_lease, capsys):
    directory = model_dir.rsplit("/", 1)[0]
    path = f"{directory}/_backfill.lock"
    _lock_record(path, "elsewhere", time.time() - 3600)  # its clock says long ago; this machine watches anyway
    started = time.monotonic()
    with locks.hold(directory, "_backfill.lock") as lock:
        assert time.monotonic() - started >= 1.0
        locks.check_held(path, lock.token)
    err = capsys.readouterr().err
    assert "watching it for 1 s before taking it over" in err
    assert f"taking over a stale lock {path} of pid 1 on elsewhere, which has not renewed it for 1 s" in err
    assert storage.read_file(path) is None  # released


def test_a_lock_renewed_elsewhere_is_refused(model_dir, short_lease):
    directory = model_dir.rsplit("/", 1)[0]
    path = f"{directory}/_backfill.lock"
    _lock_record(path, "elsewhere", time.time() - 3600)  # its holder's clock is behind, but it keeps renewing
    stop = threading.Event()

    def renew():
        while not stop.wait(0.2):
            _lock_record(path, "elsewhere", time.time() - 3600)

    renewer = threading.Thread(target=renew)
    renewer.start()
    try:
        with pytest.raises(UserError, match=f"another backfill is writing to this output \\(pid 1 on elsewhere, "
                                            f"lock {path}\\)"):
            with locks.hold(directory, "_backfill.lock"):
                pass
    finally:
        stop.set()
        renewer.join()


def test_a_holder_whose_lock_was_taken_over_stops_and_commits_nothing_more(model_dir, short_lease, capsys,
                                                                             monkeypatch):
    directory = model_dir.rsplit("/", 1)[0]
    path = f"{directory}/_backfill.lock"
    interrupted = threading.Event()  # what the holder does to the command's main thread (not pytest's here)
    monkeypatch.setattr(locks._thread, "interrupt_main", interrupted.set)
    with locks.hold(directory, "_backfill.lock") as lock:
        _lock_record(path, "elsewhere", time.time())  # another backfill took it over
        with pytest.raises(UserError, match="is no longer this backfill.s"):
            locks.check_held(path, lock.token)  # what each commit checks first
        assert interrupted.wait(5)  # the next renewal found another generation
    assert "lost the lock" in capsys.readouterr().err
    assert json.loads(storage.read_file(path))["host"] == "elsewhere"  # the other's lock stays
