"""rtml report: one HTML page of charts from what the pipelines wrote, opened in headless Chromium."""
from __future__ import annotations

import gzip

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from pipelines import report
from tests.browser import drawn, render
from tests.conftest import read_json_lines
from transforms.errors import UserError
from transforms.spec import load_spec

FRAUD = load_spec("fraud")


def test_a_report_of_monitoring_and_scores_draws_every_chart_in_a_browser_without_network(
        fraud_model, fraud_scored, fraud_drift_monitored, tmp_path):
    page = tmp_path / "report.html"
    sections = report.run(["--spec", "fraud", "--report", str(page), "--model_dir", fraud_model[0],
                           "--monitoring", str(fraud_drift_monitored["out"]),
                           "--scored", str(fraud_scored["out"] / "scored" / "*.jsonl")])

    by_title = {section.title: section for section in sections}
    assert list(by_title) == ["Drift from training, 1-hour windows", "Input, dead letters and alerts, 1-hour windows",
                              "Scores against the holdout's deciles", "ROC and precision-recall"]
    assert all(section.figure is not None for section in sections)
    monitored = read_json_lines(fraud_drift_monitored["out"])
    windows = [r for r in monitored if r["kind"] == "window"]
    drifted = {r["window_start"] for r in monitored if r["kind"] == "drift"}
    assert by_title["Drift from training, 1-hour windows"].finding.startswith(
        f"{len(windows):,} windows, {sum(w['events'] >= FRAUD.monitoring.min_events for w in windows):,} with the "
        f"events drift needs; {len(drifted):,} above the PSI threshold 0.2; largest: amount")
    records = fraud_scored["records"]
    assert by_title["Scores against the holdout's deciles"].finding.startswith(f"{len(records):,} scores (scored records)")
    auc = roc_auc_score([r["is_fraud"] for r in records], [r["score"] for r in records])
    assert by_title["ROC and precision-recall"].finding.startswith(
        f"{len(records):,} labelled records, {sum(r['is_fraud'] for r in records):,} positive (is_fraud): "
        f"ROC AUC {auc:.4f}")

    rendered = render(page, tmp_path / "report.png")
    assert list(rendered.charts) == [f"chart-{n}" for n in range(4)]
    assert all(drawn(dom) for dom in rendered.charts.values()), [n for n, d in rendered.charts.items() if not drawn(d)]
    assert rendered.console == []
    assert rendered.screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and rendered.screenshot.stat().st_size > 50_000


def test_a_report_of_scores_alone_says_what_it_cannot_draw_without_the_model(fraud_scored, tmp_path):
    sections = report.run(["--spec", "fraud", "--report", str(tmp_path / "r.html"),
                           "--scored", str(fraud_scored["out"] / "scored" / "*.jsonl")])
    assert [(s.title, s.figure is None) for s in sections] == [("Scores against the holdout's deciles", True),
                                                                ("ROC and precision-recall", False)]
    assert sections[0].finding == "no --model_dir: the holdout's score deciles are in the model's manifest"


def test_unlabelled_scores_in_gzip_get_no_curves_and_say_why(tmp_path):
    scored = tmp_path / "scored.jsonl.gz"
    with gzip.open(scored, "wt") as handle:
        handle.writelines(f'{{"event_id": "e{i}", "score": {score}}}\n'
                          for i, score in enumerate(np.linspace(0, 1, 50)))
    sections = report.run(["--spec", "fraud", "--report", str(tmp_path / "r.html"), "--scored", str(scored)])
    assert sections[-1].finding == ("no curves: they need scored records with the spec's label (is_fraud), "
                                    "of both classes")
    assert (tmp_path / "r.html").read_text().count("<section>") == 2


@pytest.mark.parametrize("flags, message", [
    ([], "nothing to report: give --monitoring, --scored, --snapshots or --assignments; see --help"),
    (["--scored", "{tmp}/none/*.jsonl"], "--scored {tmp}/none/*.jsonl: no files match"),
    (["--scored", "{tmp}/broken.jsonl"], "--scored: {tmp}/broken.jsonl line 2 is not JSON"),
    (["--monitoring", "{tmp}"], "--monitoring {tmp}/windows-*.jsonl: no files match"),
    (["--scored", "{tmp}/scored.jsonl", "--report", "{tmp}/scored.jsonl/r.html"], "--report {tmp}/scored.jsonl/r.html: "
                                                                                "cannot write it"),
    (["--scored", "{tmp}/dead.jsonl"], "--scored: a record without event_id and score; are these scored records?"),
])
def test_a_wrong_input_is_one_line_naming_the_flag(tmp_path, flags, message):
    (tmp_path / "broken.jsonl").write_text('{"score": 0.5}\n{"score": \n')
    (tmp_path / "scored.jsonl").write_text('{"event_id": "e1", "score": 0.5}\n')  # a file, where a folder goes
    (tmp_path / "dead.jsonl").write_text('{"error": "amount: missing", "raw": "{}"}\n')  # dead letters
    with pytest.raises(UserError) as error:
        report.run(["--spec", "fraud", "--report", str(tmp_path / "r.html"),
                    *(flag.format(tmp=tmp_path) for flag in flags)])
    assert str(error.value).startswith(message.format(tmp=tmp_path))
    assert not (tmp_path / "r.html").exists()


def test_monitoring_files_without_records_say_so(tmp_path):
    (tmp_path / "windows-00000-of-00001.jsonl").write_text("")
    sections = report.run(["--spec", "fraud", "--report", str(tmp_path / "r.html"), "--monitoring", str(tmp_path)])
    assert sections[0].finding == f"--monitoring {tmp_path}: its window files hold no records"
