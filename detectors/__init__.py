"""Detectors: pure functions from a customer's state to findings (see ``detectors.base``).

Importing this package registers every built-in detector in ``REGISTRY``.
"""

from detectors.base import REGISTRY, Detector, DetectorOptions, Finding, Reason, register
from detectors.rules import (  # noqa: F401 - registration
    bank_details_change,
    broken_promise,
    composite,
    credit_limit,
    credit_limit_review,
    disputes,
    insurance_cover,
    legal_event,
    overdue,
    ownership_change,
    payment_habit,
    payment_reversed,
    rating_downgrade,
    risk_score,
    unusual_invoice,
)

__all__ = ["REGISTRY", "Detector", "DetectorOptions", "Finding", "Reason", "register"]
