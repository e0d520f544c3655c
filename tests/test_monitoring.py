"""Event-time monitoring (transforms/monitoring.py, pipelines/monitor.py): PSI, the spec's settings,
streaming windows against bounded ones, an archive with a drifted day, and the DirectRunner's refusal."""
from __future__ import annotations

import dataclasses
import datetime
import math

import apache_beam as beam
import numpy as np
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms import trigger, window
from apache_beam.utils.timestamp import Timestamp
from hypothesis import assume, given, strategies as st

from models.inference import scored_records
from models.registry import Baselines, ModelError, ModelVersion
from pipelines import cli, generate, monitor, score
from tests.conftest import DRIFT_DAY, read_json_lines, stand_in_baseline
from tests.kafka_helpers import make_topics, produce, read_topic, stop_once_committed, stream_scorer, unique_name, wait_for
from transforms.errors import UserError
from transforms.events import Block, EventBatch, ParseEvents, Raw, ScoredBatch, event_time_us_of
from transforms.features import SCORE_OUTPUT, raw_columns
from transforms.fileio import WriteJsonLines
from transforms.monitoring import (ALERTS, MONITOR_METRICS_NAMESPACE, PSI_EPSILON, WINDOWS, Bins, Monitor, WindowStats,
                                   _WindowRecords, psi, quantile_edges)
from transforms.spec import Monitoring, SpecError, _build, load_spec

FRAUD = load_spec("fraud")


# ---------------------------------------------------------------------------------------------
# The population stability index

bin_counts = st.lists(st.integers(0, 1000), min_size=2, max_size=12).filter(lambda counts: sum(counts) > 0)


@given(bin_counts, st.integers(1, 50))
def test_psi_of_the_expected_distribution_is_zero_at_any_sample_size(counts, scale):
    expected = np.array(counts) / sum(counts)
    assert psi(expected, np.array(counts) * scale) == pytest.approx(0.0, abs=1e-12)


@given(bin_counts, bin_counts)
def test_psi_is_never_negative_and_symmetric_in_its_two_distributions(a, b):
    a, b = a[:min(len(a), len(b))], b[:min(len(a), len(b))]
    assume(sum(a) > 0 and sum(b) > 0)
    a_shares, b_shares = np.array(a) / sum(a), np.array(b) / sum(b)
    assert psi(a_shares, b) >= 0
    assert psi(a_shares, b) == pytest.approx(psi(b_shares, a), rel=1e-9, abs=1e-12)


def test_psi_by_hand_and_with_empty_bins():
    # (0.9 - 0.5) ln(0.9 / 0.5) + (0.1 - 0.5) ln(0.1 / 0.5)
    assert psi([0.5, 0.5], [90, 10]) == pytest.approx(0.4 * math.log(1.8) + 0.4 * math.log(5))
    # An empty bin counts as PSI_EPSILON, so the index stays finite.
    assert psi([0.5, 0.5], [10, 0]) == pytest.approx((1 - 0.5) * math.log(1 / 0.5)
                                                     + (PSI_EPSILON - 0.5) * math.log(PSI_EPSILON / 0.5))
    assert psi([0.5, 0.5], [0, 0]) is None


def test_bins_split_numbers_at_quantile_edges_and_strings_by_term():
    values = np.arange(1, 101, dtype=np.float32)
    edges = quantile_edges(values, 4)
    assert edges == [25.0, 50.0, 75.0]
    assert Bins({"edges": edges}).counts(values).tolist() == [24, 25, 25, 26]
    assert quantile_edges(np.array([5.0] * 50 + [7.0] * 50), 10) == [5.0, 7.0]  # repeated values: fewer bins
    terms = Bins({"terms": ["pos", "online"]})
    assert terms.counts(np.array(["online", "atm", "pos", "kiosk", "online"], dtype=object)).tolist() == [1, 2, 2]


# ---------------------------------------------------------------------------------------------
# Spec settings

def _spec_with(monitoring) -> dict:
    document = {"name": "t", "entity_key": "id", "event_time": "t",
                "fields": {"id": {"type": "string"}, "t": {"type": "timestamp"}, "x": {"type": "number"}},
                "features": [{"name": "x", "kind": "zscore", "source": "x"}],
                "model": {"estimator": "sklearn.ensemble.IsolationForest"}}
    if monitoring is not None:
        document["monitoring"] = monitoring
    return document


def test_monitoring_settings_come_from_the_spec_and_leave_the_fingerprint_alone():
    spec = _build(_spec_with({"windows": ["5m", 60, "1h"], "allowed_lateness": 0, "min_events": 50,
                              "psi_threshold": 0.25, "max_alert_rate": 0.1}), "t.yaml")
    assert spec.monitoring == Monitoring(window_sizes_s=(60, 300, 3600), allowed_lateness_s=0, min_events=50,
                                         psi_threshold=0.25, max_alert_rate=0.1)
    default = _build(_spec_with(None), "t.yaml")
    assert default.monitoring == Monitoring()
    assert spec.fingerprint == default.fingerprint


@pytest.mark.parametrize("monitoring, message", [
    ({"windows": ["5 minutes"]}, r"monitoring\.windows: must be a duration"),
    ({"min_events": 0}, r"monitoring\.min_events: must be a whole number >= 1"),
    ({"psi_threshold": "high"}, r"monitoring\.psi_threshold: must be a number > 0"),
    ({"max_alert_rate": 2}, r"monitoring\.max_alert_rate: must be a share in \(0, 1\]"),
    ({"threshold": 0.2}, r"monitoring: unknown key threshold"),
])
def test_a_broken_monitoring_section_is_one_line_naming_the_key(monitoring, message):
    with pytest.raises(SpecError, match=message):
        _build(_spec_with(monitoring), "t.yaml")


# ---------------------------------------------------------------------------------------------
# Streaming windows (TestStream, watermarks, late data) against the bounded pipeline

T0 = datetime.datetime(2026, 3, 20, 10, 0, tzinfo=datetime.timezone.utc)
LATENESS_S = 120
CATEGORIES = ("grocery", "fuel", "travel", "electronics")


def _line(number: int, seconds: float, **fields) -> bytes:
    """A fraud event ``seconds`` after T0, varied by ``number``."""
    moment = T0 + datetime.timedelta(seconds=seconds)
    event = {"event_id": f"tx-{number}", "event_time": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
             "card_id": f"card-{number % 7}", "merchant_id": f"m-{number % 5}",
             "merchant_category": CATEGORIES[number % 4], "amount": 5.0 + (number * 37) % 200,
             "currency": "EUR", "country": ("DE", "FR", "ES")[number % 3], "channel": ("pos", "online")[number % 2]}
    return orjson.dumps({**event, **fields})


def _test_model(spec, version: str = "v-test", amounts_times: float = 1.0) -> ModelVersion:
    """A model version holding only what monitoring reads: a baseline from 300 events like the test's (their amounts
    multiplied by ``amounts_times``)."""
    events = [orjson.loads(_line(n, n)) for n in range(1000, 1300)]
    events = [event | {"amount": event["amount"] * amounts_times} for event in events]
    return ModelVersion("unused", {"version": version, "baseline": stand_in_baseline(spec, events, _score)})


def _score(event: dict) -> float:
    return event["amount"] / (event["amount"] + 1000)  # alerts (>= 0.5) from 1000 up


def _scored(batch: EventBatch, spec, version: str = "v-test") -> ScoredBatch:
    scores = {SCORE_OUTPUT: np.array([_score(e) for e in batch.events])}
    return ScoredBatch(batch, scored_records(spec, batch, scores, version), version)


def _monitored(raw_batches, spec, model, name: str = ""):
    """The monitoring graph over raw line batches; scores come from ``_score`` instead of a model."""
    parsed = raw_batches | f"Parse{name}" >> ParseEvents(spec)
    scored = parsed.events | f"Score{name}" >> beam.Map(_scored, spec)
    return ({"scored": scored, "dead_letters": parsed.dead_letters}
            | f"Monitor{name}" >> Monitor(spec, Baselines("unused", spec, model), model.version))


def _raw(lines: list[bytes]) -> Block:
    return Block.of([Raw(line, {"file": "test", "line": i}) for i, line in enumerate(lines)])


# Arrivals: (watermark before they arrive, in s after T0; lines). Windows of 60 s and 300 s, lateness 120 s.
ARRIVALS = [
    (None, [_line(n, s) for n, s in enumerate([50, 10, 95, 30, 5, 70, 115, 20, 61, 40, 100, 25])]
     + [_line(90, 45, amount=-5), b"not json"]),  # out of order; a dead letter with a time, one without
    (150, [_line(n, s) for n, s in enumerate([42, 65, 170, 200, 185, 240], start=20)]
     + [_line(91, 55, amount=-1)]),  # 42, 65 and the dead letter at 55: late for their minute; the rest on time
    (400, [_line(n, s) for n, s in enumerate([12, 230, 430], start=40)]),
    # 12 and 230: too late for their minute (its end + 120 s < 400), late for their 5 minutes; 430: on time
]


def _status(seconds: float, size: int, watermark: float | None) -> str:
    end = (seconds // size + 1) * size
    if watermark is None or end > watermark:
        return "on_time"
    return "late" if end + LATENESS_S > watermark else "dropped"


def _seconds(line: bytes) -> float | None:
    """A line's event time in s after T0 (None for a line that is not JSON)."""
    try:
        return (event_time_us_of(orjson.loads(line)["event_time"]) - event_time_us_of(T0)) / 1e6
    except orjson.JSONDecodeError:
        return None


def _lines_with(status: str, size: int) -> list[bytes]:
    return [line for watermark, lines in ARRIVALS for line in lines
            if _seconds(line) is not None and _status(_seconds(line), size, watermark) == status]


def _stream() -> TestStream:
    stream = TestStream()
    for watermark, lines in ARRIVALS:
        if watermark is not None:
            stream.advance_watermark_to(Timestamp.of((T0 + datetime.timedelta(seconds=watermark)).timestamp()))
        stream.add_elements([_raw(lines)])
    return stream.advance_watermark_to_infinity()


def _bounded_windows(line_sets: dict[str, list[bytes]], spec, model, directory) -> dict[str, list[dict]]:
    """The bounded pipeline's monitoring records over each set of lines (one pipeline, a Monitor per set)."""
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        for name, lines in line_sets.items():
            windows = _monitored(pipeline | f"Read{name}" >> beam.Create([_raw(lines)]), spec, model, name)[WINDOWS]
            windows | f"Write{name}" >> WriteJsonLines(str(directory / name), "windows")
    return {name: read_json_lines(directory / name) for name in line_sets}


def _comparable(record: dict) -> dict:
    """A record with its mean score rounded: sums in another order differ in the last bits."""
    mean = record["score_mean"]
    return {**record, "score_mean": None if mean is None else round(mean, 9)}


def _counts(record: dict) -> tuple[str, tuple[int, ...]]:
    return record["window_start"], tuple(record[key] for key in ("events", "dead_letters", "scored", "alerts"))


def _add(counts) -> tuple[int, ...]:
    return tuple(map(sum, zip(*counts)))


def test_an_empty_pane_makes_no_window_record():
    """Flink closes each window with a final pane even when nothing came after its on-time one (Beam's Python windowing
    asks for it); that pane's record read as a second window of 0 events (the live drift replay on Flink, 4 runs)."""
    spec = dataclasses.replace(FRAUD, monitoring=Monitoring(window_sizes_s=(60,), allowed_lateness_s=LATENESS_S,
                                                            min_events=5, psi_threshold=0.2, max_alert_rate=0.5))
    with TestPipeline() as pipeline:
        records = (pipeline
                   | beam.Create([window.TimestampedValue({"v-test": WindowStats()}, 30), window.TimestampedValue(
                       {"v-test": WindowStats(events=3, scored=3, score_counts=np.ones(10, dtype=int))}, 90)])
                   | beam.WindowInto(window.FixedWindows(60))
                   | beam.ParDo(_WindowRecords(spec, Baselines("unused", spec, _test_model(spec)), "v-test",
                                               60)).with_outputs(
                       ALERTS, main=WINDOWS))
        assert_that(records[WINDOWS] | beam.Map(lambda r: (r["window_start"], r["events"])),
                    equal_to([("1970-01-01T00:01:00Z", 3)]))


def test_streaming_windows_equal_the_bounded_ones_and_late_data_is_counted(tmp_path):
    spec = dataclasses.replace(FRAUD, monitoring=Monitoring(window_sizes_s=(60, 300), allowed_lateness_s=LATENESS_S,
                                                            min_events=5, psi_threshold=0.2, max_alert_rate=0.5))
    model = _test_model(spec)
    assert [len(_lines_with("dropped", size)) for size in (60, 300)] == [2, 0]
    on_time = {size: _lines_with("on_time", size) for size in (60, 300)}
    late = {size: _lines_with("late", size) for size in (60, 300)}
    bounded = _bounded_windows({f"{kind}{size}": lines for size in (60, 300) for kind, lines in (
        ("OnTime", on_time[size]), ("NotTooLate", on_time[size] + late[size]))}, spec, model, tmp_path)

    options = PipelineOptions(["--runner", "BundleBasedDirectRunner"])
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as pipeline:
        windows = _monitored(pipeline | _stream(), spec, model)[WINDOWS]
        for size in (60, 300):
            of_size = windows | f"Of{size}s" >> beam.Filter(lambda record, wanted: record["window_s"] == wanted, size)
            # The on-time panes are the bounded pipeline's windows over the events that came on time ...
            assert_that(of_size
                        | f"OnTime{size}s" >> beam.Filter(lambda record: record["pane"] == "on_time")
                        | f"Comparable{size}s" >> beam.Map(_comparable),
                        equal_to([_comparable(r) for r in bounded[f"OnTime{size}"] if r["window_s"] == size]),
                        label=f"OnTimeIsBounded{size}s")
            # ... the late panes count the late events and dead letters ...
            at_the_end = of_size | f"AtTheEnd{size}s" >> beam.WindowInto(
                window.GlobalWindows(), trigger=trigger.AfterWatermark(),
                accumulation_mode=trigger.AccumulationMode.DISCARDING)
            assert_that(at_the_end
                        | f"Late{size}s" >> beam.Filter(lambda record: record["pane"] == "late")
                        | f"LateCount{size}s" >> beam.Map(lambda record: record["events"] + record["dead_letters"])
                        | f"SumLate{size}s" >> beam.CombineGlobally(sum),
                        equal_to([len(late[size])]), label=f"LateCounted{size}s")
            # ... and all panes of a window add up to the bounded window over what was not too late.
            assert_that(at_the_end
                        | f"Counts{size}s" >> beam.Map(_counts)
                        | f"AddPanes{size}s" >> beam.CombinePerKey(_add),
                        equal_to([_counts(r) for r in bounded[f"NotTooLate{size}"] if r["window_s"] == size]),
                        label=f"AllPanesAreBounded{size}s")
    assert all(late.values())


def test_a_window_record_holds_rates_scores_and_drift_and_alerts_cross_the_spec_thresholds():
    spec = dataclasses.replace(FRAUD, monitoring=Monitoring(window_sizes_s=(60,), min_events=10, psi_threshold=0.2,
                                                            max_alert_rate=0.3))
    model = _test_model(spec)
    like_training = [_line(n, 120 + i * 0.25) for i, n in enumerate(range(1000, 1200))]
    shifted = [_line(n, 180 + n, channel="online", amount=5000.0) for n in range(30)]  # every one alerts
    too_few = [_line(n, 240 + n, amount=5000.0) for n in range(5)] + [b"{", _line(9, 241, amount=0)]
    with beam.Pipeline(runner="DirectRunner") as pipeline:
        monitored = _monitored(pipeline | beam.Create([_raw(like_training + shifted + too_few)]), spec, model)
        assert_that(monitored[WINDOWS] | beam.Map(lambda r: (
            r["window_start"], r["events"], r["dead_letters"], r["alerts"], r["alert_rate"], r["dead_letter_rate"],
            r["input_per_s"], r["drift"]["channel"] is None)),
            equal_to([("2026-03-20T10:02:00Z", 200, 0, 0, 0.0, 0.0, 200 / 60, False),
                      ("2026-03-20T10:03:00Z", 30, 0, 30, 1.0, 0.0, 30 / 60, False),
                      ("2026-03-20T10:04:00Z", 5, 1, 5, 1.0, 1 / 6, 6 / 60, True)]), label="Windows")
        assert_that(monitored[ALERTS] | beam.Map(lambda a: (a["window_start"], a["kind"],
                                                            sorted(a.get("features", ())))),
                    equal_to([("2026-03-20T10:03:00Z", "drift", ["amount_bucket", "amount_log", "channel"]),
                              ("2026-03-20T10:03:00Z", "alert_rate", [])]), label="Alerts")


def test_after_a_hot_reload_each_batch_is_compared_with_the_baseline_of_the_version_that_scored_it():
    """A live stream switches versions mid-window (a hot reload): a new version trained on amounts three times as
    large scores amounts three times as large. Compared with the first version's baseline, that is drift (a false
    alert on every window after each model update); each version's batches count in a record of their own, against
    their own version's baseline, and the window's dead letter goes to the newest version's."""
    spec = dataclasses.replace(FRAUD, monitoring=Monitoring(window_sizes_s=(60,), min_events=10, psi_threshold=0.2))
    first, reloaded = _test_model(spec, "v-first"), _test_model(spec, "v-reloaded", amounts_times=3)
    baselines = {version.version: (version.version, version.baseline()) for version in (first, reloaded)}.__getitem__
    lines = {"v-first": [_line(n, 120 + i * 0.25) for i, n in enumerate(range(1000, 1200))] + [_line(9, 130, amount=0)],
             "v-reloaded": [_line(n, 121 + i * 0.25, amount=(5.0 + (n * 37) % 200) * 3)
                            for i, n in enumerate(range(1200, 1400))]}
    new_events = [orjson.loads(line) for line in lines["v-reloaded"]]
    new_amounts = raw_columns(EventBatch(new_events, [0] * len(new_events)), spec)["amount"]
    entry = first.baseline()["features"]["amount_log"]
    assert psi(entry["shares"], Bins(entry).counts(new_amounts)) > spec.monitoring.psi_threshold  # (the false alert)
    with TestPipeline() as pipeline:
        parsed = {version: pipeline | f"Read{version}" >> beam.Create([_raw(block)]) | f"Parse{version}" >> ParseEvents(spec)
                  for version, block in lines.items()}
        scored = [parsed[version].events | f"Score{version}" >> beam.Map(_scored, spec, version) for version in lines]
        monitored = ({"scored": scored | beam.Flatten(), "dead_letters": [p.dead_letters for p in parsed.values()]
                      | "DeadLetters" >> beam.Flatten()}
                     | Monitor(spec, baselines, first.version))
        assert_that(monitored[WINDOWS] | beam.Map(lambda r: (r["window_start"], r["baseline_version"], r["events"],
                                                             r["dead_letters"], r["drift"]["amount_log"] < 0.1)),
                    equal_to([("2026-03-20T10:02:00Z", "v-first", 200, 0, True),
                              ("2026-03-20T10:02:00Z", "v-reloaded", 200, 1, True)]), label="Windows")
        assert_that(monitored[ALERTS], equal_to([]), label="NoAlerts")


def test_a_versions_baseline_is_read_from_the_model_dir_or_else_the_first_versions_is_used_and_said(fraud_model,
                                                                                                   caplog):
    model_dir, trained = fraud_model
    first = _test_model(load_spec("fraud"), "v-first")
    baselines = Baselines(model_dir, load_spec("fraud"), first)
    assert baselines(trained.version) == (trained.version, trained.baseline())
    assert baselines("v-first") == ("v-first", first.baseline())
    for _ in range(2):
        assert baselines("20260101T000000.000000Z-gone") == ("v-first", first.baseline())
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("monitoring:")] == [
        f"monitoring: model 20260101T000000.000000Z-gone in {model_dir}: missing, or its manifest.json is missing; its "
        f"windows are compared with model v-first's training baseline"]


def test_a_model_without_a_baseline_is_refused_in_one_line():
    with pytest.raises(ModelError, match="model v0 has no monitoring baseline .*; train a new version"):
        ModelVersion("unused", {"version": "v0"}).baseline()


# ---------------------------------------------------------------------------------------------
# The generator's drift: one day's numbers multiplied, every other day as without it

def test_the_generator_multiplies_one_days_amounts_and_writes_the_other_days_unchanged(tmp_path, capsys):
    flags = ["--spec", "fraud", "--days", "3", "--events_per_day", "300", "--start", "2026-03-01"]
    assert generate.main([*flags, "--out", str(tmp_path / "plain")]) == 0
    assert generate.main([*flags, "--out", str(tmp_path / "drift"), "--drift_day", "2026-03-02",
                          "--drift_factor", "3"]) == 0
    for day in ("2026-03-01", "2026-03-03"):
        assert (tmp_path / "plain" / f"dt={day}" / "events.jsonl").read_bytes() == (
            tmp_path / "drift" / f"dt={day}" / "events.jsonl").read_bytes()
    lines = [(tmp_path / name / "dt=2026-03-02" / "events.jsonl").read_bytes().splitlines()
             for name in ("plain", "drift")]
    pairs = [(orjson.loads(a), orjson.loads(b)) for a, b in zip(*lines) if _amount(a) is not None]
    assert len(pairs) > 280
    for plain, drifted in pairs:
        assert drifted == {**plain, "amount": round(plain["amount"] * 3, 6)}
    manifest = orjson.loads((tmp_path / "drift" / generate.MANIFEST_NAME).read_bytes())
    assert manifest["drift"] == {"day": "2026-03-02", "factor": 3.0, "fields": ["amount"]}
    with pytest.raises(SystemExit) as exit_status:
        generate.main([*flags, "--out", str(tmp_path / "x"), "--drift_day", "2026-03-04"])
    assert exit_status.value.code == 2
    assert capsys.readouterr().err.strip().endswith(
        "error: --drift_day 2026-03-04 is not one of the days written (2026-03-01 .. 2026-03-03)")


def _amount(line: bytes) -> float | None:
    """The line's amount if it is a valid one (a positive number), else None."""
    try:
        amount = orjson.loads(line).get("amount")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    return amount if type(amount) in (int, float) and amount > 0 else None


# ---------------------------------------------------------------------------------------------
# Done when: a day of amounts x3 in an archive raises drift alerts on that day and no other

def test_an_archive_with_a_day_of_tripled_amounts_alerts_on_that_day_only(fraud_drift_monitored):
    # Hourly windows: at 10,000 events a day an hour holds 25 (night) to 750 (noon) events, so the busy
    # hours reach the spec's 500 events for drift figures; a minute holds 7.
    manifest, totals = fraud_drift_monitored["manifest"], fraud_drift_monitored["totals"]
    records = read_json_lines(fraud_drift_monitored["out"])
    windows = [r for r in records if r["kind"] == "window"]
    alerts = [r for r in records if r["kind"] != "window"]

    days = [day["date"] for day in manifest["days"]]
    for day in manifest["days"]:
        of_day = [r for r in windows if r["window_start"].startswith(day["date"])]
        assert len(of_day) == 24 and sum(r["events"] for r in of_day) == day["valid"]
    untimed = totals[f"{MONITOR_METRICS_NAMESPACE}/untimed_dead_letters"]
    assert sum(r["dead_letters"] for r in windows) + untimed == sum(day["lines"] - day["valid"]
                                                                    for day in manifest["days"])

    measured = {r["window_start"] for r in windows if r["events"] >= FRAUD.monitoring.min_events}
    drift_alerts = [a for a in alerts if a["kind"] == "drift"]
    assert drift_alerts
    assert {a["window_start"] for a in drift_alerts} == {start for start in measured
                                                         if start.startswith(DRIFT_DAY.isoformat())}
    assert {name for a in drift_alerts for name in a["features"]} == {
        f.name for f in FRAUD.features if f.source == "amount"}
    report = fraud_drift_monitored["printed"]
    assert all(f"3600 s  {day}" in report for day in days)
    assert f"  {len(alerts):,} alerts:" in report


# ---------------------------------------------------------------------------------------------
# Live: drift alerts as the bounded run raised them; the DirectRunner refuses the monitoring stage instead of hanging

# Extended: on Prism it passed 4 runs alone or beside busy loops, and failed in a run of the whole suite (windows
# short of events: some came late, under that load; cause not found, docs/limits.md). On Flink every window came
# twice, the second an empty final pane that read as 0 events, in 4 runs of 4; passed once empty panes made no
# record (test_an_empty_pane_makes_no_window_record).
@pytest.mark.extended
@pytest.mark.parametrize("runner", ["PrismRunner", "FlinkRunner"])
def test_live_drift_alerts_are_the_bounded_runs(runner, kafka_broker, fraud_model, fraud_drift_monitored):
    """Four days of events, the third with every amount tripled, replayed to three partitions stamped with event
    time: live monitoring in hourly windows counts each window's events and raises the drift alerts of the
    bounded run (tests/test_monitoring.py) over the same events, on the same windows, with the same PSI. (The
    generator's events arrive up to 9.6 s out of order: --max_delay_s 10 keeps them all on time.)"""
    archive = sorted((fraud_drift_monitored["out"].parent / "archive").glob("*/*.jsonl"))
    lines = [line for path in archive for line in path.read_bytes().splitlines()]
    bounded = read_json_lines(fraud_drift_monitored["out"])
    bounded_windows = {r["window_start"]: r["events"] for r in bounded if r["kind"] == "window"}
    bounded_drift = {a["window_start"]: a["features"] for a in bounded if a["kind"] == "drift"}
    assert bounded_drift  # the drifted day's busy hours
    bootstrap = kafka_broker.bootstrap
    topics = make_topics(kafka_broker, "drift")
    monitoring = unique_name("drift-monitoring")
    kafka_broker.create_topic(monitoring, 1)
    ends = produce(bootstrap, topics[0], lines, stamp_event_time=True)
    group = unique_name("drift")
    monitored: list[dict] = []

    def every_window_out() -> bool:
        monitored.extend(record for _, record in read_topic(bootstrap, monitoring, quiet_s=0.5)[len(monitored):])
        return len([r for r in monitored if r["kind"] == "window"]) >= len(bounded_windows)

    with stream_scorer(fraud_model[0], bootstrap, topics, group, "--runner", runner, "--monitoring_topic", monitoring,
                       "--window_s", "3600", "--max_delay_s", "10", "--model_poll_seconds", "0") as scorer:
        wait_for(every_window_out, 240, f"every hourly window out on {runner}")
        stop_once_committed(scorer, bootstrap, group, topics[0], ends)
    live_windows = {r["window_start"]: r["events"] for r in monitored if r["kind"] == "window"}
    assert len([r for r in monitored if r["kind"] == "window"]) == len(live_windows)  # one record a window
    assert live_windows == bounded_windows
    assert {r["pane"] for r in monitored if r["kind"] == "window"} == {"on_time"}
    live_drift = {a["window_start"]: a["features"] for a in monitored if a["kind"] == "drift"}
    assert live_drift.keys() == bounded_drift.keys()
    for start, features in bounded_drift.items():
        assert live_drift[start] == pytest.approx(features, abs=1e-9), start


def test_stream_monitoring_on_the_direct_runner_is_refused_naming_the_stage(fraud_model, kafka_broker):
    kafka_broker.create_topic("monitor-refusal-in", 1)
    with pytest.raises(UserError, match=r"--mode stream: these stages group, merge branches or keep state: Monitor, "
                                        r"MonitoringRecords \(first: Monitor/.*"
                                        r"--runner PrismRunner .*, FlinkRunner or DataflowRunner"):
        score.run(["--mode", "stream", "--spec", "fraud", "--model_dir", fraud_model[0],
                   "--bootstrap_servers", kafka_broker.bootstrap, "--input_topic", "monitor-refusal-in",
                   "--output_topic", "out", "--dead_letter_topic", "dead", "--monitoring_topic", "monitoring",
                   "--runner", "DirectRunner"])


def test_stream_monitoring_translates_for_a_streaming_runner(fraud_model, kafka_broker, monkeypatch):
    """Dataflow's dry run translates the stream with its monitoring stage (tests/test_streaming_runners.py runs it
    live on Prism and Flink)."""
    class Translated(Exception):
        pass

    def capture(result):
        raise Translated(result)

    monkeypatch.setattr(cli, "counters", capture)
    kafka_broker.create_topic("monitor-translation-in", 1)
    with pytest.raises(Translated) as translated:
        score.run(["--spec", "fraud", "--mode", "stream", "--bootstrap_servers", kafka_broker.bootstrap,
                   "--input_topic", "monitor-translation-in", "--output_topic", "scored", "--dead_letter_topic", "dead",
                   "--monitoring_topic", "monitoring", "--window_s", "60", "--model_dir", fraud_model[0],
                   "--runner", "DataflowRunner", "--dry_run=True", "--project", "p-project", "--region", "us-central1",
                   "--temp_location", "gs://rtml-bucket/tmp"])
    job = translated.value.args[0].job
    steps = {t.unique_name for t in job.proto_pipeline.components.transforms.values()}
    assert job.proto.type_.name == "JOB_TYPE_STREAMING"
    assert {"Monitor/Merge60s", "WriteMonitoring"} <= steps
