"""Bounded mode end to end: train on 14 days, score 5 unseen days, as a new user would."""
import json
import pathlib
import shutil
import subprocess
import sys

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to
from sklearn.metrics import average_precision_score, roc_auc_score

from models import registry
from pipelines import graph, score
from tests.conftest import read_json_lines
from transforms.events import Block, Raw
from transforms.spec import load_spec

REPO = pathlib.Path(__file__).resolve().parent.parent


def _score(model_dir, input_glob, out, *flags):
    return score.run(["--spec", "fraud", "--mode", "batch", "--input", str(input_glob), "--model_dir", model_dir,
                      "--output", str(out / "scored"), "--dead_letter", str(out / "dead_letter"), *flags])


def test_unseen_days_every_event_once_and_quality(fraud_archive, fraud_scored):
    days = fraud_archive["later_days"]
    records, dead_letters = fraud_scored["records"], fraud_scored["dead_letters"]
    assert len(records) == sum(d["valid"] for d in days)
    assert len({r["event_id"] for r in records}) == len(records)
    assert len(dead_letters) == sum(sum(d["broken"].values()) for d in days)
    labels = [r["is_fraud"] for r in records]
    scores = [r["score"] for r in records]
    assert roc_auc_score(labels, scores) >= 0.93
    assert average_precision_score(labels, scores) >= 0.6


def test_scored_records_follow_the_contract(fraud_model, fraud_scored):
    threshold = load_spec("fraud").alert_threshold
    for record in fraud_scored["records"][:2000]:
        assert set(record) == {"event_id", "event_time", "card_id", "score", "alert", "model_version", "is_fraud"}
        assert 0.0 <= record["score"] <= 1.0
        assert record["alert"] == (record["score"] >= threshold)
        assert record["model_version"] == fraud_model[1].version


def test_dead_letters_say_why_and_where(fraud_scored):
    dead_letters = fraud_scored["dead_letters"]
    for letter in dead_letters:
        assert letter["error"] and "\n" not in letter["error"]
        assert set(letter["source"]) == {"file", "line"} and letter["source"]["line"] >= 1
        assert letter["raw_encoding"] in ("utf-8", "base64")
    reasons = {letter["error"].split(" (")[0] for letter in dead_letters}
    assert {"not valid JSON", "not a JSON object", "not valid UTF-8", "event larger than 1 MiB",
            "amount: must be a finite number > 0", "channel: must be one of pos, online, atm",
            "event_time: must be an RFC 3339 time with a zone"} <= reasons
    oversized = [d for d in dead_letters if d["error"] == "event larger than 1 MiB"]
    assert oversized and all(d["raw_truncated"] and d["raw_bytes"] > 1 << 20 for d in oversized)
    assert all(d["raw_encoding"] == "base64" for d in dead_letters if d["error"].startswith("not valid UTF-8"))


def test_run_counters_add_up(fraud_scored):
    totals = fraud_scored["totals"]
    dead = sum(v for k, v in totals.items() if k.startswith("rtml.dead_letter/"))
    assert totals["rtml/received"] == totals["rtml/valid"] + dead
    assert totals["rtml/scored"] == totals["rtml/valid"] == len(fraud_scored["records"])


def test_manifest_describes_the_version(fraud_model):
    manifest = fraud_model[1].manifest
    assert manifest["spec"] == {"name": "fraud", "fingerprint": load_spec("fraud").fingerprint,
                                "source": manifest["spec"]["source"]}
    assert {"model.onnx", "estimator.joblib"} <= set(manifest["files"])
    assert any(name.startswith("transform/") for name in manifest["files"])
    assert manifest["metrics"]["holdout"]["roc_auc"] > 0.9
    assert manifest["training"]["train"]["rows"] > manifest["training"]["holdout"]["rows"] > 0
    assert manifest["training"]["train"]["to"] < manifest["training"]["holdout"]["from"]
    assert len(manifest["features"]) == 80 and "country=<OOV>" in manifest["features"]
    assert manifest["checks"]["onnx_vs_tft_features_max_abs_diff"] <= 1e-4
    assert {"apache-beam", "tensorflow-transform", "scikit-learn", "onnxruntime"} <= set(manifest["libraries"])
    assert (pathlib.Path(fraud_model[0]) / "CURRENT").read_text().split()[0] == manifest["version"]


@pytest.fixture(scope="module")
def one_day(fraud_archive, tmp_path_factory):
    """The first later day, as the JSON Lines file itself."""
    day = fraud_archive["later_days"][0]
    return fraud_archive["root"] / "later" / day["file"]


def test_sklearn_engine_agrees_with_onnx(fraud_model, one_day, tmp_path):
    _score(fraud_model[0], one_day, tmp_path / "onnx")
    _score(fraud_model[0], one_day, tmp_path / "sklearn", "--engine", "sklearn")
    onnx_scores = {r["event_id"]: r["score"] for r in read_json_lines(tmp_path / "onnx" / "scored")}
    sklearn_scores = {r["event_id"]: r["score"] for r in read_json_lines(tmp_path / "sklearn" / "scored")}
    assert onnx_scores.keys() == sklearn_scores.keys()
    gaps = np.abs(np.array([onnx_scores[k] - sklearn_scores[k] for k in onnx_scores]))
    assert gaps.max() <= 1e-2 and (gaps > 1e-5).mean() <= 0.001


def test_gzip_and_parquet_inputs_score_like_json_lines(fraud_model, one_day, tmp_path):
    lines = one_day.read_bytes().split(b"\n")[:3000]
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "part.jsonl").write_bytes(b"\n".join(lines))
    _score(fraud_model[0], tmp_path / "json" / "*.jsonl", tmp_path / "from_json")
    expected = {r["event_id"]: r["score"] for r in read_json_lines(tmp_path / "from_json" / "scored")}

    import gzip
    (tmp_path / "gz").mkdir()
    (tmp_path / "gz" / "part.jsonl.gz").write_bytes(gzip.compress(b"\n".join(lines)))
    _score(fraud_model[0], tmp_path / "gz" / "*.jsonl.gz", tmp_path / "from_gz")
    assert {r["event_id"]: r["score"] for r in read_json_lines(tmp_path / "from_gz" / "scored")} == expected

    spec = load_spec("fraud")
    rows = []
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict) and event["event_id"] in expected:
            rows.append({f.name: event.get(f.name) for f in spec.fields})
    (tmp_path / "parquet").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "parquet" / "part.parquet")
    _score(fraud_model[0], tmp_path / "parquet" / "*.parquet", tmp_path / "from_parquet", "--output_format", "parquet")
    table = pq.read_table(tmp_path / "from_parquet" / "scored")
    assert dict(zip(table["event_id"].to_pylist(), table["score"].to_pylist())) == expected


def test_an_archive_spread_over_worker_processes_scores_as_in_one(fraud_archive, fraud_model, fraud_scored, tmp_path):
    """What an archive of SPREAD_MIN_BYTES or more gets on the DirectRunner (``runners.spread_over_cores``): its
    days read by two worker processes, each its share; the same records, dead letters and counters as in one."""
    totals = _score(fraud_model[0], fraud_archive["later"], tmp_path, "--direct_num_workers", "2",
                    "--direct_running_mode", "multi_processing")
    assert totals == fraud_scored["totals"]
    assert len(list((tmp_path / "scored").glob("scored-*-of-00002.jsonl"))) == 2  # both wrote their share

    def ordered(records):
        return sorted(json.dumps(record, sort_keys=True) for record in records)

    assert ordered(read_json_lines(tmp_path / "scored")) == ordered(fraud_scored["records"])
    assert ordered(read_json_lines(tmp_path / "dead_letter")) == ordered(fraud_scored["dead_letters"])


def test_score_events_graph(fraud_model):
    """The graph every mode shares, on Beam's TestPipeline: each input comes out once, in one output."""
    spec = load_spec("fraud")
    model = registry.load(fraud_model[0])
    good = {"event_id": "e1", "event_time": "2026-03-20T10:00:00Z", "card_id": "c1", "merchant_id": "m",
            "merchant_category": "grocery", "amount": 12.5, "currency": "EUR", "country": "FR", "channel": "pos"}
    batch = [Raw(json.dumps(good).encode(), {"file": "f", "line": 1}),
             Raw(json.dumps(dict(good, event_id="e2", amount=-1)).encode(), {"file": "f", "line": 2}),
             Raw(b"\xff", {"file": "f", "line": 3}),
             Raw(json.dumps(dict(good, event_id="e3", merchant_category="never-seen")).encode(), {"file": "f", "line": 4})]
    with TestPipeline() as pipeline:
        _, scored, dead_letters = pipeline | beam.Create([Block.of(batch)]) | graph.ScoreRaw(spec, model, fraud_model[0], "onnx")
        assert_that(scored | beam.FlatMap(lambda records: [r["event_id"] for r in records]),
                    equal_to(["e1", "e3"]), label="scored")
        assert_that(dead_letters | beam.Map(lambda d: (d["source"]["line"], d["error"])),
                    equal_to([(2, "amount: must be a finite number > 0"), (3, "not valid UTF-8 (byte 0)")]),
                    label="dead letters")


def _copy_model(model_dir, tmp_path) -> pathlib.Path:
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy)
    return copy


def test_tampered_or_incomplete_model_is_refused(fraud_model, tmp_path):
    copy = _copy_model(fraud_model[0], tmp_path)
    version = copy / "versions" / fraud_model[1].version
    onnx_file = version / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[-10] ^= 1
    onnx_file.write_bytes(bytes(data))
    with pytest.raises(registry.ModelError, match="model.onnx does not match its sha256"):
        registry.load(str(copy))
    onnx_file.unlink()
    with pytest.raises(registry.ModelError, match="model.onnx is missing"):
        registry.load(str(copy))
    (version / "extra.bin").write_bytes(b"x")
    with pytest.raises(registry.ModelError, match="extra.bin is not in the manifest"):
        registry.load(str(copy))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, message", [
    (["--model_dir", "/nonexistent/model"], "error: --model_dir /nonexistent/model: no model here"),
    (["--modle_dir", "x"], "error: unknown flag --modle_dir (did you mean --model_dir?)"),
    (["--spec", "nope"], "error: --spec nope: no such built-in spec"),
    (["--snapshot_every", "3"], "error: --snapshot_every is not a flag of this command (it is one of the cluster flags)"),
])
def test_user_mistakes_get_one_line(tmp_path, args, message):
    base = {"--spec": "fraud", "--mode": "batch", "--input": "x", "--model_dir": "/nonexistent/model",
            "--output": str(tmp_path), "--dead_letter": str(tmp_path)}
    for flag, value in zip(args[::2], args[1::2]):
        base.pop("--model_dir" if flag == "--modle_dir" else flag, None)
        base[flag] = value
    result = _cli("pipelines.score", *[item for pair in base.items() for item in pair])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(message), result.stderr
    assert "Traceback" not in result.stderr


def test_no_matching_input_and_missing_flags(fraud_model, tmp_path):
    result = _cli("pipelines.score", "--spec", "fraud", "--input", str(tmp_path / "none*.jsonl"),
                  "--model_dir", fraud_model[0], "--output", str(tmp_path), "--dead_letter", str(tmp_path))
    assert result.returncode == 2 and "no files match" in result.stderr and "Traceback" not in result.stderr
    result = _cli("pipelines.train", "--spec", "fraud")
    assert result.returncode == 2 and "missing --input, --model_dir" in result.stderr


def test_training_mistakes_get_one_line(tmp_path):
    from pipelines import train
    from transforms.errors import UserError

    (tmp_path / "broken.jsonl").write_bytes(b'garbage\n{"event_id": 1}\n\xff\n')
    with pytest.raises(UserError, match="s3:// is not supported"):
        train.run(["--spec", "fraud", "--input", str(tmp_path / "broken.jsonl"), "--model_dir", "s3://bucket/models"])
    with pytest.raises(UserError, match="cannot write there"):  # a path below a file
        train.run(["--spec", "fraud", "--input", str(tmp_path / "broken.jsonl"), "--model_dir",
                   str(tmp_path / "broken.jsonl" / "models")])
    with pytest.raises(UserError, match="no valid training events; see the dead letters"):
        train.run(["--spec", "fraud", "--input", str(tmp_path / "broken.jsonl"), "--model_dir", str(tmp_path / "m")])
    assert not (tmp_path / "m" / "CURRENT").exists()


def test_a_model_for_another_spec_is_refused(fraud_model, tmp_path):
    other = tmp_path / "fraud_v2.yaml"
    other.write_text(pathlib.Path(load_spec("fraud").source).read_text().replace("top_k: 30", "top_k: 31"))
    with pytest.raises(registry.ModelError, match="other fields or features"):
        score.run(["--spec", str(other), "--input", str(tmp_path), "--model_dir", fraud_model[0],
                   "--output", str(tmp_path), "--dead_letter", str(tmp_path)])
