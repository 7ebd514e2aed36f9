"""One conformance test, run over every detector in the registry (those added later included).

What every detector promises (``detectors.base``): well-formed class
attributes, options that validate with one-line errors, a runnable example
in its docstring, findings of the documented shape, and a memory that
survives a trip through JSON unchanged in effect.
"""

from __future__ import annotations

import copy
import doctest
import importlib
import json
import re
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from typing import Any

import annotated_types
import pytest

import detectors  # noqa: F401 - registers the built-in detectors
from detectors.base import REGISTRY, SEVERITY_RANK, DetectionContext, Detector, DetectorOptions, Finding, ModelSignals, Reason
from detectors.config import ThresholdError, parse_thresholds
from detectors.testing import event
from pipeline.builders import invoice, payment
from pipeline.builders import register as registered
from pipeline.events import EVENT_TYPES, Event, parse_event
from pipeline.ledger import LedgerRejected, apply

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "events.jsonl"  # = /work/shared/examples/events.jsonl
KNOWN_TRIGGERS = set(EVENT_TYPES) | {"tick"}


def sample_event(kind: str, day: str = "2026-02-15") -> Event:
    """One plausible event of each type, for customer C1."""
    fields: dict[str, dict[str, Any]] = {
        "invoice.issued": {},
        "invoice.adjusted": {"invoice_id": "I1", "amount_delta": "-100.00", "reason": "price"},
        "invoice.disputed": {"invoice_id": "I1", "amount": "500.00", "reason": "damaged"},
        "invoice.dispute_resolved": {"invoice_id": "I1", "credited_amount": "0"},
        "invoice.written_off": {"invoice_id": "I1", "amount": "100.00"},
        "payment.received": {},
        "payment.reversed": {"payment_id": "P1", "reason": "bounced"},
        "payment.promised": {"invoice_id": "I1", "amount": "1000.00", "promised_on": "2026-02-20"},
        "customer.registered": {"name": "Acme", "country": "DE", "credit_limit": "50000", "currency": "EUR",
                                "payment_terms_days": 30},
        "customer.credit_limit_changed": {"credit_limit": "40000"},
        "customer.terms_changed": {"payment_terms_days": 45},
        "customer.rating_changed": {"agency": "S&P", "rating": "BB-", "probability_of_default": "0.02"},
        "customer.insurance_limit_changed": {"insured_limit": "20000"},
        "customer.bank_details_changed": {},
        "customer.ownership_changed": {"description": "new owner"},
        "customer.legal_event": {"kind": "court_judgment", "description": "judgment for a supplier"},
    }
    if kind == "invoice.issued":
        return invoice("I9", 3000, issued_on=day)
    if kind == "payment.received":
        return payment("P9", 1000, received_on=day)
    return event(kind, day, **fields[kind])


def _context(state, trigger: Event | None, day: date, signals: ModelSignals | None = None,
             recent: list | None = None) -> DetectionContext:
    return DetectionContext(
        ledger=state, event=trigger, today=day, now=datetime.combine(day, time(12), tzinfo=timezone.utc),
        models=signals or ModelSignals(), recent_findings=list(recent or []),
    )


def _check_finding(finding: Any, name: str) -> None:
    assert isinstance(finding, Finding), f"{name}: detect() must return Finding objects, got {finding!r}"
    assert finding.detector == name
    assert finding.severity in SEVERITY_RANK, f"{name}: unknown severity {finding.severity!r}"
    assert isinstance(finding.title, str) and finding.title and "\n" not in finding.title
    assert finding.reasons, f"{name}: a finding needs at least one reason"
    for reason in finding.reasons:
        assert isinstance(reason, Reason)
        assert reason.code and re.fullmatch(r"[a-z][a-z0-9_]*", reason.code), f"{name}: reason code {reason.code!r}"
        assert reason.message and "\n" not in reason.message
        for number in (reason.value, reason.threshold):
            assert number is None or isinstance(number, float), f"{name}: {reason.code} value/threshold must be float or None"
        json.dumps(reason.to_json())
    assert all(isinstance(eid, str) for eid in finding.event_ids)
    assert finding.score is None or isinstance(finding.score, float)


def _bad_values(field) -> list[Any]:
    """Values just outside each bound a field declares."""
    bad = []
    for meta in field.metadata:
        if isinstance(meta, annotated_types.Ge):
            bad.append(meta.ge - 1)
        elif isinstance(meta, annotated_types.Gt):
            bad.append(meta.gt)
        elif isinstance(meta, annotated_types.Le):
            bad.append(meta.le + 1)
        elif isinstance(meta, annotated_types.Lt):
            bad.append(meta.lt)
    return bad


def _scenario() -> list[tuple[Event, ModelSignals]]:
    """The example portfolio plus a customer whose bank change is followed by a big, anomalous invoice."""
    events = [parse_event(line) for line in EXAMPLES.read_text().splitlines() if line.strip()]
    extra = [
        registered(day="2026-01-02", limit=100000),
        invoice("X1", 9000, issued_on="2026-01-05"), invoice("X2", 11000, issued_on="2026-01-12"),
        invoice("X3", 10000, issued_on="2026-01-19"),
        payment("XP1", 9000, received_on="2026-02-20", invoice_id="X1"),
        event("customer.bank_details_changed", "2026-02-25"),
        invoice("X4", 25000, issued_on="2026-03-02"),
        event("payment.promised", "2026-03-03", invoice_id="X2", amount="11000", promised_on="2026-03-10"),
        event("customer.rating_changed", "2026-03-04", agency="S&P", rating="BBB"),
        event("customer.rating_changed", "2026-04-04", agency="S&P", rating="BB-", probability_of_default="0.04"),
        event("invoice.disputed", "2026-04-05", invoice_id="X3", reason="quality"),
        payment("XP2", 11000, received_on="2026-04-06"),
        event("payment.reversed", "2026-04-08", payment_id="XP2", reason="chargeback"),
    ]
    scored = [(e, ModelSignals()) for e in events]
    for e in extra:
        signals = ModelSignals(risk_score=0.7, previous_risk_score=0.4)
        if e.type == "invoice.issued":
            signals.invoice_anomaly = 0.99 if e.invoice_id == "X4" else 0.1  # type: ignore[attr-defined]
        scored.append((e, signals))
    return sorted(scored, key=lambda pair: pair[0].occurred_at)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_detector_conforms(name: str) -> None:
    cls = REGISTRY[name]

    # --- class attributes ---------------------------------------------------------
    assert issubclass(cls, Detector)
    assert isinstance(cls.name, str) and re.fullmatch(r"[a-z][a-z0-9_]*", cls.name) and cls.name == name
    assert cls.episode in ("condition", "event"), f"{name}: episode must be 'condition' or 'event'"
    assert isinstance(cls.triggers, frozenset) and cls.triggers, f"{name}: triggers must be a non-empty frozenset"
    unknown = cls.triggers - KNOWN_TRIGGERS
    assert not unknown, f"{name}: unknown triggers {sorted(unknown)}"
    assert isinstance(getattr(cls, "order", 0), int)
    assert cls.__doc__ and cls.__doc__.strip(), f"{name}: needs a docstring saying what it watches"

    # --- options ------------------------------------------------------------------
    assert issubclass(cls.Options, DetectorOptions)
    defaults = cls.Options()
    check = getattr(defaults, "check", None)
    assert check is None or check() is None, f"{name}: the default options fail their own check(): {check()}"
    parse_thresholds({name: defaults.model_dump()})  # the defaults written out are accepted
    with pytest.raises(ThresholdError) as excinfo:
        parse_thresholds({name: {"no_such_option": 1}}, "t.toml")
    assert "\n" not in str(excinfo.value) and f"{name}.no_such_option" in str(excinfo.value)
    own = set(cls.Options.model_fields) - {"enabled"}
    for key in sorted(own):
        field = cls.Options.model_fields[key]
        if key not in DetectorOptions.model_fields:
            assert field.description, f"{name}.{key} needs a description"
        for bad in _bad_values(field):
            with pytest.raises(ThresholdError) as excinfo:
                parse_thresholds({name: {key: bad}}, "t.toml")
            message = str(excinfo.value)
            assert "\n" not in message and f"{name}.{key}" in message, f"{name}.{key}={bad!r}: {message!r}"
    numeric = [k for k in own if cls.Options.model_fields[k].annotation in (int, float)]
    assert all(_bad_values(cls.Options.model_fields[k]) for k in numeric), \
        f"{name}: every numeric option needs a range (ge/le)"

    # --- the docstring example runs -------------------------------------------------
    module = importlib.import_module(cls.__module__)
    finder = doctest.DocTestFinder()
    own_test = [t for t in finder.find(cls, cls.__qualname__, module=module) if t.name == cls.__qualname__]
    assert own_test and own_test[0].examples, f"{name}: the class docstring needs a >>> example"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in finder.find(module):
        runner.run(test, out=lambda text: None)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0, f"{name}: {result.failed} doctest(s) of {cls.__module__} fail"

    # --- an empty-ish state, every trigger ------------------------------------------------
    detector = cls()
    for trigger in sorted(cls.triggers):
        state = apply(None, registered(day="2026-01-01"))
        trigger_event = None if trigger == "tick" else sample_event(trigger)
        if trigger_event is not None:
            try:
                apply(state, trigger_event)
            except LedgerRejected:
                continue
        findings, memory = detector.detect(_context(state, trigger_event, date(2026, 2, 15)), {})
        assert isinstance(findings, list) and isinstance(memory, dict)
        for finding in findings:
            _check_finding(finding, name)
        assert json.loads(json.dumps(memory)) == memory

    # --- a realistic run: findings valid, memory survives JSON --------------------------
    states: dict[str, Any] = {}
    memories: dict[str, dict[str, Any]] = {}
    recent: dict[str, list] = {}
    scenario = _scenario()
    first, last = scenario[0][0].occurred_at.date(), scenario[-1][0].occurred_at.date() + timedelta(days=40)
    by_day: dict[date, list] = {}
    for pair in scenario:
        by_day.setdefault(pair[0].occurred_at.date(), []).append(pair)
    evaluations = 0

    def evaluate(customer: str, trigger: Event | None, day: date, signals: ModelSignals) -> None:
        nonlocal evaluations
        ctx = _context(states[customer], trigger, day, signals, recent.get(customer))
        memory = memories.get(customer, {})
        direct = detector.detect(ctx, copy.deepcopy(memory))
        ctx = _context(states[customer], trigger, day, signals, recent.get(customer))
        through_json = detector.detect(ctx, json.loads(json.dumps(memory)))
        assert direct == through_json, f"{name}: memory fed back through JSON changes the findings on {day}"
        findings, memories[customer] = direct
        assert json.loads(json.dumps(memories[customer])) == memories[customer], f"{name}: memory is not plain JSON"
        for finding in findings:
            _check_finding(finding, name)
            recent.setdefault(customer, []).append((day, finding.detector))
        evaluations += 1

    day = first
    while day <= last:
        if "tick" in cls.triggers:
            for customer in sorted(states):
                evaluate(customer, None, day, ModelSignals())
        for trigger_event, signals in by_day.get(day, []):
            states[trigger_event.customer_id] = apply(states.get(trigger_event.customer_id), trigger_event)
            for other in {"credit_limit", "overdue", "disputes"} - {name}:
                recent.setdefault(trigger_event.customer_id, []).append((day, other))  # something for composites
            if trigger_event.type in cls.triggers:
                evaluate(trigger_event.customer_id, trigger_event, day, signals)
        day += timedelta(days=1)
    assert evaluations > 0, f"{name}: never triggered by the example portfolio"
