"""The ``rtml`` command, as a user types it: its subcommands, their flags, and the stream demo."""
from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

RTML = str(pathlib.Path(sys.executable).with_name("rtml"))
REPO = pathlib.Path(__file__).resolve().parents[1]


def _rtml(*args, timeout=120):
    return subprocess.run([RTML, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_help_lists_the_commands():
    result = _rtml("--help")
    assert result.returncode == 0
    listed = [line.split()[0] for line in result.stdout.splitlines() if line.startswith("  ")]
    assert {"generate", "train", "score", "backfill", "monitor", "cluster", "launch", "demo"} <= set(listed)


def test_a_commands_help_starts_with_its_own_flags():
    result = _rtml("score", "--help")
    assert result.returncode == 0 and result.stdout.startswith("usage: rtml score")
    groups = [line for line in result.stdout.splitlines() if line.endswith(":") and not line.startswith(" ")]
    assert groups[:3] == ["options:", "spec options:", "score options:"], groups  # (options: --help itself)
    assert "cluster options:" not in groups
    assert not [group for group in groups if "beam" in group.lower()], groups
    assert result.stdout.rstrip().endswith("apache_beam.options.pipeline_options.html")  # (Beam's flags: one pointer)
    assert result.stdout.count("--direct_num_workers") == 1 and "--sdk_location" not in result.stdout
    blocks = re.split(r"\n(?=  -)", result.stdout)  # one a flag: its line and the help wrapped below it
    help_of = {block.split()[0]: " ".join(block.split()) for block in blocks if block.startswith("  --")}
    assert "[required]" in help_of["--spec"] and "[required with --mode batch]" in help_of["--input"]
    assert "[required with --mode stream]" in help_of["--input_topic"] and "required" not in help_of["--engine"]


def test_a_flag_of_another_command_or_an_unknown_command_is_one_line():
    result = _rtml("score", "--spec", "fraud", "--snapshot_every", "3")
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: --snapshot_every is not a flag of this command "
                                     "(it is one of the cluster flags); see --help")
    result = _rtml("scroe")
    assert result.returncode == 2 and result.stderr.strip().startswith("error: unknown command scroe; one of:")


def test_a_bad_number_of_state_shards_is_one_line():
    result = _rtml("score", "--spec", "fraud_entity", "--mode", "stream", "--state_shards", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: argument --state_shards: not a whole number > 0: '0'; see --help"


@pytest.mark.parametrize("command, flag, group", [("train", "--engine", "engine"),
                                                   ("cluster", "--model_poll_seconds", "reload"),
                                                   ("cluster", "--monitoring_topic", "live monitor"),
                                                   ("produce", "--output_topic", "stream"),
                                                   ("backfill", "--group_id", "stream"),
                                                   ("produce", "--output", "archive"),
                                                   ("train", "--output_format", "archive"),
                                                   ("monitor", "--dead_letter", "archive"),
                                                   ("report", "--input", "archive")])
def test_a_flag_is_refused_by_a_command_it_does_nothing_in(command, flag, group):
    result = _rtml(command, "--spec", "fraud", flag, "x")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {flag} is not a flag of this command (it is one of the {group} flags); see --help"


@pytest.mark.parametrize("command, flag, value, where", [
    ("score", "--value_format", "confluent-avro", "--mode stream"),
    ("score", "--monitoring_topic", "mon", "--mode stream"),
    ("cluster", "--bootstrap_servers", "broker:9092", "--mode stream"),
    ("backfill", "--schema_registry_url", "http://registry:8081", "--source kafka")])
def test_a_flag_of_the_other_mode_is_refused_not_ignored(tmp_path, command, flag, value, where):
    (tmp_path / "events.jsonl").write_text("{}\n")
    own = {"score": ("--mode", "batch"), "cluster": ("--mode", "batch", "--snapshot_dir", str(tmp_path / "s")),
           "backfill": ("--start", "2026-03-01", "--end", "2026-03-02")}[command]
    result = _rtml(command, "--spec", "fraud", *own, "--input", str(tmp_path / "events.jsonl"), "--model_dir",
                   str(tmp_path / "m"), "--output", str(tmp_path / "o"), "--dead_letter", str(tmp_path / "d"),
                   flag, value)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {flag} is for {where}; see --help"


def test_stream_mode_without_a_broker_points_to_the_demo(fraud_model):
    result = _rtml("score", "--mode", "stream", "--spec", "fraud", "--model_dir", fraud_model[0])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "give --bootstrap_servers" in result.stderr and "rtml demo stream" in result.stderr


def test_the_stream_demo_never_trains_into_a_users_model_dir(tmp_path):
    result = _rtml("demo", "stream", "--model_dir", str(tmp_path))
    assert result.returncode == 2 and "holds no model" in result.stderr and "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_the_stream_demo_scores_live_with_a_given_model_and_stops(fraud_model):
    result = _rtml("demo", "stream", "--spec", "fraud", "--model_dir", fraud_model[0], "--demo_seconds", "3",
                   timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    scored = [line for line in result.stdout.splitlines() if line.startswith("scored")]
    dead = [line for line in result.stdout.splitlines() if line.startswith("dead letter")]
    assert len(scored) >= 20, result.stdout[-2000:]
    assert all("score" not in line.split()[1] for line in scored)
    assert "stopped the producer, the printer and the broker" in result.stderr
    assert len(dead) <= len(scored)


def test_log_format_json_makes_each_log_line_one_object(tmp_path):
    from tests.conftest import publish_stand_in_model

    version = publish_stand_in_model(tmp_path / "model")
    (tmp_path / "model" / "CURRENT").write_text(version + "\n")  # as an older release wrote it: a warning
    (tmp_path / "events.jsonl").write_text('{"not": "an event"}\n')
    result = _rtml("score", "--spec", "fraud", "--input", str(tmp_path / "events.jsonl"), "--model_dir",
                   str(tmp_path / "model"), "--output", str(tmp_path / "o"), "--dead_letter", str(tmp_path / "d"),
                   "--log_format", "json")
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]  # every stderr line is a JSON object
    warning = next(r for r in records if r["logger"] == "models.registry")
    assert warning["level"] == "WARNING" and "records no manifest digest" in warning["message"]


@pytest.mark.parametrize("ends", ["with a mistake", "with its summary"])
def test_a_commands_last_line_is_its_own_whatever_its_threads_say_after_it(ends):
    """As Prism's in-process workers do when their job has ended: a thread that outlives the command's run logs an
    error with its traceback, then dies of an exception."""
    program = f"""
import logging, threading, time
from pipelines import cli
from transforms.errors import UserError

def after_the_job():
    time.sleep(0.5)
    try:
        raise ConnectionResetError("Stream removed")
    except ConnectionResetError:
        logging.getLogger("apache_beam.runners.worker.data_plane").exception("Failed to read inputs")
    raise RuntimeError("the job's state is gone")

def run(argv):
    logging.getLogger("apache_beam.runners.worker.data_plane").error("said while the command runs")
    threading.Thread(target=after_the_job).start()
    if {ends == "with a mistake"}:
        raise UserError("the one-line reason")
    print("the summary")

cli.main(run)
"""
    done = subprocess.run([sys.executable, "-c", program], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == (2 if ends == "with a mistake" else 0), done.stderr
    assert done.stderr.splitlines()[0] == "ERROR apache_beam.runners.worker.data_plane: said while the command runs"
    last = done.stderr.strip().splitlines()[-1] if ends == "with a mistake" else done.stdout.strip()
    assert last == ("error: the one-line reason" if ends == "with a mistake" else "the summary")
    assert "Traceback" not in done.stderr and "Failed to read inputs" not in done.stderr, done.stderr
