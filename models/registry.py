"""Versioned model directories: write a version atomically, mark it current, load it only if intact.

    MODEL_DIR/
      CURRENT                      the current version's name and its manifest's sha256
      versions/<version>/
        manifest.json              what, from what, how good, and the sha256 of every other file
        manifest.hmac              with --model_signing_key_env: HMAC-SHA256 of manifest.json under that key
        model.onnx                 features + estimator, raw columns in, score out
        estimator.joblib           the fitted scikit-learn estimator (``--engine sklearn``)
        transform/                 tensorflow-transform's artifact
      .staging/                    versions being written; never read

A version is written in a local staging directory. On a local (or mounted) model directory it
is published by renaming that directory into ``versions/``, then replacing ``CURRENT``, under a lock
on the directory. On Cloud Storage (``gs://``), which has no atomic rename, its files are uploaded
into ``versions/`` with the manifest last (a version without one is never loaded), then ``CURRENT``
is replaced only if it is still the generation read (``transforms.storage``). Either way a crash at
any point leaves the previous current version serving, and CURRENT only moves to a newer version
(names sort by creation time): of two trainings into one directory, the one started last is
current, whichever ends last.

The model directory is a trust boundary. ``CURRENT`` names a version only by a plain name (no
path), and records the sha256 of that version's manifest, which holds the sha256 of every other
file: a version whose bytes differ from what CURRENT vouches for is refused before any file of
it is used. ``--engine sklearn`` unpickles ``estimator.joblib`` (pickle runs code), so only ever
after that check; the ONNX engine runs no code from the directory. A version loaded by name rather
than through CURRENT is checked against its own manifest only, unless the caller passes the
manifest digest it expects (the workers of a run get the one the launcher verified).

CURRENT guards against edits to a version, not against whoever can write CURRENT too. With a
signing key (``--model_signing_key_env NAME``: the key is the environment variable NAME's value,
never a flag's), training signs the manifest, and loading refuses a version whose manifest.hmac is
missing or does not match: only a holder of the key can make a version that loads.
Loading reads through Beam's filesystems, so workers can load a model directory on any of them.
"""
from __future__ import annotations

import dataclasses
import datetime
import fcntl
import functools
import hashlib
import hmac
import json
import logging
import os
import pathlib
import re
import secrets
import shutil
import tempfile
from typing import TYPE_CHECKING

from apache_beam.io.filesystems import FileSystems

from transforms import storage
from transforms.errors import UserError, first_line

if TYPE_CHECKING:
    from transforms.spec import Spec

MANIFEST = "manifest.json"
SIGNATURE = "manifest.hmac"
CURRENT = "CURRENT"
_PUBLISH_LOCK = ".publish.lock"
_VERSION_NAME = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,127}\Z")
_LOG = logging.getLogger(__name__)


class ModelError(UserError):
    """A model directory or version that cannot be used."""


@dataclasses.dataclass(frozen=True)
class ModelVersion:
    """A verified model version: its directory (any Beam filesystem path) and its manifest."""

    path: str
    manifest: dict
    manifest_sha256: str = ""
    made_current: bool = False  # by the publish that returned it
    signing_key_env: str | None = None  # the variable whose key verified it, which newer versions need too

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def file(self, name: str) -> str:
        return FileSystems.join(self.path, name)

    def read(self, name: str) -> bytes:
        """A file of the version, checked against the manifest as it is read: the bytes used are the bytes
        verified, even if the file changed since ``load`` (ModelError then)."""
        data = _read(self.file(name))
        if hashlib.sha256(data).hexdigest() != self.manifest["files"].get(name):
            raise ModelError(f"model {self.version}: {name} changed since the version was verified; refusing it")
        return data

    def baseline(self) -> dict:
        """The training baseline that monitoring compares with; ModelError for a version trained before
        monitoring existed."""
        if "baseline" not in self.manifest:
            raise ModelError(f"model {self.version} has no monitoring baseline (trained before monitoring was "
                             f"added); train a new version")
        return self.manifest["baseline"]


class Baselines:
    """Monitoring's training baselines by model version, for a stream that may switch versions: ``baselines(name)``
    is ``(the version compared with, its baseline)``. The first version's as given; another's read from
    ``model_dir`` the first time it is asked for (verified as ``load_for_spec`` verifies). A version whose baseline
    cannot be read (removed, trained before monitoring) is compared with the first version's, and the log says so.
    """

    def __init__(self, model_dir: str, spec: Spec, first: ModelVersion):
        self._model_dir, self._spec, self._signing_key_env = model_dir, spec, first.signing_key_env
        self._first = (first.version, first.baseline())
        self._known: dict[str, tuple[str, dict]] = {first.version: self._first}

    def __call__(self, version: str) -> tuple[str, dict]:
        if version not in self._known:
            try:
                model = load_for_spec(self._model_dir, self._spec, version, signing_key_env=self._signing_key_env)
                self._known[version] = (version, model.baseline())
            except ModelError as error:
                _LOG.warning("monitoring: %s; its windows are compared with model %s's training baseline", error,
                             self._first[0])
                self._known[version] = self._first
        return self._known[version]


def new_version() -> str:
    """A version name that sorts by creation time, to the microsecond: ``20261121T150102.123456Z-3fa9``."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ-") + secrets.token_hex(2)


def staging_dir(model_dir: str, version: str) -> pathlib.Path:
    """Where a version is written before it is published: a local directory, also for a ``gs://`` model
    directory (``storage.check_committable`` says beforehand whether ``model_dir`` can be published to);
    ModelError if a local ``model_dir`` cannot be written."""
    if not storage.is_local(model_dir):
        return pathlib.Path(tempfile.mkdtemp(prefix=f"rtml-staging-{version}-"))
    path = pathlib.Path(model_dir) / ".staging" / version
    try:
        path.mkdir(parents=True, exist_ok=False)
    except OSError as error:
        raise ModelError(f"--model_dir {model_dir}: cannot write there ({error.strerror or error})") from None
    return path


def publish(model_dir: str, staging: pathlib.Path, manifest: dict, signing_key_env: str | None = None) -> ModelVersion:
    """Hash every file in ``staging``, write the manifest (signed with the key in ``$signing_key_env``), put the
    version into ``versions/`` (the staging directory is gone after) and make it current unless a newer version
    already is (``ModelVersion.made_current``)."""
    key = signing_key(signing_key_env)
    manifest = dict(manifest, files=_hashes(str(staging)))
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    (staging / MANIFEST).write_bytes(manifest_bytes)
    if key is not None:
        (staging / SIGNATURE).write_text(_signature(key, manifest_bytes) + "\n")
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    final = _put_version(model_dir, staging, manifest["version"])
    made_current = advance_current(model_dir, manifest["version"], digest)
    return ModelVersion(final, manifest, digest, made_current=made_current, signing_key_env=signing_key_env)


def _put_version(model_dir: str, staging: pathlib.Path, version: str) -> str:
    """Move a staged version into ``versions/``: a rename locally; on Cloud Storage an upload, manifest last."""
    if storage.is_local(model_dir):
        versions = pathlib.Path(model_dir) / "versions"
        versions.mkdir(exist_ok=True)
        staging.rename(versions / version)
        return str(versions / version)
    final = FileSystems.join(model_dir, "versions", version)
    files = sorted(path for path in staging.rglob("*") if path.is_file() and path.name != MANIFEST)
    for path in [*files, staging / MANIFEST]:  # the manifest last: it makes the version whole
        storage.write_file(FileSystems.join(final, path.relative_to(staging).as_posix()), path.read_bytes())
    shutil.rmtree(staging, ignore_errors=True)
    return final


def advance_current(model_dir: str, version: str, manifest_sha256: str) -> bool:
    """Point CURRENT at ``version`` (whose manifest has that digest) unless it names a newer one; whether it
    names ``version`` then. Locally under a lock on the directory; on Cloud Storage by writing only the
    generation read, and reading again when another publisher came first."""
    path, pointer = FileSystems.join(model_dir, CURRENT), f"{version} sha256:{manifest_sha256}\n".encode()
    if storage.is_local(model_dir):
        with open(os.path.join(model_dir, _PUBLISH_LOCK), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            named = _current_name(storage.read_file(path), model_dir)
            if named is not None and named >= version:
                return named == version
            storage.write_file(path, pointer)
            return True
    for _attempt in range(20):
        text, generation = storage.read_generation(path)
        named = _current_name(text, model_dir)
        if named is not None and named >= version:
            return named == version
        if storage.write_if_generation(path, pointer, generation) is not None:
            return True
    raise ModelError(f"--model_dir {model_dir}: {CURRENT} keeps changing under other publishers; publish again")


def load(model_dir: str, version: str | None = None, manifest_sha256: str | None = None,
         signing_key_env: str | None = None) -> ModelVersion:
    """The named version, or the current one, after checking its manifest against the digest CURRENT
    records (or ``manifest_sha256``) and its signature under the key in ``$signing_key_env``, and every
    file against the manifest.

    Raises ModelError, with a one-line reason, for a missing, incomplete, unsigned or tampered model.
    """
    key = signing_key(signing_key_env)
    if version is None or manifest_sha256 is None:
        try:
            named, digest = current(model_dir)
        except ModelError:
            if version is None:
                raise
            named = digest = None
        version = version or named
        if manifest_sha256 is None and version == named:
            manifest_sha256 = digest
    _check_name(version, f"model version {version!r}")
    path = FileSystems.join(model_dir, "versions", version)
    try:
        manifest_bytes = _read(FileSystems.join(path, MANIFEST))
        manifest = json.loads(manifest_bytes)
    except FileNotFoundError:
        raise ModelError(f"model {version} in {model_dir}: missing, or its {MANIFEST} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ModelError(f"model {version} in {model_dir}: {MANIFEST} is not valid JSON") from None
    except OSError as error:
        raise ModelError(f"model {version} in {model_dir}: {MANIFEST} cannot be read ({_reason(error)})") from None
    if (not isinstance(manifest, dict) or manifest.get("version") != version or not isinstance(manifest.get("files"), dict)
            or not isinstance(manifest.get("spec"), dict) or "fingerprint" not in manifest["spec"]):
        raise ModelError(f"model {version} in {model_dir}: {MANIFEST} is not a manifest of version {version} (its "
                         f"version, spec and files); refusing it")
    digest = hashlib.sha256(manifest_bytes).hexdigest()
    if manifest_sha256 and digest != manifest_sha256:
        raise ModelError(f"model {version} in {model_dir}: {MANIFEST} is not the one {CURRENT} vouches for (sha256 "
                         f"{digest[:12]}…, not {manifest_sha256[:12]}…); refusing a tampered model")
    if key is not None:
        try:
            signed = _read(FileSystems.join(path, SIGNATURE)).strip()
        except OSError:  # FileNotFoundError included
            raise ModelError(f"model {version} in {model_dir}: not signed (no readable {SIGNATURE}), and "
                             f"--model_signing_key_env {signing_key_env} asks for a signed model") from None
        if not hmac.compare_digest(signed, _signature(key, manifest_bytes).encode()):
            raise ModelError(f"model {version} in {model_dir}: {SIGNATURE} does not match its manifest under the key "
                             f"in ${signing_key_env} (another key, or an edited manifest); refusing it")
    expected, actual = manifest["files"], _hashes(path, skip=(MANIFEST, SIGNATURE))
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
    return ModelVersion(path, manifest, digest, signing_key_env=signing_key_env)


def signing_key(env_name: str | None) -> bytes | None:
    """The signing key in the environment variable ``env_name`` (None: no signing); ModelError if it is unset."""
    if not env_name:
        return None
    value = os.environ.get(env_name, "")
    if not value:
        raise ModelError(f"--model_signing_key_env {env_name}: that environment variable is not set (or empty)")
    return value.encode("utf-8")


def _signature(key: bytes, manifest_bytes: bytes) -> str:
    return hmac.new(key, manifest_bytes, hashlib.sha256).hexdigest()


def current(model_dir: str) -> tuple[str, str | None]:
    """The version ``model_dir``'s CURRENT names and the manifest digest it records (None: written by a
    version of rtml that recorded none). Not verified: ``load`` does that."""
    try:
        text = _read(FileSystems.join(model_dir, CURRENT))
    except FileNotFoundError:
        raise ModelError(f"--model_dir {model_dir}: no model here (no {CURRENT} file); "
                         f"train one with `rtml train`") from None
    except OSError as error:
        raise ModelError(f"--model_dir {model_dir}: {CURRENT} cannot be read ({_reason(error)})") from None
    return _parse_current(text, model_dir)


def _parse_current(text: bytes, model_dir: str) -> tuple[str, str | None]:
    try:
        name, _, digest = text.decode("utf-8").strip().partition(" sha256:")
    except UnicodeDecodeError as error:
        raise ModelError(f"--model_dir {model_dir}: {CURRENT} cannot be read ({_reason(error)})") from None
    _check_name(name, f"{CURRENT} in {model_dir} names {name[:80]!r}, which")
    if not digest:
        _warn_no_digest(model_dir, name)
    elif not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ModelError(f"--model_dir {model_dir}: {CURRENT} holds a malformed manifest digest")
    return name, digest or None


def _current_name(text: bytes | None, model_dir: str) -> str | None:
    """The version a CURRENT's bytes name; None when there is none, or they are not a CURRENT (replaced then)."""
    try:
        return None if text is None else _parse_current(text, model_dir)[0]
    except ModelError:
        return None


@functools.lru_cache(maxsize=None)  # once per directory and version, not at every poll
def _warn_no_digest(model_dir: str, name: str) -> None:
    _LOG.warning("%s in %s records no manifest digest (written before rtml recorded one): version %s is checked "
                 "against its own manifest only", CURRENT, model_dir, name)


def _reason(error: Exception) -> str:
    """An OSError's strerror (no path repeated), else the exception's first line."""
    return getattr(error, "strerror", None) or first_line(error)


def _check_name(name: str, what: str) -> None:
    if not _VERSION_NAME.match(name) or ".." in name:
        raise ModelError(f"{what} is not a version name (letters, digits, '.', '_' and '-'; no path)")


def load_for_spec(model_dir: str, spec: Spec, version: str | None = None, manifest_sha256: str | None = None,
                  signing_key_env: str | None = None) -> ModelVersion:
    """``load``, and check that the version was trained for ``spec``'s fields and features.

    Raises ModelError when it was trained on a spec with other fields or features (the alert
    threshold and other settings outside the spec's fingerprint may differ).
    """
    model = load(model_dir, version, manifest_sha256, signing_key_env)
    if model.manifest["spec"]["fingerprint"] != spec.fingerprint:
        raise ModelError(
            f"model {model.version} was trained on spec {model.manifest['spec']['name']} with other fields or "
            f"features than --spec {spec.source}; train a model for this spec")
    return model


def _read(path: str) -> bytes:
    data = storage.read_file(path)
    if data is None:
        raise FileNotFoundError(path)
    return data


def _hashes(directory: str, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """sha256 of every file below ``directory``, by path relative to it."""
    prefix = directory.rstrip("/") + "/"
    paths = sorted(m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list)
    return {path[len(prefix):]: hashlib.sha256(_read(path)).hexdigest()
            for path in paths if path[len(prefix):] not in skip}
