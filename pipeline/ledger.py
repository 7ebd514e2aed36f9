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

Cost per event: the allocation is kept up to date event by event where the
canonical order makes the effect of an event certain (a new invoice, a
payment for one open invoice, cash on account received after all other, a
credit note on an open invoice; see ``_Book``), and computed again from the
facts otherwise (reversals, replays, out-of-order cash). With it a position
costs O(open invoices + invoices in the DSO window), and :class:`Figures`
gives its cheap parts (exposure, oldest overdue, days beyond terms, broken
promises, ...) without building one, so that the work per event does not grow
with the settled invoices a customer still retains. ``_allocate`` and
``position_reference`` are the reference the shortcuts are tested against
(``tests/test_fast_paths.py``); ``INCREMENTAL = False`` turns them off.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections import deque
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Context, Decimal, Inexact, getcontext
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator

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


_LAST_UTC: tuple[Any, str] = (None, "")


def _utc(event: ev.Event) -> str:
    """Event time as UTC ISO text, so that text order is time order."""
    global _LAST_UTC
    last = _LAST_UTC  # the handler and ``apply`` both ask, for the same event
    if last[0] is event:
        return last[1]
    text = event.occurred_at.astimezone(timezone.utc).isoformat()
    _LAST_UTC = (event, text)
    return text


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
        last_dispute: tuple[str, str] | None = None
        for eid, dispute in self.disputes.items():
            if last_dispute is None or (dispute[0], eid) > last_dispute:
                last_dispute = (dispute[0], eid)
        for eid, resolution in self.resolutions.items():
            if (resolution[0], eid) > last_dispute:  # type: ignore[operator]
                return None  # resolved after the last dispute
        return self.disputes[last_dispute[1]]  # type: ignore[index]


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
    # Derived views of this revision (positions); never serialized.
    memo: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    # The allocation and its indexes, kept up to date event by event (see ``_Book``); never serialized.
    book: _Book | None = field(default=None, repr=False, compare=False)
    # ``seen`` as a set, for lookups that do not grow with it; rebuilt from ``seen`` when out of step.
    seen_index: set[str] | None = field(default=None, repr=False, compare=False)

    def has_seen(self, event_id: str) -> bool:
        index = self.seen_index
        if index is None or len(index) != len(self.seen):
            index = self.seen_index = set(self.seen)
        return event_id in index


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
    if state.has_seen(event.event_id):
        return state
    handler = _HANDLERS[event.type]
    book = state.book
    if book is None:
        handler(state, event, config)
    else:
        before = _book_before(book, state, event, config)
        handler(state, event, config)
        if before is _STALE or not _book_after(book, state, event, before):
            state.book = None  # rebuilt from the facts when next asked for
    state.memo.clear()
    seen, index = state.seen, state.seen_index
    seen.append(event.event_id)
    index.add(event.event_id)  # type: ignore[union-attr]  (has_seen above made it)
    while len(seen) > config.seen_ids:
        index.discard(seen.popleft())  # type: ignore[union-attr]
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

    Kept up to date event by event where the effect of an event on the
    canonical order is certain (see ``_Book``), otherwise computed again from
    the facts; either way the same result. Treat it as read-only.
    """
    book = _book(state, config)
    if book is not None:
        return book.alloc
    key = ("allocation", id(config))
    cached = state.memo.get(key)
    if cached is None:
        cached = state.memo[key] = _allocate(state, config)
    return cached


def _vkey(view: InvoiceView) -> tuple[date, date, str]:
    """The canonical order of invoices: oldest due first."""
    return (view.due_on, view.issued_on, view.invoice_id)


def _allocate(state: CustomerState, config: LedgerConfig, book: _Book | None = None) -> Allocation:
    """The allocation from the facts alone: the reference every shortcut is tested against.

    With ``book``, also fills the book's indexes of how the cash went.
    """
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
    ordered = sorted(views.values(), key=_vkey)
    # Negative net due (credit note larger than the invoice) is cash-like credit.
    on_account: list[tuple[date, str, Decimal]] = [
        (view.issued_on, f"~credit:{view.invoice_id}", -view.due_base) for view in ordered if view.due_base < 0
    ]
    held: list[str] = []
    allocations: dict[str, list[tuple[str, Decimal]]] = {}
    close_dates: dict[str, date] = {}
    named_last: dict[str, tuple[date, str]] = {}
    named_by: dict[str, list[str]] = {}
    pass2: set[str] = set()
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
            named_last[invoice_id] = (received_on, payment.payment_id)
            named_by.setdefault(invoice_id, []).append(payment.payment_id)
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
            pass2.add(target.invoice_id)
            if target.outstanding_base == 0:
                close_dates[target.invoice_id] = max(received_on, target.issued_on)
                if not source.startswith("~credit:"):
                    target.settled_on = close_dates[target.invoice_id]
                cursor += 1
        unapplied += cash
    for view in ordered:
        if view.due_base <= 0 and view.invoice_id not in close_dates:
            close_dates[view.invoice_id] = view.issued_on
    alloc = Allocation(
        invoices=ordered,
        applied_base=applied,
        unapplied_base=unapplied,
        held_payments=held,
        allocations=allocations,
        close_dates=close_dates,
    )
    if book is not None:
        book.fill(state, alloc, views, pass2, named_last, named_by,
                  [(p.receipt[4], p.payment_id, p.receipt[2], p.receipt[5], p.receipt[3]) for p in receipts],  # type: ignore[index]
                  on_account[-1][:2] if on_account else None)
    return alloc


# --- the allocation, kept up to date ---------------------------------------------


#: Off: every derived figure is computed from the facts each time (the reference; for tests).
INCREMENTAL = True

_STALE = object()


class _Unknown:
    """Not worked out yet (a cached figure of the book); one object, also after pickling."""

    def __reduce__(self) -> str:
        return "_UNKNOWN"


_UNKNOWN: Any = _Unknown()
TENTH = Decimal("0.1")


class _Book:
    """A customer's allocation plus the indexes that let most events update it in place.

    Built from the facts by ``_allocate`` and then kept in step by
    ``_book_before`` / ``_book_after`` for the events whose effect on the
    canonical settlement order is certain:

    * a new invoice that sorts after every invoice that on-account cash went
      to, while no cash is unapplied and no held payment waits for it;
    * a new payment naming an open invoice that no on-account cash went to,
      received after the invoice's other payments and not more than it owes;
    * a new payment without an invoice, received after every other piece of
      cash on account: it settles the oldest open invoices, as pass 2 would;
    * an adjustment, credit note or write-off of such an invoice that leaves
      it open (or closes an invoice no cash went to);
    * disputes, promises and master data, which do not move cash.

    Anything else (a reversal, a replayed issue, cash for an invoice that is
    closed or not there yet, ...) drops the book and the next reader builds
    it again from the facts. Compaction retires closed groups from it. The
    figures that positions need are kept alongside: totals of the retained
    invoices, the amount-weighted days late of those settled by cash, the
    open invoices, and the invoices by issue and by settlement day, so that
    a position costs O(open invoices + invoices in the DSO window), not
    O(retained history).
    """

    __slots__ = (
        "config", "alloc", "views", "open", "pass2", "pass2_max", "on_account_max", "named_last", "named_by",
        "sources", "counting", "issued", "adjusted", "credited", "written_off", "paid_amount", "paid_weighted",
        "by_issue", "by_settle", "min_close", "orphans", "held_reversals", "reversed_received",
        "oldest_due", "dbt", "dbt_recent", "settle_due", "settle_late", "settle_base",
    )

    def fill(self, state: CustomerState, alloc: Allocation, views: dict[str, InvoiceView], pass2: set[str],
             named_last: dict[str, tuple[date, str]], named_by: dict[str, list[str]],
             counting: list[tuple[date, str, Decimal, str | None, str]], on_account_max: tuple[date, str] | None) -> None:
        self.alloc = alloc
        self.views = views
        self.open = {view.invoice_id: view for view in alloc.invoices if view.outstanding_base > 0}
        self.pass2 = pass2
        self.pass2_max = max((_vkey(views[iid]) for iid in pass2), default=None)
        self.on_account_max = on_account_max
        self.named_last = named_last
        self.named_by = named_by
        sources: dict[str, list[str]] = {}
        for source, parts in alloc.allocations.items():
            for invoice_id, _ in parts:
                sources.setdefault(invoice_id, []).append(source)
        self.sources = sources
        self.counting = counting
        issued = adjusted = credited = written_off = paid_amount = paid_weighted = ZERO
        by_issue: list[tuple[date, str]] = []
        by_settle: list[tuple[date, str, Decimal, Decimal]] = []
        for view in alloc.invoices:
            issued += view.amount_base
            adjusted += view.adjusted_base
            credited += view.credited_base
            written_off += view.written_off_base
            by_issue.append((view.issued_on, view.invoice_id))
            if view.settled_on is not None and view.due_base > 0:
                weighted = view.due_base * max((view.settled_on - view.due_on).days, 0)
                paid_amount += view.due_base
                paid_weighted += weighted
                by_settle.append((view.settled_on, view.invoice_id, view.due_base, weighted))
        self.issued, self.adjusted, self.credited, self.written_off = issued, adjusted, credited, written_off
        self.paid_amount, self.paid_weighted = paid_amount, paid_weighted
        by_issue.sort()
        by_settle.sort()
        self.by_issue, self.by_settle = by_issue, by_settle
        self.settle_base: int | None = None
        self.settle_due, self.settle_late = [ZERO], [ZERO]
        self.min_close = min(alloc.close_dates.values(), default=None)
        self.orphans = {iid for iid, inv in state.invoices.items() if inv.issue is None}
        self.held_reversals = set()
        self.reversed_received = set()
        self.oldest_due = self.dbt = self.dbt_recent = _UNKNOWN
        for pid, payment in state.payments.items():
            if payment.reversal is not None:
                (self.held_reversals if payment.receipt is None else self.reversed_received).add(pid)

    # --- steps shared by the shortcuts ---------------------------------------------

    def _part(self, source: str, invoice_id: str, take: Decimal) -> None:
        self.alloc.allocations.setdefault(source, []).append((invoice_id, take))
        self.sources.setdefault(invoice_id, []).append(source)

    def _close(self, view: InvoiceView, on: date, by_cash: bool) -> None:
        """``view`` reached zero on ``on``."""
        self.alloc.close_dates[view.invoice_id] = on
        del self.open[view.invoice_id]
        self.oldest_due = _UNKNOWN
        if self.min_close is None or on < self.min_close:
            self.min_close = on
        if by_cash:
            view.settled_on = on
            weighted = view.due_base * max((on - view.due_on).days, 0)
            self.paid_amount += view.due_base
            self.paid_weighted += weighted
            item = (on, view.invoice_id, view.due_base, weighted)
            by_settle = self.by_settle
            index = bisect_right(by_settle, item)
            by_settle.insert(index, item)
            base = self.settle_base
            if base is not None:
                if index < base:
                    self.settle_base = base + 1  # the sums from the anchor on are unchanged, one place later
                else:
                    del self.settle_due[index - base + 1:], self.settle_late[index - base + 1:]
            self.dbt = self.dbt_recent = _UNKNOWN

    def oldest_open_due(self) -> date | None:
        """The earliest due date of an open invoice (kept until the open invoices change)."""
        oldest = self.oldest_due
        if oldest is _UNKNOWN:
            oldest = self.oldest_due = min((view.due_on for view in self.open.values()), default=None)
        return oldest  # type: ignore[return-value]

    def days_beyond_terms(self, lifetime: Lifetime, as_of: date,
                          window_days: int) -> tuple[Decimal | None, Decimal | None]:
        """The position's (``days_beyond_terms``, ``days_beyond_terms_recent``), kept until a settlement."""
        dbt = self.dbt
        if dbt is _UNKNOWN:
            paid_amount = lifetime.paid_amount + self.paid_amount
            paid_weighted = lifetime.paid_days_late_weighted + self.paid_weighted
            dbt = self.dbt = (paid_weighted / paid_amount).quantize(TENTH) if paid_amount else None
        recent = self.dbt_recent
        if recent is _UNKNOWN or recent[0] != as_of:  # type: ignore[index]
            start = as_of - timedelta(days=window_days)
            amount, weighted = self._window_sums(start, as_of) or self.recent_sums(start, as_of)
            recent = self.dbt_recent = (as_of, (weighted / amount).quantize(TENTH) if amount else None)
        return dbt, recent[1]  # type: ignore[return-value,index]

    def _window_sums(self, window_start: date, as_of: date) -> tuple[Decimal, Decimal] | None:
        """``recent_sums`` by prefix sums: O(log n) instead of O(window); None when that would not be exact.

        The prefix sums start at an anchor (``settle_base``: ``settle_due[k]`` is the sum over
        ``by_settle[base:base + k]``), set at the first window after they were dropped. Windows only
        move forward in a live ledger, and what retires settled long before the window, so retiring a
        group moves the anchor instead of making every retained settlement be summed again.

        The difference of two exact prefix sums has the window sum's value (not always its exponent:
        only for callers that use the value). Every addition is checked for exactness, so a window whose
        sum the plain loop would have rounded falls back to that loop.
        """
        if getcontext().prec != _EXACT.prec:
            return None
        by_settle = self.by_settle
        low = bisect_right(by_settle, window_start, key=_DAY)
        high = bisect_right(by_settle, as_of, key=_DAY)
        base = self.settle_base
        if base is None or low < base:
            base = self.settle_base = low
            self.settle_due, self.settle_late = [ZERO], [ZERO]
        due, late = self.settle_due, self.settle_late
        try:
            if len(due) + base <= high:
                add = _EXACT.add
                for index in range(len(due) - 1, high - base):
                    _, _, amount, weighted = by_settle[base + index]
                    due.append(add(due[index], amount))
                    late.append(add(late[index], weighted))
            return (_EXACT.subtract(due[high - base], due[low - base]),
                    _EXACT.subtract(late[high - base], late[low - base]))
        except Inexact:
            return None

    def recent_sums(self, window_start: date, as_of: date) -> tuple[Decimal, Decimal]:
        """Σ net due and Σ net due × days late of the invoices settled by cash in (window_start, as_of]."""
        by_settle = self.by_settle
        window = by_settle[bisect_right(by_settle, window_start, key=_DAY):bisect_right(by_settle, as_of, key=_DAY)]
        # sum() adds left to right from its start, exactly as a loop would (the same roundings, if any)
        return sum(map(_DUE, window), ZERO), sum(map(_LATE, window), ZERO)


_TEN_THOUSANDTH = Decimal("0.0001")
#: Decimal arithmetic that raises rather than round (the default precision).
_EXACT = Context(prec=getcontext().prec, traps=[Inexact])
_DUE = itemgetter(2)
_LATE = itemgetter(3)

def _book(state: CustomerState, config: LedgerConfig) -> _Book | None:
    """The state's book for ``config``, built if there is none; None for another config (or when off)."""
    book = state.book
    if book is not None:
        if book.config is config or book.config == config:
            return book
        return None
    if not INCREMENTAL or any(rate <= 0 for rate in config.fx_rates.values()):
        return None
    if any(payment_id.startswith("~credit:") for payment_id in state.payments):
        return None  # a payment named like a credit note: only the reference tells them apart
    book = _Book()
    book.config = config
    _allocate(state, config, book)
    state.book = book
    return book


def _book_before(book: _Book, state: CustomerState, event: ev.Event, config: LedgerConfig) -> Any:
    """What ``_book_after`` needs to know about the state before ``event`` applies; _STALE: rebuild."""
    if book.config is not config and book.config != config:
        return _STALE
    kind = event.type
    if kind == "invoice.issued":
        return event.invoice_id not in state.invoices  # type: ignore[attr-defined]
    if kind == "payment.received":
        return event.payment_id not in state.payments and not event.payment_id.startswith("~credit:")  # type: ignore[attr-defined]
    if kind == "payment.reversed":
        return _STALE
    return None


def _book_after(book: _Book, state: CustomerState, event: ev.Event, fresh: Any) -> bool:
    """Bring the book up to date with ``event`` (already applied); False when it cannot be done here."""
    kind = event.type
    if kind.startswith("customer.") or kind == "payment.promised":
        return True  # master data and promises move no cash
    if kind == "payment.received":
        return fresh and _book_payment(book, state, event)
    if kind == "invoice.issued":
        return fresh and _book_invoice(book, state, event)
    invoice_id = event.invoice_id  # type: ignore[attr-defined]
    invoice = state.invoices[invoice_id]
    if invoice.issue is None:
        book.orphans.add(invoice_id)  # waits for its invoice; moves no cash until then
        return True
    if kind == "invoice.disputed":
        return True
    return _book_amend(book, state, invoice)


def _book_invoice(book: _Book, state: CustomerState, event: ev.Event) -> bool:
    alloc = book.alloc
    if alloc.unapplied_base:
        return False  # waiting cash would go to it
    invoice = state.invoices[event.invoice_id]  # type: ignore[attr-defined]
    _, _, amount, currency, issued_on, due_on = invoice.issue  # type: ignore[misc]
    invoice_id = invoice.invoice_id
    if book.pass2_max is not None and (due_on, issued_on, invoice_id) < book.pass2_max:
        return False  # it would take on-account cash from a later invoice
    for payment_id in alloc.held_payments:
        if state.payments[payment_id].receipt[5] == invoice_id:  # type: ignore[index]
            return False
    fx = book.config.fx_rates[currency]
    amount_base = amount * fx
    adjusted_base = invoice.adjusted * fx
    credited_base = invoice.credited * fx
    written_off_base = invoice.written_off * fx
    due = amount_base + adjusted_base - credited_base - written_off_base
    if due <= 0:
        return False
    view = InvoiceView(invoice_id, issued_on, due_on, currency, amount, due, due, None,
                       amount_base, adjusted_base, credited_base, written_off_base)
    insort(alloc.invoices, view, key=_vkey)
    book.views[invoice_id] = view
    book.open[invoice_id] = view
    if book.oldest_due is not _UNKNOWN and (book.oldest_due is None or due_on < book.oldest_due):  # type: ignore[operator]
        book.oldest_due = due_on
    book.issued += amount_base
    book.adjusted += adjusted_base
    book.credited += credited_base
    book.written_off += written_off_base
    insort(book.by_issue, (issued_on, invoice_id))
    return True


def _book_payment(book: _Book, state: CustomerState, event: ev.Event) -> bool:
    payment = state.payments[event.payment_id]  # type: ignore[attr-defined]
    if not payment.counts:
        return False
    _, _, amount, currency, received_on, invoice_id = payment.receipt  # type: ignore[misc]
    payment_id = payment.payment_id
    key = (received_on, payment_id)
    alloc = book.alloc
    cash = to_base(amount, currency, book.config)
    if invoice_id is not None:
        view = book.views.get(invoice_id)
        if view is None or invoice_id in book.pass2 or not 0 < cash <= view.outstanding_base:
            return False  # held, or it would move on-account cash, or its excess would go on account
        last = book.named_last.get(invoice_id)
        if last is not None and key < last:
            return False
        alloc.applied_base += cash
        book.named_last[invoice_id] = key
        book.named_by.setdefault(invoice_id, []).append(payment_id)
        view.outstanding_base -= cash
        book._part(payment_id, invoice_id, cash)
        if view.outstanding_base == 0:
            book._close(view, max(received_on, view.issued_on), True)
    else:
        if book.on_account_max is not None and key < book.on_account_max:
            return False  # it would come before other cash on account
        alloc.applied_base += cash
        book.on_account_max = key
        for view in sorted(book.open.values(), key=_vkey):
            if cash <= 0:
                break
            take = min(cash, view.outstanding_base)
            view.outstanding_base -= take
            cash -= take
            book._part(payment_id, view.invoice_id, take)
            book.pass2.add(view.invoice_id)
            view_key = _vkey(view)
            if book.pass2_max is None or view_key > book.pass2_max:
                book.pass2_max = view_key
            if view.outstanding_base == 0:
                book._close(view, max(received_on, view.issued_on), True)
        alloc.unapplied_base += cash
    insort(book.counting, (received_on, payment_id, amount, invoice_id, currency))
    return True


def _book_amend(book: _Book, state: CustomerState, invoice: Invoice) -> bool:
    """An adjustment, dispute resolution or write-off of an issued invoice."""
    view = book.views[invoice.invoice_id]
    fx = book.config.fx_rates[view.currency]
    adjusted_base = invoice.adjusted * fx
    credited_base = invoice.credited * fx
    written_off_base = invoice.written_off * fx
    due = view.amount_base + adjusted_base - credited_base - written_off_base
    delta = due - view.due_base
    if delta == 0:
        outstanding = view.outstanding_base
    else:
        if view.outstanding_base <= 0 or view.invoice_id in book.pass2:
            return False
        outstanding = view.outstanding_base + delta  # every payment naming it went in full
        if outstanding < 0:
            return False
        paid = view.due_base - view.outstanding_base
        if outstanding == 0 and paid and view.invoice_id not in book.named_last:
            return False
    book.adjusted += adjusted_base - view.adjusted_base
    book.credited += credited_base - view.credited_base
    book.written_off += written_off_base - view.written_off_base
    view.adjusted_base, view.credited_base, view.written_off_base = adjusted_base, credited_base, written_off_base
    view.due_base = due
    if delta != 0:
        view.outstanding_base = outstanding
        if outstanding == 0:
            if view.due_base == 0:
                book._close(view, view.issued_on, False)  # nothing to pay: closed on its issue day
            else:
                book._close(view, max(book.named_last[view.invoice_id][0], view.issued_on), True)
    return True


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

    def to_json(self, names: Iterable[str] | None = None) -> dict[str, Any]:
        """The position as JSON values (Decimal and dates as text); ``names``: only those fields."""
        return _jsonable(
            {name: getattr(self, name) for name in (self.__slots__ if names is None else names)}  # type: ignore[attr-defined]
        )


_AS_IS = frozenset((str, int, float, bool, type(None)))
_AS_TEXT: dict[type, Any] = {Decimal: str, date: date.isoformat, datetime: datetime.isoformat}


def _jsonable(value: Any) -> Any:
    # Exact types first (a position holds a list of open invoices: this runs for each of their fields).
    kind = type(value)
    if kind in _AS_IS:
        return value
    as_text = _AS_TEXT.get(kind)
    if as_text is not None:
        return as_text(value)
    if kind is dict:
        return {key: item if type(item) in _AS_IS else _jsonable(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [item if type(item) in _AS_IS else _jsonable(item) for item in value]
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
        book = _book(state, config)
        cached = state.memo[key] = _position(state, as_of, config, book, allocate(state, config))
    return cached


def position_reference(state: CustomerState, as_of: date, config: LedgerConfig = DEFAULT_CONFIG) -> Position:
    """The position computed from the facts alone, without any kept index (what tests compare with)."""
    return _position(state, as_of, config, None, _allocate(state, config))


_DAY = itemgetter(0)
_DAY_ID = itemgetter(0, 1)


def _position(state: CustomerState, as_of: date, config: LedgerConfig, book: _Book | None,
              alloc: Allocation) -> Position:
    profile = state.profile
    currency = profile.currency or config.base_currency
    rate = config.fx_rates.get(currency, Decimal(1))

    def shown(base_amount: Decimal) -> Decimal:
        return (base_amount / rate).quantize(CENT)

    lifetime = state.lifetime
    window_start = as_of - timedelta(days=config.dso_window_days)
    sales_in_window = ZERO
    paid_amount, paid_weighted = lifetime.paid_amount, lifetime.paid_days_late_weighted
    recent_amount = recent_weighted = ZERO
    if book is not None:
        # The same sums from the kept totals and the invoices in the window only.
        issued, adjusted, credited, written_off = book.issued, book.adjusted, book.credited, book.written_off
        paid_amount += book.paid_amount
        paid_weighted += book.paid_weighted
        views = book.views
        by_issue = book.by_issue
        for index in range(bisect_right(by_issue, window_start, key=_DAY), bisect_right(by_issue, as_of, key=_DAY)):
            view = views[by_issue[index][1]]
            sales_in_window += max(view.amount_base + view.adjusted_base - view.credited_base, ZERO)
        recent_amount, recent_weighted = book.recent_sums(window_start, as_of)
        open_views = sorted(book.open.values(), key=_vkey) if len(book.open) > 1 else list(book.open.values())
    else:
        issued = adjusted = credited = written_off = ZERO
        open_views = []
        for view in alloc.invoices:
            issued += view.amount_base
            adjusted += view.adjusted_base
            credited += view.credited_base
            written_off += view.written_off_base
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
            if view.outstanding_base > 0:
                open_views.append(view)
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
    open_total = ZERO
    for view in open_views:
        open_total += view.outstanding_base
        days_past_due = (as_of - view.due_on).days
        bucket = bucket_for(days_past_due)
        aging_base[bucket] += view.outstanding_base
        found = _open_dispute(state.invoices[view.invoice_id], view, config, shown)
        disputed = ZERO
        if found is not None:
            disputed, entry = found
            disputed_total += disputed
            open_disputes.append(entry)
        open_invoices.append(
            {
                "invoice_id": view.invoice_id,
                "issued_on": view.issued_on,
                "due_on": view.due_on,
                "currency": view.currency,
                "amount": view.amount,
                "outstanding": shown(view.outstanding_base),
                "days_past_due": max(days_past_due, 0),
                "bucket": bucket,
                "disputed": shown(disputed),
            }
        )

    pending, broken = promise_status(state, alloc, as_of, config, book)
    rating = profile.ratings[-1] if profile.ratings else None
    limit = profile.credit_limit
    exposure = shown(exposure_base)
    held = [f"payment {pid} waits for its invoice" for pid in alloc.held_payments]
    if book is not None:
        held += [f"reversal of payment {pid} waits for the payment" for pid in book.held_reversals]
        held += [
            f"{_describe_orphan(state.invoices[iid])} for invoice {iid} waits for the invoice" for iid in book.orphans
        ]
    else:
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
    state: CustomerState, alloc: Allocation, as_of: date, config: LedgerConfig, book: _Book | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    pending: list[dict[str, Any]] = []
    broken: list[dict[str, Any]] = []
    if not state.promises:
        return pending, broken
    if book is None:
        book = _current_book(state, config, alloc)
    views = book.views if book is not None else {view.invoice_id: view for view in alloc.invoices}
    counting = book.counting if book is not None else None
    for promise in sorted(state.promises.values(), key=lambda p: (p.promised_on, p.event_id)):
        deadline = promise.promised_on + timedelta(days=config.promise_grace_days)
        if _promise_kept(state, views, promise, deadline, counting):
            continue
        entry = {
            "event_id": promise.event_id,
            "invoice_id": promise.invoice_id,
            "amount": promise.amount,
            "promised_on": promise.promised_on,
        }
        (broken if as_of > deadline else pending).append(entry)
    return pending, broken


def _promise_kept(state: CustomerState, views: dict[str, InvoiceView], promise: Promise, deadline: date,
                  counting: list[tuple[date, str, Decimal, str | None, str]] | None = None) -> bool:
    if promise.invoice_id is not None:
        view = views.get(promise.invoice_id)
        if view is not None and view.outstanding_base <= 0 and (view.settled_on is None or view.settled_on <= deadline):
            return True
    paid = ZERO
    if counting is not None:
        # The payments that count, by day of receipt: only those between the promise and its deadline.
        for index in range(bisect_left(counting, promise.made_on, key=_DAY), len(counting)):
            received_on, _, amount, invoice_id, _ = counting[index]
            if received_on > deadline:
                break
            if promise.invoice_id is None or invoice_id in (None, promise.invoice_id):
                paid += amount
        return paid >= promise.amount
    for payment in state.payments.values():
        if not payment.counts:
            continue
        _, _, amount, _, received_on, invoice_id = payment.receipt  # type: ignore[misc]
        if not promise.made_on <= received_on <= deadline:
            continue
        if promise.invoice_id is None or invoice_id in (None, promise.invoice_id):
            paid += amount
    return paid >= promise.amount


# --- cheap figures -------------------------------------------------------------


def _current_book(state: CustomerState, config: LedgerConfig, alloc: Allocation | None = None) -> _Book | None:
    """The state's book if it is there for ``config`` (and holds ``alloc``); never builds one."""
    book = state.book
    if book is None or not (book.config is config or book.config == config):
        return None
    if alloc is not None and book.alloc is not alloc:
        return None
    return book


def open_views(state: CustomerState, config: LedgerConfig = DEFAULT_CONFIG) -> list[InvoiceView]:
    """The issued invoices with something outstanding, in no particular order (read-only)."""
    book = _book(state, config)
    if book is not None:
        return list(book.open.values())
    return [view for view in allocate(state, config).invoices if view.outstanding_base > 0]


def views_in_order(state: CustomerState, config: LedgerConfig, also: Iterable[str] = ()) -> list[InvoiceView]:
    """The open invoices and those named in ``also``, in the allocation's order (read-only).

    Equal to ``allocate(...).invoices`` filtered to those; without looking at the other invoices.
    """
    book = _book(state, config)
    if book is None:
        wanted = set(also)
        return [view for view in allocate(state, config).invoices
                if view.outstanding_base > 0 or view.invoice_id in wanted]
    picked = dict(book.open)
    views = book.views
    for invoice_id in also:
        view = views.get(invoice_id)
        if view is not None:
            picked[invoice_id] = view
    return sorted(picked.values(), key=_vkey)


def _open_dispute(invoice: Invoice, view: InvoiceView, config: LedgerConfig,
                  shown: Callable[[Decimal], Any]) -> tuple[Decimal, dict[str, Any]] | None:
    """The invoice's open dispute: the amount in dispute (base currency, at most what is outstanding) and its entry."""
    dispute = invoice.open_dispute() if invoice.disputes else None
    if dispute is None:
        return None
    _, amount, reason = dispute
    disputed = view.outstanding_base if amount is None else min(
        to_base(amount, view.currency, config), view.outstanding_base
    )
    return disputed, {"invoice_id": view.invoice_id, "amount": shown(disputed), "reason": reason,
                      "opened_at": dispute[0]}


def cash_on_account(state: CustomerState, config: LedgerConfig = DEFAULT_CONFIG) -> bool:
    """Does any cash wait, or settle invoices in the oldest-first pool, instead of its own invoice?

    True for held or unapplied cash, credit notes used as cash, cash without an
    invoice, and the excess of an over-payment.
    """
    alloc = allocate(state, config)
    if alloc.unapplied_base or alloc.held_payments:
        return True
    book = _current_book(state, config, alloc)
    if book is not None:
        return bool(book.pass2)
    return pooled_cash(state, alloc)


def pooled_cash(state: CustomerState, alloc: Allocation) -> bool:
    """:func:`cash_on_account` worked out from ``alloc`` itself (the reference, without the kept book)."""
    if alloc.unapplied_base or alloc.held_payments:
        return True
    payments = state.payments
    for source, parts in alloc.allocations.items():
        payment = payments.get(source)
        if payment is None or payment.receipt is None:
            return True  # credit notes used as cash
        named = payment.receipt[5]
        if named is None or any(invoice_id != named for invoice_id, _ in parts):
            return True
    return False


def settled_count(state: CustomerState, as_of: date, config: LedgerConfig = DEFAULT_CONFIG) -> int:
    """Retained invoices settled by cash on or before ``as_of``."""
    book = _book(state, config)
    if book is not None:
        return bisect_right(book.by_settle, as_of, key=_DAY)
    return sum(1 for view in allocate(state, config).invoices if view.settled_on is not None and view.settled_on <= as_of)


def figures(state: CustomerState, as_of: date, config: LedgerConfig = DEFAULT_CONFIG) -> Figures:
    """The cheap figures of the position on ``as_of`` (memoized per state revision and day, like ``position``)."""
    key = ("figures", as_of, id(config))
    cached = state.memo.get(key)
    if cached is None:
        cached = state.memo[key] = Figures(state, as_of, config)
    return cached


class Figures:
    """The cheap parts of ``position(state, as_of, config)``, each worked out only when read.

    Every attribute equals the position's field of the same name (or says
    something exact about it), but costs O(1), O(open invoices) or O(invoices
    in the DSO window) instead of a whole position. Detectors read these
    first and build the position only when they have something to report.
    Without a kept allocation (another config, or the shortcuts off) they are
    read from the position itself.
    """

    __slots__ = ("state", "as_of", "config", "_book", "_position", "_exposure_base", "_exposure", "_utilisation",
                 "_open", "_broken")

    def __init__(self, state: CustomerState, as_of: date, config: LedgerConfig = DEFAULT_CONFIG):
        self.state, self.as_of, self.config = state, as_of, config
        self._book = _book(state, config)
        self._position: Position | None = None if self._book is not None else position(state, as_of, config)
        self._exposure_base: Decimal | None = None
        self._exposure: Decimal | None = None
        self._utilisation: Decimal | None = None
        self._open: list[InvoiceView] | None = None
        self._broken: list[dict[str, Any]] | None = None

    @property
    def currency(self) -> str:
        return self.state.profile.currency or self.config.base_currency

    @property
    def credit_limit(self) -> Decimal | None:
        return self.state.profile.credit_limit

    @property
    def insured_limit(self) -> Decimal | None:
        return self.state.profile.insured_limit

    def _shown(self, base_amount: Decimal) -> Decimal:
        return (base_amount / self.config.fx_rates.get(self.currency, Decimal(1))).quantize(CENT)

    @property
    def exposure(self) -> Decimal:
        if self._exposure is not None:  # (never set when the figures come from a position)
            return self._exposure
        if self._position is not None:
            return self._position.exposure
        book, lifetime = self._book, self.state.lifetime
        exposure_base = (
            (book.issued + lifetime.issued)  # type: ignore[union-attr]
            + (book.adjusted + lifetime.adjusted)  # type: ignore[union-attr]
            - (book.alloc.applied_base + lifetime.settled)  # type: ignore[union-attr]
            - (book.credited + lifetime.credited)  # type: ignore[union-attr]
            - (book.written_off + lifetime.written_off)  # type: ignore[union-attr]
        )
        exposure = self._exposure = self._shown(exposure_base)
        return exposure

    @property
    def utilisation(self) -> Decimal | None:
        if self._position is not None:
            return self._position.utilisation
        utilisation = self._utilisation
        if utilisation is None:
            limit = self.state.profile.credit_limit
            if not limit:
                return None
            utilisation = self._utilisation = (self.exposure / limit).quantize(_TEN_THOUSANDTH)
        return utilisation

    def _views(self) -> list[InvoiceView]:
        if self._open is None:
            self._open = list(self._book.open.values())  # type: ignore[union-attr]
        return self._open

    @property
    def max_days_past_due(self) -> int:
        """The most days past due of an open invoice (0 when none is past due)."""
        if self._position is not None:
            return max((inv["days_past_due"] for inv in self._position.open_invoices), default=0)
        oldest = self._book.oldest_open_due()  # type: ignore[union-attr]
        return 0 if oldest is None else max((self.as_of - oldest).days, 0)

    @property
    def open_invoices(self) -> list[dict[str, Any]]:
        """The position's ``open_invoices`` with ``invoice_id``, ``days_past_due`` and ``outstanding`` only."""
        if self._position is not None:
            return self._position.open_invoices
        as_of, shown = self.as_of, self._shown
        return [
            {"invoice_id": view.invoice_id, "days_past_due": max((as_of - view.due_on).days, 0),
             "outstanding": shown(view.outstanding_base)}
            for view in sorted(self._views(), key=_vkey)
        ]

    @property
    def aging(self) -> dict[str, Decimal]:
        """The position's ``aging``."""
        if self._position is not None:
            return self._position.aging
        aging_base = {bucket: ZERO for bucket in AGING_BUCKETS}
        as_of = self.as_of
        for view in sorted(self._views(), key=_vkey):
            aging_base[bucket_for((as_of - view.due_on).days)] += view.outstanding_base
        shown = self._shown
        return {bucket: shown(amount) for bucket, amount in aging_base.items()}

    @property
    def promises_broken(self) -> list[dict[str, Any]]:
        """The position's ``promises_broken`` (the ledger's rule, without the rest of the position)."""
        if self._position is not None:
            return self._position.promises_broken
        if self._broken is None:
            book = self._book
            self._broken = promise_status(self.state, book.alloc, self.as_of, self.config, book)[1]  # type: ignore[union-attr]
        return self._broken

    def is_open(self, invoice_id: str) -> bool:
        """Is ``invoice_id`` among the position's ``open_invoices``?"""
        if self._position is not None:
            return any(inv["invoice_id"] == invoice_id for inv in self._position.open_invoices)
        return invoice_id in self._book.open  # type: ignore[union-attr]

    def cash_received_since(self, day: date) -> Iterator[tuple[Decimal, str, str | None]]:
        """(amount, currency, invoice id named) of each payment that counts, received on or after ``day``."""
        book = self._book
        if book is None:
            for payment in self.state.payments.values():
                if payment.counts and payment.receipt[4] >= day:  # type: ignore[index]
                    yield payment.receipt[2], payment.receipt[3], payment.receipt[5]  # type: ignore[index]
            return
        counting = book.counting
        for index in range(bisect_left(counting, day, key=_DAY), len(counting)):
            _, _, amount, invoice_id, currency = counting[index]
            yield amount, currency, invoice_id

    def disputes(self) -> tuple[list[dict[str, Any]], Decimal]:
        """The position's ``open_disputes`` and ``disputed_amount``."""
        if self._position is not None:
            return self._position.open_disputes, self._position.disputed_amount
        invoices, config, shown = self.state.invoices, self.config, self._shown
        open_disputes: list[dict[str, Any]] = []
        disputed_total = ZERO
        for view in sorted(self._views(), key=_vkey):
            found = _open_dispute(invoices[view.invoice_id], view, config, shown)
            if found is not None:
                disputed, entry = found
                disputed_total += disputed
                open_disputes.append(entry)
        return open_disputes, shown(disputed_total)

    def outstanding_past(self, days: int) -> Decimal:
        """Σ of the open invoices' ``outstanding`` (as shown) more than ``days`` past due."""
        if self._position is not None:
            return sum((inv["outstanding"] for inv in self._position.open_invoices if inv["days_past_due"] > days),
                       Decimal(0))
        as_of, shown = self.as_of, self._shown
        return sum((shown(view.outstanding_base) for view in self._views() if (as_of - view.due_on).days > days),
                   Decimal(0))

    @property
    def any_open_dispute(self) -> bool:
        """Is any open invoice in dispute (``open_disputes`` not empty)?"""
        if self._position is not None:
            return bool(self._position.open_disputes)
        invoices = self.state.invoices
        for view in self._views():
            invoice = invoices[view.invoice_id]
            if invoice.disputes and invoice.open_dispute() is not None:
                return True
        return False

    @property
    def promise_deadline_passed(self) -> bool:
        """Has the deadline of any promise passed? (Without one, ``promises_broken`` is empty.)"""
        if self._position is not None:
            return bool(self._position.promises_broken)
        grace = timedelta(days=self.config.promise_grace_days)
        as_of = self.as_of
        return any(as_of > promise.promised_on + grace for promise in self.state.promises.values())

    def days_beyond_terms(self) -> tuple[Decimal | None, Decimal | None]:
        """(``days_beyond_terms``, ``days_beyond_terms_recent``)."""
        if self._position is not None:
            return self._position.days_beyond_terms, self._position.days_beyond_terms_recent
        return self._book.days_beyond_terms(self.state.lifetime, self.as_of,  # type: ignore[union-attr]
                                            self.config.dso_window_days)


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
    book = _book(state, config)
    if book is not None:
        if book.min_close is None or book.min_close >= cutoff:
            return  # nothing closed long enough ago (the common case, without looking at any invoice)
        alloc = book.alloc
    else:
        alloc = allocate(state, config)
    candidates = {
        invoice_id for invoice_id, closed_on in alloc.close_dates.items() if closed_on < cutoff
    }
    if not candidates:
        return
    if book is not None:
        retire_payments, blocked_invoices = _retirees_near(state, book, candidates, cutoff, config)
    else:
        retire_payments, blocked_invoices = _retirees(state, alloc, candidates, cutoff, config)
    retire_invoices = candidates - blocked_invoices
    if not retire_invoices:
        return
    views = book.views if book is not None else {view.invoice_id: view for view in alloc.invoices}
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
    retired: dict[str, Payment] = {}
    for payment_id in retire_payments:
        payment = retired[payment_id] = state.payments.pop(payment_id)
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
    if book is not None and not _book_retire(book, retire_invoices, retired, config):
        state.book = None


def _retire_or_block(payment: Payment, parts: list[tuple[str, Decimal]], candidates: set[str], cutoff: date,
                     config: LedgerConfig, retire_payments: set[str], blocked_invoices: set[str]) -> None:
    """A payment may go only if all its cash went to candidates and it was fully used."""
    received_on = payment.receipt[4]  # type: ignore[index]
    used = sum((amount for _, amount in parts), ZERO)
    cash = to_base(payment.receipt[2], payment.receipt[3], config) if payment.counts else ZERO  # type: ignore[index]
    fully_used = payment.counts and used == cash
    reversed_long_ago = payment.reversal is not None and payment.reversal[0][:10] < cutoff.isoformat()
    all_to_candidates = all(invoice_id in candidates for invoice_id, _ in parts)
    if received_on < cutoff and all_to_candidates and (fully_used or reversed_long_ago and not parts):
        retire_payments.add(payment.payment_id)
    else:
        blocked_invoices.update(invoice_id for invoice_id, _ in parts)


def _retirees(state: CustomerState, alloc: Allocation, candidates: set[str], cutoff: date,
              config: LedgerConfig) -> tuple[set[str], set[str]]:
    """The payments that go with the candidates, and the candidates that must stay (from all the facts)."""
    retire_payments: set[str] = set()
    blocked_invoices: set[str] = set()
    for payment in state.payments.values():
        if payment.receipt is None:
            continue
        _retire_or_block(payment, alloc.allocations.get(payment.payment_id, []), candidates, cutoff, config,
                         retire_payments, blocked_invoices)
    # Credit notes used as cash on account tie invoices together too.
    for source, parts in alloc.allocations.items():
        if source.startswith("~credit:") and source[8:] not in candidates:
            blocked_invoices.update(invoice_id for invoice_id, _ in parts)
    return retire_payments, blocked_invoices


def _retirees_near(state: CustomerState, book: _Book, candidates: set[str], cutoff: date,
                   config: LedgerConfig) -> tuple[set[str], set[str]]:
    """What ``_retirees`` finds, looking only at the cash that went to the candidates.

    A payment with no cash on a candidate can only block invoices that are no
    candidates (or, settling nothing, stay unless it was reversed), so the
    sources of the candidates and the reversed payments decide everything.
    """
    allocations = book.alloc.allocations
    retire_payments: set[str] = set()
    blocked_invoices: set[str] = set()
    looked: set[str] = set()
    for invoice_id in candidates:
        for source in book.sources.get(invoice_id, ()):
            if source in looked:
                continue
            looked.add(source)
            parts = allocations[source]
            if source.startswith("~credit:"):
                if source[8:] not in candidates:
                    blocked_invoices.update(target for target, _ in parts)
                continue
            _retire_or_block(state.payments[source], parts, candidates, cutoff, config, retire_payments,
                             blocked_invoices)
    for payment_id in book.reversed_received:
        if payment_id not in looked:
            _retire_or_block(state.payments[payment_id], allocations.get(payment_id, []), candidates, cutoff, config,
                             retire_payments, blocked_invoices)
    return retire_payments, blocked_invoices


def _drop_before(items: list[Any], end: int, keep: Callable[[Any], bool]) -> None:
    """Remove from ``items[:end]`` what ``keep`` refuses, in place (the rest is left as it is)."""
    if end:
        items[:end] = [item for item in items[:end] if keep(item)]


def _book_retire(book: _Book, invoices: set[str], payments: dict[str, Payment], config: LedgerConfig) -> bool:
    """Take a retired group out of the book; False unless the rest settles exactly as before.

    That holds when no cash crosses the group's border: the retired invoices
    were settled only by retired payments and credit notes, those settled
    nothing else, and no remaining payment names a retired invoice.
    """
    alloc = book.alloc
    allocations = alloc.allocations
    for invoice_id in invoices:
        for source in book.sources.get(invoice_id, ()):
            if source not in payments and not (source.startswith("~credit:") and source[8:] in invoices):
                return False
        for payment_id in book.named_by.get(invoice_id, ()):
            if payment_id not in payments:
                return False
        for target, _ in allocations.get(f"~credit:{invoice_id}", ()):
            if target not in invoices:
                return False
    for payment_id in payments:
        for target, _ in allocations.get(payment_id, ()):
            if target not in invoices:
                return False
    views = book.views
    recompute_max = False
    retired_keys, retired_issues, retired_settles = [], [], []
    for invoice_id in invoices:
        view = views.pop(invoice_id)
        retired_keys.append(_vkey(view))
        retired_issues.append((view.issued_on, invoice_id))
        if view.settled_on is not None:
            retired_settles.append((view.settled_on, invoice_id))
        book.open.pop(invoice_id, None)
        del alloc.close_dates[invoice_id]
        book.named_last.pop(invoice_id, None)
        book.named_by.pop(invoice_id, None)
        book.sources.pop(invoice_id, None)
        allocations.pop(f"~credit:{invoice_id}", None)
        if invoice_id in book.pass2:
            book.pass2.discard(invoice_id)
            recompute_max = recompute_max or (book.pass2_max is not None and book.pass2_max[2] == invoice_id)
        book.issued -= view.amount_base
        book.adjusted -= view.adjusted_base
        book.credited -= view.credited_base
        book.written_off -= view.written_off_base
        if view.settled_on is not None and view.due_base > 0:
            book.paid_amount -= view.due_base
            book.paid_weighted -= view.due_base * max((view.settled_on - view.due_on).days, 0)
    for payment_id, payment in payments.items():
        allocations.pop(payment_id, None)
        book.reversed_received.discard(payment_id)
        if payment.counts:
            alloc.applied_base -= to_base(payment.receipt[2], payment.receipt[3], config)  # type: ignore[index]
    # Each list is sorted and what retires is usually old: only the part up to the last retired item's
    # place in that order is filtered (the bounds are the retired items' own keys).
    _drop_before(alloc.invoices, bisect_right(alloc.invoices, max(retired_keys), key=_vkey),
                 lambda view: view.invoice_id not in invoices)
    _drop_before(book.by_issue, bisect_right(book.by_issue, max(retired_issues)), lambda item: item[1] not in invoices)
    if retired_settles:
        by_settle = book.by_settle
        end, count = bisect_right(by_settle, max(retired_settles), key=_DAY_ID), len(by_settle)
        _drop_before(by_settle, end, lambda item: item[1] not in invoices)
        base = book.settle_base
        if base is not None and end <= base:
            book.settle_base = base - (count - len(by_settle))  # all of them left from before the anchor
        else:
            book.settle_base, book.settle_due, book.settle_late = None, [ZERO], [ZERO]
    if payments:
        last_received = max(payment.receipt[4] for payment in payments.values())  # type: ignore[index]
        _drop_before(book.counting, bisect_right(book.counting, last_received, key=_DAY),
                     lambda item: item[1] not in payments)
    book.min_close = min(alloc.close_dates.values(), default=None)
    book.oldest_due = book.dbt = book.dbt_recent = _UNKNOWN
    if recompute_max:
        book.pass2_max = max((_vkey(views[iid]) for iid in book.pass2), default=None)
    return True


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
