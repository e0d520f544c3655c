"""A spec's event contract as a schema to register for a topic: ``rtml schema``.

    rtml schema --spec fraud [--format avro]     # an Avro record schema
    rtml schema --spec fraud --format json-schema

Prints the schema as JSON: the fields, their types, which are required and (JSON Schema) their rules;
see transforms/contract.py for what each language can and cannot say.
"""
from __future__ import annotations

import json

from pipelines import cli
from pipelines.options import SchemaOptions, SpecOptions
from transforms.contract import avro_schema, json_schema
from transforms.spec import load_spec

VIEWS = (SpecOptions, SchemaOptions)
REQUIRED = {"": ("spec",)}


def run(argv=None) -> dict:
    """Print the schema; returns it."""
    options = cli.parse(argv, VIEWS, __doc__, REQUIRED)
    cli.require(options, *REQUIRED[""])
    spec = load_spec(options.view_as(SpecOptions).spec)
    schema = {"avro": avro_schema, "json-schema": json_schema}[options.view_as(SchemaOptions).format](spec)
    print(json.dumps(schema, indent=2, ensure_ascii=False))
    return schema


if __name__ == "__main__":
    cli.main(run)
