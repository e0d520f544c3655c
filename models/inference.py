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

Live scoring can switch versions without a restart: ``WatchModelVersions`` checks the model
directory and feeds RunInference's model-update side input (``ScoreEvents(model_updates=...)``).
"""
from __future__ import annotations

import dataclasses
import io
import logging
from typing import Any, Iterable, Sequence

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import ModelHandler, ModelMetadata, PredictionResult, RunInference
from apache_beam.transforms import trigger, window
from apache_beam.transforms.periodicsequence import PeriodicImpulse, RebaseMode
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec
from apache_beam.utils.timestamp import MAX_TIMESTAMP, Timestamp

from models import registry
from transforms.events import METRICS_NAMESPACE, EventBatch
from transforms.features import SCORE_OUTPUT, raw_columns, tft_layer, transform_with_tft
from transforms.spec import Spec

Columns = dict[str, np.ndarray]
ENGINES = ("onnx", "sklearn")
MODEL_METRICS_NAMESPACE = f"{METRICS_NAMESPACE}.model"
_SCORED = beam.metrics.Metrics.counter(METRICS_NAMESPACE, "scored")
_REFUSED = beam.metrics.Metrics.counter(MODEL_METRICS_NAMESPACE, "refused")
_LOG = logging.getLogger(__name__)


@dataclasses.dataclass
class LoadedVersion:
    """A loaded model and the name of the version it came from (a class, not a tuple: Beam's model
    cache keeps a weak reference to it)."""

    version: str
    model: Any


class _ScoreHandler(ModelHandler[EventBatch, PredictionResult, LoadedVersion]):
    """Shared by both engines: which version to load, and how batches of events are scored.

    Each example is an ``EventBatch``; its ``PredictionResult`` holds one score per event and, as
    ``model_id``, the name of the version that computed them.
    """

    def __init__(self, model_dir: str, version: str, spec: Spec):
        super().__init__()
        self._model_dir, self._version, self._spec = model_dir, version, spec

    def load_model(self) -> LoadedVersion:
        version = registry.load(self._model_dir, self._version)
        return LoadedVersion(version.version, self._load(version))

    def update_model_path(self, model_path: str | None = None):
        """Load the version at ``model_path`` (a version directory, ``ModelMetadata.model_id``) from now on."""
        if model_path:
            self._version = FileSystems.split(model_path)[1]

    def batch_elements_kwargs(self):
        # Each element is already a batch of events; grouping more would hold a stream's batches
        # until the bundle ends.
        return {"min_batch_size": 1, "max_batch_size": 1}

    def run_inference(self, batch: Sequence[EventBatch], model: LoadedVersion,
                      inference_args=None) -> Iterable[PredictionResult]:
        # Tagged with the loaded model's own version: RunInference may hand over a cached model.
        return [PredictionResult(events, self._score(model.model, raw_columns(events, self._spec)),
                                 model_id=model.version)
                for events in batch]

    def get_num_bytes(self, batch: Sequence[EventBatch]) -> int:
        return sum(len(b.events) for b in batch)  # events, not bytes: the size that matters here

    def _load(self, version: registry.ModelVersion):
        raise NotImplementedError

    def _score(self, model, columns: Columns) -> np.ndarray:
        raise NotImplementedError


class OnnxScoreHandler(_ScoreHandler):
    def _load(self, version: registry.ModelVersion):
        import onnxruntime as ort

        return ort.InferenceSession(version.read("model.onnx"), providers=["CPUExecutionProvider"])

    def _score(self, session, columns: Columns) -> np.ndarray:
        return session.run([SCORE_OUTPUT], columns)[0]

    def get_metrics_namespace(self) -> str:
        return "rtml_onnx"


class _SklearnModel:
    def __init__(self, estimator, layer):
        self.estimator, self.layer = estimator, layer


class SklearnScoreHandler(_ScoreHandler):
    def _load(self, version: registry.ModelVersion):
        import joblib

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
    """``EventBatch`` in; lists of scored records out (one list per batch, in the batch's order).

    Scores with ``model``. With ``model_updates``, a side input of ``ModelMetadata`` such as
    ``WatchModelVersions`` makes, it switches to each version that names, between batches: each
    batch is scored by one version, and its records name that version. Without (bounded mode), the
    version is the one given, for the whole run.
    """

    def __init__(self, spec: Spec, model: registry.ModelVersion, model_dir: str, engine: str = "onnx",
                 model_updates: beam.PCollection | None = None):
        super().__init__()
        handler_class = {"onnx": OnnxScoreHandler, "sklearn": SklearnScoreHandler}[engine]
        self._spec, self._handler = spec, handler_class(model_dir, model.version, spec)
        self._model_updates = model_updates

    def expand(self, batches):
        spec = self._spec
        return (batches
                | "RunInference" >> RunInference(self._handler, model_metadata_pcoll=self._model_updates)
                | "ScoredRecords" >> beam.Map(
                    lambda result: scored_records(spec, result.example, result.inference, result.model_id)))


def model_metadata(model: registry.ModelVersion) -> ModelMetadata:
    """A version as RunInference's model-update side input names it: its directory, and its name."""
    return ModelMetadata(model_id=model.path, model_name=model.version)


class _NewestGoodVersion(beam.DoFn):
    """``(model_dir, poll time)`` in; the ``ModelMetadata`` of the version to serve out, when it changes.

    Keeps, per model directory, the version serving (not verified again while CURRENT names it) and
    the last alert (a bad version is reported once, not at every poll).
    """

    SERVING = ReadModifyWriteStateSpec("serving", beam.coders.StrUtf8Coder())
    ALERTED = ReadModifyWriteStateSpec("alerted", beam.coders.StrUtf8Coder())

    def __init__(self, spec: Spec, start: registry.ModelVersion):
        self._spec, self._start = spec, start

    def process(self, poll, serving=beam.DoFn.StateParam(SERVING), alerted=beam.DoFn.StateParam(ALERTED)):
        model_dir, _ = poll
        served = serving.read()
        try:
            newest = registry.current_version(model_dir)
            model = None if newest == served else registry.load_for_spec(model_dir, self._spec, newest)
        except registry.ModelError as error:
            if alerted.read() != str(error):
                alerted.write(str(error))
                _REFUSED.inc()
                _LOG.error("model alert: refusing the version CURRENT names (%s); model %s keeps serving",
                           error, served or self._start.version)
            if served:
                return
            model = self._start  # the first poll always names a version
        else:
            alerted.clear()
        if model is not None:
            serving.write(model.version)
            yield model_metadata(model)


class WatchModelVersions(beam.PTransform):
    """Pipeline start in; the ``ModelMetadata`` of each version to switch to out (``ScoreEvents(model_updates=...)``).

    Every ``interval_s`` it reads ``model_dir``'s CURRENT. A version other than the serving one is
    verified first: every file against its manifest, and trained for ``spec`` (``load_for_spec``).
    A good one is emitted; a bad one (tampered, incomplete, another spec) is refused with an alert,
    a log line naming it, why, and the version that keeps serving, and the counter
    ``rtml.model/refused``; the last good version stays. RunInference fails on a model it cannot
    load, so nothing unverified may reach it. The first poll emits CURRENT's version, or ``start``
    (verified when the pipeline was built) if CURRENT names a bad one.

    Emitted only when the version changes, into the global window with a processing-time trigger,
    as Beam's ``WatchFilePattern`` does: RunInference reads the side input as a singleton, so a
    pane must never hold two elements. Needs a streaming runner: the DirectRunner runs a stage
    that reads a side input only after that side input is complete, never for an endless one.
    ``duration_s`` stops polling that long after the pipeline starts (default: never).
    """

    def __init__(self, model_dir: str, spec: Spec, start: registry.ModelVersion, interval_s: float,
                 duration_s: float | None = None):
        super().__init__()
        self._model_dir, self._spec, self._start = model_dir, spec, start
        self._interval_s, self._duration_s = interval_s, duration_s

    def expand(self, pbegin):
        now = Timestamp.now()  # rebased to when the pipeline starts
        if self._duration_s is None:
            polls = PeriodicImpulse(now, MAX_TIMESTAMP, self._interval_s, rebase=RebaseMode.REBASE_START)
        else:
            polls = PeriodicImpulse(now, now + self._duration_s, self._interval_s, rebase=RebaseMode.REBASE_ALL)
        return (pbegin
                | "Poll" >> polls
                | "KeyByModelDir" >> beam.Map(lambda poll, model_dir: (model_dir, poll), self._model_dir)
                | "NewestGoodVersion" >> beam.ParDo(_NewestGoodVersion(self._spec, self._start))
                | "AsSideInput" >> beam.WindowInto(
                    window.GlobalWindows(), trigger=trigger.Repeatedly(trigger.AfterProcessingTime(1)),
                    accumulation_mode=trigger.AccumulationMode.DISCARDING))
