"""Training's safety checks on their failing path: a version whose ONNX features differ from
tensorflow-transform's, or whose ONNX scores differ from scikit-learn's, is not published."""
from __future__ import annotations

import datetime

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from models import registry
from pipelines import generate, train
from transforms import features

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("checks")
    generate.generate("fraud", 2, root, datetime.date(2026, 3, 1), 600, 0.0, 5, compress=False)
    return str(root / "*" / "*.jsonl")


def _skewed_feature_graph(spec, plan) -> onnx.ModelProto:
    """The real feature graph with one of its float constants off by one."""
    graph = features.feature_graph(spec, plan)
    constant = next(c for c in graph.graph.initializer if c.data_type == onnx.TensorProto.FLOAT)
    constant.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(constant) + np.float32(1), constant.name))
    return graph


@pytest.mark.parametrize("inject, message", [
    (lambda monkeypatch: monkeypatch.setattr(train, "feature_graph", _skewed_feature_graph),
     "not saved: ONNX features differ from tensorflow-transform's by "),
    (lambda monkeypatch: monkeypatch.setattr(train.estimators, "sklearn_scores",
                                             lambda estimator, rows, real=train.estimators.sklearn_scores:
                                             real(estimator, rows) + 0.05),
     "not saved: ONNX scores differ from scikit-learn's by up to 0.05"),
])
def test_a_model_that_fails_a_check_is_not_published(archive, tmp_path, monkeypatch, inject, message):
    inject(monkeypatch)
    with pytest.raises(registry.ModelError, match=message):
        train.run(["--spec", "fraud", "--input", archive, "--model_dir", str(tmp_path / "model")])
    assert not (tmp_path / "model" / registry.CURRENT).exists()
    assert not (tmp_path / "model" / "versions").exists()
    assert not list((tmp_path / "model" / ".staging").iterdir())  # nothing left of the attempt
