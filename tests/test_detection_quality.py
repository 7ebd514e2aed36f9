"""Early-warning quality with the default thresholds: the full system against the static rules baseline.

A small simulated portfolio (300 customers over a year, 15 of them written off) replayed through the
same ``run_backtest`` twice: every detector with the online models, and the baseline of
``benchmarks/detection_quality.py`` (credit limit + overdue > 30 days, nothing else). The 2,000-customer,
two-year measure of issue 6 is the benchmark (``python -m benchmarks.run --only detection_quality``).
"""

from __future__ import annotations

import pytest

from benchmarks.detection_quality import EARLY_WATCH, baseline_thresholds, beats, measure
from detectors.config import Thresholds, load_thresholds
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


@pytest.fixture(scope="module")
def early_watch():
    lines = [line.encode() for line in simulate_lines(300, 365, seed=1)]
    return lines, run_side_alerts(lines, load_thresholds(EARLY_WATCH)), run_side_alerts(lines, Thresholds())


def run_side_alerts(lines, thresholds):
    """Every alert revision of a full-system replay, and the write-offs (the ground truth)."""
    from pipeline.config import LedgerConfig
    from pipeline.events import parse_event
    from pipeline.simulate import ground_truth
    from pipeline.whatif import run_side

    truth = ground_truth(parse_event(line) for line in lines if b"invoice.written_off" in line)
    side = run_side(thresholds.source, lines, thresholds, LedgerConfig(), truth, None, with_models=True)
    return [update.alert for update in side.result.updates], truth


def first_flags(alerts, truth):
    """Each customer's first warning-or-critical day (before its write-off, if written off)."""
    from pipeline.simulate import _utc_day

    first = {}
    for alert in alerts:
        if alert["severity"] == "info":
            continue
        day = _utc_day(alert.get("updated_at") or alert["raised_at"])
        if alert["customer_id"] in truth and day >= truth[alert["customer_id"]]:
            continue
        first[alert["customer_id"]] = min(day, first.get(alert["customer_id"], day))
    return first


def test_the_early_watch_preset_only_widens_composite():
    preset = load_thresholds(EARLY_WATCH)
    defaults = Thresholds()
    from detectors.base import REGISTRY

    changed = {name for name in REGISTRY if preset.options_for(name) != defaults.options_for(name)}
    assert changed == {"composite"}
    composite = preset.options_for("composite")
    assert (composite.window_days, composite.ignore, composite.max_severity) == (90, (), "warning")


def test_the_early_watch_preset_flags_every_customer_the_defaults_flag_and_no_later(early_watch):
    _, (early_alerts, truth), (default_alerts, _) = early_watch
    early, default = first_flags(early_alerts, truth), first_flags(default_alerts, truth)
    assert default, "the defaults flagged nobody"
    later = {c: (default[c], early.get(c)) for c in default if c not in early or early[c] > default[c]}
    assert not later, f"customers the preset flags later than the defaults, or not at all: {list(later.items())[:5]}"
    # ... and it flags more of them, earlier: a wider net, not the same one.
    assert len(early) > len(default)
    assert any(early[c] < default[c] for c in default)


def test_no_combination_alert_of_the_early_watch_preset_is_critical(early_watch):
    _, (early_alerts, _), _ = early_watch
    combined = [alert for alert in early_alerts if alert["detector"] == "composite"]
    assert combined, "composite found nothing with the preset"
    assert {alert["severity"] for alert in combined} == {"warning"}
