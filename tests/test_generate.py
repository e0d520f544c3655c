"""Tests of pipelines.generate: layout, determinism, manifest counts and the event contract.

The contract check below is a small, independent reading of the event contract (events.md),
so that the generator is not tested against code it could share a mistake with.
"""
import datetime as dt
import gzip
import json
import math
import pathlib
import re
import subprocess
import sys

import pytest

from pipelines import generate

MIB = 1024 * 1024
REPO = pathlib.Path(__file__).resolve().parents[1]
FRAUD_KINDS = {"not_json", "not_object", "missing_field", "null_field", "wrong_type", "nan",
               "infinity", "non_positive_amount", "bad_time", "time_without_zone", "bad_enum",
               "bad_code", "empty_id", "invalid_utf8", "oversized", "empty_line"}
SENSOR_KINDS = FRAUD_KINDS - {"non_positive_amount", "bad_enum", "bad_code"} | {"negative_reading"}


# ---------------------------------------------------------------- an independent contract check

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})")


def _is_time(value) -> bool:
    if not isinstance(value, str) or not RFC3339.fullmatch(value):
        return False
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_text(value) -> bool:
    return isinstance(value, str) and value != ""


def _is_letters(n):
    return lambda value: isinstance(value, str) and len(value) == n and value.isalpha()


RULES = {
    "fraud": {
        "event_id": _is_text,
        "event_time": _is_time,
        "card_id": _is_text,
        "merchant_id": _is_text,
        "merchant_category": _is_text,
        "amount": lambda v: _is_number(v) and v > 0,
        "currency": _is_letters(3),
        "country": _is_letters(2),
        "channel": lambda v: v in ("pos", "online", "atm"),
    },
    "sensor": {
        "event_id": _is_text,
        "event_time": _is_time,
        "machine_id": _is_text,
        "temperature_c": _is_number,
        "vibration_mm_s": lambda v: _is_number(v) and v >= 0,
        "pressure_bar": lambda v: _is_number(v) and v >= 0,
        "rpm": lambda v: _is_number(v) and v >= 0,
    },
}


def _reject_constant(token):
    raise ValueError(f"{token} is not JSON")


def contract_event(spec: str, line: bytes):
    """The event if the line satisfies the spec's contract, else None."""
    if len(line) > MIB:
        return None
    try:
        event = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # also UnicodeDecodeError
        return None
    if not isinstance(event, dict):
        return None
    if all(field in event and rule(event[field]) for field, rule in RULES[spec].items()):
        return event
    return None


# ---------------------------------------------------------------- helpers

def run(out: pathlib.Path, spec: str, *flags: str) -> dict:
    """Runs the generator in-process; returns its manifest as written."""
    assert generate.main(["--spec", spec, "--out", str(out), *flags]) == 0
    return json.loads((out / "_generated.json").read_text())


def read_lines(path: pathlib.Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def all_files(root: pathlib.Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module", params=["fraud", "sensor"])
def archive(request, tmp_path_factory):
    """(spec, directory, manifest) of a small archive with many broken lines."""
    out = tmp_path_factory.mktemp(request.param)
    manifest = run(out, request.param, "--days", "2", "--events_per_day", "1500",
                   "--broken_share", "0.05", "--start", "2026-03-15")
    return request.param, out, manifest


# ---------------------------------------------------------------- tests

def test_same_seed_gives_identical_files_and_another_seed_different_ones(tmp_path):
    flags = ("--days", "2", "--events_per_day", "300", "--broken_share", "0.1")
    run(tmp_path / "a", "fraud", *flags, "--seed", "3")
    run(tmp_path / "b", "fraud", *flags, "--seed", "3")
    run(tmp_path / "c", "fraud", *flags, "--seed", "4")
    a, b, c = (all_files(tmp_path / name) for name in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert all(a[name] != c[name] for name in a if name.startswith("dt="))


def test_days_are_partitions_named_by_date(archive):
    spec, out, manifest = archive
    assert manifest["spec"] == spec
    assert [day["date"] for day in manifest["days"]] == ["2026-03-15", "2026-03-16"]
    assert [day["file"] for day in manifest["days"]] == [
        "dt=2026-03-15/events.jsonl", "dt=2026-03-16/events.jsonl"]
    assert sorted(all_files(out)) == ["_generated.json", "dt=2026-03-15/events.jsonl",
                                      "dt=2026-03-16/events.jsonl"]


def test_manifest_counts_the_valid_and_broken_lines_of_each_file(archive):
    spec, out, manifest = archive
    for day in manifest["days"]:
        lines = read_lines(out / day["file"])
        events = [contract_event(spec, line) for line in lines]
        valid = [event for event in events if event is not None]
        assert day["lines"] == len(lines) == 1500
        assert day["valid"] == len(valid)
        assert sum(day["broken"].values()) == len(lines) - len(valid) == 75
        assert day["positive"] == sum(event[manifest["label"]] for event in valid)


def test_every_kind_of_broken_line_appears_and_oversized_at_most_once_a_day(archive):
    spec, out, manifest = archive
    kinds = set().union(*(day["broken"] for day in manifest["days"]))
    assert kinds == (FRAUD_KINDS if spec == "fraud" else SENSOR_KINDS)
    for day in manifest["days"]:
        lines = read_lines(out / day["file"])
        assert day["broken"].get("oversized", 0) == sum(len(line) > MIB for line in lines) <= 1
        assert day["broken"]["empty_line"] == lines.count(b"")
        not_utf8 = sum(1 for line in lines if not _decodes(line))
        assert day["broken"]["invalid_utf8"] == not_utf8


def _decodes(line: bytes) -> bool:
    try:
        line.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def test_valid_events_have_unique_ids_labels_and_times_within_their_day(archive):
    spec, out, manifest = archive
    label = manifest["label"]
    ids = []
    for day in manifest["days"]:
        valid = [e for e in map(lambda line: contract_event(spec, line),
                                read_lines(out / day["file"])) if e is not None]
        assert all(event[label] in (0, 1) and not isinstance(event[label], bool)
                   for event in valid)
        assert all(event["event_time"].startswith(day["date"] + "T") for event in valid)
        assert all(event["event_time"].endswith("Z") and len(event["event_time"]) == 24
                   for event in valid)
        times = [event["event_time"] for event in valid]
        in_order = sum(a <= b for a, b in zip(times, times[1:]))
        assert in_order >= 0.9 * (len(times) - 1)  # roughly ordered, a little disorder allowed
        ids += [event["event_id"] for event in valid]
    assert len(ids) == len(set(ids))
    assert sum(day["positive"] for day in manifest["days"]) > 0


def test_sensor_regimes_are_present_and_separated(tmp_path):
    manifest = run(tmp_path, "sensor", "--days", "2", "--events_per_day", "1440",
                   "--broken_share", "0")
    events = [json.loads(line) for day in manifest["days"]
              for line in read_lines(tmp_path / day["file"])]
    by_regime = {}
    for event in events:
        by_regime.setdefault(event["regime"], []).append(event)
    assert set(by_regime) == {"idle", "normal", "heavy"}
    rpm = {regime: [e["rpm"] for e in regime_events] for regime, regime_events in by_regime.items()}
    assert max(rpm["idle"]) < min(rpm["normal"]) and max(rpm["normal"]) < min(rpm["heavy"])
    assert {event["machine_id"] for event in events} == {f"m-{i:03d}" for i in range(1, 31)}
    assert {event["failure"] for event in events} == {0, 1}


def test_sensor_readings_drift_upward_before_a_failure(tmp_path):
    manifest = run(tmp_path, "sensor", "--days", "3", "--broken_share", "0")
    events = [json.loads(line) for day in manifest["days"]
              for line in read_lines(tmp_path / day["file"])]
    # Mean excess over the regime's usual level in the 24 h before failures, against noise of
    # about 2 C and 0.5 mm/s.
    for field, least_mean_excess in (("temperature_c", 3.0), ("vibration_mm_s", 1.0)):
        healthy = {}
        for event in events:
            if event["failure"] == 0:
                healthy.setdefault(event["regime"], []).append(event[field])
        usual = {regime: sum(values) / len(values) for regime, values in healthy.items()}
        excess = [event[field] - usual[event["regime"]] for event in events if event["failure"]]
        assert sum(excess) / len(excess) > least_mean_excess, field


def test_fraud_is_rare_and_comes_in_bursts_on_a_card(tmp_path):
    manifest = run(tmp_path, "fraud", "--days", "1", "--broken_share", "0")
    events = [json.loads(line) for line in read_lines(tmp_path / manifest["days"][0]["file"])]
    frauds = [event for event in events if event["is_fraud"] == 1]
    assert 0.003 < len(frauds) / len(events) < 0.015
    frauds_per_card = {}
    for event in frauds:
        frauds_per_card[event["card_id"]] = frauds_per_card.get(event["card_id"], 0) + 1
    assert min(frauds_per_card.values()) >= 2


def test_compressed_files_hold_the_same_lines_and_replace_plain_ones(tmp_path):
    flags = ("--days", "1", "--events_per_day", "200")
    run(tmp_path / "plain", "sensor", *flags)
    run(tmp_path / "gz", "sensor", *flags)
    manifest = run(tmp_path / "gz", "sensor", *flags, "--compress")
    assert manifest["days"][0]["file"] == "dt=2026-03-01/events.jsonl.gz"
    assert sorted(all_files(tmp_path / "gz")) == ["_generated.json", "dt=2026-03-01/events.jsonl.gz"]
    with gzip.open(tmp_path / "gz" / "dt=2026-03-01/events.jsonl.gz", "rb") as compressed:
        assert compressed.read() == (tmp_path / "plain" / "dt=2026-03-01/events.jsonl").read_bytes()


def test_no_broken_lines_with_a_zero_share(tmp_path):
    manifest = run(tmp_path, "fraud", "--days", "1", "--events_per_day", "300",
                   "--broken_share", "0")
    day = manifest["days"][0]
    assert day["broken"] == {} and day["valid"] == day["lines"] == 300
    assert all(contract_event("fraud", line) for line in read_lines(tmp_path / day["file"]))


@pytest.mark.parametrize("flags", [
    ["--spec", "weather", "--days", "1"],
    ["--spec", "fraud", "--days", "0"],
    ["--spec", "fraud", "--days", "two"],
    ["--spec", "fraud", "--days", "1", "--start", "2026-02-30"],
    ["--spec", "fraud", "--days", "1", "--broken_share", "1.5"],
])
def test_a_bad_flag_is_a_one_line_error_with_exit_code_2(flags, tmp_path):
    result = subprocess.run([sys.executable, "-m", "pipelines.generate", *flags,
                             "--out", str(tmp_path / "out")],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and "error" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
