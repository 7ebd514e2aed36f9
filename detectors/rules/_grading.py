"""How far a detector's findings go on their own (not a detector itself).

Some signs are context, not warnings: a customer over its limit, a dispute,
a bounced payment, a drift in payment habits, a limit recommendation. On a
simulated portfolio (``benchmarks/detection_quality.py``, docs/detectors.md)
each of them alone flags many customers that never default for every one
that does, so by default they are raised as ``info`` — shown on the customer
and counted by ``composite`` (three different signs within 30 days are
critical), but not a warning on their own. ``max_severity`` gives them back
their full grading (``"critical"``), as the static baseline does for
``credit_limit``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from detectors.base import SEVERITY_RANK, Severity

MaxSeverity = Literal["info", "warning", "critical"]


def max_severity_field(default: MaxSeverity, what: str) -> MaxSeverity:
    return Field(default, description=f"the most severe level {what} raises on its own "
                                      f"(info: context for the credit controller and for composite)")


def capped(severity: Severity, ceiling: str) -> Severity:
    """``severity``, at most ``ceiling``.

    >>> capped("critical", "info"), capped("warning", "critical"), capped("critical", "warning")
    ('info', 'warning', 'warning')
    """
    return severity if SEVERITY_RANK[severity] <= SEVERITY_RANK[ceiling] else ceiling  # type: ignore[return-value]
