"""rtml schema: a spec's event contract as JSON Schema and Avro says what the event parser checks."""
from __future__ import annotations

import datetime
import io
import json

import fastavro
from fastavro.validation import validate
import jsonschema
import pytest
from hypothesis import event as event_note, given, settings, strategies as st

from pipelines import schema
from pipelines.generate import generate
from transforms.contract import avro_schema, json_schema
from transforms.events import MAX_EVENT_BYTES, EventParser
from transforms.field_checks import FLOAT32_MAX
from transforms.spec import load_spec

SPECS = ("fraud", "sensor", "sensor_autoencoder", "fraud_entity")


def _validator(spec_name: str) -> jsonschema.Draft202012Validator:
    document = json_schema(load_spec(spec_name))
    jsonschema.Draft202012Validator.check_schema(document)
    # Formats asserted, as validators that check date-time do (rfc3339-validator): a day 32 is not a time.
    return jsonschema.Draft202012Validator(document, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("spec_name", ["fraud", "sensor"])
def test_json_schema_accepts_exactly_the_generated_lines_the_parser_accepts(spec_name, tmp_path):
    generate(spec_name, 2, tmp_path, datetime.date(2026, 3, 1), 2000, 0.2, 5, compress=False)
    validator, parser = _validator(spec_name), EventParser(load_spec(spec_name))
    compared = valid = 0
    for path in sorted(tmp_path.glob("*/*.jsonl")):
        for line in path.read_bytes().splitlines():
            if len(line) > MAX_EVENT_BYTES:
                continue  # a size no schema states
            try:
                document = json.loads(line, parse_constant=_not_json)
            except ValueError:
                continue  # not JSON (NaN and Infinity are Python's, not JSON's): no schema sees it
            accepted = not isinstance(parser.parse(line), str)
            assert validator.is_valid(document) == accepted, (line[:200], parser.parse(line))
            compared, valid = compared + 1, valid + accepted
    assert valid > 3000 and compared - valid > 400  # both kinds, many broken ways


def _not_json(constant: str):
    raise ValueError(constant)


def _value():
    return st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
                     st.floats(min_value=FLOAT32_MAX / 2, max_value=FLOAT32_MAX * 2),
                     st.text(max_size=6), st.sampled_from(["pos", "USD", "us", "", "USD\n"]),
                     st.datetimes(timezones=st.just(datetime.timezone.utc)).map(lambda t: t.isoformat()),
                     st.datetimes().map(lambda t: t.isoformat()), st.lists(st.integers(), max_size=2))


def _valid_value(field):
    if field.type == "timestamp":
        return st.datetimes(timezones=st.just(datetime.timezone.utc)).map(lambda t: t.isoformat())
    if field.type == "binary":
        return st.sampled_from([0, 1, 0.0, 1.0])
    if field.type == "number":
        low = field.exclusive_minimum if field.exclusive_minimum is not None else field.minimum
        return st.floats(min_value=-FLOAT32_MAX if low is None else low, exclude_min=field.exclusive_minimum is not None,
                         max_value=FLOAT32_MAX if field.maximum is None else field.maximum)
    if field.enum:
        return st.sampled_from(field.enum)
    if field.pattern:
        return st.from_regex(field.pattern, fullmatch=True)
    return st.text(min_size=1 if field.non_empty else 0, max_size=8)


@pytest.mark.parametrize("spec_name", SPECS)
@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_json_schema_and_the_parser_agree_on_any_event(spec_name, data):
    """Each field, drawn independently: mostly a valid value, else missing or anything at all."""
    spec = load_spec(spec_name)
    event = {}
    for field in spec.fields:
        kind = data.draw(st.sampled_from(["valid"] * 8 + ["missing", "any"]), label=f"{field.name} is")
        if kind != "missing":
            event[field.name] = data.draw(_valid_value(field) if kind == "valid" else _value(), label=field.name)
    accepted = not isinstance(EventParser(spec).parse(event), str)
    event_note(f"accepted: {accepted}")
    assert _validator(spec_name).is_valid(event) == accepted


@pytest.mark.parametrize("spec_name", SPECS)
def test_avro_carries_valid_events_to_the_parser_unchanged(spec_name, tmp_path):
    spec = load_spec(spec_name)
    parsed_schema = fastavro.parse_schema(avro_schema(spec))
    manifest = generate("sensor" if spec_name.startswith("sensor") else "fraud", 1, tmp_path,
                        datetime.date(2026, 3, 1), 300, 0.0, 5, compress=False)
    parser = EventParser(spec)
    events = [parser.parse(line) for line in (tmp_path / manifest["days"][0]["file"]).read_bytes().splitlines()]
    assert len(events) == 300
    for event, time_us in events:
        record = {**event, spec.event_time: datetime.datetime.fromisoformat(event[spec.event_time])}
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, parsed_schema, record)
        decoded = fastavro.schemaless_reader(io.BytesIO(buffer.getvalue()), parsed_schema)
        again, again_us = parser.parse(decoded)
        assert again_us == time_us
        assert {k: v for k, v in again.items() if k != spec.event_time} == {
            k: v for k, v in event.items() if k != spec.event_time and k in decoded}
    assert validate(record, parsed_schema)
    assert not validate({**record, spec.entity_key: None}, parsed_schema, raise_errors=False)  # required: not null


def test_rtml_schema_prints_either_schema(capsys):
    assert schema.run(["--spec", "fraud", "--format", "json-schema"]) == json.loads(capsys.readouterr().out)
    printed = schema.run(["--spec", "fraud"])
    assert printed == json.loads(capsys.readouterr().out) and printed["type"] == "record"
    assert [f["name"] for f in printed["fields"]] == [f.name for f in load_spec("fraud").fields]
