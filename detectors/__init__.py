"""Detectors: pure functions from a customer's state to findings (see ``detectors.base``).

Importing this package registers every built-in detector in ``REGISTRY``.
"""

from detectors.base import REGISTRY, Detector, DetectorOptions, Finding, Reason, register
from detectors.rules import credit_limit, overdue  # noqa: F401 - registration

__all__ = ["REGISTRY", "Detector", "DetectorOptions", "Finding", "Reason", "register"]
