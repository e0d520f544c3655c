"""Kafka as companies run it: a broker that takes only ``SASL_SSL`` clients (TLS with a certificate of its own
authority, SCRAM-SHA-512 passwords, ACLs), started by the test (``KafkaBroker(secure=True)``). The scorer,
``rtml produce`` and a backfill's replay log in with the password from an environment variable (``--kafka_secret``);
what the cluster refuses is one line naming which, with no secret in it."""
from __future__ import annotations

import datetime
import subprocess
import sys
import time
from collections import Counter

import pytest
from pipelines import generate, score
from pipelines.kafka_broker import KafkaBroker
from tests.conftest import publish_stand_in_model
from tests.kafka_helpers import (PASSWORD_ENV, ROOT, Outputs, json_lines, make_topics, secure_login, stream_scorer,
                                 unique_name)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("secure") / "model"
    publish_stand_in_model(path)
    return str(path)


def _rtml(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipelines.rtml", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_produce_live_scoring_and_a_replay_over_sasl_ssl_give_the_batch_runs_records(secure_broker, model_dir,
                                                                                     tmp_path, monkeypatch):
    generate.generate("fraud", 1, tmp_path / "data", datetime.date(2026, 4, 1), 600, 0.01, 5, compress=False)
    files = str(tmp_path / "data" / "*" / "*.jsonl")
    score.run(["--spec", "fraud", "--mode", "batch", "--input", files, "--model_dir", model_dir,
               "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead")])
    expected = {record["event_id"]: record["score"] for record in json_lines(tmp_path / "scored")}
    reasons = Counter(letter["error"] for letter in json_lines(tmp_path / "dead"))
    topics, group = make_topics(secure_broker, "secure"), unique_name("secure")
    password, login = secure_login(secure_broker, monkeypatch, write=[topics[0]])
    loaded = _rtml("produce", "--spec", "fraud", "--input", files, "--bootstrap_servers",
                   secure_broker.secure_bootstrap, "--input_topic", topics[0], *login)
    assert loaded.returncode == 0 and password not in loaded.stdout + loaded.stderr, loaded.stderr
    password, login = secure_login(secure_broker, monkeypatch, read=[topics[0]], write=topics[1:], groups=[group])
    outputs = Outputs(secure_broker.bootstrap, topics[1], topics[2])  # (read back as the tests' super user)
    try:
        with stream_scorer(model_dir, secure_broker.secure_bootstrap, topics, group, *login) as scorer:
            outputs.wait(lambda o: len(o.scored) >= len(expected) and len(o.dead) >= sum(reasons.values()), 60,
                         "every event scored or dead-lettered", scorer)
            code, _ = scorer.terminate()
            log = scorer.log()
    finally:
        outputs.close()
    assert code == 0 and password not in log, log
    assert Counter(record["event_id"] for _, record in outputs.scored) == Counter(expected.keys())
    assert all(abs(record["score"] - expected[record["event_id"]]) <= 1e-6 for _, record in outputs.scored)
    assert Counter(letter["error"] for _, letter in outputs.dead) == reasons

    replay = tmp_path / "replay"  # (as the same user: it may read the topic)
    replayed = _rtml("backfill", "--spec", "fraud", "--source", "kafka", "--bootstrap_servers",
                     secure_broker.secure_bootstrap, "--input_topic", topics[0], "--model_dir", model_dir,
                     "--output", str(replay / "scored"), "--dead_letter", str(replay / "dead"), "--start",
                     "2026-04-01", "--end", "2026-04-02", "--replay_margin_s", "60", *login)
    assert replayed.returncode == 0 and password not in replayed.stdout + replayed.stderr, replayed.stderr
    records = json_lines(replay / "scored" / "dt=2026-04-01")
    assert {record["event_id"]: record["score"] for record in records} == expected
    assert Counter(letter["error"] for letter in json_lines(replay / "dead" / "dt=2026-04-01")) == reasons


@pytest.mark.parametrize("refusal", ["a wrong password", "an untrusted certificate", "no ACL for the input topic",
                                     "no ACL to write the output", "no ACL for the group"])
def test_what_the_cluster_refuses_is_one_line_naming_which(refusal, secure_broker, model_dir, monkeypatch):
    topics, group = make_topics(secure_broker, "refused"), unique_name("refused")
    read, write, groups = [topics[0]], topics[1:], [group]
    if refusal == "no ACL for the input topic":
        read = []
    elif refusal == "no ACL to write the output":
        write = [topics[2]]
    elif refusal == "no ACL for the group":
        groups = []
    password, login = secure_login(secure_broker, monkeypatch, read, write, groups)
    if refusal == "a wrong password":
        monkeypatch.setenv(PASSWORD_ENV, password[::-1])
    other_authority = None
    if refusal == "an untrusted certificate":
        other_authority = KafkaBroker(secure=True)  # (not started: only its certificate authority is used)
        login = [flag.replace(str(secure_broker.ca_file), str(other_authority.ca_file)) for flag in login]
    try:
        started = time.monotonic()
        sent = _rtml("score", "--spec", "fraud", "--mode", "stream", "--model_dir", model_dir, "--bootstrap_servers",
                     secure_broker.secure_bootstrap, "--input_topic", topics[0], "--output_topic", topics[1],
                     "--dead_letter_topic", topics[2], "--group_id", group, *login, timeout=60)
        took = time.monotonic() - started
    finally:
        if other_authority is not None:
            other_authority.close()
    [line] = sent.stderr.strip().splitlines()[-1:]
    assert sent.returncode == 2 and took < 30, (took, sent.stderr)
    assert password not in sent.stdout + sent.stderr and password[::-1] not in sent.stderr
    where = f"error: Kafka at {secure_broker.secure_bootstrap}"
    user = login[2].split("sasl.username=")[1]
    assert line == {
        "a wrong password": f"{where} refused the login of user {user!r}: SASL authentication error: Authentication "
                            f"failed during authentication due to invalid credentials with SASL mechanism "
                            f"SCRAM-SHA-512",
        "an untrusted certificate": f"{where} TLS failed: SSL handshake failed: {line.split('handshake failed: ')[-1]}",
        "no ACL for the input topic": f"{where}: no ACL lets user {user!r} READ topic {topics[0]!r}",
        "no ACL to write the output": f"{where}: no ACL lets user {user!r} WRITE topic {topics[1]!r}",
        "no ACL for the group": f"{where}: no ACL lets user {user!r} READ consumer group {group!r}",
    }[refusal], sent.stderr
    assert refusal != "an untrusted certificate" or "certificate verify failed" in line
