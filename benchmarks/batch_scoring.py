"""Bounded scoring throughput, whole process, against two references on the same data and model.

    .venv/bin/python benchmarks/batch_scoring.py [--days 20 100] [--repeat 3]

Generates two fraud archives (~10k events a day, 1% broken) under benchmarks/data, trains a ``fraud`` and a
``fraud_entity`` model once on the smaller, then times on each archive, as separate processes, each wall-clock
including interpreter start and imports, with its peak RSS:

- project:   ``python -m pipelines.score --mode batch`` (DirectRunner, ONNX features and model) as a user runs
             it (one process below 256 MB of input, a worker process per core from there:
             ``runners.spread_over_cores``); the same held to one process (``--direct_num_workers 1``)
             and spread over two (``--direct_num_workers 2 --direct_running_mode multi_processing``); and
             ``--spec fraud_entity`` (per-card features)
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
reported, and each run's marginal cost: the time of each line of the larger archive beyond the smaller's,
which leaves out start-up and imports.
"""
import argparse
import bisect
import datetime
import json
import math
import os
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


def _timed(command: list[str]) -> tuple[float, int]:
    """(wall-clock seconds, peak RSS in MB) of a command run as its own process: the RSS of it and its worker
    processes together, read every 50 ms (or its own peak, if higher)."""
    started = time.monotonic()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak_kb = 0
    while not (ended := os.wait4(process.pid, os.WNOHANG))[0]:
        peak_kb = max(peak_kb, sum(map(_rss_kb, _process_tree(process.pid))))
        time.sleep(0.05)
    seconds = time.monotonic() - started
    _, status, usage = ended
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{command[:4]} failed: {process.stderr.read().decode()[-2000:]}")
    return seconds, max(peak_kb, usage.ru_maxrss) // 1024


def _process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (Linux's /proc)."""
    tree, index = [pid], 0
    while index < len(tree):
        for children in pathlib.Path(f"/proc/{tree[index]}/task").glob("*/children"):
            try:
                tree += map(int, children.read_text().split())
            except OSError:  # gone meanwhile
                pass
        index += 1
    return tree


def _rss_kb(pid: int) -> int:
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")), 0)


def _archive(days: int) -> tuple[pathlib.Path, int]:
    """The generated fraud archive of ``days`` days (made once) and its number of lines."""
    from pipelines.generate import generate

    archive = DATA / f"fraud_{days}d"
    if not (archive / "_generated.json").exists():
        generate("fraud", days, archive, datetime.date(2026, 3, 1), 10_000, 0.01, 7, compress=False)
    return archive, sum(day["lines"] for day in json.loads((archive / "_generated.json").read_text())["days"])


def _model(spec: str, archive: pathlib.Path) -> pathlib.Path:
    """A model of ``spec`` trained once on ``archive``; its version's directory."""
    from models import registry

    model_dir = DATA / ("model" if spec == "fraud" else f"model_{spec}")
    if not (model_dir / "CURRENT").exists():
        subprocess.run([sys.executable, "-m", "pipelines.train", "--spec", spec, "--input",
                        str(archive / "*" / "*.jsonl"), "--model_dir", str(model_dir)], cwd=ROOT, check=True)
    return pathlib.Path(registry.load(str(model_dir)).path)


def _commands(days: int, archive: pathlib.Path, versions: dict[str, pathlib.Path]) -> dict[str, list[str]]:
    out, events = DATA / "out" / f"{days}d", str(archive / "*" / "*.jsonl")

    def project(spec, name, *flags):
        return [sys.executable, "-m", "pipelines.score", "--spec", spec, "--input", events,
                "--model_dir", str(versions[spec].parent.parent), "--output", str(out / name),
                "--dead_letter", str(out / f"{name}_dl"), *flags]

    def reference(name, output):
        return [sys.executable, __file__, "--reference", name, "--input", events, "--model", str(versions["fraud"]),
                "--output", str(out / output)]

    return {"project (pipelines.score)": project("fraud", "project"),
            "project, 1 process": project("fraud", "project1", "--direct_num_workers", "1"),
            "project, 2 processes": project("fraud", "project2", "--direct_num_workers", "2",
                                            "--direct_running_mode", "multi_processing"),
            "project, fraud_entity": project("fraud_entity", "entity"),
            "beam_ref (per element)": reference("beam", "beam_ref"),
            "plain_ref (loop, 4096)": reference("plain", "plain_ref.jsonl"),
            "least_work (loop, ONNX)": reference("least_work", "least_work.jsonl")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, nargs=2, default=(20, 100), metavar=("SMALL", "LARGE"),
                        help="Days of ~10k events in the two archives (default 20 and 100: ~200k and ~1M).")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", choices=tuple(REFERENCES), help=argparse.SUPPRESS)
    parser.add_argument("--input", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--output", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.reference:  # a reference run, in its own process
        pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        REFERENCES[args.reference](args.input, args.model, args.output)
        return

    archives = {days: _archive(days) for days in args.days}
    small, large = args.days
    versions = {spec: _model(spec, archives[small][0]) for spec in ("fraud", "fraud_entity")}
    best = {}
    for days, (archive, _) in archives.items():
        for name, command in _commands(days, archive, versions).items():
            runs = [_timed(command) for _ in range(args.repeat)]
            best[name, days] = (min(seconds for seconds, _ in runs), max(rss for _, rss in runs))
    (n_small, n_large), project = (archives[small][1], archives[large][1]), best["project (pipelines.score)", large][0]
    print(f"{n_small:,} and {n_large:,} lines, best of {args.repeat}, whole process wall-clock; marginal: the cost "
          f"of each line of the larger archive beyond the smaller one's (the first row's two runs may differ in their "
          f"number of processes: see the next two rows)")
    print(f"{'run':<28}{'s small':>9}{'s large':>9}{'events/s':>11}{'vs project':>12}{'marginal us':>13}"
          f"{'marginal/s':>12}{'peak RSS':>10}")
    for name in _commands(small, archives[small][0], versions):
        (seconds_small, _), (seconds_large, rss) = best[name, small], best[name, large]
        marginal = (seconds_large - seconds_small) / (n_large - n_small)
        print(f"{name:<28}{seconds_small:>9.1f}{seconds_large:>9.1f}{n_large / seconds_large:>11,.0f}"
              f"{seconds_large / project:>11.2f}x{marginal * 1e6:>13.2f}{1 / marginal:>12,.0f}{rss:>7} MB")
    print(_same_scores(DATA / "out" / f"{large}d" / "project", DATA / "out" / f"{large}d" / "least_work.jsonl"))


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
