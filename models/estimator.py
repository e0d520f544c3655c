"""The spec's scikit-learn estimator: fit it, score with it, and export it to ONNX with its features.

A score is one float per event: for a classifier of a 0/1 label, the probability of 1; of a class
label (a string field with an enum), the probability of the likeliest class, beside every class
ranked by its probability (``RANKED_CLASSES``, ``RANKED_PROBABILITIES``); for an outlier detector (IsolationForest ...), ``-score_samples``, so higher is more anomalous; for
a regressor, which is trained as an autoencoder (to reconstruct the model's input columns, from the
rows whose label is 0 where the spec has a label), the mean squared reconstruction error.
"""
from __future__ import annotations

import importlib

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from sklearn.base import is_classifier, is_outlier_detector, is_regressor
from sklearn.metrics import average_precision_score, roc_auc_score

from transforms.features import FEATURES_OUTPUT, ONNX_IR_VERSION, ONNX_OPSETS, RANKED_CLASSES, RANKED_PROBABILITIES, \
    SCORE_OUTPUT
from transforms.spec import Spec, SpecError
CALIBRATION_BINS = 10


def estimator_class(spec: Spec) -> type:
    """The scikit-learn estimator class the spec names."""
    module_name, _, class_name = spec.estimator.rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError):
        raise SpecError(f"spec {spec.source}: model.estimator {spec.estimator!r} does not exist") from None


def make_estimator(spec: Spec):
    """A new, unfitted estimator as the spec describes it."""
    try:
        estimator = estimator_class(spec)(**spec.estimator_params)
    except TypeError as error:
        raise SpecError(f"spec {spec.source}: model.params: {error}") from None
    if spec.classes and not is_classifier(estimator):
        raise SpecError(f"spec {spec.source}: the label {spec.label!r} is a class: model.estimator must be a "
                        f"classifier")
    if is_classifier(estimator):
        if spec.label is None:
            raise SpecError(f"spec {spec.source}: a classifier needs a label")
    elif not (is_outlier_detector(estimator) or is_regressor(estimator)):
        raise SpecError(f"spec {spec.source}: model.estimator must be a classifier, an outlier detector or a "
                        f"regressor (trained to reconstruct its input)")
    return estimator


def is_supervised(spec: Spec) -> bool:
    """Whether the spec's estimator learns from its label (a classifier)."""
    return is_classifier(make_estimator(spec))


def describe_score(spec: Spec, estimator) -> str:
    if spec.classes:
        return f"probability of the likeliest {spec.label}; each record ranks its top {spec.top_k}"
    if is_classifier(estimator):
        return f"probability that {spec.label} is 1"
    if is_regressor(estimator):
        return "reconstruction error, mean squared over the model's input columns (higher is more anomalous)"
    return "anomaly score, -score_samples (higher is more anomalous)"


def sklearn_outputs(estimator, features: np.ndarray) -> dict[str, np.ndarray]:
    """What the model's ONNX file outputs, from scikit-learn itself: ``score``, and for a class label the ranking."""
    if not is_ranking(estimator):
        return {SCORE_OUTPUT: sklearn_scores(estimator, features)}
    probabilities = estimator.predict_proba(features)
    order = np.argsort(-probabilities, axis=1, kind="stable")  # ties: the earlier class first, as ONNX's TopK
    ranked = np.take_along_axis(probabilities, order, axis=1)
    return {SCORE_OUTPUT: ranked[:, 0], RANKED_CLASSES: estimator.classes_[order].astype(object),
            RANKED_PROBABILITIES: ranked}


def is_ranking(estimator) -> bool:
    """Whether the estimator is a classifier of a class label (its classes are names, not 0 and 1)."""
    return is_classifier(estimator) and estimator.classes_.dtype.kind in "OU"


def sklearn_scores(estimator, features: np.ndarray) -> np.ndarray:
    """Scores from scikit-learn itself, float64 (a class label's: see ``sklearn_outputs``)."""
    if is_classifier(estimator):
        return estimator.predict_proba(features)[:, list(estimator.classes_).index(1)]
    if is_regressor(estimator):
        rows = np.asarray(features, np.float64)
        return np.mean((estimator.predict(rows) - rows) ** 2, axis=1)
    return -estimator.score_samples(features)


def fit(spec: Spec, features: np.ndarray, labels: np.ndarray | None):
    estimator = make_estimator(spec)
    if is_classifier(estimator):
        if len(np.unique(labels)) < 2:
            raise SpecError(f"training data has only one value of {spec.label}; a classifier needs "
                            + ("two classes or more" if spec.classes else "both 0 and 1"))
        return estimator.fit(features, labels)
    if is_regressor(estimator):  # an autoencoder of the normal rows
        normal = features if labels is None else features[np.asarray([label == 0 for label in labels])]
        return estimator.fit(normal, normal)
    return estimator.fit(features)


def metrics(scores: np.ndarray, labels: np.ndarray) -> dict:
    """Ranking quality of scores against 0/1 labels (ROC AUC, average precision)."""
    result = {"rows": int(len(labels)), "positives": int(labels.sum())}
    if 0 < labels.sum() < len(labels):
        result.update(roc_auc=float(roc_auc_score(labels, scores)),
                      average_precision=float(average_precision_score(labels, scores)))
    return result


def class_metrics(outputs: dict[str, np.ndarray], truth: np.ndarray, popular: list[str], top_k: int) -> dict:
    """How well ranked classes name the true one: the top-1 and top-k hit rates, beside the rate of always
    offering the ``top_k`` classes commonest in training; log loss; calibration of the top class's
    probability (the expected calibration error over equal-width bins, and the bins themselves)."""
    ranked, probabilities = outputs[RANKED_CLASSES], outputs[RANKED_PROBABILITIES]
    hit = ranked == truth[:, None]
    true_probability = (probabilities * hit).sum(axis=1)  # 0 for a class the model never learned
    correct = hit[:, 0]
    bins = calibration(probabilities[:, 0], correct)
    return {"rows": int(len(truth)), "top_k": top_k,
            "top_1_hit_rate": float(correct.mean()),
            f"top_{top_k}_hit_rate": float(hit[:, :top_k].any(axis=1).mean()),
            f"most_popular_top_{top_k}_hit_rate": float(np.isin(truth, popular[:top_k]).mean()),
            "log_loss": float(-np.log(np.maximum(true_probability, 1e-15)).mean()),
            "expected_calibration_error": calibration_error(bins), "calibration": bins}


def commonest(labels: np.ndarray) -> list[str]:
    """A class label's values, commonest first (ties: in name order)."""
    names, counts = np.unique(labels.astype(str), return_counts=True)
    return [str(name) for name in names[np.argsort(-counts, kind="stable")]]


def calibration(confidence: np.ndarray, correct: np.ndarray) -> list[dict]:
    """How often the likeliest class was right, by its probability in equal-width bins (empty bins left out)."""
    bins = np.minimum((confidence * CALIBRATION_BINS).astype(int), CALIBRATION_BINS - 1)
    return [{"from": b / CALIBRATION_BINS, "rows": int((bins == b).sum()),
             "mean_probability": float(confidence[bins == b].mean()), "hit_rate": float(correct[bins == b].mean())}
            for b in range(CALIBRATION_BINS) if (bins == b).any()]


def calibration_error(bins: list[dict]) -> float:
    """The expected calibration error: the gap between probability and hit rate, averaged over rows."""
    return float(sum(b["rows"] * abs(b["mean_probability"] - b["hit_rate"]) for b in bins)
                 / sum(b["rows"] for b in bins))


def to_onnx(estimator, feature_graph: onnx.ModelProto) -> onnx.ModelProto:
    """One ONNX model from raw columns to ``score`` [rows] float64: the feature graph, then the estimator
    (for a class label, ``RANKED_CLASSES`` and ``RANKED_PROBABILITIES`` too).

    The estimator is exported in float64 where skl2onnx can (as HistGradientBoosting and linear
    models compute): split thresholds sit between float32 feature values, and rounded to float32
    they send rows down the other branch. Otherwise (IsolationForest, whose trees scikit-learn
    runs in float32 too) in float32. Training checks the result against scikit-learn either way.
    """
    width = feature_graph.graph.output[0].type.tensor_type.shape.dim[1].dim_value
    model, dtype = _convert(estimator, width)
    model.ir_version = ONNX_IR_VERSION
    del model.opset_import[:]  # skl2onnx asks for older ai.onnx.ml versions; these ops are the same in 3
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in ONNX_OPSETS.items())
    features = onnx.ModelProto()
    features.CopyFrom(feature_graph)
    if dtype == TensorProto.DOUBLE:
        features.graph.node.append(helper.make_node("Cast", [FEATURES_OUTPUT], ["features_float64"], to=dtype))
        del features.graph.output[:]
        features.graph.output.append(helper.make_tensor_value_info("features_float64", dtype, ["rows", width]))
    merged = onnx.compose.merge_models(features, model, io_map=[(features.graph.output[0].name,
                                                                 model.graph.input[0].name)])
    _append_score_head(merged.graph, estimator, features.graph.output[0].name)
    onnx.checker.check_model(merged, full_check=True)
    return merged


def _convert(estimator, width: int) -> tuple[onnx.ModelProto, int]:
    from skl2onnx import to_onnx as skl_to_onnx

    options = {id(estimator): {"zipmap": False}} if is_classifier(estimator) else None
    # model_optim=False: skl2onnx's pass that removes Identity nodes took 10 of 18 s converting a 200-tree
    # IsolationForest, and onnxruntime drops those nodes itself when it loads the model.
    try:
        sample = np.zeros((1, width), np.float64)
        return (skl_to_onnx(estimator, sample, target_opset=dict(ONNX_OPSETS), options=options, model_optim=False),
                TensorProto.DOUBLE)
    except RuntimeError:  # no float64 converter for this estimator
        sample = np.zeros((1, width), np.float32)
        return (skl_to_onnx(estimator, sample, target_opset=dict(ONNX_OPSETS), options=options, model_optim=False),
                TensorProto.FLOAT)


def _append_score_head(graph: onnx.GraphProto, estimator, model_input: str) -> None:
    """Replace the estimator's outputs with those of ``sklearn_outputs``: one float64 ``score`` (``model_input``:
    the estimator's input columns, which a reconstruction error compares with), and a class label's ranking."""
    outputs = [o.name for o in graph.output]
    ranking = []
    as_double = lambda name: helper.make_node("Cast", [name], [f"{name}_float64"], to=TensorProto.DOUBLE)
    if is_regressor(estimator):
        reconstruction = outputs[0]
        graph.node.extend([  # skl2onnx gives a multi-output regressor's predictions flattened: shape them back
            as_double(reconstruction), as_double(model_input),
            helper.make_node("Shape", [model_input], ["input_shape"]),
            helper.make_node("Reshape", [f"{reconstruction}_float64", "input_shape"], ["reconstructed"]),
            helper.make_node("Sub", ["reconstructed", f"{model_input}_float64"], ["reconstruction_gap"]),
            helper.make_node("Mul", ["reconstruction_gap", "reconstruction_gap"], ["squared_gap"]),
            helper.make_node("ReduceMean", ["squared_gap"], [SCORE_OUTPUT], axes=[1], keepdims=0),
        ])
    elif is_ranking(estimator):
        probabilities, classes = next(o for o in outputs if "prob" in o), len(estimator.classes_)
        graph.initializer.extend([
            numpy_helper.from_array(np.array(estimator.classes_.tolist(), dtype=object), "class_names"),
            numpy_helper.from_array(np.array([classes], np.int64), "class_count"),
            numpy_helper.from_array(np.array(0, np.int64), "likeliest")])
        graph.node.extend([
            as_double(probabilities),
            helper.make_node("TopK", [f"{probabilities}_float64", "class_count"], [RANKED_PROBABILITIES, "ranked_index"],
                             axis=1),
            helper.make_node("Gather", ["class_names", "ranked_index"], [RANKED_CLASSES]),
            helper.make_node("Gather", [RANKED_PROBABILITIES, "likeliest"], [SCORE_OUTPUT], axis=1)])
        ranking = [helper.make_tensor_value_info(RANKED_CLASSES, TensorProto.STRING, ["rows", classes]),
                   helper.make_tensor_value_info(RANKED_PROBABILITIES, TensorProto.DOUBLE, ["rows", classes])]
    elif is_classifier(estimator):
        probabilities = next(o for o in outputs if "prob" in o)
        graph.initializer.append(
            numpy_helper.from_array(np.array(list(estimator.classes_).index(1), np.int64), "positive_class"))
        graph.node.extend([as_double(probabilities),
                           helper.make_node("Gather", [f"{probabilities}_float64", "positive_class"], [SCORE_OUTPUT],
                                            axis=1)])
    else:  # skl2onnx's ``scores`` is decision_function = score_samples - offset_
        scores = next(o for o in outputs if "score" in o)
        graph.initializer.extend([numpy_helper.from_array(np.array([[estimator.offset_]], np.float64), "score_offset"),
                                  numpy_helper.from_array(np.array([-1], np.int64), "flat_shape")])
        graph.node.extend([
            as_double(scores),
            helper.make_node("Add", [f"{scores}_float64", "score_offset"], ["score_samples"]),
            helper.make_node("Neg", ["score_samples"], ["negated_score_samples"]),
            helper.make_node("Reshape", ["negated_score_samples", "flat_shape"], [SCORE_OUTPUT]),
        ])
    del graph.output[:]
    graph.output.extend([helper.make_tensor_value_info(SCORE_OUTPUT, TensorProto.DOUBLE, ["rows"]), *ranking])
