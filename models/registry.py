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
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import pathlib
import secrets

from transforms.errors import UserError

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


class ModelError(UserError):
    """A model directory or version that cannot be used."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A verified model version on disk."""

    path: pathlib.Path
    manifest: dict

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def file(self, name: str) -> pathlib.Path:
        return self.path / name


def new_version() -> str:
    """A version name that sorts by creation time: ``20261121T150102Z-3fa9``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(2)


def staging_dir(model_dir: str, version: str) -> pathlib.Path:
    path = pathlib.Path(model_dir) / ".staging" / version
    path.mkdir(parents=True, exist_ok=False)
    return path


def publish(model_dir: str, staging: pathlib.Path, manifest: dict) -> ModelVersion:
    """Hash every file in ``staging``, write the manifest, move it into ``versions/`` and make it current."""
    manifest = dict(manifest, files=_hashes(staging))
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    versions = pathlib.Path(model_dir) / "versions"
    versions.mkdir(exist_ok=True)
    final = versions / manifest["version"]
    staging.rename(final)
    pointer = pathlib.Path(model_dir) / f".{CURRENT}.{manifest['version']}"
    pointer.write_text(manifest["version"] + "\n")
    os.replace(pointer, pathlib.Path(model_dir) / CURRENT)
    return ModelVersion(final, manifest)


def load(model_dir: str, version: str | None = None) -> ModelVersion:
    """The named version, or the current one, after checking every file against the manifest.

    Raises ModelError, with a one-line reason, for a missing, incomplete or tampered model.
    """
    root = pathlib.Path(model_dir)
    if version is None:
        try:
            version = (root / CURRENT).read_text().strip()
        except FileNotFoundError:
            raise ModelError(f"--model_dir {model_dir}: no model here (no {CURRENT} file); "
                             f"train one with `python -m pipelines.train`") from None
    path = root / "versions" / version
    try:
        manifest = json.loads((path / MANIFEST).read_text())
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


def _hashes(directory: pathlib.Path, skip: str | None = None) -> dict[str, str]:
    hashes = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        name = path.relative_to(directory).as_posix()
        if name != skip:
            hashes[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return hashes
