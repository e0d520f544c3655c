"""The base install (``pip install -c constraints.txt .``, no extras) scores; training says what it needs.

Run in a subprocess where the train extra's packages cannot be imported, as in such an install
(the size of a real one is measured in the README).
"""
from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.conftest import read_json_lines

REPO = pathlib.Path(__file__).resolve().parents[1]
TRAIN_EXTRA = ("tensorflow", "tensorflow_transform", "sklearn", "skl2onnx", "joblib")
WITHOUT_TRAIN_EXTRA = f"""
import importlib.abc, runpy, sys

class TrainExtraNotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {TRAIN_EXTRA!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, TrainExtraNotInstalled())
sys.argv = sys.argv[1:]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def _without_train_extra(module: str, *args: str):
    return subprocess.run([sys.executable, "-c", WITHOUT_TRAIN_EXTRA, module, *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_batch_scoring_needs_neither_tensorflow_nor_scikit_learn(fraud_archive, fraud_model, fraud_scored, tmp_path):
    result = _without_train_extra("pipelines.score", "--spec", "fraud", "--mode", "batch",
                                  "--input", fraud_archive["later"], "--model_dir", fraud_model[0],
                                  "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert read_json_lines(tmp_path / "scored") == fraud_scored["records"]


def test_training_the_sklearn_engine_and_a_new_kmeans_model_say_they_need_the_train_extra(fraud_archive, fraud_model,
                                                                                          tmp_path):
    result = _without_train_extra("pipelines.train", "--spec", "fraud", "--input", fraud_archive["train"],
                                  "--model_dir", str(tmp_path / "model"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: training: sklearn, skl2onnx, tensorflow_transform "
                                                             "not installed: this needs the train extra")
    result = _without_train_extra("pipelines.score", "--spec", "fraud", "--mode", "batch", "--engine", "sklearn",
                                  "--input", fraud_archive["later"], "--model_dir", fraud_model[0],
                                  "--output", str(tmp_path / "scored"), "--dead_letter", str(tmp_path / "dead"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: --engine sklearn: sklearn, tensorflow_transform not installed" in result.stderr
    result = _without_train_extra("pipelines.cluster", "--spec", "fraud", "--mode", "batch", "--k", "3",
                                  "--input", fraud_archive["later"], "--model_dir", fraud_model[0],
                                  "--snapshot_dir", str(tmp_path / "snapshots"), "--output", str(tmp_path / "clusters"),
                                  "--dead_letter", str(tmp_path / "dead"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "error: a new k-means model (no --init_snapshot): sklearn not installed" in result.stderr
