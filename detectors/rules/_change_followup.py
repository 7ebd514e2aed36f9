"""Shared logic of ``bank_details_change`` and ``ownership_change`` (not a detector itself).

A change of bank account or of owners is noted (info). What makes it a
warning (``warning_signs``, by default two: critical) is what follows within
``window_days``: an unusually large invoice (the "bust-out" pattern: a new
owner or a new account, a big order, then silence), slower payment than the
customer's habit, another change. Everything is derived
from the ledger facts, so the answer does not depend on the order in which
events arrived; only the invoice-anomaly score of the models, which exists
solely at the moment its invoice arrives, is kept in memory.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from statistics import median
from typing import Any, ClassVar

from pydantic import Field

from detectors.base import DetectionContext, Detector, DetectorOptions, Finding, Reason, money
from detectors.rules._common import dec, figures, in_limit_currency, stamp_day
from pipeline.ledger import DEFAULT_CONFIG, allocate

FOLLOW_UPS = frozenset({"invoice.issued", "payment.received", "tick"})


class ChangeFollowUpOptions(DetectorOptions):
    cooldown_days: int = Field(60, ge=0, le=365,
                               description="quiet days before an episode may start again (as long as the window, "
                                           "so that what follows a change escalates the change's own alert)")
    window_days: int = Field(60, ge=1, le=365, description="how long after a change what follows counts")
    large_invoice_factor: float = Field(3.0, ge=1.1, le=100.0,
                                        description="an invoice this many times the customer's median invoice is unusual")
    min_invoice_amount: float = Field(1000.0, ge=0, le=1e9,
                                      description="invoices below this (limit currency) are never unusual")
    history_invoices: int = Field(12, ge=1, le=100, description="how many invoices before the change form the median")
    min_history_invoices: int = Field(3, ge=1, le=100,
                                      description="fewer earlier invoices than this: no median, only the model can tell")
    anomaly_threshold: float = Field(0.95, ge=0.5, le=1.0,
                                     description="invoice anomaly score (online model) that counts as unusual")
    slower_by_days: int = Field(15, ge=1, le=365,
                                description="paying this many days later than the customer's usual days late is slower")
    warning_signs: int = Field(2, ge=1, le=3,
                               description="follow-up signs (unusual invoice, slower payment, another change) that make "
                                           "a warning; fewer are noted (info)")
    critical_signs: int = Field(2, ge=1, le=3, description="follow-up signs that make it critical")

    def check(self) -> str | None:
        if self.warning_signs > self.critical_signs:
            return "warning_signs must not be above critical_signs"
        return None


@dataclass(frozen=True, slots=True)
class Change:
    stamp: str
    event_id: str
    description: str | None = None

    @property
    def day(self) -> date:
        return stamp_day(self.stamp)


class ChangeFollowUp(Detector):
    """Base of the change detectors; subclasses name the change and where the ledger keeps it."""

    episode = "event"
    Options = ChangeFollowUpOptions
    options: ChangeFollowUpOptions
    change_type: ClassVar[str]
    #: "Bank details changed" / "Ownership changed"
    what: ClassVar[str]
    #: The ledger profile's list of these changes, each ``(stamp, event id[, description])`` (see ``changes``).
    profile_list: ClassVar[str]

    def changes(self, ctx: DetectionContext) -> list[Change]:
        return [Change(*row) for row in getattr(ctx.ledger.profile, self.profile_list)]

    def detect(self, ctx: DetectionContext, memory: dict[str, Any]) -> tuple[list[Finding], dict[str, Any]]:
        opts = self.options
        recorded = getattr(ctx.ledger.profile, self.profile_list)
        if not recorded:
            return [], {}  # no change on record: no anchor, as below
        window = timedelta(days=opts.window_days)
        event = ctx.event
        if event is None or event.type != self.change_type:
            # Without a change in its window (the common case) there is no anchor: say so from the stamps alone.
            today = ctx.today
            opened = today - window
            for change in recorded:
                if opened <= stamp_day(change[0]) <= today:
                    break
            else:
                return [], {}
        changes = self.changes(ctx)
        # The earliest change whose window is still open; a change arriving long after the fact stands alone.
        live = [c for c in changes if c.day <= ctx.today <= c.day + window]
        anchor = live[0] if live else None
        if anchor is None and ctx.event is not None and ctx.event.type == self.change_type:
            anchor = next((c for c in changes if c.event_id == ctx.event.event_id), None)
        if anchor is None:
            return [], {}
        if memory.get("since") != anchor.event_id:
            memory = {"since": anchor.event_id, "anomalous": {}}
        else:
            memory = {"since": anchor.event_id, "anomalous": dict(memory.get("anomalous", {}))}
        score = ctx.models.invoice_anomaly
        if (event is not None and event.type == "invoice.issued" and score is not None
                and score >= opts.anomaly_threshold and anchor.day <= event.issued_on <= anchor.day + window):  # type: ignore[attr-defined]
            memory["anomalous"][event.invoice_id] = round(float(score), 4)  # type: ignore[attr-defined]

        detail = f" ({anchor.description})" if anchor.description else ""
        reasons = [Reason(self.change_type.split(".", 1)[1], f"{self.what} on {anchor.day.isoformat()}{detail}")]
        signs: list[str] = []
        unusual = self._unusual_invoices(ctx, anchor, memory["anomalous"])
        if unusual:
            large = any(reason.code == "large_invoice_after_change" for reason in unusual)
            adjective = "unusually large" if large else "unusual"
            signs.append(f"an {adjective} invoice" if len(unusual) == 1 else f"{adjective} invoices")
            reasons.extend(unusual)
        slower = self._slower_payment(ctx, anchor)
        if slower:
            signs.append("slower payment")
            reasons.extend(slower)
        repeated = [c for c in changes
                    if c.event_id != anchor.event_id and anchor.day <= c.day <= min(anchor.day + window, ctx.today)]
        if repeated:
            signs.append("another change")
            listed = ", ".join(c.day.isoformat() for c in repeated)
            reasons.append(Reason("repeated_change",
                                  f"{len(repeated) + 1} such changes within {opts.window_days} days (also {listed})",
                                  float(len(repeated) + 1), 2.0))
        is_change_event = event is not None and event.type == self.change_type
        if not signs and not is_change_event:
            return [], memory
        severity = ("critical" if len(signs) >= opts.critical_signs else "warning" if len(signs) >= opts.warning_signs
                    else "info")
        title = f"{self.what} on {anchor.day.isoformat()}"
        if signs:
            title += ", then " + " and ".join(signs)
        return [self.finding(severity, title, reasons, ctx, (anchor.event_id,))], memory

    # --- follow-up signs --------------------------------------------------------

    def _unusual_invoices(self, ctx: DetectionContext, anchor: Change, anomalous: dict[str, float]) -> list[Reason]:
        opts = self.options
        end = anchor.day + timedelta(days=opts.window_days)
        currency = figures(ctx).currency
        before: list[tuple[date, str, Decimal]] = []
        after: list[tuple[date, str, Decimal]] = []
        for invoice in ctx.ledger.invoices.values():
            if invoice.issue is None:
                continue
            amount = in_limit_currency(ctx, invoice.amount, invoice.currency)
            if invoice.issued_on < anchor.day:
                before.append((invoice.issued_on, invoice.invoice_id, amount))
            elif invoice.issued_on <= end:
                after.append((invoice.issued_on, invoice.invoice_id, amount))
        before.sort()
        recent = [amount for _, _, amount in before[-opts.history_invoices:]]
        baseline: Decimal | None = None
        basis = ""
        if len(recent) >= opts.min_history_invoices:
            baseline = Decimal(median(recent))
            basis = f"median of the {len(recent)} invoices before the change"
        else:
            lifetime = ctx.ledger.lifetime
            count = lifetime.invoices + len(recent)
            if lifetime.invoices and count >= opts.min_history_invoices:
                base_currency = (ctx.ledger_config or DEFAULT_CONFIG).base_currency
                total = in_limit_currency(ctx, lifetime.issued, base_currency) + sum(recent, Decimal(0))
                baseline = (total / count).quantize(Decimal("0.01"))
                basis = f"average of the {count} invoices before the change"
        reasons = []
        for issued_on, invoice_id, amount in sorted(after):
            if amount < dec(opts.min_invoice_amount):
                continue
            if baseline is not None and baseline > 0 and amount >= baseline * dec(opts.large_invoice_factor):
                reasons.append(Reason("large_invoice_after_change",
                                      f"Invoice {invoice_id} of {money(amount, currency)} issued on {issued_on.isoformat()} "
                                      f"is {float(amount / baseline):.1f}× the usual invoice ({basis}: "
                                      f"{money(baseline, currency)}; unusual from {opts.large_invoice_factor:g}×)",
                                      float(amount), float(baseline * dec(opts.large_invoice_factor))))
            elif invoice_id in anomalous:
                reasons.append(Reason("anomalous_invoice_after_change",
                                      f"Invoice {invoice_id} of {money(amount, currency)} issued on {issued_on.isoformat()} "
                                      f"looks unusual to the model (anomaly score {anomalous[invoice_id]:.2f}, "
                                      f"unusual from {opts.anomaly_threshold:.2f})",
                                      anomalous[invoice_id], opts.anomaly_threshold))
        return reasons

    def _slower_payment(self, ctx: DetectionContext, anchor: Change) -> list[Reason]:
        """Invoices settled after the change later than usual, or due after it and still unpaid that long."""
        opts = self.options
        end = anchor.day + timedelta(days=opts.window_days)
        alloc = allocate(ctx.ledger, ctx.ledger_config or DEFAULT_CONFIG)
        lifetime = ctx.ledger.lifetime
        weighted, amount = lifetime.paid_days_late_weighted, lifetime.paid_amount
        for view in alloc.invoices:
            if view.settled_on is not None and view.settled_on < anchor.day and view.due_base > 0:
                weighted += view.due_base * max((view.settled_on - view.due_on).days, 0)
                amount += view.due_base
        usual = float(weighted / amount) if amount else 0.0
        limit = usual + opts.slower_by_days
        habit = (f"before the change it paid {usual:.0f} days late on average" if amount
                 else "no payment history before the change")
        reasons = []
        for view in alloc.invoices:
            if view.settled_on is not None:
                if not anchor.day <= view.settled_on <= min(end, ctx.today):
                    continue
                late = (view.settled_on - view.due_on).days
                if late >= limit:
                    reasons.append(Reason("slower_payment_after_change",
                                          f"Invoice {view.invoice_id} was paid on {view.settled_on.isoformat()}, {late} days "
                                          f"after its due date; {habit} (slower from {limit:.0f} days)",
                                          float(late), round(limit, 1)))
            elif view.outstanding_base > 0 and view.due_on >= anchor.day:
                late = (ctx.today - view.due_on).days
                if late >= limit:
                    reasons.append(Reason("unpaid_after_change",
                                          f"Invoice {view.invoice_id}, due {view.due_on.isoformat()} after the change, is "
                                          f"{late} days past due and unpaid; {habit} (slower from {limit:.0f} days)",
                                          float(late), round(limit, 1)))
        return reasons[:5]
