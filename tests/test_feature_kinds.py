"""A new feature kind is one class: registered, a spec may name it, and training's two
computations of it (tensorflow-transform and ONNX) give the same columns."""
import datetime

import apache_beam as beam
import numpy as np
import onnxruntime as ort
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from pipelines.generate import MODELS, day_events
from tests.test_spec import _spec_file
from transforms.events import EventBatch, EventParser
from transforms.feature_kinds import KINDS, FeatureKind
from transforms.features import AnalyzeFeatures, feature_graph, feature_names, load_feature_plan, raw_columns, \
    tft_layer, transform_with_tft
from transforms.spec import SpecError, load_spec


class MinMax(FeatureKind):
    """(x - min) / (max - min) over the training rows."""

    name = "min_max"

    def tft(self, x, feature, analyzed):
        import tensorflow_transform as tft

        analyzed["min"], analyzed["max"] = tft.min(x), tft.max(x)
        return (x - analyzed["min"]) / (analyzed["max"] - analyzed["min"])

    def onnx(self, graph, x, feature, plan):
        shifted = graph.node("Sub", [x, graph.const(np.float32(plan["min"]))])
        return graph.column(graph.node("Div", [shifted, graph.const(np.float32(plan["max"] - plan["min"]))]))


FEATURES = [{"name": "amount_scaled", "kind": "min_max", "source": "amount"},
            {"name": "channel", "kind": "vocabulary", "source": "channel", "top_k": 5}]


def test_a_spec_cannot_name_a_kind_that_is_not_registered(tmp_path):
    with pytest.raises(SpecError, match="kind must be one of identity, zscore"):
        load_spec(_spec_file(tmp_path, features=FEATURES))


def test_a_registered_kind_trains_the_same_columns_in_tensorflow_transform_and_onnx(tmp_path, monkeypatch):
    monkeypatch.setitem(KINDS, MinMax.name, MinMax())
    spec = load_spec(_spec_file(tmp_path, features=FEATURES))
    model = MODELS["fraud"](np.random.default_rng(3), 1)
    events = day_events(model, np.random.default_rng(4), 0, datetime.date(2026, 3, 1), 500)
    parser = EventParser(spec)
    batch = EventBatch(*map(list, zip(*(parser.parse(event) for event in events))))

    with TestPipeline() as pipeline:
        _ = (pipeline | beam.Create([batch])
             | AnalyzeFeatures(spec, str(tmp_path / "transform"), str(tmp_path / "tmp")))
    plan = load_feature_plan(str(tmp_path / "transform"), spec)

    columns = raw_columns(batch, spec)
    amounts = columns["amount"]
    assert plan["amount_scaled"] == pytest.approx({"min": amounts.min(), "max": amounts.max()})
    assert feature_names(spec, plan)[:2] == ["amount_scaled", f"channel={plan['channel']['vocabulary'][0]}"]
    served = ort.InferenceSession(feature_graph(spec, plan).SerializeToString()).run(
        None, {name: columns[name] for name in spec.feature_sources})[0]
    trained = transform_with_tft(tft_layer(str(tmp_path / "transform")), spec, columns)
    assert served.shape == (500, 1 + 6)
    np.testing.assert_allclose(served, trained, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(served[:, 0], (amounts - amounts.min()) / (amounts.max() - amounts.min()), rtol=1e-6)
