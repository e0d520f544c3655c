"""Feature kinds: one class each, registered by name in ``KINDS``.

A kind turns one source field into a [rows, width] float32 block of model input columns. It says
what type of field it reads, how many columns it makes and what they are called, how
tensorflow-transform analyzes and computes it in training (TensorFlow ops), how ONNX computes it
in serving from the analyzed values, and whether monitoring bins it for drift. Both computations
sit side by side in one class because they must agree: training refuses a model whose ONNX
features differ from tensorflow-transform's.

| kind        | source    | columns                           | analyzed                     |
|-------------|-----------|-----------------------------------|------------------------------|
| identity    | number    | x                                 | -                            |
| zscore      | number    | (x - mean) / std                  | mean, variance               |
| log_zscore  | number    | zscore of log(1 + x)              | mean, variance of log(1 + x) |
| buckets     | number    | one-hot of the quantile bucket    | num_buckets - 1 boundaries   |
| vocabulary  | string    | one-hot over top_k terms + 1 OOV  | the top_k most frequent      |
| time_of_day | timestamp | sin and cos of the UTC time of day| -                            |

A new kind is one subclass of ``FeatureKind`` passed to ``register``; specs may then name it.
"""
from __future__ import annotations

import math
import numpy as np
from onnx import TensorProto, helper, numpy_helper

OOV = "<OOV>"
US_PER_DAY = 86_400_000_000
_RADIANS_PER_US = np.float32(2 * math.pi / US_PER_DAY)


class FeatureKind:
    """One way of turning a source field into model input columns (see the module's docstring).

    Each method takes the spec's ``Feature`` (transforms/spec.py, which imports this module to
    validate kinds) and, after analysis, the feature's ``plan`` (its analyzed values).

    ``tft`` returns the TensorFlow block and puts each analyzed value it wants served into
    ``analyzed`` (name -> tensor); ``plan`` turns those values, read back from the artifact, into
    plain JSON-able ones; ``onnx`` builds the same block from them with an ``OnnxGraph``.
    """

    name: str
    source_type = "number"  # the spec field type it reads: number, string or timestamp
    monitored_for_drift = True  # whether monitoring compares its source's distribution with training's

    def width(self, feature) -> int:
        return 1

    def column_names(self, feature, plan: dict) -> list[str]:
        return [feature.name]

    def tft(self, x, feature, analyzed: dict):
        raise NotImplementedError

    def plan(self, analyzed: dict[str, np.ndarray], feature, transform_output) -> dict:
        return {key: float(values[0]) for key, values in analyzed.items()}

    def onnx(self, graph, x: str, feature, plan: dict) -> str:
        raise NotImplementedError

    def drift_terms(self, feature, plan: dict) -> list[str] | None:
        """The categories monitoring counts for drift; None: quantile bins of the source's values."""
        return None


class OnnxGraph:
    """Collects ONNX nodes and constants, naming each output uniquely."""

    def __init__(self):
        self.nodes, self.initializers = [], []

    def _name(self, stem: str) -> str:
        return f"{stem}_{len(self.nodes) + len(self.initializers)}"

    def const(self, value: np.ndarray) -> str:
        name = self._name("const")
        self.initializers.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], output: str | None = None, domain: str = "", **attributes) -> str:
        output = output or self._name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [output], domain=domain, **attributes))
        return output

    def column(self, x: str) -> str:
        """[rows] -> [rows, 1]."""
        return self.node("Unsqueeze", [x, self.const(np.array([1], np.int64))])

    def one_hot(self, ids: str, depth: int) -> str:
        return self.node("OneHot", [ids, self.const(np.int64(depth)), self.const(np.array([0, 1], np.float32))], axis=-1)


KINDS: dict[str, FeatureKind] = {}


def register(cls: type[FeatureKind]) -> type[FeatureKind]:
    """A class decorator: specs may name the kind from now on."""
    KINDS[cls.name] = cls()
    return cls


@register
class Identity(FeatureKind):
    name = "identity"

    def tft(self, x, feature, analyzed):
        return x

    def onnx(self, graph, x, feature, plan):
        return graph.column(x)


@register
class ZScore(FeatureKind):
    name = "zscore"
    log = False  # of log(1 + x)

    def tft(self, x, feature, analyzed):
        import tensorflow as tf
        import tensorflow_transform as tft

        if self.log:
            x = tf.math.log(x + 1.0)
        analyzed["mean"], analyzed["var"] = tft.mean(x), tft.var(x)
        std = tf.sqrt(analyzed["var"])
        return (x - analyzed["mean"]) / tf.where(std > 0, std, tf.ones_like(std))

    def onnx(self, graph, x, feature, plan):
        if self.log:
            x = graph.node("Log", [graph.node("Add", [x, graph.const(np.float32(1.0))])])
        std = np.sqrt(np.float32(plan["var"]))
        centered = graph.node("Sub", [x, graph.const(np.float32(plan["mean"]))])
        return graph.column(graph.node("Div", [centered, graph.const(std if std > 0 else np.float32(1))]))


@register
class LogZScore(ZScore):
    name = "log_zscore"
    log = True


@register
class Buckets(FeatureKind):
    name = "buckets"

    def width(self, feature):
        return feature.num_buckets

    def column_names(self, feature, plan):
        return [f"{feature.name}={i}" for i in range(feature.num_buckets)]

    def tft(self, x, feature, analyzed):
        import tensorflow as tf
        import tensorflow_transform as tft

        boundaries = tft.quantiles(x, feature.num_buckets, epsilon=0.001)
        analyzed["boundaries"] = boundaries[0]
        return tf.one_hot(tft.apply_buckets(x, boundaries), feature.num_buckets)

    def plan(self, analyzed, feature, transform_output):
        return {"boundaries": analyzed["boundaries"].tolist()}

    def onnx(self, graph, x, feature, plan):
        boundaries = graph.const(np.array([plan["boundaries"]], dtype=np.float32))
        above = graph.node("Cast", [graph.node("GreaterOrEqual", [graph.column(x), boundaries])], to=TensorProto.INT64)
        bucket = graph.node("ReduceSum", [above, graph.const(np.array([1], np.int64))], keepdims=0)
        return graph.one_hot(bucket, feature.num_buckets)


@register
class Vocabulary(FeatureKind):
    name = "vocabulary"
    source_type = "string"

    def width(self, feature):
        return feature.top_k + 1

    def column_names(self, feature, plan):
        terms = plan["vocabulary"] + [OOV]
        return [f"{feature.name}={t}" for t in terms] + [f"{feature.name}=<unused>"] * (self.width(feature) - len(terms))

    def tft(self, x, feature, analyzed):
        import tensorflow as tf
        import tensorflow_transform as tft

        threshold = feature.frequency_threshold if feature.frequency_threshold > 1 else None  # <= 1: no threshold
        vocabulary = tft.vocabulary(x, top_k=feature.top_k, frequency_threshold=threshold,
                                    vocab_filename=feature.name)
        return tf.one_hot(tft.apply_vocabulary(x, vocabulary, num_oov_buckets=1), self.width(feature))

    def plan(self, analyzed, feature, transform_output):
        terms = transform_output.vocabulary_by_name(feature.name)
        return {"vocabulary": [t.decode("utf-8") if isinstance(t, bytes) else t for t in terms]}

    def onnx(self, graph, x, feature, plan):
        terms = plan["vocabulary"]
        ids = graph.node("LabelEncoder", [x], domain="ai.onnx.ml", keys_strings=terms,
                         values_int64s=list(range(len(terms))), default_int64=len(terms))
        return graph.one_hot(ids, self.width(feature))

    def drift_terms(self, feature, plan):
        return list(plan["vocabulary"])


@register
class TimeOfDay(FeatureKind):
    name = "time_of_day"
    source_type = "timestamp"
    monitored_for_drift = False  # a monitoring window spans minutes of the day, never the training's whole day

    def width(self, feature):
        return 2

    def column_names(self, feature, plan):
        return [f"{feature.name}_sin", f"{feature.name}_cos"]

    def tft(self, x, feature, analyzed):
        import tensorflow as tf

        angle = tf.cast(tf.math.floormod(x, US_PER_DAY), tf.float32) * _RADIANS_PER_US
        return tf.stack([tf.sin(angle), tf.cos(angle)], axis=1)

    def onnx(self, graph, x, feature, plan):
        day_us = graph.node("Mod", [x, graph.const(np.int64(US_PER_DAY))])
        angle = graph.node("Mul", [graph.node("Cast", [day_us], to=TensorProto.FLOAT), graph.const(_RADIANS_PER_US)])
        return graph.node("Concat", [graph.column(graph.node("Sin", [angle])),
                                     graph.column(graph.node("Cos", [angle]))], axis=1)
