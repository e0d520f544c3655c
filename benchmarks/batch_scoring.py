"""Bounded scoring throughput, whole process, against two references on the same data and model.

    .venv/bin/python benchmarks/batch_scoring.py [--days 20] [--repeat 3]

Generates a fraud archive (~10k events a day, 1% broken) under benchmarks/data, trains a model
once, then times, as separate processes, each wall-clock including interpreter start and imports:

- project:   ``python -m pipelines.score --mode batch`` (DirectRunner, ONNX features and model)
- beam_ref:  a Beam pipeline written the way Beam's RunInference examples are: ReadFromText,
             per-element json.loads and feature vector, RunInference(SklearnModelHandlerNumpy),
             WriteToText, DirectRunner defaults
- plain_ref: a single-process loop: parse, vector, predict in batches of 4096, write

The references compute the same features (from the model's manifest) and use the same fitted
estimator; lines they cannot parse are skipped. Best of --repeat runs is reported.
"""
import argparse
import bisect
import datetime
import json
import math
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "data"
sys.path.insert(0, str(ROOT))


def vectorizer(manifest: dict):
    """A function from one event to the model's input row, in plain Python (the references' features)."""
    from transforms.spec import load_spec

    steps = []
    for feature in load_spec(manifest["spec"]["source"]).features:
        plan, source = manifest["feature_plan"][feature.name], feature.source
        if feature.kind in ("zscore", "log_zscore", "identity"):
            mean, std = plan.get("mean", 0.0), math.sqrt(plan.get("var", 1.0)) or 1.0
            log = feature.kind == "log_zscore"
            steps.append(lambda e, s=source, m=mean, d=std, log=log: [((math.log(e[s] + 1.0) if log else e[s]) - m) / d])
        elif feature.kind == "buckets":
            def bucket(e, s=source, b=plan["boundaries"], n=feature.num_buckets):
                row = [0.0] * n
                row[bisect.bisect_right(b, e[s])] = 1.0
                return row
            steps.append(bucket)
        elif feature.kind == "vocabulary":
            def one_hot(e, s=source, index={t: i for i, t in enumerate(plan["vocabulary"])}, n=feature.top_k + 1):
                row = [0.0] * n
                row[index.get(e[s], len(index))] = 1.0
                return row
            steps.append(one_hot)
        else:  # time_of_day
            def time_of_day(e, s=source):
                moment = datetime.datetime.fromisoformat(e[s])
                angle = 2 * math.pi * (moment.hour * 3600 + moment.minute * 60 + moment.second
                                       + moment.microsecond / 1e6) / 86400
                return [math.sin(angle), math.cos(angle)]
            steps.append(time_of_day)
    return lambda event: [value for step in steps for value in step(event)]


def plain_reference(input_glob: str, model_version_dir: str, output: str) -> None:
    import glob

    import joblib
    import numpy as np

    vector = vectorizer(json.loads((pathlib.Path(model_version_dir) / "manifest.json").read_text()))
    estimator = joblib.load(pathlib.Path(model_version_dir) / "estimator.joblib")
    with open(output, "w") as out:
        event_ids, rows = [], []

        def flush():
            scores = estimator.predict_proba(np.array(rows))[:, 1]
            for event_id, score in zip(event_ids, scores):
                out.write(json.dumps({"event_id": event_id, "score": float(score)}) + "\n")
            event_ids.clear(), rows.clear()

        for path in sorted(glob.glob(input_glob)):
            with open(path, "rb") as lines:
                for line in lines:
                    try:
                        event = json.loads(line)
                        row, event_id = vector(event), event["event_id"]
                    except Exception:
                        continue
                    rows.append(row)
                    event_ids.append(event_id)
                    if len(rows) == 4096:
                        flush()
        if rows:
            flush()


def beam_reference(input_glob: str, model_version_dir: str, output: str) -> None:
    import apache_beam as beam
    import numpy as np
    from apache_beam.coders import BytesCoder
    from apache_beam.ml.inference.base import KeyedModelHandler, RunInference
    from apache_beam.ml.inference.sklearn_inference import ModelFileType, SklearnModelHandlerNumpy

    vector = vectorizer(json.loads((pathlib.Path(model_version_dir) / "manifest.json").read_text()))

    def to_example(line):
        try:
            event = json.loads(line)
            return [(event["event_id"], np.array(vector(event)))]
        except Exception:
            return []

    handler = KeyedModelHandler(SklearnModelHandlerNumpy(
        str(pathlib.Path(model_version_dir) / "estimator.joblib"), model_file_type=ModelFileType.JOBLIB,
        inference_fn=lambda model, batch, inference_args=None: model.predict_proba(np.stack(batch))[:, 1]))
    with beam.Pipeline() as pipeline:
        (pipeline
         | beam.io.ReadFromText(input_glob, coder=BytesCoder())  # its default crashes on invalid UTF-8
         | beam.FlatMap(to_example)
         | RunInference(handler)
         | beam.MapTuple(lambda event_id, result: json.dumps({"event_id": event_id, "score": float(result.inference)}))
         | beam.io.WriteToText(output))


def _timed(command: list[str]) -> float:
    started = time.monotonic()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True)
    return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=20, help="Days of ~10k events to score (default 20: ~200k).")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", choices=("plain", "beam"), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    archive = DATA / f"fraud_{args.days}d"
    if args.reference:  # a reference run, in its own process
        run = plain_reference if args.reference == "plain" else beam_reference
        run(str(archive / "*" / "*.jsonl"), args.model, args.output)
        return

    from pipelines.generate import generate

    if not (archive / "_generated.json").exists():
        generate("fraud", args.days, archive, datetime.date(2026, 3, 1), 10_000, 0.01, 7, compress=False)
    model_dir = DATA / "model"
    if not (model_dir / "CURRENT").exists():
        subprocess.run([sys.executable, "-m", "pipelines.train", "--spec", "fraud", "--input",
                        str(archive / "*" / "*.jsonl"), "--model_dir", str(model_dir)], cwd=ROOT, check=True)
    from models import registry

    version_dir = pathlib.Path(registry.load(str(model_dir)).path)
    lines = sum(json.loads((archive / "_generated.json").read_text())["days"][i]["lines"] for i in range(args.days))
    out = DATA / "out"
    commands = {
        "project (pipelines.score)": [sys.executable, "-m", "pipelines.score", "--spec", "fraud", "--input",
                                      str(archive / "*" / "*.jsonl"), "--model_dir", str(model_dir),
                                      "--output", str(out / "project"), "--dead_letter", str(out / "project_dl")],
        "beam_ref (per element)": [sys.executable, __file__, "--days", str(args.days), "--reference", "beam",
                                   "--model", str(version_dir), "--output", str(out / "beam_ref")],
        "plain_ref (loop, 4096)": [sys.executable, __file__, "--days", str(args.days), "--reference", "plain",
                                   "--model", str(version_dir), "--output", str(out / "plain_ref.jsonl")],
    }
    best = {name: min(_timed(command) for _ in range(args.repeat)) for name, command in commands.items()}
    project = best["project (pipelines.score)"]
    print(f"{lines:,} lines, best of {args.repeat}, whole process wall-clock")
    print(f"{'run':<28}{'seconds':>9}{'events/s':>11}{'project speed-up':>18}")
    for name, seconds in best.items():
        print(f"{name:<28}{seconds:>9.1f}{lines / seconds:>11,.0f}{seconds / project:>17.2f}x")


if __name__ == "__main__":
    main()
