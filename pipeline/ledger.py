"""The pure receivables ledger: ``apply(state, event) -> state`` per customer.

No I/O and no wall clock. The state records *facts* (each invoice, payment,
adjustment, dispute, promise, keyed by its business id or event id); every
derived figure — which invoice a payment settled, what is open, aging, DSO,
days beyond terms, kept or broken promises — is computed from those facts by
:func:`position` in one canonical order. That is what makes the ledger
indifferent to arrival order and duplicates:

* a payment for an invoice that has not arrived is *held*: it is recorded,
  shown as held, and counted once the invoice exists;
* a reversal of an unknown payment is recorded the same way and takes effect
  when the payment arrives;
* re-applying any event changes nothing, because each fact is stored under
  its own id (and the last ``seen_ids`` event ids are remembered so the caller
  can skip detectors for a redelivery).

Cash without an invoice reference settles the oldest open invoices first
(by due date, issue date, invoice id); cash beyond what its invoice needs
joins that pool.

Bounded memory: an invoice that has been settled for ``retention_days``
(default 180) of event time, together with the payments that only settled
retired invoices, is folded into lifetime aggregates (totals, days beyond
terms) and dropped. The documented cost: a correction that arrives for an
invoice more than ``retention_days`` after it was settled, or a duplicate
delivered that late and older than the last ``seen_ids`` events, is treated
as a new fact (held as an orphan and shown as such), not matched to the
retired invoice.

Money is Decimal throughout. Amounts are converted to the base currency with
the configured rates (exact multiplication) and to the customer's limit
currency only when a position is shown.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Iterable

from pipeline import events as ev
from pipeline.config import LedgerConfig

ZERO = Decimal(0)
CENT = Decimal("0.01")
DEFAULT_CONFIG = LedgerConfig()

AGING_BUCKETS = ("current", "1-30", "31-60", "61-90", "90+")


class LedgerRejected(ValueError):
    """An event that is valid JSON but cannot be applied (e.g. no FX rate)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _utc(event: ev.Event) -> str:
    """Event time as UTC ISO text, so that text order is time order."""
    return event.occurred_at.astimezone(timezone.utc).isoformat()


def _stamp(event: ev.Event) -> tuple[str, str]:
    """Total order for last-writer-wins fields: event time, then event id."""
    return (_utc(event), event.event_id)


# --- facts -------------------------------------------------------------------


@dataclass(slots=True)
class Invoice:
    invoice_id: str
    # Set by invoice.issued; None while only later events for it have arrived.
    issue: tuple[str, str, Decimal, str, date, date] | None = None  # (ts, event_id, amount, currency, issued_on, due_on)
    adjustments: dict[str, Decimal] = field(default_factory=dict)  # event_id -> delta (invoice currency)
    write_offs: dict[str, Decimal] = field(default_factory=dict)
    disputes: dict[str, tuple[str, Decimal | None, str | None]] = field(default_factory=dict)  # event_id -> (ts, amount, reason)
    resolutions: dict[str, tuple[str, Decimal]] = field(default_factory=dict)  # event_id -> (ts, credited)

    @property
    def issued(self) -> bool:
        return self.issue is not None

    @property
    def currency(self) -> str:
        assert self.issue is not None
        return self.issue[3]

    @property
    def amount(self) -> Decimal:
        return self.issue[2] if self.issue else ZERO

    @property
    def issued_on(self) -> date:
        assert self.issue is not None
        return self.issue[4]

    @property
    def due_on(self) -> date:
        assert self.issue is not None
        return self.issue[5]

    @property
    def credited(self) -> Decimal:
        if not self.resolutions:
            return ZERO
        return sum((credited for _, credited in self.resolutions.values()), ZERO)

    @property
    def written_off(self) -> Decimal:
        return sum(self.write_offs.values(), ZERO) if self.write_offs else ZERO

    @property
    def adjusted(self) -> Decimal:
        return sum(self.adjustments.values(), ZERO) if self.adjustments else ZERO

    @property
    def net_due(self) -> Decimal:
        """What the customer owes on it before any cash, in invoice currency."""
        return self.amount + self.adjusted - self.credited - self.written_off

    def open_dispute(self) -> tuple[str, Decimal | None, str | None] | None:
        if not self.disputes:
            return None
        last_dispute = max((ts, eid) for eid, (ts, _, _) in self.disputes.items())
        last_resolution = max(((ts, eid) for eid, (ts, _) in self.resolutions.items()), default=None)
        if last_resolution is not None and last_resolution > last_dispute:
            return None
        return self.disputes[last_dispute[1]]


@dataclass(slots=True)
class Payment:
    payment_id: str
    receipt: tuple[str, str, Decimal, str, date, str | None] | None = None  # (ts, event_id, amount, currency, received_on, invoice_id)
    reversal: tuple[str, str, str | None] | None = None  # (ts, event_id, reason)

    @property
    def counts(self) -> bool:
        """Received and not reversed: this cash is real."""
        return self.receipt is not None and self.reversal is None


@dataclass(slots=True)
class Promise:
    event_id: str
    made_on: date
    promised_on: date
    amount: Decimal
    invoice_id: str | None


@dataclass(slots=True)
class Profile:
    """Customer master data; each field is last-writer-wins by event time."""

    name: str | None = None
    country: str | None = None
    industry: str | None = None
    currency: str | None = None
    registered: tuple[str, str] | None = None
    credit_limit: Decimal | None = None
    credit_limit_at: tuple[str, str] | None = None
    payment_terms_days: int | None = None
    terms_at: tuple[str, str] | None = None
    insured_limit: Decimal | None = None
    insured_at: tuple[str, str] | None = None
    # Bounded histories, sorted by stamp: (ts, event_id, ...)
    ratings: list[tuple[str, str, str, str, Decimal | None]] = field(default_factory=list)  # agency, rating, pd
    bank_changes: list[tuple[str, str]] = field(default_factory=list)
    ownership_changes: list[tuple[str, str, str | None]] = field(default_factory=list)
    legal_events: list[tuple[str, str, str, str | None]] = field(default_factory=list)  # kind, description


HISTORY_KEEP = 8


@dataclass(slots=True)
class Lifetime:
    """Aggregates of retired (settled long ago) invoices and payments."""

    issued: Decimal = ZERO  # all in base currency
    adjusted: Decimal = ZERO
    settled: Decimal = ZERO
    credited: Decimal = ZERO
    written_off: Decimal = ZERO
    paid_amount: Decimal = ZERO  # amount of invoices settled by cash
    paid_days_late_weighted: Decimal = ZERO  # Σ amount × days beyond terms
    invoices: int = 0
    late_invoices: int = 0
    promises_kept: int = 0
    promises_broken: int = 0


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    profile: Profile = field(default_factory=Profile)
    invoices: dict[str, Invoice] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    promises: dict[str, Promise] = field(default_factory=dict)
    lifetime: Lifetime = field(default_factory=Lifetime)
    watermark: str = ""  # latest occurred_at seen (ISO), event time
    seen: deque[str] = field(default_factory=deque)
    events_applied: int = 0
    # Derived views of this revision (allocation, positions); never serialized.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def has_seen(self, event_id: str) -> bool:
        return event_id in self.seen


def new_state(customer_id: str) -> CustomerState:
    return CustomerState(customer_id=customer_id)


# --- apply -------------------------------------------------------------------


def apply(state: CustomerState | None, event: ev.Event, config: LedgerConfig = DEFAULT_CONFIG) -> CustomerState:
    """Apply one validated event to a customer's state and return the state.

    The state is updated in place (it is owned by one worker and one key), so
    callers that need the old state must copy it first. Raises
    :class:`LedgerRejected` for an event that can never be applied; the state
    is unchanged then.
    """
    if state is None:
        state = new_state(event.customer_id)
    if event.customer_id != state.customer_id:
        raise LedgerRejected(f"event for customer {event.customer_id!r} applied to state of {state.customer_id!r}")
    if event.event_id in state.seen:
        return state
    handler = _HANDLERS[event.type]
    handler(state, event, config)
    state.memo.clear()
    state.seen.append(event.event_id)
    while len(state.seen) > config.seen_ids:
        state.seen.popleft()
    state.events_applied += 1
    stamp = _utc(event)
    if stamp > state.watermark:
        previous_day = state.watermark[:10]
        state.watermark = stamp
        if previous_day != state.watermark[:10] and len(state.invoices) + len(state.payments) > COMPACT_ABOVE:
            compact(state, config)
    return state


#: Below this many retained invoices + payments a customer is not worth compacting.
COMPACT_ABOVE = 32


def _require_rate(currency: str, config: LedgerConfig) -> None:
    if currency not in config.fx_rates:
        raise LedgerRejected(
            f"no exchange rate configured for {currency} (set CREDITWATCH_FX_RATES); cannot convert to {config.base_currency}"
        )


def _invoice(state: CustomerState, invoice_id: str) -> Invoice:
    invoice = state.invoices.get(invoice_id)
    if invoice is None:
        invoice = state.invoices[invoice_id] = Invoice(invoice_id)
    return invoice


def _on_invoice_issued(state: CustomerState, event: ev.InvoiceIssued, config: LedgerConfig) -> None:
    _require_rate(event.currency, config)
    record = (_utc(event), event.event_id, event.amount, event.currency, event.issued_on, event.due_on)
    invoice = _invoice(state, event.invoice_id)
    if invoice.issue is None:
        invoice.issue = record
    elif invoice.issue[1] != event.event_id and invoice.issue[2:] != record[2:]:
        # Two different invoices under one id: keep the earliest, deterministically.
        if (record[0], record[1]) < (invoice.issue[0], invoice.issue[1]):
            invoice.issue = record
        else:
            raise LedgerRejected(
                f"invoice {event.invoice_id} was already issued by event {invoice.issue[1]} with other details"
            )


def _on_invoice_adjusted(state: CustomerState, event: ev.InvoiceAdjusted, config: LedgerConfig) -> None:
    _invoice(state, event.invoice_id).adjustments[event.event_id] = event.amount_delta


def _on_invoice_disputed(state: CustomerState, event: ev.InvoiceDisputed, config: LedgerConfig) -> None:
    _invoice(state, event.invoice_id).disputes[event.event_id] = (
        _utc(event),
        event.amount,
        event.reason,
    )


def _on_dispute_resolved(state: CustomerState, event: ev.InvoiceDisputeResolved, config: LedgerConfig) -> None:
    _invoice(state, event.invoice_id).resolutions[event.event_id] = (_utc(event), event.credited_amount)


def _on_written_off(state: CustomerState, event: ev.InvoiceWrittenOff, config: LedgerConfig) -> None:
    _invoice(state, event.invoice_id).write_offs[event.event_id] = event.amount


def _on_payment_received(state: CustomerState, event: ev.PaymentReceived, config: LedgerConfig) -> None:
    _require_rate(event.currency, config)
    record = (_utc(event), event.event_id, event.amount, event.currency, event.received_on, event.invoice_id)
    payment = state.payments.get(event.payment_id)
    if payment is None:
        state.payments[event.payment_id] = Payment(event.payment_id, receipt=record)
    elif payment.receipt is None:
        payment.receipt = record
    elif payment.receipt[1] != event.event_id and payment.receipt[2:] != record[2:]:
        if (record[0], record[1]) < (payment.receipt[0], payment.receipt[1]):
            payment.receipt = record
        else:
            raise LedgerRejected(
                f"payment {event.payment_id} was already received by event {payment.receipt[1]} with other details"
            )


def _on_payment_reversed(state: CustomerState, event: ev.PaymentReversed, config: LedgerConfig) -> None:
    payment = state.payments.get(event.payment_id)
    if payment is None:
        payment = state.payments[event.payment_id] = Payment(event.payment_id)
    record = (_utc(event), event.event_id, event.reason)
    if payment.reversal is None or record[:2] < payment.reversal[:2]:
        payment.reversal = record


def _on_payment_promised(state: CustomerState, event: ev.PaymentPromised, config: LedgerConfig) -> None:
    state.promises[event.event_id] = Promise(
        event_id=event.event_id,
        made_on=event.occurred_at.date(),
        promised_on=event.promised_on,
        amount=event.amount,
        invoice_id=event.invoice_id,
    )


def _later(stamp: tuple[str, str], current: tuple[str, str] | None) -> bool:
    return current is None or stamp > current


def _on_registered(state: CustomerState, event: ev.CustomerRegistered, config: LedgerConfig) -> None:
    _require_rate(event.currency, config)
    profile, stamp = state.profile, _stamp(event)
    if _later(stamp, profile.registered):
        profile.registered = stamp
        profile.name, profile.country = event.name, event.country
        profile.industry, profile.currency = event.industry, event.currency
    if _later(stamp, profile.credit_limit_at):
        profile.credit_limit, profile.credit_limit_at = event.credit_limit, stamp
    if _later(stamp, profile.terms_at):
        profile.payment_terms_days, profile.terms_at = event.payment_terms_days, stamp


def _on_limit_changed(state: CustomerState, event: ev.CreditLimitChanged, config: LedgerConfig) -> None:
    stamp = _stamp(event)
    if _later(stamp, state.profile.credit_limit_at):
        state.profile.credit_limit, state.profile.credit_limit_at = event.credit_limit, stamp


def _on_terms_changed(state: CustomerState, event: ev.TermsChanged, config: LedgerConfig) -> None:
    stamp = _stamp(event)
    if _later(stamp, state.profile.terms_at):
        state.profile.payment_terms_days, state.profile.terms_at = event.payment_terms_days, stamp


def _on_insurance_changed(state: CustomerState, event: ev.InsuranceLimitChanged, config: LedgerConfig) -> None:
    stamp = _stamp(event)
    if _later(stamp, state.profile.insured_at):
        state.profile.insured_limit, state.profile.insured_at = event.insured_limit, stamp


def _keep_sorted(history: list, item: tuple) -> None:
    if any(existing[1] == item[1] for existing in history):
        return
    history.append(item)
    history.sort(key=lambda entry: (entry[0], entry[1]))
    del history[:-HISTORY_KEEP]


def _on_rating_changed(state: CustomerState, event: ev.RatingChanged, config: LedgerConfig) -> None:
    ts, eid = _stamp(event)
    _keep_sorted(state.profile.ratings, (ts, eid, event.agency, event.rating, event.probability_of_default))


def _on_bank_changed(state: CustomerState, event: ev.BankDetailsChanged, config: LedgerConfig) -> None:
    _keep_sorted(state.profile.bank_changes, _stamp(event))


def _on_ownership_changed(state: CustomerState, event: ev.OwnershipChanged, config: LedgerConfig) -> None:
    _keep_sorted(state.profile.ownership_changes, (*_stamp(event), event.description))


def _on_legal_event(state: CustomerState, event: ev.LegalEvent, config: LedgerConfig) -> None:
    _keep_sorted(state.profile.legal_events, (*_stamp(event), event.kind, event.description))


_HANDLERS = {
    "invoice.issued": _on_invoice_issued,
    "invoice.adjusted": _on_invoice_adjusted,
    "invoice.disputed": _on_invoice_disputed,
    "invoice.dispute_resolved": _on_dispute_resolved,
    "invoice.written_off": _on_written_off,
    "payment.received": _on_payment_received,
    "payment.reversed": _on_payment_reversed,
    "payment.promised": _on_payment_promised,
    "customer.registered": _on_registered,
    "customer.credit_limit_changed": _on_limit_changed,
    "customer.terms_changed": _on_terms_changed,
    "customer.rating_changed": _on_rating_changed,
    "customer.insurance_limit_changed": _on_insurance_changed,
    "customer.bank_details_changed": _on_bank_changed,
    "customer.ownership_changed": _on_ownership_changed,
    "customer.legal_event": _on_legal_event,
}
assert set(_HANDLERS) == set(ev.EVENT_TYPES), "every event type needs a ledger handler"


# --- derived view ------------------------------------------------------------


@dataclass(slots=True)
class InvoiceView:
    invoice_id: str
    issued_on: date
    due_on: date
    currency: str
    amount: Decimal  # original, invoice currency
    due_base: Decimal  # net due in base currency
    outstanding_base: Decimal
    settled_on: date | None  # the day cash completed it; None if open or closed by credit
    amount_base: Decimal = ZERO
    adjusted_base: Decimal = ZERO
    credited_base: Decimal = ZERO
    written_off_base: Decimal = ZERO


@dataclass(slots=True)
class Allocation:
    """Where the cash went: the canonical settlement of a customer's facts."""

    invoices: list[InvoiceView]  # issued invoices, oldest first
    applied_base: Decimal  # cash applied or on account (excludes held and reversed)
    unapplied_base: Decimal  # cash on account, not matched to any open invoice
    held_payments: list[str]  # payment ids waiting for their invoice
    allocations: dict[str, list[tuple[str, Decimal]]]  # payment id -> [(invoice id, base amount)]
    close_dates: dict[str, date]  # invoice id -> day its balance reached zero


def to_base(amount: Decimal, currency: str, config: LedgerConfig) -> Decimal:
    return amount * config.fx_rates[currency]


def allocate(state: CustomerState, config: LedgerConfig = DEFAULT_CONFIG) -> Allocation:
    """Settle the customer's retained facts in one canonical order.

    Pass 1: cash that names its invoice goes there (in order of receipt);
    what exceeds that invoice's balance goes on account. Pass 2: cash on
    account settles the oldest open invoices first, in order of receipt.

    Computed once per state revision (``apply`` clears the memo); treat the
    result as read-only.
    """
    key = ("allocation", id(config))
    cached = state.memo.get(key)
    if cached is None:
        cached = state.memo[key] = _allocate(state, config)
    return cached


def _allocate(state: CustomerState, config: LedgerConfig) -> Allocation:
    views: dict[str, InvoiceView] = {}
    rates = config.fx_rates
    for invoice in state.invoices.values():
        issue = invoice.issue
        if issue is None:
            continue
        _, _, amount, currency, issued_on, due_on = issue
        fx = rates[currency]
        amount_base = amount * fx
        adjusted_base = invoice.adjusted * fx
        credited_base = invoice.credited * fx
        written_off_base = invoice.written_off * fx
        due = amount_base + adjusted_base - credited_base - written_off_base
        views[invoice.invoice_id] = InvoiceView(
            invoice.invoice_id, issued_on, due_on, currency, amount, due,
            due if due > ZERO else ZERO, None, amount_base, adjusted_base, credited_base, written_off_base,
        )
    ordered = sorted(views.values(), key=lambda v: (v.due_on, v.issued_on, v.invoice_id))
    # Negative net due (credit note larger than the invoice) is cash-like credit.
    on_account: list[tuple[date, str, Decimal]] = [
        (view.issued_on, f"~credit:{view.invoice_id}", -view.due_base) for view in ordered if view.due_base < 0
    ]
    held: list[str] = []
    allocations: dict[str, list[tuple[str, Decimal]]] = {}
    close_dates: dict[str, date] = {}
    applied = ZERO
    receipts = sorted(
        (p for p in state.payments.values() if p.counts),
        key=lambda p: (p.receipt[4], p.payment_id),  # type: ignore[index]
    )
    for payment in receipts:
        _, _, amount, currency, received_on, invoice_id = payment.receipt  # type: ignore[misc]
        cash = to_base(amount, currency, config)
        if invoice_id is not None:
            target = views.get(invoice_id)
            if target is None:
                held.append(payment.payment_id)
                continue
            applied += cash
            take = min(cash, target.outstanding_base)
            if take > 0:
                target.outstanding_base -= take
                allocations.setdefault(payment.payment_id, []).append((invoice_id, take))
                if target.outstanding_base == 0:
                    close_dates[invoice_id] = max(received_on, target.issued_on)
                    target.settled_on = close_dates[invoice_id]
            if cash > take:
                on_account.append((received_on, payment.payment_id, cash - take))
        else:
            applied += cash
            on_account.append((received_on, payment.payment_id, cash))
    on_account.sort(key=lambda item: (item[0], item[1]))
    cursor = 0
    unapplied = ZERO
    for received_on, source, cash in on_account:
        while cash > 0 and cursor < len(ordered):
            target = ordered[cursor]
            if target.outstanding_base <= 0:
                cursor += 1
                continue
            take = min(cash, target.outstanding_base)
            target.outstanding_base -= take
            cash -= take
            allocations.setdefault(source, []).append((target.invoice_id, take))
            if target.outstanding_base == 0:
                close_dates[target.invoice_id] = max(received_on, target.issued_on)
                if not source.startswith("~credit:"):
                    target.settled_on = close_dates[target.invoice_id]
                cursor += 1
        unapplied += cash
    for view in ordered:
        if view.due_base <= 0 and view.invoice_id not in close_dates:
            close_dates[view.invoice_id] = view.issued_on
    return Allocation(
        invoices=ordered,
        applied_base=applied,
        unapplied_base=unapplied,
        held_payments=held,
        allocations=allocations,
        close_dates=close_dates,
    )


@dataclass(slots=True)
class Position:
    """A customer's credit position at a given day, in the limit currency."""

    customer_id: str
    as_of: date
    name: str | None
    country: str | None
    industry: str | None
    currency: str
    credit_limit: Decimal | None
    insured_limit: Decimal | None
    payment_terms_days: int | None
    rating: str | None
    rating_agency: str | None
    probability_of_default: Decimal | None
    exposure: Decimal
    utilisation: Decimal | None  # exposure / limit
    aging: dict[str, Decimal]
    overdue: Decimal
    open_invoices: list[dict[str, Any]]
    unapplied_cash: Decimal
    dso_days: Decimal | None
    days_beyond_terms: Decimal | None  # amount-weighted, all settled invoices
    days_beyond_terms_recent: Decimal | None  # settled within the DSO window
    open_disputes: list[dict[str, Any]]
    disputed_amount: Decimal
    promises_pending: list[dict[str, Any]]
    promises_broken: list[dict[str, Any]]
    held: list[str]
    totals: dict[str, Decimal]  # issued, adjusted, settled, credited, written_off (limit currency)

    def to_json(self) -> dict[str, Any]:
        return _jsonable(
            {name: getattr(self, name) for name in self.__slots__}  # type: ignore[attr-defined]
        )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, (date, datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    return value


def bucket_for(days_past_due: int) -> str:
    if days_past_due <= 0:
        return "current"
    if days_past_due <= 30:
        return "1-30"
    if days_past_due <= 60:
        return "31-60"
    if days_past_due <= 90:
        return "61-90"
    return "90+"


def position(state: CustomerState, as_of: date, config: LedgerConfig = DEFAULT_CONFIG) -> Position:
    """Derive the customer's position on day ``as_of`` from the retained facts.

    Memoized per state revision and day; treat the result as read-only.
    """
    key = ("position", as_of, id(config))
    cached = state.memo.get(key)
    if cached is None:
        cached = state.memo[key] = _position(state, as_of, config)
    return cached


def _position(state: CustomerState, as_of: date, config: LedgerConfig) -> Position:
    profile = state.profile
    currency = profile.currency or config.base_currency
    rate = config.fx_rates.get(currency, Decimal(1))

    def shown(base_amount: Decimal) -> Decimal:
        return (base_amount / rate).quantize(CENT)

    alloc = allocate(state, config)
    lifetime = state.lifetime
    issued = adjusted = credited = written_off = ZERO
    for view in alloc.invoices:
        issued += view.amount_base
        adjusted += view.adjusted_base
        credited += view.credited_base
        written_off += view.written_off_base
    totals_base = {
        "issued": issued + lifetime.issued,
        "adjusted": adjusted + lifetime.adjusted,
        "settled": alloc.applied_base + lifetime.settled,
        "credited": credited + lifetime.credited,
        "written_off": written_off + lifetime.written_off,
    }
    exposure_base = (
        totals_base["issued"]
        + totals_base["adjusted"]
        - totals_base["settled"]
        - totals_base["credited"]
        - totals_base["written_off"]
    )

    aging_base = {bucket: ZERO for bucket in AGING_BUCKETS}
    open_invoices: list[dict[str, Any]] = []
    open_disputes: list[dict[str, Any]] = []
    disputed_total = ZERO
    window_start = as_of - timedelta(days=config.dso_window_days)
    sales_in_window = ZERO
    open_total = ZERO
    paid_amount, paid_weighted = lifetime.paid_amount, lifetime.paid_days_late_weighted
    recent_amount = recent_weighted = ZERO
    for view in alloc.invoices:
        if window_start < view.issued_on <= as_of:
            # Credit sales: what was invoiced net of credit notes; a write-off is a loss, not a smaller sale.
            sales_in_window += max(view.amount_base + view.adjusted_base - view.credited_base, ZERO)
        if view.settled_on is not None and view.due_base > 0:
            late_days = max((view.settled_on - view.due_on).days, 0)
            paid_amount += view.due_base
            paid_weighted += view.due_base * late_days
            if window_start < view.settled_on <= as_of:
                recent_amount += view.due_base
                recent_weighted += view.due_base * late_days
        if view.outstanding_base <= 0:
            continue
        open_total += view.outstanding_base
        days_past_due = (as_of - view.due_on).days
        aging_base[bucket_for(days_past_due)] += view.outstanding_base
        dispute = state.invoices[view.invoice_id].open_dispute()
        disputed = ZERO
        if dispute is not None:
            _, amount, reason = dispute
            disputed = view.outstanding_base if amount is None else min(
                to_base(amount, view.currency, config), view.outstanding_base
            )
            disputed_total += disputed
            open_disputes.append(
                {"invoice_id": view.invoice_id, "amount": shown(disputed), "reason": reason, "opened_at": dispute[0]}
            )
        open_invoices.append(
            {
                "invoice_id": view.invoice_id,
                "issued_on": view.issued_on,
                "due_on": view.due_on,
                "currency": view.currency,
                "amount": view.amount,
                "outstanding": shown(view.outstanding_base),
                "days_past_due": max(days_past_due, 0),
                "bucket": bucket_for(days_past_due),
                "disputed": shown(disputed),
            }
        )

    pending, broken = promise_status(state, alloc, as_of, config)
    rating = profile.ratings[-1] if profile.ratings else None
    limit = profile.credit_limit
    exposure = shown(exposure_base)
    held = [f"payment {pid} waits for its invoice" for pid in alloc.held_payments]
    held += [
        f"reversal of payment {p.payment_id} waits for the payment"
        for p in state.payments.values()
        if p.receipt is None and p.reversal is not None
    ]
    held += [
        f"{_describe_orphan(inv)} for invoice {inv.invoice_id} waits for the invoice"
        for inv in state.invoices.values()
        if inv.issue is None
    ]
    dso = None
    if sales_in_window > 0:
        dso = (max(exposure_base, ZERO) / sales_in_window * config.dso_window_days).quantize(Decimal("0.1"))
    return Position(
        customer_id=state.customer_id,
        as_of=as_of,
        name=profile.name,
        country=profile.country,
        industry=profile.industry,
        currency=currency,
        credit_limit=limit,
        insured_limit=profile.insured_limit,
        payment_terms_days=profile.payment_terms_days,
        rating=rating[3] if rating else None,
        rating_agency=rating[2] if rating else None,
        probability_of_default=rating[4] if rating else None,
        exposure=exposure,
        utilisation=(exposure / limit).quantize(Decimal("0.0001")) if limit else None,
        aging={bucket: shown(amount) for bucket, amount in aging_base.items()},
        overdue=shown(open_total - aging_base["current"]),
        open_invoices=open_invoices,
        unapplied_cash=shown(alloc.unapplied_base),
        dso_days=dso,
        days_beyond_terms=(paid_weighted / paid_amount).quantize(Decimal("0.1")) if paid_amount else None,
        days_beyond_terms_recent=(recent_weighted / recent_amount).quantize(Decimal("0.1")) if recent_amount else None,
        open_disputes=open_disputes,
        disputed_amount=shown(disputed_total),
        promises_pending=pending,
        promises_broken=broken,
        held=sorted(held),
        totals={name: shown(amount) for name, amount in totals_base.items()},
    )


def _describe_orphan(invoice: Invoice) -> str:
    kinds = []
    if invoice.adjustments:
        kinds.append("adjustment")
    if invoice.disputes:
        kinds.append("dispute")
    if invoice.resolutions:
        kinds.append("dispute resolution")
    if invoice.write_offs:
        kinds.append("write-off")
    return " and ".join(kinds) or "event"


def promise_status(
    state: CustomerState, alloc: Allocation, as_of: date, config: LedgerConfig
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pending: list[dict[str, Any]] = []
    broken: list[dict[str, Any]] = []
    if not state.promises:
        return pending, broken
    views = {view.invoice_id: view for view in alloc.invoices}
    for promise in sorted(state.promises.values(), key=lambda p: (p.promised_on, p.event_id)):
        deadline = promise.promised_on + timedelta(days=config.promise_grace_days)
        if _promise_kept(state, views, promise, deadline):
            continue
        entry = {
            "event_id": promise.event_id,
            "invoice_id": promise.invoice_id,
            "amount": promise.amount,
            "promised_on": promise.promised_on,
        }
        (broken if as_of > deadline else pending).append(entry)
    return pending, broken


def _promise_kept(state: CustomerState, views: dict[str, InvoiceView], promise: Promise, deadline: date) -> bool:
    if promise.invoice_id is not None:
        view = views.get(promise.invoice_id)
        if view is not None and view.outstanding_base <= 0 and (view.settled_on is None or view.settled_on <= deadline):
            return True
    paid = ZERO
    for payment in state.payments.values():
        if not payment.counts:
            continue
        _, _, amount, _, received_on, invoice_id = payment.receipt  # type: ignore[misc]
        if not promise.made_on <= received_on <= deadline:
            continue
        if promise.invoice_id is None or invoice_id in (None, promise.invoice_id):
            paid += amount
    return paid >= promise.amount


# --- retention ---------------------------------------------------------------


def compact(state: CustomerState, config: LedgerConfig = DEFAULT_CONFIG) -> None:
    """Fold invoices settled more than ``retention_days`` ago into lifetime aggregates.

    Only a closed group is retired: settled invoices together with the
    payments that went nowhere else, so that what stays settles the same
    way it would have with everything kept.
    """
    if not state.watermark:
        return
    cutoff = datetime.fromisoformat(state.watermark).date() - timedelta(days=config.retention_days)
    alloc = allocate(state, config)
    candidates = {
        invoice_id for invoice_id, closed_on in alloc.close_dates.items() if closed_on < cutoff
    }
    if not candidates:
        return
    # A payment may go only if all its cash went to candidates and it was fully used.
    retire_payments: set[str] = set()
    blocked_invoices: set[str] = set()
    for payment in state.payments.values():
        if payment.receipt is None:
            continue
        received_on = payment.receipt[4]
        parts = alloc.allocations.get(payment.payment_id, [])
        used = sum((amount for _, amount in parts), ZERO)
        cash = to_base(payment.receipt[2], payment.receipt[3], config) if payment.counts else ZERO
        fully_used = payment.counts and used == cash
        reversed_long_ago = payment.reversal is not None and payment.reversal[0][:10] < cutoff.isoformat()
        all_to_candidates = all(invoice_id in candidates for invoice_id, _ in parts)
        if received_on < cutoff and all_to_candidates and (fully_used or reversed_long_ago and not parts):
            retire_payments.add(payment.payment_id)
        else:
            blocked_invoices.update(invoice_id for invoice_id, _ in parts)
    # Credit notes used as cash on account tie invoices together too.
    for source, parts in alloc.allocations.items():
        if source.startswith("~credit:") and source[8:] not in candidates:
            blocked_invoices.update(invoice_id for invoice_id, _ in parts)
    retire_invoices = candidates - blocked_invoices
    if not retire_invoices:
        return
    views = {view.invoice_id: view for view in alloc.invoices}
    lifetime = state.lifetime
    state.memo.clear()
    for invoice_id in retire_invoices:
        invoice = state.invoices.pop(invoice_id)
        view = views[invoice_id]
        fx = config.fx_rates[invoice.currency]
        lifetime.issued += invoice.amount * fx
        lifetime.adjusted += invoice.adjusted * fx
        lifetime.credited += invoice.credited * fx
        lifetime.written_off += invoice.written_off * fx
        lifetime.invoices += 1
        if view.settled_on is not None and view.due_base > 0:
            late_days = max((view.settled_on - view.due_on).days, 0)
            lifetime.paid_amount += view.due_base
            lifetime.paid_days_late_weighted += view.due_base * late_days
            lifetime.late_invoices += late_days > 0
    for payment_id in retire_payments:
        payment = state.payments.pop(payment_id)
        if payment.counts:
            lifetime.settled += to_base(payment.receipt[2], payment.receipt[3], config)  # type: ignore[index]
    for event_id, promise in list(state.promises.items()):
        if promise.promised_on < cutoff:
            pending, broken = promise_status(
                CustomerState(state.customer_id, payments=state.payments, promises={event_id: promise}),
                alloc,
                promise.promised_on + timedelta(days=config.promise_grace_days + 1),
                config,
            )
            if broken:
                lifetime.promises_broken += 1
            else:
                lifetime.promises_kept += 1
            del state.promises[event_id]


# --- serialization -------------------------------------------------------------


def _enc(value: Any) -> Any:
    if isinstance(value, Decimal):
        return {"$d": str(value)}
    if isinstance(value, date):
        return {"$t": value.isoformat()}
    if isinstance(value, tuple):
        return [_enc(item) for item in value]
    if isinstance(value, list):
        return [_enc(item) for item in value]
    if isinstance(value, dict):
        return {key: _enc(item) for key, item in value.items()}
    return value


def _dec(value: Any) -> Any:
    if isinstance(value, dict):
        if "$d" in value:
            return Decimal(value["$d"])
        if "$t" in value:
            return date.fromisoformat(value["$t"])
        return {key: _dec(item) for key, item in value.items()}
    if isinstance(value, list):
        return tuple(_dec(item) for item in value)
    return value


def state_to_dict(state: CustomerState) -> dict[str, Any]:
    profile = state.profile
    return {
        "customer_id": state.customer_id,
        "profile": {name: _enc(getattr(profile, name)) for name in Profile.__slots__},  # type: ignore[attr-defined]
        "invoices": {
            iid: [_enc(inv.issue), _enc(inv.adjustments), _enc(inv.write_offs), _enc(inv.disputes), _enc(inv.resolutions)]
            for iid, inv in state.invoices.items()
        },
        "payments": {pid: [_enc(p.receipt), _enc(p.reversal)] for pid, p in state.payments.items()},
        "promises": {
            eid: [_enc(p.made_on), _enc(p.promised_on), _enc(p.amount), p.invoice_id] for eid, p in state.promises.items()
        },
        "lifetime": {name: _enc(getattr(state.lifetime, name)) for name in Lifetime.__slots__},  # type: ignore[attr-defined]
        "watermark": state.watermark,
        "seen": list(state.seen),
        "events_applied": state.events_applied,
    }


_PROFILE_LISTS = {"ratings", "bank_changes", "ownership_changes", "legal_events"}


def state_from_dict(data: dict[str, Any]) -> CustomerState:
    profile_data = {}
    for name, raw in data["profile"].items():
        value = _dec(raw)
        profile_data[name] = list(value) if name in _PROFILE_LISTS else value
    invoices = {}
    for iid, (issue, adjustments, write_offs, disputes, resolutions) in data["invoices"].items():
        invoices[iid] = Invoice(
            iid,
            issue=_dec(issue),
            adjustments=_dec(adjustments),
            write_offs=_dec(write_offs),
            disputes=_dec(disputes),
            resolutions=_dec(resolutions),
        )
    payments = {pid: Payment(pid, receipt=_dec(r), reversal=_dec(v)) for pid, (r, v) in data["payments"].items()}
    promises = {
        eid: Promise(eid, made_on=_dec(m), promised_on=_dec(p), amount=_dec(a), invoice_id=i)
        for eid, (m, p, a, i) in data["promises"].items()
    }
    return CustomerState(
        customer_id=data["customer_id"],
        profile=Profile(**profile_data),
        invoices=invoices,
        payments=payments,
        promises=promises,
        lifetime=Lifetime(**{name: _dec(value) for name, value in data["lifetime"].items()}),
        watermark=data["watermark"],
        seen=deque(data["seen"]),
        events_applied=data["events_applied"],
    )


def canonical(state: CustomerState) -> dict[str, Any]:
    """The state as facts, without arrival-order bookkeeping (seen ids, counters).

    Two states with equal canonical forms give equal positions on every day.
    """
    data = state_to_dict(state)
    del data["seen"], data["events_applied"]
    data["invoices"] = dict(sorted(data["invoices"].items()))
    data["payments"] = dict(sorted(data["payments"].items()))
    data["promises"] = dict(sorted(data["promises"].items()))
    for section in data["invoices"].values():
        for index in range(1, 5):
            section[index] = dict(sorted(section[index].items()))
    return data


def replay(events: Iterable[ev.Event], config: LedgerConfig = DEFAULT_CONFIG) -> dict[str, CustomerState]:
    """Apply events in the given order to fresh states (offline, for tests and tools)."""
    states: dict[str, CustomerState] = {}
    for event in events:
        try:
            states[event.customer_id] = apply(states.get(event.customer_id), event, config)
        except LedgerRejected:
            states.setdefault(event.customer_id, new_state(event.customer_id))
    return states
