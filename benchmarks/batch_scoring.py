"""Bounded scoring throughput, whole process, against two references on the same data and model.

    .venv/bin/python benchmarks/batch_scoring.py [--days 20] [--repeat 3]

Generates a fraud archive (~10k events a day, 1% broken) under benchmarks/data, trains a model
once, then times, as separate processes, each wall-clock including interpreter start and imports:

- project:   ``python -m pipelines.score --mode batch`` (DirectRunner, ONNX features and model); and
             the same with ``--direct_num_workers 2 --direct_running_mode multi_processing``
- beam_ref:  a Beam pipeline written the way Beam's RunInference examples are: ReadFromText,
             per-element json.loads and feature vector, RunInference(SklearnModelHandlerNumpy),
             WriteToText, DirectRunner defaults
- plain_ref: a single-process loop: parse, vector, predict in batches of 4096, write
- least_work: a single-process loop of the least work that gives the project's scores: orjson per
             line, a minimal check (the feature sources there, of their types), one onnxruntime call
             per 4,096 events on the raw columns the project's model.onnx takes, orjson out

beam_ref and plain_ref compute the same features (from the model's manifest) with the same fitted
estimator; least_work runs the project's own model.onnx, and its scores are compared with the
project's, event by event. Lines a reference cannot take are skipped. Best of --repeat runs is
reported.
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


def _line_blocks(input_glob: str, size: int = 4096):
    """Blocks of up to ``size`` lines (bytes), files in name order."""
    import glob
    import itertools

    for path in sorted(glob.glob(input_glob)):
        with open(path, "rb") as lines:
            while block := list(itertools.islice(lines, size)):
                yield block


def _taken(lines, take) -> tuple[list, list]:
    """(event ids, rows) of the lines ``take(line)`` can take; it raises for a line it cannot (skipped)."""
    ids, rows = [], []
    for line in lines:
        try:
            event_id, row = take(line)
        except Exception:
            continue
        ids.append(event_id)
        rows.append(row)
    return ids, rows


def plain_reference(input_glob: str, model_version_dir: str, output: str) -> None:
    import joblib
    import numpy as np

    vector = vectorizer(json.loads((pathlib.Path(model_version_dir) / "manifest.json").read_text()))
    estimator = joblib.load(pathlib.Path(model_version_dir) / "estimator.joblib")

    def take(line):
        event = json.loads(line)
        return event["event_id"], vector(event)

    with open(output, "w") as out:
        for block in _line_blocks(input_glob):
            ids, rows = _taken(block, take)
            if not rows:
                continue
            scores = estimator.predict_proba(np.array(rows))[:, 1]
            out.writelines(json.dumps({"event_id": i, "score": float(s)}) + "\n" for i, s in zip(ids, scores))


def least_work_scorer(model_version_dir: str):
    """``score(lines) -> (event ids, scores)``: the least work that gives the project's scores. orjson per line,
    a minimal check (the feature sources there, of their types; a line that fails it is skipped), one
    onnxruntime call on the raw columns the project's ``model.onnx`` takes. Also the live reference of
    ``stream_latency.py``."""
    import numpy as np
    import onnxruntime
    import orjson

    from transforms.spec import load_spec

    spec = load_spec(json.loads((pathlib.Path(model_version_dir) / "manifest.json").read_text())["spec"]["source"])
    session = onnxruntime.InferenceSession(str(pathlib.Path(model_version_dir) / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    types = {name: spec.field(name).type for name in spec.feature_sources}
    dtypes = {"string": object, "timestamp": np.int64}
    epoch, microsecond = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc), datetime.timedelta(microseconds=1)

    def take(line):
        event = orjson.loads(line)
        row = []
        for name, kind in types.items():
            value = event[name]
            if kind == "timestamp":
                value = (datetime.datetime.fromisoformat(value) - epoch) // microsecond
            elif kind == "string" and not isinstance(value, str):
                raise ValueError(name)
            elif kind != "string" and (type(value) not in (int, float) or not math.isfinite(value)):
                raise ValueError(name)
            row.append(value)
        if not isinstance(event["event_id"], str):
            raise ValueError("event_id")
        return event["event_id"], row

    def score(lines) -> tuple[list, list]:
        ids, rows = _taken(lines, take)
        if not rows:
            return [], []
        columns = {name: np.array([row[i] for row in rows], dtype=dtypes.get(kind, np.float32))
                   for i, (name, kind) in enumerate(types.items())}
        return ids, session.run(None, columns)[0].tolist()

    return score


def least_work_reference(input_glob: str, model_version_dir: str, output: str) -> None:
    import orjson

    score = least_work_scorer(model_version_dir)
    with open(output, "wb") as out:
        for block in _line_blocks(input_glob):
            ids, scores = score(block)
            out.write(b"".join(orjson.dumps({"event_id": i, "score": s}) + b"\n" for i, s in zip(ids, scores)))


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
    parser.add_argument("--reference", choices=tuple(REFERENCES), help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    archive = DATA / f"fraud_{args.days}d"
    if args.reference:  # a reference run, in its own process
        REFERENCES[args.reference](str(archive / "*" / "*.jsonl"), args.model, args.output)
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
        "project, 2 processes": [sys.executable, "-m", "pipelines.score", "--spec", "fraud", "--input",
                                 str(archive / "*" / "*.jsonl"), "--model_dir", str(model_dir),
                                 "--output", str(out / "project2"), "--dead_letter", str(out / "project2_dl"),
                                 "--direct_num_workers", "2", "--direct_running_mode", "multi_processing"],
        "beam_ref (per element)": [sys.executable, __file__, "--days", str(args.days), "--reference", "beam",
                                   "--model", str(version_dir), "--output", str(out / "beam_ref")],
        "plain_ref (loop, 4096)": [sys.executable, __file__, "--days", str(args.days), "--reference", "plain",
                                   "--model", str(version_dir), "--output", str(out / "plain_ref.jsonl")],
        "least_work (loop, ONNX)": [sys.executable, __file__, "--days", str(args.days), "--reference", "least_work",
                                    "--model", str(version_dir), "--output", str(out / "least_work.jsonl")],
    }
    best = {name: min(_timed(command) for _ in range(args.repeat)) for name, command in commands.items()}
    project = best["project (pipelines.score)"]
    print(f"{lines:,} lines, best of {args.repeat}, whole process wall-clock")
    print(f"{'run':<28}{'seconds':>9}{'events/s':>11}{'project speed-up':>18}")
    for name, seconds in best.items():
        print(f"{name:<28}{seconds:>9.1f}{lines / seconds:>11,.0f}{seconds / project:>17.2f}x")
    print(_same_scores(out / "project", out / "least_work.jsonl"))


def _same_scores(project_dir: pathlib.Path, least_work: pathlib.Path) -> str:
    project = {r["event_id"]: r["score"] for path in sorted(project_dir.glob("*.jsonl"))
               for r in map(json.loads, path.read_text().splitlines())}
    reference = {r["event_id"]: r["score"] for r in map(json.loads, least_work.read_text().splitlines())}
    both = reference.keys() & project.keys()
    differ = sum(project[event_id] != reference[event_id] for event_id in both)
    return (f"least_work and the project both scored {len(both):,} events, {differ:,} of them differently; "
            f"least_work's minimal check also took {len(reference.keys() - project.keys()):,} lines the contract "
            f"refuses, the project {len(project.keys() - reference.keys()):,} that least_work skipped")


REFERENCES = {"plain": plain_reference, "beam": beam_reference, "least_work": least_work_reference}

if __name__ == "__main__":
    main()
