"""Per-entity features: the definition, bounded == live (TestStream), specs, and what they buy."""
import collections
import datetime
import json

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from hypothesis import given, settings, strategies as st

from pipelines import cli, score, serving
from transforms import entity_columns, ordering
from transforms.entity import AddEntityFeatures, EntityHistoryStep
from transforms.entity_columns import entity_feature_columns
from transforms.events import EventBatch
from transforms.spec import SpecError, load_spec

FRAUD_ENTITY = load_spec("fraud_entity")
START_US = 1_772_323_200_000_000  # 2026-03-01T00:00:00Z
_US = 1_000_000


def _event(number: int, card: str, offset_s: float, amount: float, country: str) -> dict:
    time_us = START_US + int(offset_s * _US)
    moment = datetime.datetime.fromtimestamp(time_us / _US, datetime.timezone.utc)
    return {"event_id": f"e{number:04d}", "event_time": moment.isoformat().replace("+00:00", "Z"),
            "card_id": card, "merchant_id": f"m{number % 3}", "merchant_category": "grocery", "amount": amount,
            "currency": "EUR", "country": country, "channel": "pos", "_time_us": time_us}


def _reference(spec, events: list[dict]) -> dict[str, dict]:
    """The table in transforms/entity.py, evaluated by brute force over each event's earlier events."""
    order = sorted(events, key=lambda e: (e["_time_us"], e["event_id"]))
    values = {}
    for position, event in enumerate(order):
        row = {}
        for feature in spec.entity_features:
            window_us = feature.window_s * _US
            earlier = [e for e in order[:position] if e["card_id"] == event["card_id"]
                       and event["_time_us"] - e["_time_us"] < window_us]
            row[feature.name] = _by_definition(feature, earlier, event)
        values[event["event_id"]] = row
    return values


def _by_definition(feature, earlier: list[dict], event: dict) -> float:
    if feature.kind == "count":
        return len(earlier)
    if feature.kind == "seconds_since_previous":
        return (event["_time_us"] - earlier[-1]["_time_us"]) / _US if earlier else feature.window_s
    values, x = [e[feature.source] for e in earlier], event[feature.source]
    if feature.kind == "is_new":
        return float(x not in values)
    if feature.kind == "sum":
        return sum(values)
    mean = sum(values) / len(values) if values else None
    if feature.kind == "mean":
        return x if mean is None else mean
    if feature.kind == "ratio_to_mean":
        return 1.0 if mean is None else (x / mean if mean else 0.0)
    return 0.0 if mean is None else x - mean


def _fold(spec, events: list[dict]) -> dict[str, dict]:
    """The entity features of ``events`` as the bounded mode computes them: per card, sort and fold."""
    step, by_card, out = EntityHistoryStep(spec), {}, {}
    for event in events:
        by_card.setdefault(event[spec.entity_key], []).append((event["_time_us"], event["event_id"], event))
    for keyed in by_card.items():
        for timestamped in ordering.fold(keyed, step):
            _, enriched = timestamped.value
            out[enriched["event_id"]] = {f.name: enriched[f.name] for f in spec.entity_features}
    return out


events_strategy = st.lists(
    st.tuples(st.sampled_from(["c1", "c2", "c3"]), st.floats(0, 10 * 86400, allow_nan=False),
              st.sampled_from([1.0, 2.5, 10.0, 99.99, 0.01]), st.sampled_from(["FR", "DE", "GB"])),
    min_size=1, max_size=40)


@settings(max_examples=150, deadline=None)
@given(events_strategy)
def test_entity_features_follow_their_definition(rows):
    events = [_event(i, card, offset, amount, country) for i, (card, offset, amount, country) in enumerate(rows)]
    expected, actual = _reference(FRAUD_ENTITY, events), _fold(FRAUD_ENTITY, events)
    assert actual.keys() == expected.keys()
    for event_id, row in expected.items():
        for name, value in row.items():
            assert actual[event_id][name] == pytest.approx(value, rel=1e-12, abs=1e-9), (event_id, name)


def test_entity_features_by_hand():
    events = [_event(0, "c1", 0, 10.0, "FR"), _event(1, "c1", 600, 30.0, "FR"), _event(2, "c2", 700, 5.0, "DE"),
              _event(3, "c1", 3600 + 300, 20.0, "GB"), _event(4, "c1", 8 * 86400, 7.0, "FR")]
    values = _fold(FRAUD_ENTITY, events)
    assert values["e0001"]["card_events_1h"] == 1 and values["e0001"]["seconds_since_previous"] == 600
    assert values["e0001"]["amount_to_card_mean"] == 3.0 and values["e0001"]["country_new_to_card"] == 0
    # 1 h after e0000 and 55 min after e0001: only e0001 is within the hour, both within 24 h
    assert values["e0003"]["card_events_1h"] == 1 and values["e0003"]["card_events_24h"] == 2
    assert values["e0003"]["card_amount_1h"] == 30.0 and values["e0003"]["country_new_to_card"] == 1
    assert values["e0002"]["card_events_24h"] == 0 and values["e0002"]["seconds_since_previous"] == 7 * 86400
    # 8 days later: the 7-day history has expired, the card starts afresh
    assert values["e0004"]["card_events_24h"] == 0 and values["e0004"]["amount_to_card_mean"] == 1.0


# ---------------------------------------------------------------------------------------------
# Bounded == live: the same events through TestStream (keyed state, timers) and through the archive path


def _batches(events: list[dict]) -> list[EventBatch]:
    return [EventBatch([{k: v for k, v in e.items() if k != "_time_us"}], [e["_time_us"]]) for e in events]


def _features_of(batch: EventBatch):
    for event in batch.events:
        yield event["event_id"], tuple(event[f.name] for f in FRAUD_ENTITY.entity_features)


def _interleaved_events() -> list[dict]:
    """Three cards interleaved over two days, with bursts, repeats of the same second and new countries."""
    events, number = [], 0
    for minute in range(0, 2 * 24 * 60, 37):
        for card, shift in (("c1", 0), ("c2", 13), ("c3", 29)):
            if (minute + shift) % 3:
                events.append(_event(number, card, minute * 60 + shift, 5.0 + (number * 7) % 50,
                                     ["FR", "DE", "GB", "US"][number % 4 if card == "c3" else 0]))
                number += 1
    return events


def _live_features(stream: TestStream):
    """A streaming pipeline of AddEntityFeatures over ``stream`` (keyed state, timers): (pipeline, features)."""
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    pipeline = TestPipeline(options=options)
    live = (pipeline | stream
            | AddEntityFeatures(FRAUD_ENTITY, streaming=True, batch_size=64) | beam.FlatMap(_features_of))
    return pipeline, live


def _expected(events: list[dict]) -> list[tuple]:
    return [(event_id, tuple(row[f.name] for f in FRAUD_ENTITY.entity_features))
            for event_id, row in _fold(FRAUD_ENTITY, events).items()]


def test_live_entity_features_equal_bounded_with_out_of_order_and_late_events():
    events = _interleaved_events()
    assert len(events) > 150
    # Arrival order: chunks of events, each reversed (out of order within the watermark), the
    # watermark trailing the chunk's latest event by 15 minutes; two events arrive after the watermark passed them.
    late = {events[40]["event_id"], events[90]["event_id"]}
    on_time = [e for e in events if e["event_id"] not in late]
    expected = _expected(on_time)  # a late event leaves its entity's history as it was
    with TestPipeline() as pipeline:
        bounded = (pipeline | beam.Create(_batches(on_time[::-1]))
                   | AddEntityFeatures(FRAUD_ENTITY, streaming=False, batch_size=64) | beam.FlatMap(_features_of))
        assert_that(bounded, equal_to(expected))
    stream = TestStream()
    chunk = 12
    for start in range(0, len(on_time), chunk):
        part = on_time[start:start + chunk]
        stream.add_elements([TimestampedValue(b, b.event_time_us[0] / _US) for b in _batches(part[::-1])])
        stream.advance_watermark_to((part[-1]["_time_us"] - 15 * 60 * _US) / _US)
        if start == 120:  # well past both late events
            stream.add_elements([TimestampedValue(b, b.event_time_us[0] / _US)
                                 for b in _batches([e for e in events if e["event_id"] in late])])
    stream.advance_watermark_to(on_time[-1]["_time_us"] / _US + 1)
    stream.advance_watermark_to_infinity()

    pipeline, live = _live_features(stream)
    assert_that(live | "OnTime" >> beam.Filter(lambda kv: kv[0] not in late),
                equal_to(expected), label="on_time_equal_bounded")
    assert_that(live | "Late" >> beam.Map(lambda kv: kv[0]) | beam.Filter(lambda k: k in late),
                equal_to(sorted(late)), label="late_events_still_come_out_once")
    # (rtml.ordering/late is not checked here: this runner drops counters of bundles that also fire timers)
    pipeline.run().wait_until_finish()


@given(second=st.integers(0, 4 * 10**9), offset_us=st.integers(-40_000, 40_000),
       window_s=st.sampled_from([1, 10, 60, 300, 3600]))
def test_a_live_release_fires_after_its_event_and_holds_the_watermark_inside_the_events_window(
        second, offset_us, window_s):
    """An event waits for its release timer, which holds the step's output watermark at the timer's time meanwhile,
    while the event's outputs carry its own time: so the timer must not pass the end of a window (of whole seconds)
    that the event falls in, or a window downstream (monitoring) could close before the event's outputs reach it.
    Times near a second's end, in whole milliseconds (Kafka's) and in microseconds."""
    time_us = max(0, second * 1_000_000 + offset_us)
    release = ordering._timer_us(time_us)
    assert time_us <= release < time_us + ordering.RELEASE_GRAIN_US + 1000 and release % 1000 == 0
    in_ms = time_us // 1000 * 1000
    window_us = window_s * 1_000_000
    assert ordering._timer_us(in_ms) // window_us == in_ms // window_us


class _FailsOnceAndForgets(EntityHistoryStep):
    """The entity step, but a bundle fails at some events, once each, after it stepped others (a worker that
    died between a release and its commit: the runner retries the bundle); at others, the worker's memory of the
    shards is lost (a restarted worker, or a shard moved to another)."""
    fail_at = forget_at = frozenset()
    failed: set = set()

    def step(self, key, history, time_us, event):
        event_id = event["event_id"]
        if event_id in self.fail_at and event_id not in self.failed:
            self.failed.add(event_id)
            raise RuntimeError(f"injected failure at {event_id}")
        if event_id in self.forget_at and event_id not in self.failed:
            self.failed.add(event_id)
            ordering._SHARDS.clear()
        return super().step(key, history, time_us, event)


@pytest.mark.parametrize("compact_at_bytes, cache_mb", [(ordering.COMPACT_AT_LEAST_BYTES, 256), (3_000, 256),
                                                       (3_000, 0)],
                         ids=["log_of_events", "log_compacted_often", "shards_dropped_from_memory"])
def test_live_histories_survive_failed_bundles_and_lost_worker_memory(monkeypatch, compact_at_bytes, cache_mb):
    events = _interleaved_events()
    step = _FailsOnceAndForgets(FRAUD_ENTITY)
    ids = [event["event_id"] for event in events]
    _FailsOnceAndForgets.fail_at, _FailsOnceAndForgets.forget_at = frozenset(ids[25::40]), frozenset(ids[45::40])
    _FailsOnceAndForgets.failed = set()
    monkeypatch.setattr(ordering, "COMPACT_AT_LEAST_BYTES", compact_at_bytes)
    monkeypatch.setattr(ordering, "_SHARDS", collections.OrderedDict())
    from_snapshots = []  # whether each shard rebuilt had a snapshot in its log
    rebuilt = ordering._rebuilt

    def rebuilt_and_seen(*args):
        shard = rebuilt(*args)
        from_snapshots.append(shard.snapshot_bytes > 0)
        return shard

    monkeypatch.setattr(ordering, "_rebuilt", rebuilt_and_seen)
    stream = TestStream()
    for start in range(0, len(events), 10):
        part = events[start:start + 10]
        stream.add_elements([TimestampedValue((e["card_id"], (e["_time_us"], e["event_id"], e)), e["_time_us"] / _US)
                             for e in part[::-1]])
        stream.advance_watermark_to((part[-1]["_time_us"] - 10 * 60 * _US) / _US)
    # (past the last event before the end: this runner's assert_that does not wait for releases at the end)
    stream.advance_watermark_to(events[-1]["_time_us"] / _US + 1)
    stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    with TestPipeline(options=options) as pipeline:
        live = (pipeline | stream | ordering.OrderedPerKey(step, streaming=True, live_state=ordering.LiveState(2, cache_mb))
                | beam.Map(lambda out: (out[1]["event_id"], tuple(out[1][f.name] for f in FRAUD_ENTITY.entity_features))))
        assert_that(live, equal_to(_expected(events)))
    assert _FailsOnceAndForgets.failed == _FailsOnceAndForgets.fail_at | _FailsOnceAndForgets.forget_at
    # rebuilt from a snapshot and the events logged after it only where the log is compacted that often
    assert from_snapshots and any(from_snapshots) == (compact_at_bytes < 100_000)
    # the worker's copies: both shards kept, or with no room, only the last one used
    assert len(ordering._SHARDS) == 1 if cache_mb == 0 else len(ordering._SHARDS) >= 2


class _History:
    """A key's state whose class has changed since it was pickled, once ``changed`` is set."""
    changed = False

    def __init__(self, events=0):
        self.events = events

    def __setstate__(self, state):
        if _History.changed:
            raise AttributeError("'_History' object has no attribute 'amounts'")
        self.__dict__.update(state)


class _CountsThenForgets(ordering.OrderedStep):
    """Counts each key's events; at event 30 its code "changes" and the worker's copy of the shards is lost."""
    def initial_state(self, key):
        return _History()

    def step(self, key, state, time_us, value):
        if value == 30:
            _History.changed = True
            ordering._SHARDS.clear()
        return _History(state.events + 1), [(key, value)]


def test_keyed_state_that_cannot_be_read_back_stops_the_stream_in_one_line_naming_its_shard(monkeypatch):
    monkeypatch.setattr(ordering, "COMPACT_AT_LEAST_BYTES", 0)  # (every release writes a snapshot of the states)
    monkeypatch.setattr(ordering, "_SHARDS", collections.OrderedDict())
    monkeypatch.setattr(_History, "changed", False)
    stream = TestStream()
    for value in range(60):
        stream.add_elements([TimestampedValue((f"k{value % 3}", (value * _US, str(value), value)), value)])
        stream.advance_watermark_to(value + 0.5)
    stream.advance_watermark_to_infinity()
    options = PipelineOptions(runner="BundleBasedDirectRunner")
    options.view_as(StandardOptions).streaming = True
    pipeline = TestPipeline(options=options)
    _ = pipeline | stream | ordering.OrderedPerKey(_CountsThenForgets(), streaming=True,
                                                   live_state=ordering.LiveState(1, 256))
    with pytest.raises(Exception) as raised:
        pipeline.run().wait_until_finish()
    line = serving.one_line_failure(raised.value)
    assert line is not None and "\n" not in line, raised.value
    assert line.startswith("live keyed state of _CountsThenForgets: shard 0 cannot be read back (AttributeError:")
    assert "restore state this version wrote, or start the job without its state" in line


def test_live_history_outlives_a_quiet_spell_shorter_than_its_window_and_expires_after_a_longer_one():
    # The 7-day history of c1: kept across a 5-day gap and a 3-day one, forgotten after an 8-day gap (its
    # expiry timer fires in that gap; one that fired while the card was active must leave its history be).
    days = [0, 5, 8, 16, 16.5]
    events = [_event(i, "c1", day * 86400, 10.0 * (i + 1), "FR") for i, day in enumerate(days)]
    stream = TestStream()
    for event in events:
        stream.add_elements([TimestampedValue(b, b.event_time_us[0] / _US) for b in _batches([event])])
        stream.advance_watermark_to(event["_time_us"] / _US + 1)
    stream.advance_watermark_to_infinity()
    pipeline, live = _live_features(stream)
    expected = _expected(events)
    since_previous = {event_id: values[4] for event_id, values in expected}  # seconds_since_previous
    assert since_previous["e0002"] == 3 * 86400 and since_previous["e0003"] == 7 * 86400  # kept, then forgotten
    assert_that(live, equal_to(expected))
    pipeline.run().wait_until_finish()


# ---------------------------------------------------------------------------------------------
# Specs


def test_stateless_specs_keep_their_fingerprint_and_entity_specs_extend_them():
    fraud = load_spec("fraud")
    assert fraud.entity_features == () and fraud.entity_history_s == 0
    assert FRAUD_ENTITY.fields == fraud.fields and FRAUD_ENTITY.fingerprint != fraud.fingerprint
    assert FRAUD_ENTITY.entity_history_s == 7 * 86400
    assert FRAUD_ENTITY.field("card_amount_24h").type == "number"
    sensor_entity = load_spec("sensor_entity")
    assert sensor_entity.entity_key == "machine_id" and sensor_entity.entity_history_s == 3600


@pytest.mark.parametrize("entity_features, message", [
    ("[{name: x, kind: median, window: 1h}]", "kind must be one of"),
    ("[{name: x, kind: sum, source: country, window: 1h}]", "needs a source that is a required number field"),
    ("[{name: x, kind: is_new, source: amount, window: 1h}]", "needs a source that is a required string field"),
    ("[{name: x, kind: count, source: amount, window: 1h}]", "takes no source"),
    ("[{name: x, kind: count, window: 0h}]", "must be a duration"),
    ("[{name: x, kind: count, window: soon}]", "must be a duration"),
    ("[{name: amount, kind: count, window: 1h}]", "has the name of a field"),
])
def test_bad_entity_features_are_one_line_errors(tmp_path, entity_features, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"extends: fraud\nentity_features: {entity_features}\n")
    with pytest.raises(SpecError, match=message) as error:
        load_spec(str(path))
    assert "\n" not in str(error.value)


def test_a_spec_cannot_extend_itself(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(SpecError, match="extends itself"):
        load_spec(str(tmp_path / "a.yaml"))


# ---------------------------------------------------------------------------------------------
# What entity features buy, trained and scored as a user would


def test_entity_features_raise_average_precision_on_the_same_holdout(fraud_model, fraud_entity_model):
    plain, entity = fraud_model[1].manifest, fraud_entity_model[1].manifest
    assert entity["training"]["holdout"]["rows"] == pytest.approx(plain["training"]["holdout"]["rows"], rel=1e-3)
    plain_ap = plain["metrics"]["holdout"]["average_precision"]
    entity_ap = entity["metrics"]["holdout"]["average_precision"]
    # the entity model's own ablation: the same rows and split, refitted without the entity-feature columns
    ablation_ap = entity["metrics"]["holdout"]["without_entity_features"]["average_precision"]
    assert ablation_ap == pytest.approx(plain_ap, abs=0.03)
    assert entity_ap >= max(plain_ap, ablation_ap) + 0.05, (plain_ap, ablation_ap, entity_ap)


@pytest.fixture(scope="module")
def entity_scored(fraud_archive, fraud_entity_model, tmp_path_factory) -> dict:
    """The 5 later days scored in batch mode with the entity model: counters and records by event id."""
    out = tmp_path_factory.mktemp("entity_scored")
    totals = score.run(["--spec", "fraud_entity", "--input", fraud_archive["later"], "--model_dir",
                        fraud_entity_model[0], "--output", str(out / "scored"), "--dead_letter", str(out / "dead")])
    lines = [json.loads(line) for path in sorted((out / "scored").glob("*.jsonl")) for line in path.read_text().splitlines()]
    return {"totals": totals, "lines": lines, "records": {line["event_id"]: line for line in lines}}


def test_batch_scoring_with_entity_features_scores_every_valid_event(fraud_archive, fraud_entity_model, entity_scored):
    valid = sum(day["valid"] for day in fraud_archive["later_days"])
    assert entity_scored["totals"]["rtml/scored"] == len(entity_scored["lines"]) == len(entity_scored["records"]) == valid
    assert {line["model_version"] for line in entity_scored["lines"]} == {fraud_entity_model[1].version}


def test_a_backfill_with_history_before_its_start_gives_the_continuous_runs_scores(
        fraud_archive, fraud_entity_model, entity_scored, tmp_path):
    """Backfilling days 3-4 of the later archive (its first two days are history for the entity features)
    scores each event exactly as scoring the whole archive did."""
    from pipelines import backfill

    first, last = fraud_archive["later_days"][2]["date"], fraud_archive["later_days"][4]["date"]
    backfill.run(["--spec", "fraud_entity", "--input", fraud_archive["later"], "--model_dir", fraud_entity_model[0],
                  "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead"),
                  "--start", first, "--end", last])
    lines = [json.loads(line) for path in sorted((tmp_path / "scored").glob("dt=*/scored.jsonl"))
             for line in path.read_text().splitlines()]
    expected = {event_id: record for event_id, record in entity_scored["records"].items()
                if first <= record["event_time"][:10] < last}
    assert len(lines) == len(expected) == sum(day["valid"] for day in fraud_archive["later_days"][2:4])
    assert {line["event_id"]: line for line in lines} == expected


def test_entity_spec_stream_on_the_direct_runner_is_refused_not_hung(fraud_entity_model, kafka_broker):
    kafka_broker.create_topic("entity-in", 1)
    with pytest.raises(cli.UserError, match="keep state: .*AddEntityFeatures.*use a streaming runner"):
        score.run(["--spec", "fraud_entity", "--mode", "stream", "--bootstrap_servers", kafka_broker.bootstrap,
                   "--input_topic", "entity-in", "--output_topic", "entity-out", "--dead_letter_topic", "entity-dl",
                   "--model_dir", fraud_entity_model[0], "--runner", "DirectRunner"])


# ---------------------------------------------------------------------------------------------
# Bounded, in columns: every value equal to the fold's, bit for bit

def _columns_and_fold(spec, events: list[dict]) -> tuple[dict, dict]:
    plain = [{k: v for k, v in e.items() if k != "_time_us"} for e in events]
    columns = entity_feature_columns(spec, plain, [e["_time_us"] for e in events])
    in_columns = {e["event_id"]: {name: values[i] for name, values in columns.items()} for i, e in enumerate(plain)}
    return in_columns, _fold(spec, events)


offers_rows = st.lists(
    st.tuples(st.sampled_from(["u1", "u2"]), st.integers(0, 40).map(lambda hour: hour * 3600.0) | st.floats(0, 9e5),
              st.sampled_from([1, 2.5, 0.01, 7, 1e6, 3.25]), st.sampled_from(["books", "home", "travel"]),
              st.sampled_from(["web", "app"]), st.sampled_from(["view", "purchase"])),
    min_size=1, max_size=60)


@settings(max_examples=150, deadline=None)
@given(events_strategy, st.integers(1, 3))
def test_entity_features_in_columns_equal_the_fold_bit_for_bit(rows, repeat_times):
    # (repeat_times > 1: some events share their card's time, ordered by event id)
    events = [_event(i, card, offset - offset % repeat_times, amount, country)
              for i, (card, offset, amount, country) in enumerate(rows)]
    in_columns, folded = _columns_and_fold(FRAUD_ENTITY, events)
    assert in_columns == folded


@settings(max_examples=150, deadline=None)
@given(offers_rows)
def test_where_features_in_columns_equal_the_fold_bit_for_bit(rows):
    spec = load_spec("offers")
    events = []
    for i, (customer, offset, amount, category, channel, action) in enumerate(rows):
        time_us = START_US + int(offset * _US)
        events.append({"event_id": f"o{i % 7}-{i}", "_time_us": time_us, "customer_id": customer, "amount": amount,
                       "category": category, "channel": channel, "action": action,
                       "event_time": datetime.datetime.fromtimestamp(time_us / _US, datetime.timezone.utc).isoformat(),
                       "region": "north", "age_band": "25-34"})
    in_columns, folded = _columns_and_fold(spec, events)
    assert in_columns == folded


def test_window_starts_found_in_passes_where_entities_span_more_time_than_one_pass_holds(monkeypatch):
    events = [_event(i, f"c{i % 3}", i * 3600 * 7, 1.0 + i % 5, ["FR", "DE"][i % 2]) for i in range(60)]
    expected = _columns_and_fold(FRAUD_ENTITY, events)[1]
    monkeypatch.setattr(entity_columns, "_KEY_ROOM", 9 * 86400 * _US)  # about one entity's span and window a pass
    assert _columns_and_fold(FRAUD_ENTITY, events)[0] == expected


def test_sums_of_integers_beyond_float64_are_left_to_the_fold():
    events = [_event(i, "c1", i * 60, 2**53 if i == 0 else 1, "FR") for i in range(4)]
    assert entity_feature_columns(FRAUD_ENTITY, events, [e["_time_us"] for e in events]) is None
    with TestPipeline() as pipeline:
        bounded = (pipeline | beam.Create(_batches(events))
                   | AddEntityFeatures(FRAUD_ENTITY, streaming=False, batch_size=64) | beam.FlatMap(_features_of))
        assert_that(bounded, equal_to(_expected(events)))
    # Python sums the integers exactly, then rounds once; adding them as float64 would give 2**53
    assert _fold(FRAUD_ENTITY, events)["e0003"]["card_amount_1h"] == float(2**53 + 2)
