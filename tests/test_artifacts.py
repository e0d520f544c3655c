"""The set-up of the local runtimes (``python -m pipelines.artifacts``): what a machine without Go, Maven or
Java is told, and what a pipeline says when a runtime was never fetched."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from pipelines import artifacts
from pipelines.kafka_broker import KafkaBroker


@pytest.fixture
def bare_machine(monkeypatch, tmp_path):
    """No go, mvn or java on PATH, no JAVA_HOME, and nothing fetched yet."""
    monkeypatch.setattr(artifacts.shutil, "which", lambda name: None)
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(artifacts, "HOME", tmp_path / "share")
    monkeypatch.setattr(artifacts, "prism_binary", lambda: tmp_path / "bin" / "prism")
    monkeypatch.setattr(artifacts, "fake_gcs_server_binary", lambda: tmp_path / "bin" / "fake-gcs-server")


def test_missing_tools_are_one_line_each_saying_what_still_works(bare_machine, capsys):
    assert artifacts.main() == 0  # the set-up goes on: batch scoring needs none of them
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "prism: NOT INSTALLED: no go on PATH; PrismRunner is unavailable (the DirectRunner and FlinkRunner work)",
        "fake-gcs-server: NOT INSTALLED: no go on PATH; the Cloud Storage tests cannot run",
        "kafka: NOT INSTALLED: no mvn on PATH; the local Kafka broker (tests, demo, benchmarks) is unavailable; "
        "pipelines still reach any --bootstrap_servers",
        "kafka_io: NOT INSTALLED: no mvn on PATH; --kafka_io beam is unavailable (the project's own Kafka IO, the "
        "default, works)",
        "flink: NOT INSTALLED: no mvn on PATH; FlinkRunner needs --flink_job_server_jar or --job_endpoint (the "
        "DirectRunner and PrismRunner work)",
        "flink_cluster: NOT INSTALLED: no mvn on PATH; rtml flink-cluster cannot start a local Flink cluster (the "
        "embedded Flink works)",
        "apicurio: NOT INSTALLED: no mvn on PATH; the tests of the confluent-* value formats cannot run",
        "keycloak: NOT INSTALLED: no mvn on PATH; the tests of the confluent-* value formats cannot run",
        "java: NOT FOUND: the local Kafka broker and FlinkRunner need a JDK 17"]


def test_a_runtime_never_fetched_is_named_with_the_command_that_fetches_it(bare_machine):
    with pytest.raises(artifacts.MissingArtifact, match=r"^Apache Kafka is not installed \(.*kafka\.jar is missing\); "
                                                        r"run: python.* -m pipelines\.artifacts$"):
        with KafkaBroker():
            pass


@pytest.mark.skipif(artifacts.shutil.which("go") is None, reason="no go on PATH")
def test_the_prism_fix_applies_to_the_pinned_prisms_source_and_a_changed_source_is_left_as_it_is(tmp_path):
    module, _ = artifacts.PRISM_SOURCE
    done = subprocess.run(["go", "mod", "download", "-json", f"{module}@v{artifacts.BEAM_VERSION}"],
                          capture_output=True, text=True, check=True)
    file, text, fixed = artifacts.PRISM_FIX
    pinned = (Path(json.loads(done.stdout)["Dir"]) / file).read_text()
    (tmp_path / file).parent.mkdir(parents=True)
    (tmp_path / file).write_text(pinned)
    assert artifacts.apply_fix(tmp_path, *artifacts.PRISM_FIX)
    assert (tmp_path / file).read_text() == pinned.replace(text, fixed) != pinned

    changed = pinned.replace(text, text.replace("\t", "    "))
    (tmp_path / file).write_text(changed)
    assert not artifacts.apply_fix(tmp_path, *artifacts.PRISM_FIX)
    assert (tmp_path / file).read_text() == changed
