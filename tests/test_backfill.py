"""``python -m pipelines.backfill``: partitions by event time, atomic and deterministic, rerunnable after crashes.

The archive is 4 generated days of 1,500 fraud events (2% broken). The model is a stand-in built
in a second (``publish_stand_in_model``): the backfill's guarantees do not depend on what the model
learned, and training one would cost most of this module's time budget. SIGKILL tests run the backfill in a subprocess
through a tiny wrapper that patches one of its functions to kill the process at the Nth call.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import pathlib
import random
import signal
import subprocess
import sys
import textwrap

import pytest

from apache_beam.io.filesystems import FileSystems

from pipelines import backfill, cli, locks
from pipelines.generate import generate
from tests.conftest import publish_stand_in_model
from transforms.errors import UserError
from transforms.events import EventParser, dead_letter, dead_letter_time_us, event_time_us_of
from transforms import storage
from transforms.spec import load_spec

ROOT = pathlib.Path(__file__).resolve().parents[1]
START, END = "2026-03-01", "2026-03-04"  # 3 of the archive's 4 days
DAYS = ["dt=2026-03-01", "dt=2026-03-02", "dt=2026-03-03"]
UNITS = DAYS + ["_untimed"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("backfill")
    generate("fraud", 4, root / "archive", datetime.date(2026, 3, 1), 1500, 0.02, 5, compress=False)
    model_dir = root / "model"
    version = publish_stand_in_model(model_dir)
    return {"root": root, "input": str(root / "archive" / "*" / "*.jsonl"), "model_dir": str(model_dir),
            "version": version}


def args(setup, out, *extra, input_glob=None) -> list[str]:
    return ["--spec", "fraud", "--input", input_glob or setup["input"], "--model_dir", setup["model_dir"],
            "--output", f"{out}/scored", "--dead_letter", f"{out}/dead_letter", "--start", START,
            "--end", END, "--max_parallel", "2", *extra]


@pytest.fixture(params=["local", "gs"])
def out(request, tmp_path) -> str:
    """Where a test's backfill writes: a local directory, or a folder of a bucket in the Cloud Storage emulator."""
    if request.param == "local":
        return str(tmp_path)
    return f"{request.getfixturevalue('gcs')}/{request.node.name.split('[')[0][-40:]}-{os.urandom(4).hex()}"


def data_files(out) -> dict[str, bytes]:
    """Every file but the manifests, by path relative to ``out`` (local or gs://)."""
    root = f"{str(out).rstrip('/')}/"
    return {m.path[len(root):]: storage.read_file(m.path)
            for m in sorted(FileSystems.match([root + "**"])[0].metadata_list, key=lambda m: m.path)
            if not m.path.endswith("/" + backfill.MANIFEST)}


def manifests(out) -> dict[str, dict]:
    return {m.path.split("/")[-2]: json.loads(storage.read_file(m.path))
            for m in FileSystems.match([f"{out}/scored/*/{backfill.MANIFEST}"])[0].metadata_list}


def file_lines(path: pathlib.Path) -> list[bytes]:
    found = path.read_bytes().split(b"\n")
    return found[:-1] if found[-1] == b"" else found


def lines(path) -> list[dict]:
    return [json.loads(line) for line in storage.read_file(str(path)).decode("utf-8").splitlines()]


@pytest.fixture(scope="module")
def clean(setup, tmp_path_factory) -> dict:
    """A clean backfill of [START, END), and what it should contain, from the archive parsed here."""
    out = tmp_path_factory.mktemp("clean")
    statuses = backfill.run(args(setup, out))
    spec, parser = load_spec("fraud"), EventParser(load_spec("fraud"))
    expected = {unit: {"scored": set(), "dead": []} for unit in UNITS}
    for path in sorted(pathlib.Path(setup["root"], "archive").glob("*/*.jsonl")):
        for number, line in enumerate(file_lines(path), start=1):
            parsed = parser.parse(line)
            if isinstance(parsed, str):
                time_us = dead_letter_time_us(dead_letter(line, parsed, {}, "fraud"), spec.event_time)
                unit = "_untimed" if time_us is None else backfill.partition_name(
                    time_us - time_us % backfill.UNIT_US["day"], "day")
                if unit in expected:
                    expected[unit]["dead"].append((str(path), number))
            else:
                unit = backfill.partition_name(parsed[1] - parsed[1] % backfill.UNIT_US["day"], "day")
                if unit in expected:
                    expected[unit]["scored"].add(parsed[0]["event_id"])
    return {"out": out, "statuses": statuses, "files": data_files(out), "expected": expected}


def assert_like_clean(clean, out) -> None:
    """Same files (no lock, nothing half written), same bytes for data files, complete manifests for every unit."""
    assert data_files(out) == clean["files"]
    assert sorted(manifests(out)) == sorted(UNITS)


def test_clean_run_scores_each_event_once_and_rerun_is_byte_identical(setup, clean, tmp_path):
    out, expected = clean["out"], clean["expected"]
    assert {name: state["status"] for name, state in clean["statuses"].items()} == dict.fromkeys(UNITS, "done")
    found = manifests(out)
    all_ids = []
    for unit in UNITS:
        records = lines(out / "scored" / unit / "scored.jsonl") if unit != "_untimed" else []
        letters = lines(out / "dead_letter" / unit / "dead_letter.jsonl")
        ids = [r["event_id"] for r in records]
        all_ids += ids
        assert set(ids) == expected[unit]["scored"] and len(ids) == len(set(ids))
        assert sorted((d["source"]["file"], d["source"]["line"]) for d in letters) == sorted(expected[unit]["dead"])
        assert [(r["event_time"], r["event_id"]) for r in records] == sorted(
            (r["event_time"], r["event_id"]) for r in records)  # all "...Z" with milliseconds: sorts by time
        manifest = found[unit]
        assert manifest["counts"] == {"in": len(records) + len(letters), "scored": len(records),
                                      "dead_lettered": len(letters)}
        assert manifest["input_files"] == 4 and len(manifest["input_fingerprint"]) == 64
        assert manifest["model_version"] == (None if unit == "_untimed" else setup["version"])
        assert manifest["finished_at"].endswith("Z")
        if unit != "_untimed":
            assert manifest["start"] == unit[3:] + "T00:00:00Z"
            assert all(r["event_time"].startswith(unit[3:]) for r in records)
            assert all(r["model_version"] == setup["version"] for r in records)
    assert len(all_ids) == len(set(all_ids)) == 3 * 1470  # generate: 30 broken lines a day
    assert sum(m["counts"]["dead_lettered"] for m in found.values()) == sum(len(e["dead"]) for e in expected.values())
    assert found["_untimed"]["counts"]["dead_lettered"] > 0

    again = backfill.run(args(setup, out))  # complete: nothing to do
    assert {name: state["status"] for name, state in again.items()} == dict.fromkeys(UNITS, "skipped")
    forced = backfill.run(args(setup, tmp_path, "--force"))
    forced_again = backfill.run(args(setup, tmp_path, "--force", "--max_parallel", "8", "--batch_size", "333"))
    assert {name: state["status"] for name, state in forced_again.items()} == dict.fromkeys(UNITS, "redone")
    assert forced and data_files(tmp_path) == clean["files"]


WRAPPER = textwrap.dedent("""
    import os, signal, sys
    from pipelines import backfill, cli
    name, at = sys.argv.pop(1), int(sys.argv.pop(1))
    original, calls = getattr(backfill, name), [0]
    def patched(*args, **kwargs):
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        return original(*args, **kwargs)
    setattr(backfill, name, patched)
    cli.main(backfill.run)
""")


KILLS = (("commit", 2, "1"),  # between partitions, one a wave: the first committed, the second written, not committed
         ("_write_lines", 2, "2"))  # inside a partition's write: its dead letters written, its scored records not


def test_killed_twice_then_rerun_matches_the_clean_run(setup, clean, out, capfd):
    """SIGKILLed at two points, one run after the other, then run again: the same bytes as the clean run
    (which wrote 2 partitions a wave), complete partitions never rewritten; locally and on Cloud Storage."""
    for function, at, parallel in KILLS:
        crashed = subprocess.run([sys.executable, "-c", WRAPPER, function, str(at),
                                  *args(setup, out, "--max_parallel", parallel)],
                                 cwd=ROOT, capture_output=True, text=True, timeout=180)
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
        assert storage.read_file(f"{out}/scored/{backfill.LOCK}") is not None  # left behind
        committed = sorted(manifests(out))
        assert len(committed) < len(UNITS)
        written = {path.split("/")[1] for path in data_files(out) if path.startswith("dead_letter/")}
        assert written - set(committed)  # a partition half written: its dead letters there, no manifest
    assert committed
    untouched = {m.path: m.last_updated_in_seconds for unit in committed for directory in ("scored", "dead_letter")
                 for m in FileSystems.match([f"{out}/{directory}/{unit}/*"])[0].metadata_list}
    statuses = backfill.run(args(setup, out))
    assert f"taking over a stale lock {out}/scored/{backfill.LOCK}" in capfd.readouterr().err
    assert {n for n, s in statuses.items() if s["status"] == "skipped"} == set(committed)
    assert {n for n, s in statuses.items() if s["status"] == "done"} == set(UNITS) - set(committed)
    assert {path: FileSystems.match([path])[0].metadata_list[0].last_updated_in_seconds
            for path in untouched} == untouched
    assert_like_clean(clean, out)


def test_a_redo_killed_at_its_first_write_has_uncommitted_that_partition_first(setup, clean, out):
    """--force over a complete output, SIGKILLed before its first file write: the partition being redone lost
    its manifest first, so it is not taken for complete with files about to change; the next run redoes it."""
    backfill.run(args(setup, out))
    crashed = subprocess.run([sys.executable, "-c", WRAPPER, "_write_lines", "1",
                              *args(setup, out, "--force", "--max_parallel", "1")],
                             cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    assert len(manifests(out)) == len(UNITS) - 1
    statuses = backfill.run(args(setup, out))
    assert [s["status"] for s in statuses.values()].count("done") == 1
    assert_like_clean(clean, out)


def test_exception_then_rerun_matches_the_clean_run(setup, clean, tmp_path, monkeypatch, capsys):
    original, calls = backfill._write_lines, [0]

    def full_disk(path, data):
        calls[0] += 1
        if calls[0] == 4:
            raise OSError(28, "No space left on device")
        return original(path, data)

    monkeypatch.setattr(backfill, "_write_lines", full_disk)
    with pytest.raises(Exception, match="No space left on device"):
        backfill.run(args(setup, tmp_path))
    monkeypatch.setattr(backfill, "_write_lines", original)
    assert "1 of 4 partitions are complete; the same command redoes the rest" in capsys.readouterr().err
    assert not (tmp_path / "scored" / backfill.LOCK).exists()  # released on the way out
    assert len(manifests(tmp_path)) == 1
    unit = next(name for name in DAYS if name not in manifests(tmp_path))
    (tmp_path / "scored" / unit).mkdir(exist_ok=True)  # as a SIGKILL inside a file's write leaves it
    (tmp_path / "scored" / unit / ".scored.jsonl.0123456789ab.tmp").write_bytes(b'{"half": ')
    statuses = backfill.run(args(setup, tmp_path))
    assert f"removing 1 unfinished file write(s) left in {tmp_path / 'scored'}" in capsys.readouterr().err
    assert [s["status"] for s in statuses.values()].count("skipped") == 1
    assert_like_clean(clean, tmp_path)


def _hold_lock(output: str, ready, release) -> None:
    with locks.hold(output, backfill.LOCK):
        ready.set()
        release.wait(60)


def test_second_backfill_refuses_while_the_first_runs_and_a_stale_lock_is_taken_over(setup, clean, out, capsys):
    output = f"{out}/scored"
    if storage.is_local(output):
        os.makedirs(output)
    context = multiprocessing.get_context("spawn")  # a fresh process: no Cloud Storage client shared with this one
    ready, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(output, ready, release))
    holder.start()
    try:
        assert ready.wait(60)
        with pytest.raises(UserError, match=f"another backfill is writing to this output \\(pid {holder.pid} on "):
            backfill.run(args(setup, out))
        assert not [path for path in data_files(out) if path.startswith("dead_letter/")]  # nothing written
        os.kill(holder.pid, signal.SIGKILL)
        holder.join(10)
    finally:
        if holder.is_alive():
            holder.kill()
    assert json.loads(storage.read_file(f"{output}/{backfill.LOCK}"))["pid"] == holder.pid  # left behind
    backfill.run(args(setup, out))
    assert f"taking over a stale lock {output}/{backfill.LOCK} of pid {holder.pid}" in capsys.readouterr().err
    assert_like_clean(clean, out)


def test_events_are_selected_by_event_time_whatever_the_files(setup, clean, tmp_path):
    """Lines of all 4 days shuffled across 3 files: the same partitions, the same scored bytes."""
    all_lines = [line for path in sorted(pathlib.Path(setup["root"], "archive").glob("*/*.jsonl"))
                 for line in file_lines(path)]
    random.Random(3).shuffle(all_lines)
    (tmp_path / "mixed").mkdir()
    for index in range(3):
        (tmp_path / "mixed" / f"part-{index}.jsonl").write_bytes(b"\n".join(all_lines[index::3]) + b"\n")
    out = tmp_path / "out"
    backfill.run(args(setup, out, input_glob=str(tmp_path / "mixed" / "*.jsonl")))
    files = data_files(out)
    assert sorted(files) == sorted(clean["files"])
    for name, data in files.items():
        if name.startswith("scored/"):
            assert data == clean["files"][name], name
        else:  # the same broken lines, now found elsewhere
            raw = sorted(json.loads(line)["raw"] for line in data.splitlines())
            assert raw == sorted(json.loads(line)["raw"] for line in clean["files"][name].splitlines()), name


def test_other_model_version_is_reported_and_kept_unless_asked(setup, clean, tmp_path, capsys):
    import shutil

    out = tmp_path / "out"
    shutil.copytree(clean["out"], out)
    model_dir = tmp_path / "model"
    shutil.copytree(setup["model_dir"], model_dir)
    newer = publish_stand_in_model(model_dir, scale=50.0)
    flags = args(setup, out)
    flags[flags.index("--model_dir") + 1] = str(model_dir)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    statuses = backfill.run(flags)
    err = capsys.readouterr().err
    assert (f"3 complete partition(s) made with model {setup['version']}, kept (--redo_stale recomputes): "
            f"dt=2026-03-01, dt=2026-03-02, dt=2026-03-03") in err
    assert all(s["status"] == "skipped" for s in statuses.values())
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == before
    statuses = backfill.run(flags + ["--redo_stale"])
    assert {n: s["status"] for n, s in statuses.items()} == dict(dict.fromkeys(DAYS, "redone"), _untimed="skipped")
    found = manifests(out)
    assert {found[day]["model_version"] for day in DAYS} == {newer}
    assert all(r["model_version"] == newer for r in lines(out / "scored" / DAYS[0] / "scored.jsonl"))
    assert data_files(out)["dead_letter/dt=2026-03-01/dead_letter.jsonl"] == \
        clean["files"]["dead_letter/dt=2026-03-01/dead_letter.jsonl"]


def test_hour_partitions(setup, clean, tmp_path):
    flags = args(setup, tmp_path, "--partition", "hour")
    flags[flags.index("--start") + 1], flags[flags.index("--end") + 1] = "2026-03-02T10:00:00Z", "2026-03-02T12:00:00Z"
    statuses = backfill.run(flags)
    assert list(statuses) == ["dt=2026-03-02T10", "dt=2026-03-02T11", "_untimed"]
    day = lines(clean["out"] / "scored" / "dt=2026-03-02" / "scored.jsonl")
    for hour in ("10", "11"):
        records = lines(tmp_path / "scored" / f"dt=2026-03-02T{hour}" / "scored.jsonl")
        assert records == [r for r in day if r["event_time"][11:13] == hour] and records
    with pytest.raises(UserError, match="holds hour partitions"):
        backfill.run(args(setup, tmp_path))


@pytest.mark.parametrize("change, message", [
    ({"--start": "2026-13-01"}, "error: --start 2026-13-01: not a UTC date"),
    ({"--end": "yesterday"}, "error: --end yesterday: not a UTC date"),
    ({"--end": "2026-03-01"}, "error: --end 2026-03-01 must be after --start 2026-03-01"),
    ({"--start": "2026-03-01T06:00:00Z"}, "error: --start 2026-03-01T06:00:00Z: not on a day boundary"),
    ({"--model_dir": "/nonexistent/model"}, "error: --model_dir /nonexistent/model: no model here"),
    ({"--max_parallel": "0"}, "error: --max_parallel must be at least 1"),
    ({"--start": "0999-01-01"}, "error: --start 0999-01-01: must be from 1970 on"),
    ({"--start": "2000-01-01", "--end": "2030-01-01"},
     "error: --start 2000-01-01 .. --end 2030-01-01 spans 10,958 days, more than 366; add --yes if that is meant"),
    ({"--direct_num_workers": "-3"}, "error: --direct_num_workers must be 0 (one per core) or more"),
    ({"--end": None}, "error: missing --end"),
    ({"--source": "kafka", "--input": None, "--input_topic": "events"},
     "error: --source kafka needs --bootstrap_servers"),
    ({"--source": "kafka", "--input": None, "--input_topic": "events", "--bootstrap_servers": "localhost:1",
      "--end": "2999-01-01"}, "error: --source kafka: --end 2999-01-01 plus --replay_margin_s 3600 is in the future"),
    ({"--source": "kafka", "--input_topic": "events"}, "error: --input reads files; --source kafka reads --input_topic"),
])
def test_bad_flags_get_one_line_and_exit_2(setup, tmp_path, monkeypatch, capsys, change, message):
    flags = args(setup, tmp_path)
    for flag, value in change.items():
        if flag not in flags:
            flags += [flag, value]
            continue
        index = flags.index(flag)
        if value is None:
            del flags[index:index + 2]
        else:
            flags[index + 1] = value
    monkeypatch.setattr(sys, "argv", ["backfill", *flags])
    with pytest.raises(SystemExit) as exit_info:
        cli.main(backfill.run)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(message), err


def test_kafka_replay_between_two_timestamps(setup, clean, kafka_broker, tmp_path):
    """The archive's lines as messages stamped with their event time (a line without one: its day's noon plus its
    line number in ms); the 4th day lies outside [START, END). The same scored bytes as from files; a dead letter
    without an event time lands in the partition of its message time."""
    from confluent_kafka import Producer

    spec = load_spec("fraud")
    topic = f"backfill-{os.getpid()}-{random.randrange(1 << 30)}"
    kafka_broker.create_topic(topic, 3)
    # Idempotent, so that a retried batch (a fresh topic's leaders may still be settling) cannot land after a
    # later one: the replay stops at the first message past its end time.
    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "linger.ms": 5, "enable.idempotence": True})
    untimed_by_day: dict[str, list[str]] = {}
    for path in sorted(pathlib.Path(setup["root"], "archive").glob("*/*.jsonl")):
        day = path.parent.name[3:]
        noon_ms = event_time_us_of(f"{day}T12:00:00Z") // 1000
        for number, line in enumerate(file_lines(path), start=1):
            if len(line) > 900_000:  # the generator's oversized line: more than a Kafka message may hold
                continue
            time_us = dead_letter_time_us(dead_letter(line, "", {}, "fraud"), spec.event_time)
            if time_us is None:
                untimed_by_day.setdefault(f"dt={day}", []).append(line)
            producer.produce(topic, value=line, key=str(number).encode(),
                             timestamp=noon_ms + number if time_us is None else time_us // 1000)
            producer.poll(0)
    assert producer.flush(20) == 0
    del producer
    flags = args(setup, tmp_path) + ["--source", "kafka", "--bootstrap_servers", kafka_broker.bootstrap,
                                     "--input_topic", topic, "--replay_margin_s", "60"]
    del flags[flags.index("--input"):flags.index("--input") + 2]
    statuses = backfill.run(flags)
    assert list(statuses) == DAYS and all(s["status"] == "done" for s in statuses.values())
    files = data_files(tmp_path)
    for day in DAYS:
        assert files[f"scored/{day}/scored.jsonl"] == clean["files"][f"scored/{day}/scored.jsonl"]
        letters = [json.loads(line) for line in files[f"dead_letter/{day}/dead_letter.jsonl"].splitlines()]
        assert all(d["source"]["topic"] == topic and "offset" in d["source"] for d in letters)
        from_files = [json.loads(line)["raw"] for line in clean["files"][f"dead_letter/{day}/dead_letter.jsonl"]
                      .splitlines()]
        untimed = [dead_letter(line, "", {}, "fraud")["raw"] for line in untimed_by_day.get(day, [])]
        assert sorted(d["raw"] for d in letters) == sorted(from_files + untimed)
    assert manifests(tmp_path)[DAYS[0]]["input_files"] is None
    again = backfill.run(flags)
    assert all(s["status"] == "skipped" for s in again.values())


def test_six_days_with_the_trained_model_killed_twice_then_rerun(fraud_archive, fraud_model, tmp_path):
    """The issue's acceptance: a clean 6-day backfill, then one into a fresh output SIGKILLed twice
    at different points and rerun: exit 0, the same bytes, every event scored once."""
    input_glob = str(fraud_archive["root"] / "all" / "dt=2026-03-1[4-9]" / "*.jsonl")  # the six days' files
    six_days = ["--spec", "fraud", "--input", input_glob, "--model_dir", fraud_model[0],
                "--start", "2026-03-14", "--end", "2026-03-20", "--max_parallel", "2"]

    def outputs(out):
        return ["--output", str(out / "scored"), "--dead_letter", str(out / "dead_letter")]

    def command(out, *extra):
        return subprocess.run([sys.executable, *extra, *six_days, *outputs(out)], cwd=ROOT, capture_output=True,
                              text=True, timeout=600)

    assert command(tmp_path / "clean", "-m", "pipelines.backfill").returncode == 0
    for function, at in (("commit", 3), ("_write_lines", 3)):  # after a wave; then inside the next rerun's write
        crashed = command(tmp_path / "crashed", "-c", WRAPPER, function, str(at))
        assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    rerun = command(tmp_path / "crashed", "-m", "pipelines.backfill")
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert data_files(tmp_path / "crashed") == data_files(tmp_path / "clean")
    scored = [json.loads(line) for path in sorted((tmp_path / "clean" / "scored").glob("dt=*/scored.jsonl"))
              for line in path.read_text().splitlines()]
    assert len(scored) == len({r["event_id"] for r in scored}) == sum(
        d["valid"] for d in json.loads((fraud_archive["root"] / "all" / "_generated.json").read_text())["days"][13:19])
