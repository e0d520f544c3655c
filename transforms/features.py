"""Feature preparation from a spec: analyzed by tensorflow-transform, served as an ONNX graph.

Training runs tensorflow-transform's analyzers over bounded data in Beam (``AnalyzeFeatures``)
and writes its transform artifact. The analyzed values (means, variances, quantile boundaries,
vocabularies) are then read back from that artifact (``load_feature_plan``) and compiled into an
ONNX graph (``feature_graph``) that computes the very same columns; training refuses to save a
model whose ONNX features differ from tensorflow-transform's. Scoring, bounded or live, runs that
ONNX graph in front of the model, so it needs neither TensorFlow nor scikit-learn at run time,
and the features it computes are those the model was trained on.

Each feature kind (``transforms/feature_kinds.py``) holds both definitions of its columns: as
TensorFlow ops for tensorflow-transform and as ONNX nodes for serving.
"""
from __future__ import annotations

import operator

import apache_beam as beam
import numpy as np
import onnx
from onnx import TensorProto, helper

from transforms.events import EventBatch, event_time_us_of
from transforms.feature_kinds import KINDS, OnnxGraph
from transforms.spec import Feature, Spec

ONNX_OPSETS = {"": 17, "ai.onnx.ml": 3}
ONNX_IR_VERSION = 8  # what these opsets need; onnxruntime refuses IR versions newer than it knows
FEATURES_OUTPUT = "features"  # the feature graph's output
SCORE_OUTPUT = "score"  # a model version's output: features, then the estimator (models/estimator.py)
# with a class label, its others: every class, likeliest first, and their probabilities [rows, classes]
RANKED_CLASSES, RANKED_PROBABILITIES = "ranked_classes", "ranked_probabilities"
TOP_K = "top_k"  # a scored record's field: the spec's top_k likeliest classes, as {class, probability}
_PARAM_PREFIX = "__param__."  # analyzed values, exported as constant columns of the transform
_PROBE_VALUES = {np.object_: [b""], np.int64: [0], np.float32: [1.0]}  # one row, any values


# ---------------------------------------------------------------------------------------------
# Raw columns: what both tensorflow-transform and the ONNX graph take in.

def raw_columns(batch: EventBatch, spec: Spec) -> dict[str, np.ndarray]:
    """The feature sources of a batch as columns: float32 numbers, object strings, int64 times (us)."""
    columns, events = {}, batch.events
    for name in spec.feature_sources:
        kind, values = spec.field(name).type, map(operator.itemgetter(name), events)
        if kind == "string":
            columns[name] = np.fromiter(values, dtype=object, count=len(events))
        elif kind == "timestamp":
            times = batch.event_time_us if name == spec.event_time else list(map(event_time_us_of, values))
            columns[name] = np.array(times, dtype=np.int64)
        else:
            columns[name] = np.array(list(values), dtype=np.float32)
    return columns


def _raw_dtype(spec: Spec, name: str):
    return {"string": (np.object_, TensorProto.STRING), "timestamp": (np.int64, TensorProto.INT64)}.get(
        spec.field(name).type, (np.float32, TensorProto.FLOAT))


def raw_feature_spec(spec: Spec) -> dict:
    """tensorflow-transform's input feature spec for the spec's feature sources."""
    import tensorflow as tf

    dtypes = {np.object_: tf.string, np.int64: tf.int64, np.float32: tf.float32}
    return {name: tf.io.FixedLenFeature([], dtypes[_raw_dtype(spec, name)[0]]) for name in spec.feature_sources}


def width(feature: Feature) -> int:
    """How many columns a feature contributes to the model's input."""
    return KINDS[feature.kind].width(feature)


def feature_names(spec: Spec, plan: dict) -> list[str]:
    """One name per model input column, in order (``country=GB``, ``amount_bucket=3`` ...)."""
    return [name for f in spec.features for name in KINDS[f.kind].column_names(f, plan[f.name])]


# ---------------------------------------------------------------------------------------------
# tensorflow-transform: analysis in Beam, and the reference transform.

def preprocessing_fn(spec: Spec):
    """The tensorflow-transform preprocessing function for a spec: each feature kind's TensorFlow block."""

    def fn(inputs):
        import tensorflow as tf

        outputs, params = {}, {}
        for feature in spec.features:
            params[feature.name] = {}
            block = KINDS[feature.kind].tft(inputs[feature.source], feature, params[feature.name])
            outputs[feature.name] = tf.reshape(block, [-1, width(feature)])
        rows = tf.shape(inputs[spec.feature_sources[0]])[:1]
        for feature_name, values in params.items():
            for key, value in values.items():
                value = tf.reshape(value, [-1])
                outputs[f"{_PARAM_PREFIX}{feature_name}.{key}"] = tf.tile(value[tf.newaxis, :], tf.concat([rows, [1]], 0))
        return outputs

    return fn


class AnalyzeFeatures(beam.PTransform):
    """Batches of valid events in; writes tensorflow-transform's transform artifact to ``transform_dir``.

    Returns the PCollection of the written transform_fn (for sequencing).
    """

    def __init__(self, spec: Spec, transform_dir: str, temp_dir: str):
        super().__init__()
        self._spec, self._transform_dir, self._temp_dir = spec, transform_dir, temp_dir

    def expand(self, batches):
        import tensorflow_transform as tft
        import tensorflow_transform.beam as tft_beam

        spec = self._spec
        metadata = tft.DatasetMetadata.from_feature_spec(raw_feature_spec(spec))
        instances = batches | "ToInstances" >> beam.FlatMap(_instances, spec)
        with tft_beam.Context(temp_dir=self._temp_dir, force_tf_compat_v1=False):
            transform_fn = (instances, metadata) | tft_beam.AnalyzeDataset(preprocessing_fn(spec))
            return transform_fn | tft_beam.WriteTransformFn(self._transform_dir)


def _instances(batch: EventBatch, spec: Spec):
    columns = raw_columns(batch, spec)
    names = list(columns)
    for row in zip(*columns.values()):
        yield dict(zip(names, row))


def tft_layer(transform_dir: str):
    """tensorflow-transform's Keras layer applying the artifact in ``transform_dir``."""
    import tensorflow_transform as tft

    return tft.TFTransformOutput(transform_dir).transform_features_layer()


def transform_with_tft(layer, spec: Spec, columns: dict[str, np.ndarray], batch_size: int = 8192) -> np.ndarray:
    """tensorflow-transform's own output for raw columns, as the model input matrix (float32)."""
    import tensorflow as tf

    rows = len(next(iter(columns.values())))
    blocks = []
    for start in range(0, rows, batch_size):
        chunk = {k: tf.constant(v[start:start + batch_size]) for k, v in columns.items()}
        outputs = layer(chunk)
        blocks.append(np.concatenate([outputs[f.name].numpy() for f in spec.features], axis=1))
    return np.concatenate(blocks).astype(np.float32) if blocks else np.zeros((0, 0), np.float32)


def load_feature_plan(transform_dir: str, spec: Spec) -> dict:
    """The analyzed values in a transform artifact, per feature, as plain JSON-able values."""
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(transform_dir)
    probe = {name: tf.constant(np.array(_PROBE_VALUES[dtype], dtype=dtype))
             for name, dtype in ((n, _raw_dtype(spec, n)[0]) for n in spec.feature_sources)}
    outputs = output.transform_features_layer()(probe)
    analyzed: dict[str, dict[str, np.ndarray]] = {f.name: {} for f in spec.features}
    for key, value in outputs.items():
        if key.startswith(_PARAM_PREFIX):
            feature_name, _, param = key[len(_PARAM_PREFIX):].rpartition(".")
            analyzed[feature_name][param] = value.numpy()[0].astype(np.float32)
    return {f.name: KINDS[f.kind].plan(analyzed[f.name], f, output) for f in spec.features}


# ---------------------------------------------------------------------------------------------
# ONNX: the same features, compiled from the analyzed values.

def feature_graph(spec: Spec, plan: dict) -> onnx.ModelProto:
    """An ONNX model: one 1-D input per feature source, output ``features`` [rows, columns] float32."""
    graph = OnnxGraph()
    blocks = [KINDS[f.kind].onnx(graph, f.source, f, plan[f.name]) for f in spec.features]
    graph.node("Concat", blocks, axis=1, output=FEATURES_OUTPUT)
    inputs = [helper.make_tensor_value_info(name, _raw_dtype(spec, name)[1], ["rows"]) for name in spec.feature_sources]
    outputs = [helper.make_tensor_value_info(FEATURES_OUTPUT, TensorProto.FLOAT,
                                             ["rows", sum(width(f) for f in spec.features)])]
    model = helper.make_model(
        helper.make_graph(graph.nodes, f"{spec.name}_features", inputs, outputs, graph.initializers),
        opset_imports=[helper.make_opsetid(domain, version) for domain, version in ONNX_OPSETS.items()],
        ir_version=ONNX_IR_VERSION)
    onnx.checker.check_model(model, full_check=True)
    return model
