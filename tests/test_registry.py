"""The model directory is a trust boundary: CURRENT names a version by a plain name and vouches for
its manifest's bytes, the manifest for every other file; nothing of a version is used before that
holds, and of two trainings into one directory the later-started one is current."""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import textwrap

import pytest

from models import registry
from tests.conftest import publish_stand_in_model

ROOT = pathlib.Path(__file__).resolve().parents[1]


class _Plant:
    """Unpickling this writes a marker file: what a planted estimator.joblib would do."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def model_dir(tmp_path):
    version = publish_stand_in_model(tmp_path / "model")
    return tmp_path / "model", version


def _rewrite_manifest(version_dir, change) -> None:
    manifest = json.loads((version_dir / registry.MANIFEST).read_text())
    change(manifest)
    (version_dir / registry.MANIFEST).write_text(json.dumps(manifest))


def test_a_version_rewritten_with_matching_hashes_is_refused_before_anything_is_unpickled(model_dir, tmp_path):
    root, version = model_dir
    version_dir = root / "versions" / version
    marker = tmp_path / "pickle-ran"
    planted = pickle.dumps(_Plant(str(marker)))
    (version_dir / "estimator.joblib").write_bytes(planted)
    _rewrite_manifest(version_dir, lambda m: m["files"].update({"estimator.joblib": hashlib.sha256(planted).hexdigest()}))
    with pytest.raises(registry.ModelError, match="is not the one CURRENT vouches for"):
        registry.load(str(root))
    with pytest.raises(registry.ModelError, match="is not the one CURRENT vouches for"):
        registry.load(str(root), version)  # by name: CURRENT names it, so its digest holds too
    assert not marker.exists()


def test_an_edited_manifest_is_refused(model_dir):
    root, version = model_dir
    _rewrite_manifest(root / "versions" / version, lambda m: m.update({"metrics": {"roc_auc": 0.99}}))
    with pytest.raises(registry.ModelError, match="refusing a tampered model"):
        registry.load(str(root))


def test_a_worker_loads_the_manifest_its_launcher_verified(model_dir):
    root, version = model_dir
    launched = registry.load(str(root))
    newer = publish_stand_in_model(root, scale=50.0)
    assert registry.load(str(root)).version == newer  # CURRENT moved on
    assert registry.load(str(root), version, launched.manifest_sha256).version == version
    _rewrite_manifest(root / "versions" / version, lambda m: m.update({"threshold": 0}))
    with pytest.raises(registry.ModelError, match="refusing a tampered model"):
        registry.load(str(root), version, launched.manifest_sha256)


@pytest.mark.parametrize("content", ["../../elsewhere", "/tmp/planted", "versions/x", "..", "",
                                     b"\xff\xfe not utf-8", "a b"])
def test_current_may_only_name_a_version_in_the_directory(model_dir, content):
    root, _ = model_dir
    (root / registry.CURRENT).write_bytes(content if isinstance(content, bytes) else content.encode() + b"\n")
    with pytest.raises(registry.ModelError) as raised:
        registry.load(str(root))
    assert "\n" not in str(raised.value)


def test_a_current_that_is_a_directory_is_one_line(model_dir):
    root, _ = model_dir
    os.remove(root / registry.CURRENT)
    os.mkdir(root / registry.CURRENT)
    with pytest.raises(registry.ModelError, match="CURRENT cannot be read"):
        registry.load(str(root))


def test_a_current_written_before_digests_still_loads(model_dir, caplog):
    root, version = model_dir
    (root / registry.CURRENT).write_text(version + "\n")
    assert registry.load(str(root)).version == version
    assert "records no manifest digest" in caplog.text


def test_of_two_trainings_the_one_started_later_is_current_whichever_ends_last(tmp_path):
    root = tmp_path / "model"
    earlier, later = registry.new_version(), registry.new_version()
    later = later if later > earlier else earlier + "z"
    staged = {}
    for version in (earlier, later):
        staged[version] = registry.staging_dir(str(root), version)
        (staged[version] / "model.onnx").write_bytes(version.encode())
    spec = {"name": "fraud", "fingerprint": "f", "source": "fraud"}
    assert registry.publish(str(root), staged[later], {"version": later, "spec": spec}).made_current
    assert not registry.publish(str(root), staged[earlier], {"version": earlier, "spec": spec}).made_current
    assert registry.current(str(root))[0] == later
    assert registry.load(str(root), earlier).version == earlier  # published all the same


KILL_AT = textwrap.dedent("""
    import os, pathlib, signal, sys
    from tests.conftest import publish_stand_in_model
    step = sys.argv[2]
    owner, name, target = {"manifest": (pathlib.Path, "write_bytes", "manifest.json"),
                           "rename": (pathlib.Path, "rename", ""), "replace": (os, "replace", ".CURRENT")}[step]
    original = getattr(owner, name)
    def killing(path, *args, **kwargs):
        if pathlib.Path(path).name.startswith(target):
            os.kill(os.getpid(), signal.SIGKILL)
        return original(path, *args, **kwargs)
    setattr(owner, name, killing)
    publish_stand_in_model(sys.argv[1], scale=7.0)
""")


@pytest.mark.parametrize("step", ["manifest", "rename", "replace"])
def test_sigkill_at_any_step_of_publishing_leaves_the_previous_version_current(model_dir, step):
    root, version = model_dir
    killed = subprocess.run([sys.executable, "-c", KILL_AT, str(root), step], cwd=ROOT, timeout=120)
    assert killed.returncode == -signal.SIGKILL
    assert registry.load(str(root)).version == version
    assert registry.load(str(root), publish_stand_in_model(root, scale=9.0)).version.endswith("-s9")
    assert registry.load(str(root)).version.endswith("-s9")  # and the next training publishes as usual


def test_with_a_signing_key_only_a_holder_of_the_key_can_make_a_version_that_loads(tmp_path, monkeypatch):
    root = tmp_path / "model"
    monkeypatch.setenv("RTML_KEY", "right key")
    signed = publish_stand_in_model(root, signing_key_env="RTML_KEY")
    assert registry.load(str(root), signing_key_env="RTML_KEY").version == signed
    monkeypatch.setenv("RTML_KEY", "another key")
    with pytest.raises(registry.ModelError, match="manifest.hmac does not match its manifest under the key in "
                                                  r"\$RTML_KEY"):
        registry.load(str(root), signing_key_env="RTML_KEY")

    # Whoever can write the version and CURRENT can vouch for an edited manifest, but cannot sign it.
    version_dir = root / "versions" / signed
    _rewrite_manifest(version_dir, lambda m: m.update({"threshold": 0}))
    digest = hashlib.sha256((version_dir / registry.MANIFEST).read_bytes()).hexdigest()
    (root / registry.CURRENT).write_text(f"{signed} sha256:{digest}\n")
    assert registry.load(str(root)).version == signed  # without a key, CURRENT's word is all there is
    monkeypatch.setenv("RTML_KEY", "right key")
    with pytest.raises(registry.ModelError, match="does not match its manifest"):
        registry.load(str(root), signing_key_env="RTML_KEY")

    unsigned = publish_stand_in_model(root, scale=5.0)
    with pytest.raises(registry.ModelError, match=f"model {unsigned} .*: not signed"):
        registry.load(str(root), signing_key_env="RTML_KEY")
    monkeypatch.delenv("RTML_KEY")
    with pytest.raises(registry.ModelError, match="--model_signing_key_env RTML_KEY: that environment variable is "
                                                  "not set"):
        registry.load(str(root), signing_key_env="RTML_KEY")


def test_scoring_with_a_signing_key_refuses_an_unsigned_version_in_one_line(model_dir, tmp_path, monkeypatch, capsys):
    from pipelines import cli, score

    root, _ = model_dir
    monkeypatch.setenv("RTML_KEY", "k")
    (tmp_path / "events.jsonl").write_text("")
    monkeypatch.setattr(sys, "argv", ["score", "--spec", "fraud", "--input", str(tmp_path / "events.jsonl"),
                                      "--model_dir", str(root), "--output", str(tmp_path / "o"), "--dead_letter",
                                      str(tmp_path / "d"), "--model_signing_key_env", "RTML_KEY"])
    with pytest.raises(SystemExit) as exit_status:
        cli.main(score.run)
    assert exit_status.value.code == 2
    assert "not signed (no readable manifest.hmac)" in capsys.readouterr().err


@pytest.mark.parametrize("manifest, signature", [
    ("[1, 2]", None), ('{"version": "other", "files": {}, "spec": {"fingerprint": "f"}}', None),
    (None, "\u00e9\u00e9 not hex"), (None, "")])
def test_a_manifest_or_signature_that_is_not_one_is_refused_in_one_line(model_dir, monkeypatch, manifest, signature):
    root, version = model_dir
    monkeypatch.setenv("RTML_KEY", "k")
    signed = publish_stand_in_model(root, scale=3.0, signing_key_env="RTML_KEY")
    version_dir = root / "versions" / signed
    if manifest is not None:
        (version_dir / registry.MANIFEST).write_text(manifest)
    if signature is not None:
        (version_dir / registry.SIGNATURE).write_text(signature)
    with pytest.raises(registry.ModelError) as raised:
        registry.load(str(root), signed, signing_key_env="RTML_KEY")
    assert "\n" not in str(raised.value)
