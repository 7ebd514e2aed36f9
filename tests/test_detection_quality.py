"""Early-warning quality with the default thresholds: the full system against the static rules baseline.

A small simulated portfolio (300 customers over a year, 15 of them written off) replayed through the
same ``run_backtest`` twice: every detector with the online models, and the baseline of
``benchmarks/detection_quality.py`` (credit limit + overdue > 30 days, nothing else). The 2,000-customer,
two-year measure of issue 6 is the benchmark (``python -m benchmarks.run --only detection_quality``).
"""

from __future__ import annotations

import pytest

from benchmarks.detection_quality import baseline_thresholds, beats, measure
from detectors.config import Thresholds
from pipeline.simulate import simulate_lines


@pytest.fixture(scope="module")
def sides():
    lines = [line.encode() for line in simulate_lines(300, 365, seed=1)]
    return measure(lines, Thresholds(), with_models=True), measure(lines, baseline_thresholds(), with_models=False)


def test_the_baseline_is_only_credit_limit_and_overdue_past_30_days():
    baseline = baseline_thresholds()
    enabled = {name for name, options in baseline.detectors.items() if options.enabled}
    assert enabled == {"credit_limit", "overdue"}
    overdue = baseline.options_for("overdue")
    assert (overdue.info_days, overdue.warning_days) == (30, 30)
    assert baseline.options_for("credit_limit").max_severity == "critical"


def test_full_system_warns_earlier_than_the_baseline_at_better_precision(sides):
    full, base = sides
    assert full["written_off"] == base["written_off"] == 15
    assert full["median_lead_days"] > base["median_lead_days"], (full, base)
    assert full["precision"] >= base["precision"], (full, base)
    assert beats(full, base) and not beats(base, full)


def test_full_system_catches_most_write_offs_well_ahead_without_flooding(sides):
    full, _ = sides
    assert full["recall"] >= 0.85, full
    assert full["precision"] >= 0.5, full
    assert full["median_lead_days"] >= 45, full
    # Fewer customers to call than the baseline's, not more.
    assert full["warnings_per_customer_month"] < sides[1]["warnings_per_customer_month"]
