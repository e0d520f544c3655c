"""The event parser and validator: property-based (hypothesis) and the contract's named cases; and records written
back as JSON Lines."""
import base64
import datetime
import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transforms.events import MAX_EVENT_BYTES, MAX_RAW_BYTES_KEPT, MIN_SCREENED_BLOCK, EventParser, dead_letter
from transforms.field_checks import FLOAT32_MAX
from transforms.fileio import json_lines
from transforms.spec import load_spec

FRAUD = load_spec("fraud")
SENSOR = load_spec("sensor")
OFFERS = load_spec("offers")
PARSERS = {"fraud": EventParser(FRAUD), "sensor": EventParser(SENSOR)}

times = st.builds(
    "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}{}{}".format,
    st.integers(1971, 2099), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23), st.integers(0, 59),
    st.integers(0, 59), st.sampled_from(["", ".1", ".120", ".123456"]), st.sampled_from(["Z", "+02:00", "-05:30"]))
text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=1, max_size=20)
fraud_events = st.fixed_dictionaries({
    "event_id": text, "event_time": times, "card_id": text, "merchant_id": st.text(max_size=10),
    "merchant_category": st.text(max_size=10),
    "amount": st.floats(min_value=0.01, max_value=1e9, allow_nan=False) | st.integers(1, 10**12),
    "currency": st.from_regex(r"[A-Za-z]{3}", fullmatch=True), "country": st.from_regex(r"[A-Za-z]{2}", fullmatch=True),
    "channel": st.sampled_from(["pos", "online", "atm"]),
}, optional={"is_fraud": st.sampled_from([0, 1]),
             "extra": st.integers(-2**63, 2**64 - 1)})  # beyond 64 bits orjson reads a float (docs/limits.md)


@given(st.binary(max_size=300))
@settings(max_examples=500)
def test_any_bytes_give_an_event_or_a_one_line_reason(payload):
    for parser in PARSERS.values():
        result = parser.parse(payload)
        if isinstance(result, str):
            assert result and "\n" not in result
        else:
            assert isinstance(result[0], dict) and isinstance(result[1], int)


@given(st.recursive(st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
                    lambda children: st.lists(children) | st.dictionaries(st.text(), children), max_leaves=20))
def test_any_json_value_gives_an_event_or_a_one_line_reason(value):
    result = PARSERS["fraud"].parse(json.dumps(value).encode())
    assert isinstance(result, str) and "\n" not in result


@given(fraud_events)
@settings(max_examples=300)
def test_valid_events_are_accepted_with_their_time(event):
    parsed = PARSERS["fraud"].parse(json.dumps(event).encode())
    assert not isinstance(parsed, str), parsed
    expected = datetime.datetime.fromisoformat(event["event_time"]).timestamp() * 1e6
    assert parsed[0] == event and abs(parsed[1] - expected) < 1


@given(fraud_events, st.sampled_from(["event_id", "event_time", "card_id", "amount", "currency", "country", "channel"]),
       st.sampled_from(["missing", "null", "wrong type"]))
def test_a_broken_required_field_is_named(event, field, how):
    if how == "missing":
        del event[field]
    elif how == "null":
        event[field] = None
    else:
        event[field] = [1] if field != "amount" else "12.50"
    reason = PARSERS["fraud"].parse(json.dumps(event).encode())
    assert isinstance(reason, str) and reason.startswith(f"{field}: ")


GOOD = json.dumps({"event_id": "e", "event_time": "2026-03-16T09:14:03.120Z", "card_id": "c", "merchant_id": "m",
                   "merchant_category": "x", "amount": 5, "currency": "EUR", "country": "FR", "channel": "pos"})


@pytest.mark.parametrize("line, reason", [
    (GOOD.replace('"amount": 5', '"amount": NaN'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": Infinity'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": -Infinity'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": 1e999'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": ' + "9" * 400), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": ' + "9" * 5000), "not valid JSON (an integer of more than 4300 digits)"),
    (GOOD.replace('"amount": 5', '"amount": 1e39'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": 5, "note": NaN'), "not valid JSON (unexpected character"),
    (GOOD.replace('"amount": 5', '"amount": 5, "note": ' + "9" * 400), "not valid JSON (number is infinity"),
    (GOOD.replace('"amount": 5', '"amount": 0'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": true'), "amount: must be a finite number > 0"),
    (GOOD.replace('"amount": 5', '"amount": "5"'), "amount: must be a finite number > 0"),
    (GOOD.replace("09:14:03.120Z", "09:14:03"), "event_time: must be an RFC 3339 time with a zone"),
    (GOOD.replace("2026-03-16", "2026-13-16"), "event_time: must be an RFC 3339 time with a zone"),
    (GOOD.replace("2026-03-16T09:14:03.120Z", "yesterday"), "event_time: must be an RFC 3339 time with a zone"),
    (GOOD.replace('"pos"', '"phone"'), "channel: must be one of pos, online, atm"),
    (GOOD.replace('"EUR"', '"EU"'), "currency: must match [A-Za-z]{3}"),
    (GOOD.replace('"event_id": "e"', '"event_id": ""'), "event_id: must not be empty"),
    (GOOD.replace('"card_id": "c"', '"card_id": "\\ud800"'), "not valid UTF-8 (an escaped lone surrogate)"),
    (GOOD[:-5], "not valid JSON"),
    ("[1, 2]", "not a JSON object"),
    ("", "not valid JSON"),
    ("[" * 100_000 + "]" * 100_000, "not valid JSON"),
])
def test_contract_breaks_have_their_reason(line, reason):
    assert PARSERS["fraud"].parse(line.encode()).startswith(reason)


json_tokens = st.sampled_from(['{', '}', '[', ']', ',', ':', '"amount"', '"event_time"', '"x"', 'NaN', '-Infinity',
                                '1e39', '1e999', "9" * 400, "9" * 5000, '-0', '0.1', 'true', 'null', '"\\ud800"',
                                '"2026-03-16T09:14:03Z"', '"0001-01-01T00:00:00+01:00"', GOOD, GOOD[:40]])


@given(st.lists(json_tokens, max_size=30).map("".join))
@settings(max_examples=500)
def test_any_json_like_text_gives_an_event_or_a_one_line_reason(text):
    for parser in PARSERS.values():
        result = parser.parse(text.encode())
        assert (isinstance(result, str) and result and "\n" not in result) or isinstance(result[1], int)


def test_invalid_utf8_and_oversized_events():
    assert PARSERS["fraud"].parse(GOOD.encode().replace(b'"x"', b'"\xff\xfe"')).startswith("not valid UTF-8")
    huge = GOOD.replace('"merchant_id": "m"', '"merchant_id": "' + "m" * MAX_EVENT_BYTES + '"').encode()
    assert PARSERS["fraud"].parse(huge) == "event larger than 1 MiB"
    assert not isinstance(PARSERS["fraud"].parse(GOOD.encode()), str)


def test_label_is_checked_and_can_be_required():
    assert PARSERS["fraud"].parse(GOOD[:-1].encode() + b', "is_fraud": 2}') == "is_fraud: must be 0 or 1"
    assert EventParser(FRAUD, require_label=True).parse(GOOD.encode()) == "is_fraud: missing"


def test_sensor_rules():
    good = {"event_id": "r", "event_time": "2026-03-16T09:14:03Z", "machine_id": "m-001", "temperature_c": -12.5,
            "vibration_mm_s": 0, "pressure_bar": 4.2, "rpm": 1800}
    assert not isinstance(PARSERS["sensor"].parse(json.dumps(good).encode()), str)
    assert PARSERS["sensor"].parse(json.dumps(dict(good, rpm=-1)).encode()) == "rpm: must be a finite number >= 0"


@given(st.binary(max_size=2000), st.sampled_from(["not valid JSON", "x: y"]))
def test_dead_letters_keep_the_raw_input_recoverably(payload, error):
    letter = dead_letter(payload, error, {"file": "f", "line": 1}, "fraud")
    assert letter["error"] == error and letter["raw_bytes"] == len(payload) and not letter["raw_truncated"]
    raw = base64.b64decode(letter["raw"]) if letter["raw_encoding"] == "base64" else letter["raw"].encode("utf-8")
    assert raw == payload
    json.dumps(letter)


def test_dead_letters_cut_large_payloads():
    letter = dead_letter(b"a" * (MAX_RAW_BYTES_KEPT * 3), "event larger than 1 MiB", {}, "fraud")
    assert letter["raw_truncated"] and len(letter["raw"]) == MAX_RAW_BYTES_KEPT
    assert letter["raw_bytes"] == MAX_RAW_BYTES_KEPT * 3


def test_parquet_rows_with_typed_timestamps():
    row = json.loads(GOOD)
    row["event_time"] = datetime.datetime(2026, 3, 16, 9, 14, 3, tzinfo=datetime.timezone.utc)
    event, time_us = PARSERS["fraud"].parse(row)
    assert time_us == int(row["event_time"].timestamp() * 1e6)
    row["event_time"] = row["event_time"].replace(tzinfo=None)
    assert PARSERS["fraud"].parse(row) == "event_time: must be an RFC 3339 time with a zone"
    assert math.isfinite(event["amount"])


# Values at the edges of each rule, by a field's type, and of every type: the screen that checks a block in columns
# must agree with the parser event by event on every one of them.
EDGES = {"number": [0, 1, -1, 0.0, -0.0, 0.5, 2**53 - 1, 2**53, 2**53 + 1, -(2**53) - 1, 2**64, 10**40, FLOAT32_MAX,
                    -FLOAT32_MAX, int(FLOAT32_MAX) + 1, 3.4028235e38, 1e-320, 1e300, -1e-300],
         "binary": [0, 1, 0.0, 1.0, 2, -1, 0.5, -0.0],
         "string": ["", "x", "5", "pos", "POS", "atm", "EUR", "eu", "E U", "FR", "books", "view", "web", " web"],
         "timestamp": ["2026-03-16T09:14:03Z", "2026-03-16t09:14:03z", "2026-03-16 09:14:03+02:00",
                       "2026-02-30T09:14:03Z", "2026-03-16T24:00:00Z", "2026-03-16T09:14:03.123456789Z",
                       "2026-03-16T09:14:03", "2026-03-16T09:14:03Z\n", "20260316T091403Z", "2026-03-16T09:14Z",
                       "2026-03-16T09:14:03+0200", "0001-01-01T00:00:00+01:00",
                       # Parquet's typed timestamps: aware (any zone) or not
                       datetime.datetime(2026, 3, 16, 9, 14, 3, 120, datetime.timezone(datetime.timedelta(hours=-5))),
                       datetime.datetime(2026, 3, 16, 9, 14, 3)]}
ANY_TYPE = [None, True, False, [], ["pos"], {}, {"a": 1}, "5", 5, "<missing>"]
GOOD_EVENTS = {"fraud": json.loads(GOOD), "offers": {
    "event_id": "o", "event_time": "2026-03-16T09:14:03Z", "customer_id": "c", "action": "view",
    "category": "books", "amount": 3, "channel": "web", "region": "north", "age_band": "25-34"}, "sensor": {
    "event_id": "r", "event_time": "2026-03-16T09:14:03Z", "machine_id": "m-001", "temperature_c": -12.5,
    "vibration_mm_s": 0, "pressure_bar": 4.2, "rpm": 1800}}
SPECS = {"fraud": FRAUD, "sensor": SENSOR, "offers": OFFERS}


@st.composite
def payloads(draw, spec_name: str):
    """An event of the spec with up to 2 fields changed to an edge value, as JSON or as a row (Parquet's); or a
    payload that is not an event."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from([b"", b"[1]", b"\xff", b"{", b'{"a": NaN}', None]))
    event = dict(GOOD_EVENTS[spec_name])
    for _ in range(draw(st.integers(0, 2))):
        field = draw(st.sampled_from(SPECS[spec_name].fields))
        value = draw(st.sampled_from(EDGES[field.type]) | st.sampled_from(ANY_TYPE))
        if value == "<missing>":
            event.pop(field.name, None)
        else:
            event[field.name] = value
    as_row = draw(st.booleans()) or any(isinstance(value, datetime.datetime) for value in event.values())
    return event if as_row else json.dumps(event).encode()


@given(st.data(), st.sampled_from(sorted(SPECS)), st.booleans())
@settings(max_examples=400)
def test_a_block_is_checked_exactly_as_its_events_one_by_one(data, spec_name, require_label):
    parser = EventParser(SPECS[spec_name], require_label=require_label)
    block = data.draw(st.lists(payloads(spec_name), min_size=1, max_size=40))
    if data.draw(st.booleans()):  # large enough to be screened in columns
        block = block * -(-MIN_SCREENED_BLOCK // len(block))
    one_by_one = [parser.parse(payload) for payload in block]
    parsed = parser.parse_block(block)
    assert parsed.broken == [(row, result) for row, result in enumerate(one_by_one) if isinstance(result, str)]
    valid = [(row, result) for row, result in enumerate(one_by_one) if not isinstance(result, str)]
    assert parsed.rows == [row for row, _ in valid]
    assert parsed.events.events == [event for _, (event, _) in valid]
    assert parsed.events.event_time_us == [time_us for _, (_, time_us) in valid]


def test_a_typed_time_column_is_checked_in_a_block_as_one_by_one():
    """Parquet's timestamps arrive as datetimes: aware ones, in any zone, are valid at their instant, naive ones are
    dead letters, beside texts in the same block."""
    zones = [datetime.timezone.utc, datetime.timezone(datetime.timedelta(hours=-5)), None]
    block = [dict(GOOD_EVENTS["fraud"], event_id=str(row),
                  event_time=datetime.datetime(2026, 3, 16, 9, 14, row % 60, row, zones[row % 3]) if row % 4
                  else f"2026-03-16T09:14:{row % 60:02d}Z") for row in range(2 * MIN_SCREENED_BLOCK)]
    one_by_one = [PARSERS["fraud"].parse(event) for event in block]
    parsed = PARSERS["fraud"].parse_block(block)
    assert parsed.broken == [(row, "event_time: must be an RFC 3339 time with a zone")
                             for row, result in enumerate(one_by_one) if isinstance(result, str)]
    assert len(parsed.broken) == len([row for row in range(len(block)) if row % 4 and row % 3 == 2])
    assert parsed.events.event_time_us == [result[1] for result in one_by_one if not isinstance(result, str)]


json_values = st.recursive(st.none() | st.booleans() | st.floats(allow_nan=False) | st.integers(-2**63, 2**63 - 1)
                           | st.text(), lambda children: st.lists(children, max_size=3)
                           | st.dictionaries(st.sampled_from(["event_id", "score", "},{", '"event_id":']), children,
                                             max_size=3), max_leaves=12)


@given(st.lists(st.dictionaries(st.sampled_from(["event_id", "score", "top_k"]), json_values, max_size=3), max_size=6))
def test_a_list_of_records_is_written_as_each_record_on_its_line(records):
    """Records whose strings or nested records look like the cut between two are written as they are."""
    assert json_lines(records) == b"\n".join(map(orjson.dumps, records))
