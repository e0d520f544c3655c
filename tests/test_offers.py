"""Next best offer (``offers``): a class label, a model that ranks 8 offers with per-customer features, and scored
records that carry the top 3 with their probabilities, from the generator to the report."""
import datetime
from collections import Counter, defaultdict

import orjson
import pyarrow.parquet as pq
import pytest

from models import registry
from models.estimator import make_estimator
from pipelines import generate, report, score
from tests.conftest import read_json_lines
from transforms.entity import EntityHistoryStep
from transforms.events import EventParser
from transforms.spec import SpecError, load_spec

SPEC = load_spec("offers")


def _valid_events(path) -> list[dict]:
    parser = EventParser(SPEC)
    return [parsed[0] for parsed in map(parser.parse, path.read_bytes().splitlines()) if not isinstance(parsed, str)]


def test_the_label_is_the_category_the_customer_buys_next(tmp_path):
    """What the generator promises: each event's next_offer is the category of its customer's next purchase (where
    the archive holds one), and the same seed writes the same bytes."""
    for run in ("a", "b"):
        manifest = generate.generate("offers", 3, tmp_path / run, datetime.date(2026, 3, 1), 3000, 0.0, 5,
                                     compress=False)
    files = sorted((tmp_path / "a").glob("*/events.jsonl"))
    # the manifest counts each day's valid lines per class; the summary says how many classes and the commonest's share
    assert [day["classes"] for day in manifest["days"]] == [
        dict(sorted(Counter(e["next_offer"] for e in _valid_events(path)).items())) for path in files]
    commonest, count = sum((Counter(day["classes"]) for day in manifest["days"]), Counter()).most_common(1)[0]
    assert f"next_offer: 8 classes, the commonest {commonest} {count / 9000:.1%}" in generate.summary(manifest, tmp_path, 1)
    assert [f.read_bytes() for f in files] == [f.read_bytes() for f in sorted((tmp_path / "b").glob("*/events.jsonl"))]
    by_customer = defaultdict(list)
    for path in files:
        for event in _valid_events(path):
            by_customer[event["customer_id"]].append(event)
    checked = 0
    for events in by_customer.values():
        events.sort(key=lambda e: e["event_time"])
        next_purchase = None
        for event in reversed(events):
            if next_purchase is not None:
                assert event["next_offer"] == next_purchase, event
                checked += 1
            if event["action"] == "purchase":
                next_purchase = event["category"]
    assert checked > 2000
    labels = Counter(e["next_offer"] for events in by_customer.values() for e in events)
    assert set(labels) == set(SPEC.classes) and max(labels.values()) < 0.4 * sum(labels.values())


def test_a_class_label_needs_a_classifier(tmp_path):
    (tmp_path / "spec.yaml").write_text("extends: offers\nmodel: {estimator: sklearn.ensemble.IsolationForest}\n")
    with pytest.raises(SpecError, match="the label 'next_offer' is a class: model.estimator must be a classifier"):
        make_estimator(load_spec(str(tmp_path / "spec.yaml")))


def test_where_counts_only_the_entitys_earlier_events_with_that_value():
    step = EntityHistoryStep(SPEC)
    history, seen = step.initial_state("cu-1"), []
    for second, category in enumerate(["books", "travel", "books", "home", "books"]):
        event = {"event_id": str(second), "customer_id": "cu-1", "category": category, "amount": 10.0}
        history, [(_, enriched)] = step.step("cu-1", history, second * 1_000_000, event)
        assert enriched["books_24h"] == seen.count("books") and enriched["travel_24h"] == seen.count("travel")
        assert enriched["customer_events_24h"] == len(seen)
        seen.append(category)


def test_the_model_ranks_the_next_purchase_well_above_the_most_popular_offers(offers_model):
    manifest = registry.load(offers_model["model_dir"]).manifest
    holdout = manifest["metrics"]["holdout"]
    assert holdout["top_k"] == 3 and holdout["rows"] > 1000
    assert holdout["top_3_hit_rate"] > holdout["most_popular_top_3_hit_rate"] + 0.15, holdout
    assert holdout["top_3_hit_rate"] > holdout["without_entity_features"]["top_3_hit_rate"], holdout
    assert holdout["top_1_hit_rate"] < holdout["top_3_hit_rate"] and holdout["expected_calibration_error"] < 0.1
    assert manifest["checks"]["onnx_vs_sklearn_scores_max_abs_diff"] < 1e-5
    assert manifest["score"] == "probability of the likeliest next_offer; each record ranks its top 3"


@pytest.fixture(scope="module")
def scored(offers_model, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("offers_scored")
    totals = score.run(["--spec", "offers", "--mode", "batch", "--input", str(offers_model["later"]),
                        "--model_dir", offers_model["model_dir"], "--output", str(out / "scored"),
                        "--dead_letter", str(out / "dead")])
    return {"out": out, "totals": totals, "records": read_json_lines(out / "scored"),
            "dead_letters": read_json_lines(out / "dead")}


def test_each_scored_record_ranks_three_offers(offers_model, scored):
    records, valid = scored["records"], _valid_events(offers_model["later"])
    assert sorted(r["event_id"] for r in records) == sorted(e["event_id"] for e in valid)
    truth = {e["event_id"]: e["next_offer"] for e in valid}
    for record in records:
        top = record["top_k"]
        classes, probabilities = [t["class"] for t in top], [t["probability"] for t in top]
        assert len(set(classes)) == 3 and set(classes) <= set(SPEC.classes), record
        assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 1 + 1e-9
        assert record["score"] == probabilities[0] and record["alert"] == (record["score"] >= SPEC.alert_threshold)
        assert record["next_offer"] == truth[record["event_id"]]
    hits = sum(r["next_offer"] in [t["class"] for t in r["top_k"]] for r in records) / len(records)
    assert hits > 0.6, hits


def test_a_label_outside_the_offers_and_other_broken_lines_are_dead_letters(offers_model, scored):
    lines = offers_model["later"].read_bytes().splitlines()
    reasons = Counter(letter["error"] for letter in scored["dead_letters"])
    assert sum(reasons.values()) == len(lines) - len(scored["records"]) == 25
    assert reasons[f"next_offer: must be one of {', '.join(SPEC.classes)}"] >= 1, reasons
    unknown_category = _valid_events(offers_model["later"])[:50]
    for event in unknown_category:  # a category never seen in training is scored, as out-of-vocabulary
        event["category"] = "garden"
    path = scored["out"] / "garden.jsonl"
    path.write_bytes(b"\n".join(map(orjson.dumps, unknown_category)))
    score.run(["--spec", "offers", "--mode", "batch", "--input", str(path), "--model_dir", offers_model["model_dir"],
               "--output", str(scored["out"] / "garden"), "--dead_letter", str(scored["out"] / "garden_dead")])
    assert len(read_json_lines(scored["out"] / "garden")) == 50


def test_the_sklearn_engine_and_parquet_give_the_same_rankings(offers_model, scored, tmp_path):
    """As for a 0/1 label (test_batch.py), scikit-learn on tensorflow-transform's features may send a row whose
    feature is a float32 step from a split down the other branch: at most 0.2% of rows."""
    score.run(["--spec", "offers", "--mode", "batch", "--input", str(offers_model["later"]),
               "--model_dir", offers_model["model_dir"], "--output", str(tmp_path / "sklearn"),
               "--dead_letter", str(tmp_path / "dead"), "--engine", "sklearn", "--output_format", "parquet"])
    onnx = {r["event_id"]: r["top_k"] for r in scored["records"]}
    table = pq.read_table(sorted((tmp_path / "sklearn").glob("*.parquet"))).to_pylist()
    assert len(table) == len(onnx)
    apart = [row for row in table if [t["class"] for t in row["top_k"]] != [t["class"] for t in onnx[row["event_id"]]]
             or max(abs(a["probability"] - b["probability"]) for a, b in zip(row["top_k"], onnx[row["event_id"]])) > 1e-5]
    assert len(apart) <= 0.002 * len(table), apart


def test_the_report_shows_hit_rates_and_calibration(offers_model, scored, tmp_path):
    sections = report.run(["--spec", "offers", "--report", str(tmp_path / "report.html"),
                           "--scored", str(scored["out"] / "scored" / "*.jsonl"),
                           "--model_dir", offers_model["model_dir"]])
    quality = next(s for s in sections if s.title == report.CLASS_QUALITY)
    assert quality.figure is not None and f"{len(scored['records']):,} labelled records" in quality.finding
    assert "top-3 hit rate" in quality.finding and "calibration error" in quality.finding
