"""The changelog codec of a customer's record: exact round trips, old records, clear errors, size."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from detectors.config import Thresholds
from pipeline import codec
from pipeline.builders import invoice, make, payment, register
from pipeline.codec_dict import dictionary_bytes
from pipeline.config import LedgerConfig
from pipeline.engine import CustomerRecord, RiskEngine, decode_record, encode_record
from pipeline.events import validate_event
from pipeline.ledger import (
    CustomerState,
    Invoice,
    Lifetime,
    Payment,
    Profile,
    Promise,
    canonical,
    position,
    replay,
    state_to_dict,
)
from pipeline.models import OnlineModels
from pipeline.simulate import simulate
from tests.test_ledger import CONFIG as LEDGER_CONFIG
from tests.test_ledger import START, causal_event_sets

#: SHA-256 of each released dictionary. A released dictionary never changes: records written with it must decode.
RELEASED_DICTIONARIES = {1: "1a0a0cef162318d26259d76f28ad8cf0f0d4f3ec4d2d64e2c8abb16dfda6c617"}


def legacy_bytes(state: CustomerState, risk) -> bytes:
    """What the worker wrote before the codec (``encode_record`` until format 0x01)."""
    return json.dumps({"l": state_to_dict(state), "r": risk}, separators=(",", ":")).encode()


def assert_same_state(restored: CustomerState, original: CustomerState) -> None:
    assert restored == original
    # repr also tells tuples from lists and Decimal("1.0") from Decimal("1.00")
    assert repr(restored) == repr(original)
    assert list(restored.seen) == list(original.seen)
    assert list(restored.invoices) == list(original.invoices)
    assert list(restored.payments) == list(original.payments)


def engine() -> RiskEngine:
    ledger = LedgerConfig()
    return RiskEngine(Thresholds(), ledger, OnlineModels.from_options(Thresholds().models, ledger))


def simulated_events(customers=25, days=400, seed=5):
    return [validate_event(e) for e in simulate(customers=customers, days=days, seed=seed, default_share=0.2)]


@pytest.fixture(scope="module")
def simulated_records() -> dict[str, CustomerRecord]:
    risk = engine()
    records: dict[str, CustomerRecord] = {}
    for event in simulated_events():
        records[event.customer_id], _ = risk.on_event(records.get(event.customer_id), event, event.occurred_at)
    return records


# --- round trips ---------------------------------------------------------------


def test_simulated_records_round_trip_exactly(simulated_records):
    as_of = date(2026, 3, 1)
    for record in simulated_records.values():
        raw = encode_record(record)
        assert raw[0] == codec.CURRENT
        restored = decode_record(raw)
        assert_same_state(restored.ledger, record.ledger)
        assert canonical(restored.ledger) == canonical(record.ledger)
        assert position(restored.ledger, as_of) == position(record.ledger, as_of)
        assert restored.risk.to_json() == record.risk.to_json()
        assert restored.risk == record.risk


def test_a_worker_restarted_from_its_changelog_continues_exactly_as_one_that_was_not():
    events = simulated_events(customers=20, days=300, seed=9)
    half = len(events) // 2
    steady, restarted = engine(), engine()
    kept: dict[str, CustomerRecord] = {}
    reloaded: dict[str, CustomerRecord] = {}
    alerts_kept, alerts_reloaded = [], []
    for n, event in enumerate(events):
        if n == half:  # the worker dies; its successor reads the changelog
            reloaded = {key: decode_record(encode_record(record)) for key, record in reloaded.items()}
        kept[event.customer_id], updates = steady.on_event(kept.get(event.customer_id), event, event.occurred_at)
        alerts_kept += [u.alert for u in updates]
        reloaded[event.customer_id], updates = restarted.on_event(reloaded.get(event.customer_id), event,
                                                                 event.occurred_at)
        alerts_reloaded += [u.alert for u in updates]
    assert alerts_reloaded == alerts_kept and alerts_kept
    assert {k: encode_record(r) for k, r in reloaded.items()} == {k: encode_record(r) for k, r in kept.items()}


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(causal_event_sets())
def test_ledger_states_from_any_events_round_trip(events):
    state = replay(events, LEDGER_CONFIG)[events[0].customer_id]
    risk = {"b": {}, "m": {}, "s": [], "x": {}}
    restored, restored_risk = codec.decode(codec.encode(state, risk))
    assert_same_state(restored, state)
    assert restored_risk == risk
    for days in (0, 60, 200):
        day = START + timedelta(days=days)
        assert position(restored, day, LEDGER_CONFIG) == position(state, day, LEDGER_CONFIG)


# Arbitrary states, beyond what events make today: odd timestamps, held and unknown facts, any Decimal.
_ids = st.sampled_from(["ev-1", "ev-2", "ev-3", "x", "sim-1-0000007", "é✓", ""]) | st.text(max_size=12)
_decimals = st.decimals(allow_nan=False, allow_infinity=False) | st.sampled_from(
    [Decimal("-0.00"), Decimal("0"), Decimal("0.00"), Decimal("1E+3"), Decimal("12.345"), Decimal("-7.10")])
_canonical_ts = st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                             timezones=st.just(timezone.utc)).map(lambda moment: moment.isoformat())
_odd_ts = st.sampled_from([
    "", "2025-05-26T09:00:00Z", "2025-W22-1T09:00:00+00:00", "2025-05-26T09:00,0+00:00", "2025-05-26T09:00:00-00:00",
    "2025-05-26 09:00:00+00:00", "2025-05-26T24:00:00+00:00", "2025-05-26T09:00:00+01:00", "2025-05-26T09:00:0a+00:00",
])
_ts = _canonical_ts | _odd_ts | st.text(max_size=30)
_dates = st.dates()
_text = st.text(max_size=10)
_currency = st.sampled_from(["EUR", "USD", "GBP"])


def _opt(strategy):
    return st.none() | strategy


def _facts(value):
    return st.dictionaries(_ids, value, max_size=2)


# Built once: a strategy made inside the composite would be validated again on every draw.
_stamp = st.tuples(_ts, _ids)
_profile = st.builds(
    Profile, name=_opt(_text), country=_opt(_text), industry=_opt(_text), currency=_opt(_currency),
    registered=_opt(_stamp), credit_limit=_opt(_decimals), credit_limit_at=_opt(_stamp),
    payment_terms_days=_opt(st.integers(0, 365)), terms_at=_opt(_stamp), insured_limit=_opt(_decimals),
    insured_at=_opt(_stamp), ratings=st.lists(st.tuples(_ts, _ids, _text, _text, _opt(_decimals)), max_size=3),
    bank_changes=st.lists(_stamp, max_size=2), ownership_changes=st.lists(st.tuples(_ts, _ids, _opt(_text)), max_size=2),
    legal_events=st.lists(st.tuples(_ts, _ids, _text, _opt(_text)), max_size=2),
)
_issue = _opt(st.tuples(_ts, _ids, _decimals, _currency, _dates, _dates))
_corrections = st.tuples(_facts(_decimals), _facts(_decimals), _facts(st.tuples(_ts, _opt(_decimals), _opt(_text))),
                         _facts(st.tuples(_ts, _decimals)))
_reversal = _opt(st.tuples(_ts, _ids, _opt(_text)))
_promise = st.tuples(_dates, _dates, _decimals, _opt(_text))
_lifetime = st.builds(Lifetime, **{name: _decimals | st.just(getattr(Lifetime(), name))
                                   for name in ("issued", "adjusted", "settled", "credited", "written_off",
                                                "paid_amount", "paid_days_late_weighted")},
                      **{name: st.integers(0, 10**6)
                         for name in ("invoices", "late_invoices", "promises_kept", "promises_broken")})


@st.composite
def states(draw) -> CustomerState:
    invoices = {}
    for iid in draw(st.lists(_text, unique=True, max_size=8)):
        adjustments, write_offs, disputes, resolutions = draw(_corrections)
        invoices[iid] = Invoice(iid, issue=draw(_issue), adjustments=adjustments, write_offs=write_offs,
                                disputes=disputes, resolutions=resolutions)
    payments = {}
    for pid in draw(st.lists(_text, unique=True, max_size=8)):
        ts, eid, amount, currency, received_on = draw(st.tuples(_ts, _ids, _decimals, _currency, _dates))
        invoice_id = draw(_opt(st.sampled_from(sorted(invoices)) | _text)) if invoices else draw(_opt(_text))
        receipt = (ts, eid, amount, currency, received_on, invoice_id) if draw(st.booleans()) else None
        payments[pid] = Payment(pid, receipt=receipt, reversal=draw(_reversal))
    promises = {eid: Promise(eid, *draw(_promise)) for eid in draw(st.lists(_ids, unique=True, max_size=3))}
    return CustomerState(
        customer_id=draw(_text), profile=draw(_profile), invoices=invoices, payments=payments, promises=promises,
        lifetime=draw(_lifetime), watermark=draw(_ts), seen=deque(draw(st.lists(_ids, unique=True, max_size=12))),
        events_applied=draw(st.integers(0, 10**9)),
    )


_json = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                     max_leaves=20)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(states(), _json)
def test_any_state_round_trips_exactly(state, risk):
    restored, restored_risk = codec.decode(codec.encode(state, risk))
    assert_same_state(restored, state)
    assert restored_risk == risk
    # and the plain JSON of the ledger (what state_to_dict gives) is the same text
    assert json.dumps(state_to_dict(restored)) == json.dumps(state_to_dict(state))


@settings(max_examples=200, deadline=None)
@given(_ts | st.text(alphabet="0123456789-:T+ .,WZ", min_size=20, max_size=30))
def test_timestamp_shortcut_only_takes_text_it_gives_back(text):
    seconds = codec._ts(text)
    if seconds is not None:
        assert codec._ts_text(seconds) == text


@settings(max_examples=100, deadline=None)
@given(_canonical_ts)
def test_every_canonical_utc_timestamp_takes_the_shortcut(text):
    assert codec._ts(text) is not None or "." in text  # microseconds are written as text


# --- formats -------------------------------------------------------------------


def test_records_written_as_plain_json_by_the_previous_version_still_decode(simulated_records):
    for record in list(simulated_records.values())[:10]:
        old = legacy_bytes(record.ledger, record.risk.to_json())
        assert old[:1] == b"{"
        restored = decode_record(old)
        assert_same_state(restored.ledger, record.ledger)
        assert restored.risk.to_json() == record.risk.to_json()
        # the next write of that customer is in the current format, and smaller
        rewritten = encode_record(restored)
        assert rewritten[0] == codec.CURRENT and len(rewritten) < len(old)
        assert encode_record(decode_record(rewritten)) == rewritten


def test_unknown_format_byte_is_a_clear_error():
    record = CustomerRecord(replay([register()])["C1"])
    raw = encode_record(record)
    with pytest.raises(codec.CodecError, match=r"unknown customer record format 0x7f .*0x01, 0x7b.*newer creditwatch"):
        decode_record(b"\x7f" + raw[1:])
    with pytest.raises(codec.CodecError, match="empty customer record"):
        decode_record(b"")


def test_a_damaged_record_is_an_error_not_a_different_state():
    events = [register(), invoice("I1", 1000), payment("P1", 400, invoice_id="I1")]
    raw = encode_record(CustomerRecord(replay(events)["C1"]))
    damaged = raw[:-6] + bytes([raw[-6] ^ 0x20]) + raw[-5:]
    with pytest.raises(codec.CodecError, match="corrupt customer record"):
        decode_record(damaged)


def test_decoding_is_deterministic_and_encoding_is_stable(simulated_records):
    for record in list(simulated_records.values())[:10]:
        raw = encode_record(record)
        first, second = decode_record(raw), decode_record(raw)
        assert repr(first.ledger) == repr(second.ledger) and first.risk == second.risk
        assert encode_record(first) == encode_record(second) == raw


# A record written by format 0x01 when it was released; it must decode to these facts in every later version.
GOLDEN_EVENTS = [
    register(day="2026-01-01", event_id="g-1"),
    invoice("INV-1", 1200, issued_on="2026-01-05", event_id="g-2"),
    invoice("INV-2", "99.5", issued_on="2026-01-07", currency="USD", event_id="g-3"),
    make("invoice.disputed", "2026-01-09", invoice_id="INV-2", amount="10.00", event_id="g-4"),
    payment("PAY-1", 500, received_on="2026-02-01", invoice_id="INV-1", event_id="g-5"),
    payment("PAY-2", 50, received_on="2026-02-02", invoice_id="INV-9", event_id="g-6"),
    make("payment.reversed", "2026-02-03", payment_id="PAY-1", reason="bounced", event_id="g-7"),
    make("payment.promised", "2026-02-04", invoice_id="INV-1", amount="700.00", promised_on="2026-02-20",
         event_id="g-8"),
]
GOLDEN_RISK = {"b": {"overdue": ["al_1", "warning", "2026-02-01T09:00:00+00:00", "2026-02-01", "2026-02-02", None, 1,
                                 None]}, "m": {"x": {"n": 1}}, "s": [["2026-02-01", "overdue"]], "x": {"h": [1, 0.25]}}
GOLDEN_V1 = bytes.fromhex(
    "0128b52ffd67010057436a027d0900638d259522452a5886fc221f59dea849eda4098b179d3461f19293262c5e70d284c5cb4d9ab078b1"
    "4913162f3569c2e2e593262c14efd1a4ae9a794ced51c2e38d3882ec589c4693a2e54c88d0031c9021c485e20afa28ae105dae892eed1c"
    "2040e278e3c728149bc928aed00c843084c544716521346488ea0bc595f229ae106de94d9446a95996f84913884688464e964481470cee"
    "c642093bfc0d7356f42c17f0946ea3c41d9437fa4e31d2b02e3042dec124c2c37a4129ac2a0d0dc8c7637d5297f99631c53da34760bdb9"
    "2a790ca2b6b91e96b3347499f31a2960f474f3589885f46693eaaa7cf0d014d5f46323d95d6b6c952b2b229751a7be87232427d732edf2"
    "fbee47963ced74aceebb82089f416eac184398665b45aa7563387107e0e93fea1ea8350a701062804d161243cc9c54"
)


def test_a_record_written_by_format_1_when_it_was_released_still_decodes():
    expected = replay(GOLDEN_EVENTS)["C1"]
    state, risk = codec.decode(GOLDEN_V1)
    assert_same_state(state, expected)
    assert risk == GOLDEN_RISK


def test_released_dictionaries_never_change():
    for number, digest in RELEASED_DICTIONARIES.items():
        assert hashlib.sha256(dictionary_bytes(number)).hexdigest() == digest
    assert {dictionary for _, dictionary in codec.FORMATS.values()} <= set(RELEASED_DICTIONARIES)


# --- size ----------------------------------------------------------------------


def test_a_customer_with_20_open_invoices_and_a_year_of_history_fits_in_4_kb():
    from benchmarks.state_size import build_customer

    record = build_customer()
    assert len([i for i in record.ledger.invoices.values()]) >= 20
    assert len(encode_record(record)) <= 4096 < len(legacy_bytes(record.ledger, record.risk.to_json()))


def test_what_the_fast_encoder_would_not_write_exactly_still_round_trips(simulated_records):
    """orjson writes a record's ledger part; a 70-bit integer or a non-finite float goes through the
    standard encoder instead (orjson would raise on the first and write null for the second)."""
    record = decode_record(encode_record(next(iter(simulated_records.values()))))
    state = record.ledger
    state.events_applied = 2**70
    invoice = next(iter(state.invoices.values()))
    invoice.adjustments = {"ev-inf": float("inf"), "ev-nan": float("nan"), "ev-big": -(2**80)}
    risk = {"x": {"h": [float("-inf"), 0.1, 2**66]}}
    restored, restored_risk = codec.decode(codec.encode(state, risk))
    assert restored.events_applied == 2**70
    adjustments = restored.invoices[invoice.invoice_id].adjustments
    assert adjustments["ev-inf"] == float("inf") and adjustments["ev-big"] == -(2**80)
    assert adjustments["ev-nan"] != adjustments["ev-nan"]  # NaN, not None
    assert restored_risk == risk
    # an ordinary record takes the fast path and reads back as what the standard encoder writes
    plain = next(iter(simulated_records.values()))
    parts = codec._layout(plain.ledger, plain.risk.to_json())
    assert json.loads(codec.layout_json(plain.ledger, plain.risk.to_json())) == json.loads(codec._JSON(parts))


def test_a_non_finite_float_in_the_risk_part_alone_is_kept_not_turned_into_null(simulated_records):
    """orjson writes the risk part when reading it back gives it again; a NaN or infinity (null to orjson) never
    does, so the standard encoder writes it. Nothing else here would send the risk part to the standard encoder."""
    record = decode_record(encode_record(next(iter(simulated_records.values()))))
    risk = record.risk.to_json()
    risk["x"] = {**risk["x"], "h": [float("nan"), 0.25, None], "i": float("inf")}
    _, restored = codec.decode(codec.encode(record.ledger, risk))
    assert restored["x"]["h"][0] != restored["x"]["h"][0]  # NaN, not None
    assert restored["x"]["h"][1:] == [0.25, None] and restored["x"]["i"] == float("inf")
    assert {key: value for key, value in restored.items() if key != "x"} == {
        key: value for key, value in risk.items() if key != "x"}
