"""Scoring with Beam's RunInference: batches of valid events in, scored records out.

Each RunInference example is a batch of raw feature columns (see ``transforms.features``),
so one model call scores thousands of events. Two handlers, one contract (raw columns in, one
score per row out):

- ``OnnxScoreHandler`` (default): the version's ``model.onnx``, which computes the features and
  the score in onnxruntime. Beam's ``OnnxModelHandlerNumpy`` takes one input tensor and returns
  the first output (the class label); this model takes named columns and returns the score.
- ``SklearnScoreHandler`` (``--engine sklearn``): tensorflow-transform's own artifact, then the
  fitted scikit-learn estimator: the reference path, slower and heavier (TensorFlow).

Both verify the version's files against its manifest when they load.
"""
from __future__ import annotations

import io
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from models import registry
from transforms.events import METRICS_NAMESPACE, EventBatch
from transforms.features import SCORE_OUTPUT, raw_columns, tft_layer, transform_with_tft
from transforms.spec import Spec

Columns = dict[str, np.ndarray]
ENGINES = ("onnx", "sklearn")
_SCORED = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "scored")


class _ScoreHandler(ModelHandler[EventBatch, PredictionResult, Any]):
    """Shared by both engines: which version to load, and how batches of events are scored.

    Each example is an ``EventBatch``; its ``PredictionResult`` holds one score per event.
    """

    def __init__(self, model_dir: str, version: str, spec: Spec):
        super().__init__()
        self._model_dir, self._version, self._spec = model_dir, version, spec

    def batch_elements_kwargs(self):
        # Each element is already a batch of events; grouping more would hold a stream's batches
        # until the bundle ends.
        return {"min_batch_size": 1, "max_batch_size": 1}

    def run_inference(self, batch: Sequence[EventBatch], model, inference_args=None) -> Iterable[PredictionResult]:
        return [PredictionResult(events, self._score(model, raw_columns(events, self._spec)), model_id=self._version)
                for events in batch]

    def get_num_bytes(self, batch: Sequence[EventBatch]) -> int:
        return sum(len(b.events) for b in batch)  # events, not bytes: the size that matters here

    def _score(self, model, columns: Columns) -> np.ndarray:
        raise NotImplementedError


class OnnxScoreHandler(_ScoreHandler):
    def load_model(self):
        import onnxruntime as ort

        version = registry.load(self._model_dir, self._version)
        return ort.InferenceSession(version.read("model.onnx"), providers=["CPUExecutionProvider"])

    def _score(self, session, columns: Columns) -> np.ndarray:
        return session.run([SCORE_OUTPUT], columns)[0]

    def get_metrics_namespace(self) -> str:
        return "rtml_onnx"


class _SklearnModel:
    def __init__(self, estimator, layer):
        self.estimator, self.layer = estimator, layer


class SklearnScoreHandler(_ScoreHandler):
    def load_model(self):
        import joblib

        version = registry.load(self._model_dir, self._version)
        estimator = joblib.load(io.BytesIO(version.read("estimator.joblib")))
        return _SklearnModel(estimator, tft_layer(version.file("transform")))

    def _score(self, model: _SklearnModel, columns: Columns) -> np.ndarray:
        from models.estimator import sklearn_scores  # scikit-learn only for this engine

        return sklearn_scores(model.estimator, transform_with_tft(model.layer, self._spec, columns))

    def get_metrics_namespace(self) -> str:
        return "rtml_sklearn"


def scored_records(spec: Spec, batch: EventBatch, scores: np.ndarray, model_version: str) -> list[dict]:
    """The contract's scored records for a batch, in the batch's order."""
    _SCORED.inc(len(batch.events))
    key, label, threshold = spec.entity_key, spec.label, spec.alert_threshold
    records = []
    for event, score in zip(batch.events, scores.tolist()):
        record = {"event_id": event["event_id"], "event_time": event[spec.event_time], key: event[key],
                  "score": score, "alert": score >= threshold, "model_version": model_version}
        if label is not None and event.get(label) is not None:
            record[label] = int(event[label])
        records.append(record)
    return records


class ScoreEvents(beam.PTransform):
    """``EventBatch`` in; lists of scored records out (one list per batch, in the batch's order)."""

    def __init__(self, spec: Spec, model: registry.ModelVersion, model_dir: str, engine: str = "onnx"):
        super().__init__()
        handler_class = {"onnx": OnnxScoreHandler, "sklearn": SklearnScoreHandler}[engine]
        self._spec, self._handler = spec, handler_class(model_dir, model.version, spec)

    def expand(self, batches):
        spec = self._spec
        return (batches
                | "RunInference" >> RunInference(self._handler)
                | "ScoredRecords" >> beam.Map(
                    lambda result: scored_records(spec, result.example, result.inference, result.model_id)))
