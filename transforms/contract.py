"""A spec's event contract as the schema languages Kafka users register: Avro and JSON Schema.

Both say what ``transforms.events.EventParser`` checks, as far as each language can: the fields and
their types, which are required (may not be missing or null), and, in JSON Schema, the rules
(non-empty, enum, pattern, bounds, float32's range for numbers). Extra fields are allowed, as in
the contract. Avro carries the rules in each field's ``doc`` only; its event time is a
``timestamp-micros`` long, as Avro users expect. JSON Schema's event time is a ``date-time``
string of the contract's pattern: a validator that asserts formats also refuses a day that does
not exist, as the parser does. What neither can say (an event under 1 MiB) stays the parser's.
"""
from __future__ import annotations

import re

from transforms.field_checks import FLOAT32_MAX, RFC3339_PATTERN
from transforms.spec import Field, Spec

JSON_SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"
# The end of the value: "$" also matches before a final newline in Python's re, which jsonschema uses.
_END = r"(?![\s\S])"
_AVRO_TYPES = {"string": "string", "number": "double", "binary": "int",
               "timestamp": {"type": "long", "logicalType": "timestamp-micros"}}


def avro_schema(spec: Spec) -> dict:
    """The spec's events as an Avro record schema (namespace ``rtml``, named after the spec)."""
    fields = []
    for field in spec.fields:
        kind = _AVRO_TYPES[field.type]
        entry = {"name": field.name, "type": kind if field.required else ["null", kind], "doc": _rules(field)}
        fields.append(entry if field.required else {**entry, "default": None})
    return {"type": "record", "name": _avro_name(spec.name), "namespace": "rtml", "doc": spec.description or spec.name,
            "fields": fields}


def json_schema(spec: Spec) -> dict:
    """The spec's events as a JSON Schema (draft 2020-12) object schema."""
    properties = {}
    for field in spec.fields:
        rules = _json_rules(field)
        properties[field.name] = rules if field.required else {"anyOf": [{"type": "null"}, rules]}
    return {"$schema": JSON_SCHEMA_DIALECT, "title": spec.name, "description": spec.description or spec.name,
            "type": "object", "properties": properties,
            "required": [field.name for field in spec.fields if field.required]}


def _json_rules(field: Field) -> dict:
    if field.type == "timestamp":
        return {"type": "string", "format": "date-time", "pattern": f"^{RFC3339_PATTERN}{_END}"}
    if field.type == "binary":
        return {"enum": [0, 1]}
    if field.type == "number":
        rules = {"type": "number", "minimum": -FLOAT32_MAX, "maximum": FLOAT32_MAX}
        if field.minimum is not None:
            rules["minimum"] = max(field.minimum, -FLOAT32_MAX)
        if field.maximum is not None:
            rules["maximum"] = min(field.maximum, FLOAT32_MAX)
        if field.exclusive_minimum is not None:
            rules["exclusiveMinimum"] = field.exclusive_minimum
        return rules
    rules = {"type": "string"}
    if field.non_empty:
        rules["minLength"] = 1
    if field.enum:
        rules["enum"] = list(field.enum)
    if field.pattern:
        rules["pattern"] = f"^(?:{field.pattern}){_END}"  # the parser matches the whole value
    return rules


def _rules(field: Field) -> str:
    """A field's rules in words, for Avro's doc."""
    words = {"string": "a string", "number": "a finite number", "binary": "0 or 1", "timestamp": "an instant"}[field.type]
    rules = [words, "required" if field.required else "optional"]
    rules += ["not empty"] * field.non_empty
    rules += [f"one of {', '.join(field.enum)}"] if field.enum else []
    rules += [f"matching {field.pattern}"] if field.pattern else []
    rules += [f"{sign} {bound:g}" for sign, bound in ((">", field.exclusive_minimum), (">=", field.minimum),
                                                      ("<=", field.maximum)) if bound is not None]
    return "; ".join(rules)


def _avro_name(name: str) -> str:
    """An Avro name: letters, digits and underscores, not starting with a digit."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return name if re.match(r"[A-Za-z_]", name) else f"_{name}"
