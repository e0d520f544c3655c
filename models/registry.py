"""Versioned model directories: write a version atomically, mark it current, load it only if intact.

    MODEL_DIR/
      CURRENT                      the current version's name
      versions/<version>/
        manifest.json              what, from what, how good, and the sha256 of every other file
        model.onnx                 features + estimator, raw columns in, score out
        estimator.joblib           the fitted scikit-learn estimator (``--engine sklearn``)
        transform/                 tensorflow-transform's artifact
      .staging/                    versions being written; never read

A version is published by renaming its finished staging directory into ``versions/``, then
replacing ``CURRENT``; a crash at any point leaves the previous current version serving.
Publishing needs a local (or mounted) directory; loading reads through Beam's filesystems, so
workers can load a model directory copied to any of them (``gs://...``).
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import secrets
from typing import TYPE_CHECKING

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from transforms.errors import UserError

if TYPE_CHECKING:
    from transforms.spec import Spec

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


class ModelError(UserError):
    """A model directory or version that cannot be used."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A verified model version: its directory (any Beam filesystem path) and its manifest."""

    path: str
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def file(self, name: str) -> str:
        return FileSystems.join(self.path, name)

    def read(self, name: str) -> bytes:
        return _read(self.file(name))

    def baseline(self) -> dict:
        """The training baseline that monitoring compares with; ModelError for a version trained before
        monitoring existed."""
        if "baseline" not in self.manifest:
            raise ModelError(f"model {self.version} has no monitoring baseline (trained before monitoring was "
                             f"added); train a new version")
        return self.manifest["baseline"]


def new_version() -> str:
    """A version name that sorts by creation time: ``20261121T150102Z-3fa9``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(2)


def staging_dir(model_dir: str, version: str) -> pathlib.Path:
    path = pathlib.Path(model_dir) / ".staging" / version
    path.mkdir(parents=True, exist_ok=False)
    return path


def publish(model_dir: str, staging: pathlib.Path, manifest: dict) -> ModelVersion:
    """Hash every file in ``staging``, write the manifest, move it into ``versions/`` and make it current."""
    manifest = dict(manifest, files=_hashes(str(staging)))
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    versions = pathlib.Path(model_dir) / "versions"
    versions.mkdir(exist_ok=True)
    final = versions / manifest["version"]
    staging.rename(final)
    pointer = pathlib.Path(model_dir) / f".{CURRENT}.{manifest['version']}"
    pointer.write_text(manifest["version"] + "\n")
    os.replace(pointer, pathlib.Path(model_dir) / CURRENT)
    return ModelVersion(str(final), manifest)


def load(model_dir: str, version: str | None = None) -> ModelVersion:
    """The named version, or the current one, after checking every file against the manifest.

    Raises ModelError, with a one-line reason, for a missing, incomplete or tampered model.
    """
    if version is None:
        version = current_version(model_dir)
    path = FileSystems.join(model_dir, "versions", version)
    try:
        manifest = json.loads(_read(FileSystems.join(path, MANIFEST)))
    except FileNotFoundError:
        raise ModelError(f"model {version} in {model_dir}: missing, or its {MANIFEST} is missing") from None
    except json.JSONDecodeError:
        raise ModelError(f"model {version} in {model_dir}: {MANIFEST} is not valid JSON") from None
    expected, actual = manifest.get("files", {}), _hashes(path, skip=MANIFEST)
    for name in sorted(set(expected) | set(actual)):
        if name not in actual:
            problem = "is missing"
        elif name not in expected:
            problem = "is not in the manifest"
        elif actual[name] != expected[name]:
            problem = "does not match its sha256 in the manifest"
        else:
            continue
        raise ModelError(f"model {version} in {model_dir}: {name} {problem}; refusing a tampered or incomplete model")
    return ModelVersion(path, manifest)


def current_version(model_dir: str) -> str:
    """The name of the version ``model_dir``'s CURRENT file names (not verified: ``load`` does that)."""
    try:
        return _read(FileSystems.join(model_dir, CURRENT)).decode().strip()
    except FileNotFoundError:
        raise ModelError(f"--model_dir {model_dir}: no model here (no {CURRENT} file); "
                         f"train one with `python -m pipelines.train`") from None


def load_for_spec(model_dir: str, spec: Spec, version: str | None = None) -> ModelVersion:
    """``load``, and check that the version was trained for ``spec``'s fields and features.

    Raises ModelError when it was trained on a spec with other fields or features (the alert
    threshold and other settings outside the spec's fingerprint may differ).
    """
    model = load(model_dir, version)
    if model.manifest["spec"]["fingerprint"] != spec.fingerprint:
        raise ModelError(
            f"model {model.version} was trained on spec {model.manifest['spec']['name']} with other fields or "
            f"features than --spec {spec.source}; train a model for this spec")
    return model


def _read(path: str) -> bytes:
    if not FileSystems.exists(path):
        raise FileNotFoundError(path)
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
        return handle.read()


def _hashes(directory: str, skip: str | None = None) -> dict[str, str]:
    """sha256 of every file below ``directory``, by path relative to it."""
    prefix = directory.rstrip("/") + "/"
    paths = sorted(m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list)
    return {path[len(prefix):]: hashlib.sha256(_read(path)).hexdigest()
            for path in paths if path[len(prefix):] != skip}
