"""Train a model version from archived events.

    python -m pipelines.train --spec fraud --input 'data/fraud/*/*.jsonl' --model_dir models/fraud

One Beam pipeline parses and validates the events (dead letters under --dead_letter), splits them
by event time (the latest --holdout_fraction is held out), and analyzes the features with
tensorflow-transform on the training part only. Then, in one worker of the same pipeline, the
spec's estimator is fitted, exported with its features to one ONNX model, checked against
tensorflow-transform and scikit-learn, scored on the holdout, and published as a new version that
becomes current. So a runner's workers train, and the launcher only reads the published manifest.

tensorflow-transform's analysis and the version are staged on the launcher's disk (under a local
--model_dir, else in a temporary directory), so the workers must share it: every runner on one
machine, the local Flink cluster included (docs/limits.md).
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.metadata
import json
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
import typing

from pipelines import cli

_MISSING = cli.missing_extra("train", "sklearn", "skl2onnx", "tensorflow_transform")
if _MISSING:  # one line, not an ImportError's traceback, in an install without the train extra
    print(f"error: training: {_MISSING}", file=sys.stderr)
    raise SystemExit(2)

import apache_beam as beam
import joblib
import numpy as np
import onnxruntime as ort
import pyarrow as pa

from models import estimator as estimators
from models import registry
from pipelines import graph, runners
from pipelines.options import ArchiveOptions, ModelOptions, SpecOptions, TrainOptions
from transforms import storage
from transforms.errors import IncompleteInput, UserError
from transforms.events import EventBatch, rfc3339
from transforms.features import RANKED_CLASSES, RANKED_PROBABILITIES, SCORE_OUTPUT, AnalyzeFeatures, feature_graph, \
    feature_names, load_feature_plan, raw_columns, tft_layer, transform_with_tft, width
from transforms.fileio import UNREADABLE_REASON, ReadEventFiles, WriteJsonLines, check_input, label_type
from transforms.monitoring import training_baseline
from transforms.spec import Spec, load_spec

VIEWS = (SpecOptions, TrainOptions, ModelOptions, cli.only(ArchiveOptions, "input", "dead_letter", "batch_size"))
REQUIRED = {"": ("spec", "input", "model_dir")}
TIME_COLUMN = "__event_time_us"
FEATURE_TOLERANCE = 1e-4  # ONNX features vs tensorflow-transform's, absolute
# ONNX's tree ensembles hold leaf weights as float32 (measured: 2.4e-7 apart). Compared on tensorflow-transform's
# features rather than ONNX's own (a float32 step apart), rows near a split took the other branch: 5 of 9,892.
SCORE_TOLERANCE = 1e-5
MAX_SHARE_APART = 0.001  # of rows whose ONNX and scikit-learn scores differ by more than SCORE_TOLERANCE
MAX_SCORE_GAP = 1e-2
REFUSED = "REFUSED"  # in the staging directory: why the fit stage published nothing, for the launcher
REFUSALS = {kind.__name__: kind for kind in (UserError, IncompleteInput, registry.ModelError)}
LIBRARIES = ("apache-beam", "tensorflow-transform", "tensorflow", "scikit-learn", "skl2onnx", "onnx",
             "onnxruntime", "numpy")


def _staged_schema(spec: Spec) -> pa.Schema:
    types = {"string": pa.string(), "timestamp": pa.int64(), "number": pa.float32()}
    fields = [(name, types[spec.field(name).type]) for name in spec.feature_sources] + [(TIME_COLUMN, pa.int64())]
    label = [(spec.label, label_type(spec))] if spec.label else []
    return pa.schema(fields + label)


def _staged_table(batch: EventBatch, spec: Spec) -> pa.Table:
    columns = dict(raw_columns(batch, spec), **{TIME_COLUMN: np.array(batch.event_time_us, np.int64)})
    if spec.label:
        columns[spec.label] = [e.get(spec.label) for e in batch.events]
    return pa.table(columns, schema=_staged_schema(spec))


def _before(batch: EventBatch, split_us: int) -> list[EventBatch]:
    keep = [i for i, t in enumerate(batch.event_time_us) if t < split_us]
    return [EventBatch([batch.events[i] for i in keep], [batch.event_time_us[i] for i in keep])] if keep else []


def build(pipeline, spec: Spec, input_pattern: str, batch_size: int, staging: pathlib.Path, dead_letter_dir: str,
          holdout_fraction: float, require_label: bool, publication: Publication) -> None:
    """The training graph: parse, find the split time, analyze the training part, then fit and publish."""
    parsed = (pipeline
              | "ReadEvents" >> ReadEventFiles(input_pattern, batch_size)
              | "ParseAndEnrich" >> graph.ParseAndEnrich(spec, streaming=False, batch_size=batch_size,
                                                         require_label=require_label))
    parsed.dead_letters | "WriteDeadLetters" >> WriteJsonLines(dead_letter_dir, "dead_letter")
    events = parsed.events
    split_index = round((1 - holdout_fraction) * 100)
    split = (events
             | "EventTimes" >> beam.FlatMap(lambda batch: batch.event_time_us)
             | "Percentiles" >> beam.ApproximateQuantiles.Globally(101)
             # no valid events, no percentiles: the fit stage then refuses with a one-line reason
             | "SplitTime" >> beam.Map(lambda percentiles: percentiles[split_index] if percentiles else 0))
    analyzed = (events
                | "TrainingPart" >> beam.FlatMap(_before, beam.pvalue.AsSingleton(split))
                | "AnalyzeFeatures" >> AnalyzeFeatures(spec, str(staging / "transform"), str(staging / "tmp")))
    dead_lettered = parsed.dead_letters | "CountDeadLetters" >> beam.combiners.Count.Globally()
    unreadable = (parsed.dead_letters
                  | "UnreadableFiles" >> beam.FlatMap(
                      lambda letter: [letter["source"]["file"]] if letter["error"].startswith(UNREADABLE_REASON) else [])
                  | "ListUnreadable" >> beam.combiners.ToList())
    (events
     | "Stage" >> beam.Map(_staged_table, spec)
     | "AllValidEvents" >> beam.combiners.ToList()  # one element: the fit needs every row in one worker
     | "FitAndPublish" >> beam.ParDo(FitAndPublish(spec, staging, publication), split_us=beam.pvalue.AsSingleton(split),
                                     analyzed=beam.pvalue.AsList(analyzed),
                                     dead_lettered=beam.pvalue.AsSingleton(dead_lettered),
                                     unreadable=beam.pvalue.AsSingleton(unreadable)))


class Publication(typing.NamedTuple):
    """Where and how the fit stage publishes the version it trains."""
    model_dir: str
    version: str
    signing_key_env: str | None


class FitAndPublish(beam.DoFn):
    """Every valid event's staged columns (one list of tables) in; fits, checks, exports and publishes the
    version, or writes why not (``REFUSED``) to the staging directory, which the launcher reads."""

    def __init__(self, spec: Spec, staging: pathlib.Path, publication: Publication):
        self._spec, self._staging, self._publication = spec, staging, publication

    def process(self, tables: list[pa.Table], split_us: int, analyzed, dead_lettered: int, unreadable: list[str]):
        del analyzed  # a side input only so that this stage waits for the transform artifact
        try:
            if unreadable:
                raise cli.incomplete_input(sorted(set(unreadable)), "no model was trained from the rest; fix or "
                                                                    "remove them and train again")
            valid = sum(table.num_rows for table in tables)
            manifest = _fit_and_export(self._spec, self._staging, _in_one_order(tables, self._spec), split_us,
                                       {"input_events": valid + dead_lettered, "dead_lettered": dead_lettered},
                                       self._publication.version)
            registry.publish(self._publication.model_dir, self._staging, manifest, self._publication.signing_key_env)
        except UserError as error:
            logging.error("training refused: %s", error)  # where the launcher is gone, the job's log says why
            (self._staging / REFUSED).write_text(json.dumps({"kind": type(error).__name__, "reason": str(error)}))


def _in_one_order(tables: list[pa.Table], spec: Spec) -> pa.Table:
    """All staged rows sorted by every column: the fit sees the same rows in the same order on every runner,
    however its bundles came."""
    if not tables:
        return _staged_schema(spec).empty_table()
    table = pa.concat_tables(tables)
    return table.sort_by([(TIME_COLUMN, "ascending")] + [(name, "ascending") for name in table.column_names
                                                         if name != TIME_COLUMN])


def run(argv=None, test_pipeline=None) -> registry.ModelVersion:
    """Train and publish a model version; returns it."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    runners.apply_runner_presets(options)
    cli.require(options, *REQUIRED[""])
    flags, model_dir = options.view_as(ArchiveOptions), options.view_as(ModelOptions).model_dir
    holdout_fraction = options.view_as(TrainOptions).holdout_fraction
    if not 0 < holdout_fraction < 1:
        raise UserError("--holdout_fraction must be between 0 and 1")
    signing_key_env = options.view_as(ModelOptions).model_signing_key_env
    registry.signing_key(signing_key_env)  # an unset key fails now, not after training
    storage.check_committable("--model_dir", model_dir)  # and so does a model directory that cannot be published to
    spec = load_spec(options.view_as(SpecOptions).spec)
    supervised = estimators.is_supervised(spec)
    check_input(flags.input)

    _import_tensorflow_quietly()
    started = time.monotonic()
    version = registry.new_version()
    staging = registry.staging_dir(model_dir, version)
    dead_letter_dir = flags.dead_letter or f"{model_dir}/dead_letters/{version}"
    try:
        pipeline = cli.create_pipeline(options, test_pipeline)
        build(pipeline, spec, flags.input, flags.batch_size, staging, dead_letter_dir, holdout_fraction, supervised,
              Publication(model_dir, version, signing_key_env))
        result = pipeline.run()
        result.wait_until_finish()
        print(cli.summary(f"{spec.name} training data", cli.counters(result), time.monotonic() - started,
                          {"dead letters": f"{dead_letter_dir}/dead_letter-*.jsonl"}))
        if (staging / REFUSED).exists():
            refused = json.loads((staging / REFUSED).read_text())
            raise REFUSALS[refused["kind"]](refused["reason"])
        model = dataclasses.replace(registry.load(model_dir, version, signing_key_env=signing_key_env),
                                    made_current=registry.current(model_dir)[0] == version)
    finally:  # a training that did not publish leaves nothing behind (a published one has no staging left)
        shutil.rmtree(staging, ignore_errors=True)
    print(_report(model, spec, model_dir, time.monotonic() - started))
    return model


def _import_tensorflow_quietly() -> None:
    """TensorFlow's C++ lines (no CUDA on this machine, oneDNN, CPU instructions) say nothing a user can act on.
    Those of its import come before its logging is set up, whatever TF_CPP_MIN_LOG_LEVEL says, so the import
    writes stderr to a file, shown only if the import fails; the variable (0 shows them) keeps out later ones."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    logging.getLogger("absl").setLevel(logging.ERROR)  # tensorflow-transform's advice about its input format
    with tempfile.TemporaryFile() as captured:
        try:
            with cli.stderr_to(captured):
                importlib.import_module("tensorflow")
        except BaseException:
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise


def _fit_and_export(spec: Spec, staging: pathlib.Path, table: pa.Table, split_us: int, counts: dict,
                    version: str) -> dict:
    """Fit, export and check the model in ``staging``, which holds the transform artifact; the manifest, less
    the file hashes."""
    if table.num_rows == 0:
        raise UserError("no valid training events; see the dead letters")
    times = table[TIME_COLUMN].to_numpy()
    train, holdout = times < split_us, times >= split_us
    if not train.any() or not holdout.any():
        raise UserError("too few distinct event times to hold out the latest events")
    columns = {name: table[name].to_numpy(zero_copy_only=False) for name in spec.feature_sources}
    for name in columns:
        if columns[name].dtype.kind in "fiu":
            columns[name] = columns[name].astype(np.int64 if spec.field(name).type == "timestamp" else np.float32)
    labels = table[spec.label].to_numpy(zero_copy_only=False) if spec.label else None

    transform_dir = str(staging / "transform")
    features = transform_with_tft(tft_layer(transform_dir), spec, columns)
    plan = load_feature_plan(transform_dir, spec)
    graph = feature_graph(spec, plan)
    onnx_features = ort.InferenceSession(graph.SerializeToString()).run(None, columns)[0]
    feature_gap = float(np.abs(onnx_features - features).max())
    if feature_gap > FEATURE_TOLERANCE:
        raise registry.ModelError(f"not saved: ONNX features differ from tensorflow-transform's by {feature_gap:g}")

    estimator = estimators.fit(spec, features[train], None if labels is None else labels[train])
    onnx_model = estimators.to_onnx(estimator, graph)
    holdout_columns = {name: values[holdout] for name, values in columns.items()}
    session = ort.InferenceSession(onnx_model.SerializeToString())
    onnx_outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, holdout_columns)))
    onnx_scores = onnx_outputs[SCORE_OUTPUT]
    # scikit-learn on the features ONNX computed: their gap to tensorflow-transform's is checked above, and a
    # row whose feature is a float32 step from a split would otherwise count as the estimator's export's
    score_gap, rows_apart = _gap(onnx_outputs, estimators.sklearn_outputs(estimator, onnx_features[holdout]))
    if score_gap > MAX_SCORE_GAP or rows_apart > MAX_SHARE_APART:
        raise registry.ModelError(f"not saved: ONNX scores differ from scikit-learn's by up to {score_gap:g}, "
                                  f"on {rows_apart:.3%} of holdout rows by more than {SCORE_TOLERANCE:g}")

    (staging / "model.onnx").write_bytes(onnx_model.SerializeToString())
    joblib.dump(estimator, staging / "estimator.joblib")
    shutil.rmtree(staging / "tmp", ignore_errors=True)

    evaluation = {}
    if labels is not None:
        known = holdout & (table[spec.label].is_valid().to_numpy(zero_copy_only=False))
        evaluation = _evaluate(spec, {name: values[known[holdout]] for name, values in onnx_outputs.items()},
                               labels[known], labels[train])
        if spec.entity_features:
            evaluation["without_entity_features"] = _ablation(spec, features, labels, train, known)
    return {
        "version": version,
        "created_at": _utc(time.time() * 1e6),
        "spec": {"name": spec.name, "fingerprint": spec.fingerprint, "source": spec.source},
        "estimator": {"class": spec.estimator, "params": spec.estimator_params},
        "score": estimators.describe_score(spec, estimator),
        **({"classes": estimator.classes_.tolist()} if spec.classes else {}),  # those the model can rank
        "alert_threshold_at_training": spec.alert_threshold,
        "features": feature_names(spec, plan),
        "feature_plan": plan,
        "baseline": training_baseline(spec, plan, {name: values[train] for name, values in columns.items()},
                                      onnx_scores),
        "training": {
            **counts,
            "train": {"rows": int(train.sum()), "from": _utc(times[train].min()), "to": _utc(times[train].max())},
            "holdout": {"rows": int(holdout.sum()), "from": _utc(times[holdout].min()),
                        "to": _utc(times[holdout].max())},
        },
        "metrics": {"holdout": evaluation},
        "checks": {"onnx_vs_tft_features_max_abs_diff": feature_gap,
                   "onnx_vs_sklearn_scores_max_abs_diff": score_gap,
                   f"onnx_vs_sklearn_share_of_rows_apart_by_{SCORE_TOLERANCE:g}": rows_apart},
        "libraries": {name: importlib.metadata.version(name) for name in LIBRARIES},
    }


def _gap(onnx_outputs: dict, sklearn_outputs: dict) -> tuple[float, float]:
    """How far ONNX's outputs are from scikit-learn's: the largest difference of a score (or a ranked
    probability), and the share of rows apart by more than SCORE_TOLERANCE (or ranking other classes)."""
    gaps = np.abs(onnx_outputs[SCORE_OUTPUT] - sklearn_outputs[SCORE_OUTPUT])
    if RANKED_CLASSES in sklearn_outputs:  # each class's probability, whatever its rank (near-ties may swap)
        by_class = [np.take_along_axis(outputs[RANKED_PROBABILITIES], np.argsort(outputs[RANKED_CLASSES], axis=1), 1)
                    for outputs in (onnx_outputs, sklearn_outputs)]
        gaps = np.maximum(gaps, np.abs(by_class[0] - by_class[1]).max(axis=1))
    return float(gaps.max()), float((gaps > SCORE_TOLERANCE).mean())


def _evaluate(spec: Spec, outputs: dict, truth: np.ndarray, training_labels: np.ndarray) -> dict:
    """Holdout metrics of a model's outputs for the rows whose label is known: ranking quality of a 0/1
    label's scores; a class label's hit rates, beside offering the classes commonest in training."""
    if not spec.classes:
        return estimators.metrics(outputs[SCORE_OUTPUT], truth.astype(int))
    return estimators.class_metrics(outputs, truth, estimators.commonest(training_labels), spec.top_k)


def _ablation(spec: Spec, features: np.ndarray, labels: np.ndarray, train: np.ndarray, known: np.ndarray) -> dict:
    """Holdout metrics of the same estimator fitted on the same rows without the entity-feature columns."""
    derived = {f.name for f in spec.entity_features}
    keep = np.concatenate([np.full(width(f), f.source not in derived) for f in spec.features])
    estimator = estimators.fit(spec, features[train][:, keep], labels[train])
    return _evaluate(spec, estimators.sklearn_outputs(estimator, features[known][:, keep]), labels[known],
                     labels[train])


def _utc(microseconds) -> str:
    return rfc3339(int(microseconds))


def _report(model: registry.ModelVersion, spec: Spec, model_dir: str, seconds: float) -> str:
    manifest = model.manifest
    training, holdout = manifest["training"], manifest["metrics"]["holdout"]
    state = ("is current" if model.made_current else
             f"is published but not current: CURRENT names {registry.current(model_dir)[0]}, "
             f"a version whose name sorts after it (a training started later, or a name given by hand)")
    lines = [f"model {model.version} ({manifest['spec']['name']}) {state}: {model.path}",
             f"  trained on {training['train']['rows']:,} events {training['train']['from']} .. "
             f"{training['train']['to']}; held out {training['holdout']['rows']:,} later events"]
    if "roc_auc" in holdout:
        lines.append(f"  holdout: ROC AUC {holdout['roc_auc']:.4f}, average precision "
                     f"{holdout['average_precision']:.4f} ({holdout['positives']:,} positives)")
    if "roc_auc" in holdout.get("without_entity_features", {}):
        ablation = holdout["without_entity_features"]
        lines.append(f"  without the entity features (same rows, refitted): ROC AUC {ablation['roc_auc']:.4f}, "
                     f"average precision {ablation['average_precision']:.4f}")
    unlearned = sorted(set(spec.classes or ()) - set(manifest.get("classes", ())))
    if unlearned:
        lines.append(f"  never ranked: {', '.join(unlearned)} (no training event had them)")
    if "top_k" in holdout:
        k = holdout["top_k"]
        lines.append(f"  holdout: top-{k} hit rate {holdout[f'top_{k}_hit_rate']:.4f} (always the {k} commonest classes: "
                     f"{holdout[f'most_popular_top_{k}_hit_rate']:.4f}), top-1 {holdout['top_1_hit_rate']:.4f}, "
                     f"calibration error {holdout['expected_calibration_error']:.4f}")
        if "without_entity_features" in holdout:
            lines.append(f"  without the entity features (same rows, refitted): top-{k} hit rate "
                         f"{holdout['without_entity_features'][f'top_{k}_hit_rate']:.4f}")
    lines.append(f"  {len(manifest['features'])} features; {manifest['score']}; took {seconds:.1f} s")
    return "\n".join(lines)


if __name__ == "__main__":
    cli.main(run)
