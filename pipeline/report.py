"""Human-readable text for a customer's position (``customer show``, demo)."""

from __future__ import annotations

from decimal import Decimal

from typing import Any

from pipeline.ledger import AGING_BUCKETS, Position


def _money(amount: Decimal | None, currency: str) -> str:
    return "—" if amount is None else f"{amount:,.2f} {currency}"


def format_position(pos: Position) -> str:
    cur = pos.currency
    lines = [
        f"{pos.name or '(not registered yet)'} [{pos.customer_id}]"
        + (f" · {pos.country}" if pos.country else "")
        + (f" · {pos.industry}" if pos.industry else ""),
        f"  as of {pos.as_of.isoformat()}",
        f"  exposure      {_money(pos.exposure, cur)}"
        + (f" of limit {_money(pos.credit_limit, cur)} ({pos.utilisation * 100:.0f}%)" if pos.utilisation is not None else ""),
        f"  insured limit {_money(pos.insured_limit, cur)}",
        f"  terms         {pos.payment_terms_days if pos.payment_terms_days is not None else '—'} days"
        f" · DSO {pos.dso_days if pos.dso_days is not None else '—'}"
        f" · days beyond terms {pos.days_beyond_terms if pos.days_beyond_terms is not None else '—'}",
        f"  rating        {pos.rating or '—'}"
        + (f" ({pos.rating_agency}, PD {pos.probability_of_default})" if pos.rating else ""),
        "  aging         " + "  ".join(f"{bucket}: {pos.aging[bucket]:,.2f}" for bucket in AGING_BUCKETS),
    ]
    if pos.unapplied_cash:
        lines.append(f"  cash on account {_money(pos.unapplied_cash, cur)}")
    if pos.open_invoices:
        lines.append("  open invoices:")
        for inv in pos.open_invoices:
            lines.append(
                f"    {inv['invoice_id']:<14} due {inv['due_on']}  {inv['outstanding']:>14,.2f} {cur}"
                f"  {inv['days_past_due']:>4} days past due"
                + (f"  disputed {inv['disputed']:,.2f}" if inv["disputed"] else "")
            )
    for promise in pos.promises_broken:
        lines.append(f"  broken promise: {promise['amount']:,.2f} by {promise['promised_on']} ({promise['invoice_id'] or 'account'})")
    for promise in pos.promises_pending:
        lines.append(f"  promise: {promise['amount']:,.2f} by {promise['promised_on']} ({promise['invoice_id'] or 'account'})")
    for item in pos.held:
        lines.append(f"  held: {item}")
    return "\n".join(lines)


def format_backtest(result: Any) -> str:
    lines = [f"{result.events:,} events replayed in {result.seconds:.1f} s "
             f"({result.events / max(result.seconds, 1e-9):,.0f}/s), {result.ticks:,} clock ticks"]
    if result.rejected:
        lines.append(f"{len(result.rejected)} line{'s' if len(result.rejected) != 1 else ''} rejected:")
        lines.extend(f"  line {item['line']}: {item['reason']}" for item in result.rejected[:50])
        if len(result.rejected) > 50:
            lines.append(f"  … and {len(result.rejected) - 50} more")
    lines.append(f"{len(result.alerts)} alerts: " + (", ".join(f"{name} {count}" for name, count in result.by_detector.items()) or "none"))
    if result.model:
        shown = {key: value for key, value in result.model.items() if isinstance(value, (int, float, str))}
        lines.append("model: " + ", ".join(f"{key} {value:.3f}" if isinstance(value, float) else f"{key} {value}"
                                           for key, value in shown.items()))
    for alert in sorted(result.alerts.values(), key=lambda a: (a["raised_at"], a["alert_id"])):
        lines.append(f"  {alert['raised_at'][:10]}  {alert['severity']:<8} {alert['customer_id']:<12} "
                     f"{alert['detector']:<20} {alert['title']}")
    return "\n".join(lines)
