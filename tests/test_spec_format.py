"""docs/specs.md's *Spec format* tables against the loader: the keys each place of a spec takes (as the loader's
one-line refusal of an unknown key lists them), the defaults it fills in, and the kinds it knows."""
from __future__ import annotations

import pathlib
import re

import pytest
import yaml

from transforms.spec import SpecError, load_spec

DOC = pathlib.Path(__file__).resolve().parents[1] / "docs" / "specs.md"
MINIMAL = {"name": "minimal", "entity_key": "id", "event_time": "at",
           "fields": {"id": {"type": "string"}, "at": {"type": "timestamp"}, "x": {"type": "number"}},
           "features": [{"name": "x", "kind": "zscore", "source": "x"}],
           "model": {"estimator": "sklearn.ensemble.IsolationForest"}}


def _tables() -> dict[str, dict[str, tuple[bool, str]]]:
    """{place (a table's first heading): {key: (required, default as written)}}."""
    section = DOC.read_text().split("## Spec format\n", 1)[1].split("\n## ", 1)[0]
    tables = {}
    for block in re.findall(r"^(\|.*\|\n\|[-| ]+\|\n(?:\|.*\|\n)+)", section, re.M):
        header, _, *rows = block.strip().splitlines()
        cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
        if header.count("|") == 5:  # key | required | default | what it is
            tables[header.strip("| ").split(" |")[0]] = {
                key.strip("`"): (required == "yes", default.strip("`")) for key, required, default, _ in cells}
        else:
            tables.update({name: {kind.strip("` ") for kind in kinds.split(" (")[0].split(",")} for name, kinds in cells})
    return tables


TABLES = _tables()


def _load(tmp_path, document) -> object:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(document))
    return load_spec(str(path))


def _with_key_at(place: str, key: str) -> tuple[dict, dict]:
    """A minimal spec with ``key: 1`` added at ``place``: (the document, the mapping at that place)."""
    document = yaml.safe_load(yaml.safe_dump(MINIMAL))
    entry = {"top level": document, "a field's rules": document["fields"]["x"], "a feature": document["features"][0],
             "model": document["model"]}
    if place == "an entity feature":
        document["entity_features"] = [{"name": "n", "kind": "count", "window": "1h"}]
        entry[place] = document["entity_features"][0]
    if place == "monitoring":
        entry[place] = document["monitoring"] = {}
    entry[place][key] = 1
    return document, entry[place]


@pytest.mark.parametrize("place", ["top level", "a field's rules", "a feature", "an entity feature", "model",
                                   "monitoring"])
def test_the_keys_of_each_place_are_those_the_loader_takes(tmp_path, place):
    with pytest.raises(SpecError) as refused:
        _load(tmp_path, _with_key_at(place, "colour")[0])
    message = str(refused.value)
    assert "\n" not in message and "unknown key colour" in message
    taken = set(re.search(r"\(it takes (.*)\)$", message).group(1).split(", "))
    documented = set(TABLES[place])
    if place == "top level":  # (read before the rest: the file it names is merged in first)
        documented.discard("extends")
    assert taken == documented
    required = {key for key, (needed, _) in TABLES[place].items() if needed}
    for key in required:
        document, entry = _with_key_at(place, "colour")
        del entry[key], entry["colour"]
        with pytest.raises(SpecError, match=f"missing {key}"):
            _load(tmp_path, document)


def test_the_defaults_are_those_the_loader_fills_in(tmp_path):
    spec = _load(tmp_path, {**MINIMAL, "monitoring": {}})

    def documented(place: str) -> dict:
        return {key: yaml.safe_load(default) for key, (_, default) in TABLES[place].items() if default}

    top = documented("top level")
    assert (spec.description, spec.label, spec.top_k, spec.alert_threshold, list(spec.entity_features)) == (
        top["description"], top["label"], top["top_k"], top["alert_threshold"], top["entity_features"])
    assert spec.estimator_params == documented("model")["params"]
    for key, value in documented("a field's rules").items():
        assert getattr(spec.field("x"), key) == value, key
    for key, value in documented("a feature").items():
        assert getattr(spec.features[0], key) == value, key
    monitoring = documented("monitoring")
    assert spec.monitoring.window_sizes_s == tuple(_seconds(window) for window in monitoring.pop("windows"))
    assert spec.monitoring.allowed_lateness_s == _seconds(monitoring.pop("allowed_lateness"))
    for key, value in monitoring.items():
        assert getattr(spec.monitoring, key) == value, key


def _seconds(duration: str) -> int:
    return int(duration[:-1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[duration[-1]]


@pytest.mark.parametrize("place, table", [("a feature", "feature kinds"), ("an entity feature", "entity feature kinds")])
def test_the_kinds_are_those_the_loader_knows(tmp_path, place, table):
    document, entry = _with_key_at(place, "colour")
    del entry["colour"]
    entry["kind"] = "cube"
    with pytest.raises(SpecError) as refused:
        _load(tmp_path, document)
    assert set(str(refused.value).split("kind must be one of ")[1].split(", ")) == TABLES[table]
