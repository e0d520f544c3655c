"""Use-case specs: the event schema, its keys, the features and the model, in one YAML file.

A spec is named by a built-in name (``fraud``, ``sensor``: ``transforms/specs/*.yaml``) or by a
path to a YAML file of the same form; a new use case is a new file, with no code.

    name: fraud
    extends: other_spec            # optional: a built-in spec, or a .yaml file in this file's folder, to start
                                   # from; top-level keys here replace its keys
    entity_key: card_id            # a required string field
    event_time: event_time         # a timestamp field (RFC 3339 with a zone)
    label: is_fraud                # optional; never a model input: a binary field (the score is the probability of 1)
                                   # or a string field with an enum (one class each, the score is the top one's)
    top_k: 3                       # with a string label: how many classes each scored record ranks (default 3)
    fields:                        # the contract: type and rules of every field
      amount: {type: number, exclusive_minimum: 0}
      channel: {type: string, enum: [pos, online, atm]}
    entity_features:               # optional; per-entity history, see transforms/entity.py
      - {name: card_amount_24h, kind: sum, source: amount, window: 24h}
      - {name: online_events_7d, kind: count, window: 7d, where: {channel: online}}
    features:                      # applied in this order; kinds: transforms/feature_kinds.py
      - {name: amount_log, kind: log_zscore, source: amount}
      - {name: card_amount_24h, kind: log_zscore, source: card_amount_24h}
    model:
      estimator: sklearn.ensemble.HistGradientBoostingClassifier
      params: {max_iter: 300}
    alert_threshold: 0.5           # a record alerts when its score >= this
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import re
from typing import Any

import yaml

from transforms.errors import UserError, first_line
from transforms.feature_kinds import KINDS

SPECS_DIR = pathlib.Path(__file__).parent / "specs"
FIELD_TYPES = ("string", "number", "timestamp", "binary")
ENTITY_FEATURE_KINDS = {  # kind: the type of source it reads (None: none)
    "count": None, "seconds_since_previous": None, "sum": "number", "mean": "number", "ratio_to_mean": "number",
    "difference_from_mean": "number", "is_new": "string"}
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
MAX_SPEC_BYTES = 256 << 10
_EXTENDS = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\Z")  # a name, never a path


class _SpecLoader(yaml.SafeLoader):
    """YAML's safe loader without aliases: a spec has no use for them, and nested aliases expand
    without bound when the document is walked (a few hundred bytes can exhaust memory)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in a spec",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


class SpecError(UserError):
    """A spec that cannot be used, with the file and the key at fault."""


@dataclasses.dataclass(frozen=True)
class Field:
    """One event field and the rules a value must meet.

    Numbers are JSON numbers (not strings, not booleans), finite and within float32's range (|x| <= 3.4e38,
    as features are float32); ``binary`` is 0 or 1.
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
class EntityFeature:
    """A number computed per event from its entity's earlier events within ``window_s`` (see transforms/entity.py),
    with ``where`` only those whose string field equals the value given."""

    name: str
    kind: str
    window_s: int
    source: str | None = None
    where: tuple[str, str] | None = None  # (field, value)


@dataclasses.dataclass(frozen=True)
class Monitoring:
    """Event-time monitoring settings (``monitoring:``, optional; see transforms/monitoring.py).

    Not part of the fingerprint: windows and thresholds may change without retraining.
    """

    window_sizes_s: tuple[int, ...] = (60, 300)
    allowed_lateness_s: int = 300
    min_events: int = 500  # fewer events in a window: no drift figures, no alerts
    psi_threshold: float = 0.2
    max_alert_rate: float | None = None  # None: the alert rate never alerts

    @classmethod
    def parse(cls, value: Any, where: str) -> Monitoring:
        """The ``monitoring:`` mapping: ``windows`` (durations), ``allowed_lateness`` (a duration or 0),
        ``min_events``, ``psi_threshold``, ``max_alert_rate``; each optional."""
        item = _mapping(value, where, optional={"windows", "allowed_lateness", "min_events", "psi_threshold",
                                                "max_alert_rate"})

        def number(key: str, holds, rule: str):
            found = item[key]
            if (isinstance(found, bool) or not isinstance(found, (int, float)) or not math.isfinite(found)
                    or not holds(found)):
                raise SpecError(f"{where}.{key}: must be {rule}")
            return found

        settings = {}
        if "windows" in item:
            settings["window_sizes_s"] = tuple(sorted({_duration_s(w, f"{where}.windows")
                                                       for w in _sequence(item["windows"], f"{where}.windows")}))
        if "allowed_lateness" in item:
            lateness = item["allowed_lateness"]
            settings["allowed_lateness_s"] = 0 if type(lateness) is int and lateness == 0 else _duration_s(
                lateness, f"{where}.allowed_lateness")
        if "min_events" in item:
            settings["min_events"] = number("min_events", lambda v: isinstance(v, int) and v >= 1,
                                            "a whole number >= 1")
        if "psi_threshold" in item:
            settings["psi_threshold"] = float(number("psi_threshold", lambda v: v > 0, "a number > 0"))
        if "max_alert_rate" in item:
            settings["max_alert_rate"] = float(number("max_alert_rate", lambda v: 0 < v <= 1, "a share in (0, 1]"))
        return cls(**settings)


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
    entity_features: tuple[EntityFeature, ...] = ()
    monitoring: Monitoring = Monitoring()
    top_k: int = 3  # with a class label: the classes each scored record ranks

    @property
    def classes(self) -> tuple[str, ...] | None:
        """A class label's classes (its field's enum), or None for a binary label or none."""
        return self.field(self.label).enum if self.label and self.field(self.label).type == "string" else None

    @property
    def fingerprint(self) -> str:
        """sha256 of everything that decides what a model sees: fields, keys, label, entity features, features.

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
        if self.entity_features:  # absent for a stateless spec, so its fingerprint stays as it was
            contract["entity_features"] = [  # so is a feature's without ``where``
                {key: value for key, value in dataclasses.asdict(f).items() if key != "where" or value}
                for f in self.entity_features]
        return hashlib.sha256(json.dumps(contract, sort_keys=True).encode()).hexdigest()

    def field(self, name: str) -> Field:
        """An event field, or an entity feature as the number field it adds to each event."""
        found = next((f for f in self.fields if f.name == name), None)
        return found or next(Field(name=f.name, type="number") for f in self.entity_features if f.name == name)

    @property
    def entity_history_s(self) -> int:
        """How far back an event's entity features look: the longest entity feature window (0: stateless)."""
        return max((f.window_s for f in self.entity_features), default=0)

    @property
    def feature_sources(self) -> tuple[str, ...]:
        """The fields the features read, each once, in first-use order."""
        return tuple(dict.fromkeys(f.source for f in self.features))


def load_spec(name_or_path: str) -> Spec:
    """Load a built-in spec by name or a spec file by path; raise SpecError saying what is wrong."""
    document, path = _document(name_or_path, "--spec")
    return _build(document, str(path))


def _document(name_or_path: str, flag: str, seen: tuple[str, ...] = ()) -> tuple[Any, pathlib.Path]:
    """A spec file's YAML document, with the document it ``extends`` (a spec name or path) under it."""
    path = pathlib.Path(name_or_path)
    if not name_or_path.endswith((".yaml", ".yml")) and (SPECS_DIR / f"{name_or_path}.yaml").exists():
        path = SPECS_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        builtin = ", ".join(sorted(p.stem for p in SPECS_DIR.glob("*.yaml")))
        raise SpecError(f"{flag} {name_or_path}: no such built-in spec ({builtin}) or YAML file")
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"spec {path}: larger than {MAX_SPEC_BYTES >> 10} KiB; a spec is a short file")
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise SpecError(f"spec {path}: not valid YAML ({first_line(error)})") from None
    if isinstance(document, dict) and "extends" in document:
        if str(path.resolve()) in seen:
            raise SpecError(f"spec {path}: extends itself (through {', '.join(seen)})")
        base_name = document.pop("extends")
        if not isinstance(base_name, str) or not _EXTENDS.match(base_name):
            raise SpecError(f"spec {path}: extends must name a built-in spec or a .yaml file in the same folder")
        if base_name.endswith((".yaml", ".yml")):
            base_name = str(path.parent / base_name)
        elif not (SPECS_DIR / f"{base_name}.yaml").exists():
            raise SpecError(f"spec {path}: extends {base_name}: no such built-in spec "
                            f"({', '.join(sorted(p.stem for p in SPECS_DIR.glob('*.yaml')))})")
        base, _ = _document(base_name, f"spec {path}: extends", seen + (str(path.resolve()),))
        document = {**base, **document}  # the extending file's top-level keys replace the base's
    return document, path


def _build(document: Any, source: str) -> Spec:
    where = f"spec {source}"
    doc = _mapping(document, where, required={"name", "entity_key", "event_time", "fields", "features", "model"},
                   optional={"description", "label", "top_k", "alert_threshold", "entity_features", "monitoring"})
    fields = tuple(_field(name, rules, f"{where}: fields.{name}")
                   for name, rules in _mapping(doc["fields"], f"{where}: fields").items())
    by_name = {f.name: f for f in fields}
    entity_items = _sequence(doc["entity_features"], f"{where}: entity_features") if "entity_features" in doc else []
    entity_features = tuple(_entity_feature(item, f"{where}: entity_features[{i}]", by_name)
                            for i, item in enumerate(entity_items))
    for entity_feature in entity_features:
        if entity_feature.name in by_name:
            raise SpecError(f"{where}: entity feature {entity_feature.name!r} has the name of a field or of "
                            f"another entity feature")
        by_name[entity_feature.name] = Field(name=entity_feature.name, type="number")
    features = tuple(_feature(item, f"{where}: features[{i}]", by_name)
                     for i, item in enumerate(_sequence(doc["features"], f"{where}: features")))
    if len({f.name for f in features}) != len(features):
        raise SpecError(f"{where}: features: two features have the same name")
    model = _mapping(doc["model"], f"{where}: model", required={"estimator"}, optional={"params"})
    params = _mapping(model["params"], f"{where}: model.params") if model.get("params") is not None else {}
    for key in ("name", "entity_key", "event_time", "label"):
        if key in doc and not (isinstance(doc[key], str) or (key == "label" and doc[key] is None)):
            raise SpecError(f"{where}: {key} must be a name (text)")

    entity = by_name.get(doc["entity_key"])
    if entity is None or entity.type != "string" or not entity.required:
        raise SpecError(f"{where}: entity_key {doc['entity_key']!r} must name a required string field")
    event_time = by_name.get(doc["event_time"])
    if event_time is None or event_time.type != "timestamp" or not event_time.required:
        raise SpecError(f"{where}: event_time {doc['event_time']!r} must name a required timestamp field")
    label = doc.get("label")
    if label is not None:
        field = by_name.get(label)
        if field is None or not (field.type == "binary" or (field.type == "string" and field.enum)):
            raise SpecError(f"{where}: label {label!r} must name a binary field or a string field with an enum "
                            f"(its classes)")
        if field.enum is not None and len(set(field.enum)) < 2:
            raise SpecError(f"{where}: label {label!r}: a class label needs an enum of at least 2 classes")
        if any(f.source == label for f in features) or any(label in (f.source, f.where and f.where[0])
                                                         for f in entity_features):
            raise SpecError(f"{where}: the label {label!r} cannot be a feature source")
    top_k = doc.get("top_k", 3)
    if "top_k" in doc and (label is None or by_name[label].type != "string"):
        raise SpecError(f"{where}: top_k ranks a class label's classes: it needs a label that is a string field "
                        f"with an enum")
    if type(top_k) is not int or top_k < 1:
        raise SpecError(f"{where}: top_k must be a whole number >= 1")
    if label is not None and by_name[label].enum and top_k > len(set(by_name[label].enum)):
        raise SpecError(f"{where}: top_k {top_k} ranks more classes than the label {label!r} has "
                        f"({len(set(by_name[label].enum))})")
    if not str(model["estimator"]).startswith("sklearn."):
        raise SpecError(f"{where}: model.estimator must be a scikit-learn class "
                        f"such as sklearn.ensemble.IsolationForest, not {model['estimator']!r}")
    threshold = doc.get("alert_threshold", 0.5)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise SpecError(f"{where}: alert_threshold must be a finite number")

    return Spec(
        name=str(doc["name"]), description=str(doc.get("description", "")),
        entity_key=entity.name, event_time=event_time.name, label=label,
        fields=fields, features=features,
        estimator=str(model["estimator"]), estimator_params=params,
        alert_threshold=float(threshold), source=source, entity_features=entity_features, top_k=top_k,
        monitoring=Monitoring.parse(doc["monitoring"], f"{where}: monitoring") if "monitoring" in doc
        else Monitoring(),
    )


def _field(name: str, rules: Any, where: str) -> Field:
    names = {f.name for f in dataclasses.fields(Field)} - {"name"}
    rules = _mapping(rules, where, required={"type"}, optional=names - {"type"})
    if not isinstance(rules["type"], str) or rules["type"] not in FIELD_TYPES:
        raise SpecError(f"{where}: type must be one of {', '.join(FIELD_TYPES)}")
    for key in ("required", "non_empty"):
        if key in rules and not isinstance(rules[key], bool):
            raise SpecError(f"{where}.{key}: must be true or false")
    for key in ("minimum", "exclusive_minimum", "maximum"):
        if key in rules and (isinstance(rules[key], bool) or not isinstance(rules[key], (int, float))
                             or not math.isfinite(rules[key])):
            raise SpecError(f"{where}.{key}: must be a finite number")
    if "enum" in rules:
        rules["enum"] = tuple(str(v) for v in _sequence(rules["enum"], f"{where}.enum"))
    if "pattern" in rules:
        if not isinstance(rules["pattern"], str):
            raise SpecError(f"{where}.pattern: must be a regular expression (text)")
        try:
            re.compile(rules["pattern"])
        except (re.error, RecursionError, OverflowError) as error:
            raise SpecError(f"{where}.pattern: not a regular expression ({error})") from None
    try:
        return Field(name=str(name), **rules)
    except TypeError as error:
        raise SpecError(f"{where}: {error}") from None


def _feature(item: Any, where: str, fields: dict[str, Field]) -> Feature:
    names = {f.name for f in dataclasses.fields(Feature)}
    item = _mapping(item, where, required={"name", "kind", "source"}, optional=names)
    kind = KINDS.get(item["kind"]) if isinstance(item["kind"], str) else None
    if kind is None:
        raise SpecError(f"{where}: kind must be one of {', '.join(KINDS)}")
    for key, least in (("num_buckets", 2), ("top_k", 1), ("frequency_threshold", 0)):
        if key in item and (type(item[key]) is not int or item[key] < least):
            raise SpecError(f"{where}.{key}: must be a whole number >= {least}")
    feature = Feature(**{key: str(value) if key in ("name", "source") else value for key, value in item.items()})
    source = fields.get(feature.source)
    if source is None:
        raise SpecError(f"{where}: source {feature.source!r} is not a field")
    if not source.required:
        raise SpecError(f"{where}: source {feature.source!r} must be a required field")
    if source.type != kind.source_type:
        raise SpecError(f"{where}: a {feature.kind} feature needs a {kind.source_type} field, "
                        f"{feature.source!r} is {source.type}")
    return feature


def _entity_feature(item: Any, where: str, fields: dict[str, Field]) -> EntityFeature:
    item = _mapping(item, where, required={"name", "kind", "window"}, optional={"source", "where"})
    kind = item["kind"]
    if not isinstance(kind, str) or kind not in ENTITY_FEATURE_KINDS:
        raise SpecError(f"{where}: kind must be one of {', '.join(ENTITY_FEATURE_KINDS)}")
    wanted, source = ENTITY_FEATURE_KINDS[kind], item.get("source")
    if wanted is None and source is not None:
        raise SpecError(f"{where}: a {kind} entity feature takes no source")
    if wanted is not None:
        field = fields.get(source) if isinstance(source, str) else None
        if field is None or not field.required or field.type != wanted:
            raise SpecError(f"{where}: a {kind} entity feature needs a source that is a required {wanted} field")
    condition = None
    if "where" in item:
        condition = _mapping(item["where"], f"{where}.where")
        field = fields.get(next(iter(condition))) if len(condition) == 1 else None
        if field is None or not field.required or field.type != "string" or not isinstance(
                next(iter(condition.values())), str):
            raise SpecError(f"{where}.where: must be one required string field and its value, such as "
                            f"{{channel: online}}")
        condition = next(iter(condition.items()))
        if field.enum and condition[1] not in field.enum:  # a misspelt value would count nothing, silently
            raise SpecError(f"{where}.where: {condition[1]!r} is not one of {field.name}'s values "
                            f"({', '.join(field.enum)})")
    return EntityFeature(name=str(item["name"]), kind=kind, window_s=_duration_s(item["window"], f"{where}.window"),
                         source=source, where=condition)


def _duration_s(value: Any, where: str) -> int:
    """``90``, ``"90s"``, ``"30m"``, ``"24h"``, ``"7d"`` as whole seconds (> 0)."""
    text = str(value).strip()
    unit = _DURATION_UNITS.get(text[-1:], None)
    number = text[:-1] if unit else text
    if not number.isdigit() or int(number) == 0 or isinstance(value, bool):
        raise SpecError(f"{where}: must be a duration such as 90s, 30m, 24h or 7d")
    return int(number) * (unit or 1)


def _mapping(value: Any, where: str, required=frozenset(), optional=None) -> dict:
    if not isinstance(value, dict):
        raise SpecError(f"{where}: must be a mapping")
    missing = sorted(set(required) - set(value))
    if missing:
        raise SpecError(f"{where}: missing {', '.join(missing)}")
    if optional is not None:
        unknown = sorted(set(value) - set(required) - set(optional), key=str)
        if unknown:  # a key that is not plain printable text is quoted, so the error stays one line
            shown = (str(key) if str(key).isprintable() else repr(key) for key in unknown)
            raise SpecError(f"{where}: unknown key {', '.join(shown)} (it takes "
                            f"{', '.join(sorted({*required, *optional}))})")
    return dict(value)


def _sequence(value: Any, where: str) -> list:
    if not isinstance(value, list) or not value:
        raise SpecError(f"{where}: must be a non-empty list")
    return value
