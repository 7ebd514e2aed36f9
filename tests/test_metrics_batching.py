"""streams.observability counts a batch in one pass: the exposition equals observing event by event."""

from __future__ import annotations

import math
import random
import types

from prometheus_client import CollectorRegistry, Histogram

from streams.observability import WorkerMetrics, observe_many

BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry but the creation times (two metrics made at different moments differ there)."""
    return {(sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for metric in registry.collect() for sample in metric.samples if not sample.name.endswith("_created")}


def same_figures(one: CollectorRegistry, other: CollectorRegistry) -> None:
    """Counts and buckets equal; sums equal but for the order of the float additions (one per batch, not per
    event), so to 12 significant digits."""
    mine, theirs = samples(one), samples(other)
    assert mine.keys() == theirs.keys()
    for key, value in mine.items():
        if key[0].endswith("_sum"):
            assert math.isclose(value, theirs[key], rel_tol=1e-12), key
        else:
            assert value == theirs[key], key


def histogram() -> tuple[CollectorRegistry, Histogram]:
    registry = CollectorRegistry()
    return registry, Histogram("latency_seconds", "test", buckets=BUCKETS, registry=registry)


def amounts() -> list[float]:
    rng = random.Random(7)
    # Every bound itself (an amount equal to a bound belongs to that bound's bucket), zero, beyond the last
    # finite bound, and a spread in between.
    return [*BUCKETS, 0.0, 61.0, 1e9, *(rng.expovariate(3.0) for _ in range(2_000))]


def test_observe_many_gives_the_exposition_of_observing_one_by_one():
    one_registry, one = histogram()
    many_registry, many = histogram()
    values = amounts()
    for value in values:
        one.observe(value)
    observe_many(many, values[:700])
    observe_many(many, values[700:])
    observe_many(many, [])
    same_figures(many_registry, one_registry)
    assert samples(many_registry)[("latency_seconds_count", ())] == len(values)


def test_observe_many_observes_one_by_one_where_the_histogram_has_another_layout():
    seen: list[float] = []
    stand_in = types.SimpleNamespace(observe=seen.append)  # no bucket values of prometheus_client's kind
    observe_many(stand_in, [0.5, 2.0])  # type: ignore[arg-type]
    assert seen == [0.5, 2.0]


def test_a_batch_is_counted_by_topic_type_alert_and_latency_as_event_by_event():
    def event(kind: str, type_: str) -> object:
        return types.SimpleNamespace(topic_kind=kind, type=type_)

    def update(detector: str, severity: str, change: str) -> object:
        return types.SimpleNamespace(alert={"detector": detector, "severity": severity}, change=change)

    letter = types.SimpleNamespace(record=types.SimpleNamespace(topic="c.invoices"))
    result = types.SimpleNamespace(
        applied=[event("invoices", "invoice.issued")] * 3 + [event("payments", "payment.received")],
        duplicates=2, dead_letters=[letter, letter],
        updates=[update("overdue", "warning", "raised")] * 2 + [update("credit_limit", "critical", "escalated")],
    )
    metrics = WorkerMetrics()
    metrics.observe_batch(result, [], started=100.0, now_epoch=100.5, timestamps=[99.9, 0, 99.0, 100.2])

    by_hand = WorkerMetrics()
    for applied in result.applied:
        by_hand.events.labels(applied.topic_kind, applied.type).inc()
    by_hand.duplicates.inc(2)
    by_hand.dead_letters.labels("c.invoices").inc(2)
    for alert in result.updates:
        by_hand.alerts.labels(alert.alert["detector"], alert.alert["severity"], alert.change).inc()
    for stamp in (99.9, 99.0, 100.2):  # a zero timestamp (none known) is not observed
        by_hand.latency.observe(100.5 - stamp)
        by_hand.to_agent.observe(100.0 - stamp if stamp < 100.0 else 0.0)
    by_hand.batch_seconds.observe(0.5)
    same_figures(metrics.registry, by_hand.registry)
