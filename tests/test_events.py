import json
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.events import (
    EVENT_TYPES,
    MAX_EVENT_BYTES,
    InvalidEvent,
    InvoiceIssued,
    json_schemas,
    parse_event,
    validate_event,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "shared" / "examples" / "events.jsonl"


def issued(**overrides):
    event = {
        "event_id": "e1",
        "type": "invoice.issued",
        "customer_id": "C1",
        "occurred_at": "2026-01-10T09:00:00+00:00",
        "invoice_id": "I1",
        "amount": "100.00",
        "currency": "EUR",
        "issued_on": "2026-01-10",
        "due_on": "2026-02-09",
    }
    event.update(overrides)
    return json.dumps(event)


def reason_for(raw) -> str:
    with pytest.raises(InvalidEvent) as caught:
        parse_event(raw)
    return caught.value.reason


def test_every_contract_example_validates_and_every_type_is_covered():
    lines = EXAMPLES.read_bytes().splitlines()
    parsed = [parse_event(line) for line in lines]
    assert {event.type for event in parsed} == set(EVENT_TYPES)


def test_json_number_amount_is_exact_decimal_not_float():
    event = parse_event(issued(amount=12345678901234.01).replace('"amount": 12345678901234.01', '"amount": 12345678901234.01'))
    assert isinstance(event, InvoiceIssued)
    assert event.amount == Decimal("12345678901234.01")


def test_amount_with_three_decimals_is_rejected_with_field_name():
    assert reason_for(issued(amount="10.005")) == "field 'amount': '10.005' is not a decimal amount like 1234.50"
    assert "more than 2 decimal places" in reason_for(issued(amount=10.005))


def test_trailing_zero_decimals_are_accepted_as_cents():
    assert parse_event(issued(amount="10.5")).amount == Decimal("10.50")


def test_non_positive_invoice_amount_is_rejected():
    assert reason_for(issued(amount="0")) == "field 'amount': must be greater than 0, got 0.00"
    assert "greater than 0" in reason_for(issued(amount=-5))


def test_due_date_before_issue_date_is_rejected():
    assert reason_for(issued(due_on="2026-01-09")) == "due_on 2026-01-09 is before issued_on 2026-01-10"


@pytest.mark.parametrize("value", ["2026-1-10", "10/01/2026", "2026-02-30", "2026-01-10T00:00:00", 20260110])
def test_dates_are_parsed_strictly(value):
    assert reason_for(issued(issued_on=value)).startswith("field 'issued_on':")


@pytest.mark.parametrize("value", ["2026-01-10T09:00:00", "2026-01-10", 1767000000, "yesterday"])
def test_timestamp_without_offset_is_rejected(value):
    assert reason_for(issued(occurred_at=value)).startswith("field 'occurred_at': must be an RFC 3339 timestamp")


def test_timestamp_with_z_is_accepted():
    assert parse_event(issued(occurred_at="2026-01-10T09:00:00Z")).occurred_at.utcoffset().total_seconds() == 0


def test_unknown_currency_is_rejected():
    assert reason_for(issued(currency="XXY")) == "field 'currency': 'XXY' is not an ISO 4217 currency code"


def test_unknown_type_and_missing_type_have_readable_reasons():
    assert reason_for(issued(type="invoice.deleted")) == "field 'type': unknown event type 'invoice.deleted'"
    assert reason_for('{"event_id": "x"}') == "field 'type' is required"


def test_not_an_object_and_not_json_are_reported():
    assert reason_for("[1, 2]") == "an event must be a JSON object, got an array"
    assert reason_for(b"\xff\xfe").startswith("not valid JSON")
    assert reason_for("NaN") == "not valid JSON: NaN is not a number"


def test_oversized_message_is_rejected_before_parsing():
    raw = issued(reason="x" * MAX_EVENT_BYTES)
    assert "larger than the" in reason_for(raw)


def test_boolean_is_not_money():
    assert "not a boolean" in reason_for(issued(amount=True))


def test_customer_id_longer_than_64_chars_is_rejected():
    assert reason_for(issued(customer_id="C" * 65)).startswith("field 'customer_id':")


def test_unknown_extra_fields_are_ignored_for_forward_compatibility():
    assert parse_event(issued(new_field={"a": 1})).invoice_id == "I1"


def test_json_schema_is_written_for_every_type_and_accepts_the_examples():
    jsonschema = pytest.importorskip("jsonschema")
    schemas = json_schemas()
    assert set(schemas) == set(EVENT_TYPES)
    for line in EXAMPLES.read_text().splitlines():
        event = json.loads(line)
        jsonschema.validate(event, schemas[event["type"]])
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(issued(currency="XXY")), schemas["invoice.issued"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=20,
)

field_values = st.one_of(
    st.none(), st.booleans(), st.integers(-10**20, 10**20), st.text(max_size=30),
    st.sampled_from(["2026-01-10", "2026-01-10T09:00:00+00:00", "100.00", "-1", "EUR", "DE", "XYZ", "1e999", "0.001"]),
    st.decimals(allow_nan=False, allow_infinity=False, places=3).map(str),
)


@st.composite
def event_like(draw):
    kind = draw(st.sampled_from(sorted(EVENT_TYPES)))
    fields = list(EVENT_TYPES[kind].model_fields)
    obj = {name: draw(field_values) for name in draw(st.lists(st.sampled_from(fields), max_size=len(fields)))}
    obj["type"] = kind
    return obj


@settings(max_examples=300, deadline=None)
@given(st.one_of(json_values, event_like()))
def test_arbitrary_json_validates_or_gives_one_readable_reason(value):
    raw = json.dumps(value)
    try:
        event = parse_event(raw)
    except InvalidEvent as rejected:
        assert rejected.reason and "\n" not in rejected.reason and len(rejected.reason) < 300
    else:
        assert event.type in EVENT_TYPES


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_raise_anything_but_invalid_event(raw):
    try:
        parse_event(raw)
    except InvalidEvent as rejected:
        assert "\n" not in rejected.reason


def test_validate_event_accepts_decoded_dicts():
    assert validate_event(json.loads(issued())).amount == Decimal("100.00")


def test_schema_command_writes_one_json_schema_per_event_type(tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "pipeline.cli", "schema", "--out", str(tmp_path / "schemas")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    written = sorted(path.name for path in (tmp_path / "schemas").iterdir())
    assert written == sorted(f"{name}.schema.json" for name in EVENT_TYPES)
    schema = json.loads((tmp_path / "schemas" / "invoice.issued.schema.json").read_text())
    assert set(schema["required"]) >= {"event_id", "customer_id", "occurred_at", "invoice_id", "amount", "currency"}
