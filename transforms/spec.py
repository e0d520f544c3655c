"""Use-case specs: the event schema, its keys, the features and the model, in one YAML file.

A spec is named by a built-in name (``fraud``, ``sensor``: ``transforms/specs/*.yaml``) or by a
path to a YAML file of the same form; a new use case is a new file, with no code.

    name: fraud
    entity_key: card_id            # a required string field
    event_time: event_time         # a timestamp field (RFC 3339 with a zone)
    label: is_fraud                # optional; a binary field, never a model input
    fields:                        # the contract: type and rules of every field
      amount: {type: number, exclusive_minimum: 0}
      channel: {type: string, enum: [pos, online, atm]}
    features:                      # applied in this order; see transforms/features.py
      - {name: amount_log, kind: log_zscore, source: amount}
    model:
      estimator: sklearn.ensemble.HistGradientBoostingClassifier
      params: {max_iter: 300}
    alert_threshold: 0.5           # a record alerts when its score >= this
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
from typing import Any

import yaml

from transforms.errors import UserError

SPECS_DIR = pathlib.Path(__file__).parent / "specs"
FIELD_TYPES = ("string", "number", "timestamp", "binary")
FEATURE_KINDS = ("identity", "zscore", "log_zscore", "buckets", "vocabulary", "time_of_day")


class SpecError(UserError):
    """A spec that cannot be used, with the file and the key at fault."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One event field and the rules a value must meet.

    Numbers are JSON numbers (not strings, not booleans) and always finite; ``binary`` is 0 or 1.
    """

    name: str
    type: str
    required: bool = True
    non_empty: bool = False
    enum: tuple[str, ...] | None = None
    pattern: str | None = None
    minimum: float | None = None
    exclusive_minimum: float | None = None
    maximum: float | None = None


@dataclasses.dataclass(frozen=True)
class Feature:
    """One model input column group, computed from one source field by a feature kind."""

    name: str
    kind: str
    source: str
    num_buckets: int = 10
    top_k: int = 20
    frequency_threshold: int = 1


@dataclasses.dataclass(frozen=True)
class Spec:
    name: str
    description: str
    entity_key: str
    event_time: str
    label: str | None
    fields: tuple[Field, ...]
    features: tuple[Feature, ...]
    estimator: str
    estimator_params: dict[str, Any]
    alert_threshold: float
    source: str

    @property
    def fingerprint(self) -> str:
        """sha256 of everything that decides what a model sees: fields, keys, label, features.

        A model may score with a spec of the same fingerprint; the alert threshold and the
        estimator settings may differ without retraining.
        """
        contract = {
            "entity_key": self.entity_key,
            "event_time": self.event_time,
            "label": self.label,
            "fields": [dataclasses.asdict(f) for f in self.fields],
            "features": [dataclasses.asdict(f) for f in self.features],
        }
        return hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    @property
    def feature_sources(self) -> tuple[str, ...]:
        """The fields the features read, each once, in first-use order."""
        return tuple(dict.fromkeys(f.source for f in self.features))


def load_spec(name_or_path: str) -> Spec:
    """Load a built-in spec by name or a spec file by path; raise SpecError saying what is wrong."""
    path = pathlib.Path(name_or_path)
    if not name_or_path.endswith((".yaml", ".yml")) and (SPECS_DIR / f"{name_or_path}.yaml").exists():
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        builtin = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
        raise SpecError(f"--spec {name_or_path}: no such built-in spec ({builtin}) or YAML file")
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SpecError(f"spec {path}: not valid YAML ({_first_line(error)})") from None
    return _build(document, str(path))


def _build(document: Any, source: str) -> Spec:
    where = f"spec {source}"
    doc = _mapping(document, where, required={"name", "entity_key", "event_time", "fields", "features", "model"},
                   optional={"description", "label", "alert_threshold"})
    fields = tuple(_field(name, rules, f"{where}: fields.{name}")
                   for name, rules in _mapping(doc["fields"], f"{where}: fields").items())
    by_name = {f.name: f for f in fields}
    features = tuple(_feature(item, f"{where}: features[{i}]", by_name)
                     for i, item in enumerate(_sequence(doc["features"], f"{where}: features")))
    if len({f.name for f in features}) != len(features):
        raise SpecError(f"{where}: features: two features have the same name")
    model = _mapping(doc["model"], f"{where}: model", required={"estimator"}, optional={"params"})

    entity = by_name.get(doc["entity_key"])
    if entity is None or entity.type != "string" or not entity.required:
        raise SpecError(f"{where}: entity_key {doc['entity_key']!r} must name a required string field")
    event_time = by_name.get(doc["event_time"])
    if event_time is None or event_time.type != "timestamp" or not event_time.required:
        raise SpecError(f"{where}: event_time {doc['event_time']!r} must name a required timestamp field")
    label = doc.get("label")
    if label is not None:
        if by_name.get(label) is None or by_name[label].type != "binary":
            raise SpecError(f"{where}: label {label!r} must name a binary field")
        if any(f.source == label for f in features):
            raise SpecError(f"{where}: the label {label!r} cannot be a feature source")
    if not str(model["estimator"]).startswith("sklearn."):
        raise SpecError(f"{where}: model.estimator must be a scikit-learn class "
                        f"such as sklearn.ensemble.IsolationForest, not {model['estimator']!r}")
    threshold = doc.get("alert_threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise SpecError(f"{where}: alert_threshold must be a number")

    spec = Spec(
        name=str(doc["name"]), description=str(doc.get("description", "")),
        entity_key=entity.name, event_time=event_time.name, label=label,
        fields=fields, features=features,
        estimator=str(model["estimator"]), estimator_params=dict(model.get("params") or {}),
        alert_threshold=float(threshold), source=source,
    )
    return spec


def _field(name: str, rules: Any, where: str) -> Field:
    names = {f.name for f in dataclasses.fields(Field)} - {"name"}
    rules = _mapping(rules, where, required={"type"}, optional=names - {"type"})
    if rules["type"] not in FIELD_TYPES:
        raise SpecError(f"{where}: type must be one of {', '.join(FIELD_TYPES)}")
    if "enum" in rules:
        rules["enum"] = tuple(str(v) for v in _sequence(rules["enum"], f"{where}.enum"))
    if "pattern" in rules:
        try:
            re.compile(rules["pattern"])
        except re.error as error:
            raise SpecError(f"{where}.pattern: not a regular expression ({error})") from None
    try:
        return Field(name=str(name), **rules)
    except TypeError as error:
        raise SpecError(f"{where}: {error}") from None


def _feature(item: Any, where: str, fields: dict[str, Field]) -> Feature:
    names = {f.name for f in dataclasses.fields(Feature)}
    item = _mapping(item, where, required={"name", "kind", "source"}, optional=names)
    feature = Feature(**item)
    if feature.kind not in FEATURE_KINDS:
        raise SpecError(f"{where}: kind must be one of {', '.join(FEATURE_KINDS)}")
    source = fields.get(feature.source)
    if source is None:
        raise SpecError(f"{where}: source {feature.source!r} is not a field")
    if not source.required:
        raise SpecError(f"{where}: source {feature.source!r} must be a required field")
    wanted = {"vocabulary": "string", "time_of_day": "timestamp"}.get(feature.kind, "number")
    if source.type != wanted:
        raise SpecError(f"{where}: a {feature.kind} feature needs a {wanted} field, "
                        f"{feature.source!r} is {source.type}")
    if feature.num_buckets < 2 or feature.top_k < 1:
        raise SpecError(f"{where}: num_buckets must be >= 2 and top_k >= 1")
    return feature


def _mapping(value: Any, where: str, required=frozenset(), optional=None) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a mapping")
    missing = sorted(set(required) - set(value))
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    if optional is not None:
        unknown = sorted(set(value) - set(required) - set(optional))
        if unknown:
            raise SpecError(f"{where}: unknown key {', '.join(map(str, unknown))}")
    return dict(value)


def _sequence(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: must be a non-empty list")
    return value


def _first_line(error: Exception) -> str:
    return str(error).strip().splitlines()[0]
