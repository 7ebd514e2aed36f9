"""Worker metrics (Prometheus), health and readiness, and key=value logs.

``CREDITWATCH_HEALTH_PORT`` makes a worker serve, on 0.0.0.0:PORT:

* ``/healthz`` — 200 while the process and its event loop are alive
  (including while the table is being rebuilt from its changelog);
* ``/readyz``  — 200 once table recovery is complete and it is consuming, 503 before;
* ``/metrics`` — Prometheus text format.

Metrics live in their own registry, so several workers in one test process
do not collide.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_left
from collections import Counter as CountOf
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


def observe_many(histogram: Histogram, amounts: list[float]) -> None:
    """``histogram.observe(amount)`` for each amount, in one pass: each bucket and the sum take one addition.

    Uses the histogram's bucket values (``_upper_bounds``, ``_buckets``, ``_sum``: prometheus_client's own
    layout, which ``tests/test_metrics_batching.py`` checks against ``observe``); where they are not there,
    observes one by one.
    """
    if not amounts:
        return
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for amount in amounts:
            histogram.observe(amount)
        return
    # Bucket i holds the amounts <= bounds[i] and > bounds[i - 1] (observe's first bound at or above it).
    for index, count in CountOf(bisect_left(bounds, amount) for amount in amounts).items():
        buckets[index].inc(count)
    total.inc(sum(amounts))


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.events = Counter("creditwatch_events_processed_total", "Events applied, by topic and event type",
                              ["topic", "type"], registry=r)
        self.duplicates = Counter("creditwatch_events_duplicate_total", "Redelivered events skipped", registry=r)
        self.dead_letters = Counter("creditwatch_events_dead_lettered_total", "Messages sent to the dead-letter topic",
                                    ["topic"], registry=r)
        self.latency = Histogram(
            "creditwatch_event_to_stored_seconds",
            "From the broker's timestamp of an event to its batch being stored and confirmed",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )
        self.to_agent = Histogram(
            "creditwatch_event_to_agent_seconds",
            "From the broker's timestamp of an event to its batch reaching the agent (the broker's and the fetch's"
            " share of creditwatch_event_to_stored_seconds)",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=r,
        )
        self.loop_lag = Histogram(
            "creditwatch_event_loop_lag_seconds",
            "How late the worker's event loop woke a 50 ms timer: time it was busy with one step (a batch's"
            " engine work, a tick) while fetched events waited",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5), registry=r,
        )
        self.batch_seconds = Histogram("creditwatch_batch_seconds", "Time to process one batch",
                                       buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5), registry=r)
        self.store_seconds = Histogram(
            "creditwatch_batch_store_seconds",
            "Time for one batch's store transaction (alerts, outbox, positions, snapshots, events), waits for a store"
            " outage included; a batch waits for the one before it is stored, so a slow one holds those behind it",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60), registry=r,
        )
        self.lag = Gauge("creditwatch_consumer_lag", "Messages behind the end of each input partition",
                         ["topic", "partition"], registry=r)
        self.alerts = Counter("creditwatch_alerts_total", "Alert updates, by detector, severity and change",
                              ["detector", "severity", "change"], registry=r)
        self.deliveries = Gauge("creditwatch_deliveries", "Outbox deliveries by status", ["status"], registry=r)
        self.deliveries_failed = Counter("creditwatch_deliveries_failed_total",
                                         "Delivery attempts that failed and will be retried or gave up", registry=r)
        self.deliveries_done = Counter("creditwatch_deliveries_delivered_total", "Deliveries made", registry=r)
        self.deliveries_skipped = Counter("creditwatch_deliveries_skipped_total",
                                          "Deliveries a sink does not take (e.g. a status change for a sink that only posts alerts)", registry=r)
        self.model_auc = Gauge("creditwatch_model_roc_auc",
                               "Late-payment model ROC AUC under progressive validation", registry=r)
        self.ticks = Counter("creditwatch_clock_ticks_total", "Customers woken by the clock", registry=r)
        self.ticks_deferred = Counter("creditwatch_clock_ticks_deferred_total",
                                      "Clock ticks put off because a rebalance was restoring the table", registry=r)
        self.restores = Counter("creditwatch_table_restores_total",
                                "Table recoveries completed (at start and after each rebalance)", registry=r)
        self.wake_rebuilds = Counter("creditwatch_wake_rebuilds_total",
                                     "Wake-up schedule rebuilds from the table (after each rebalance)", registry=r)
        self.wake_rebuild_seconds = Counter("creditwatch_wake_rebuild_seconds_total",
                                            "Time spent rebuilding the wake-up schedule", registry=r)
        self.wake_rebuild_records = Counter("creditwatch_wake_rebuild_records_total",
                                            "Records read by wake-up schedule rebuilds", registry=r)
        self.wake_rebuild_decoded = Counter("creditwatch_wake_rebuild_decoded_total",
                                            "Records a wake-up schedule rebuild had to decode (no usable header)",
                                            registry=r)
        self.wake_scheduled = Gauge("creditwatch_wake_scheduled",
                                    "Customers with a wake-up day in the schedule after the last rebuild", registry=r)
        self.ready = False
        self.started = time.time()

    def observe_wake_rebuild(self, records: int, decoded: int, seconds: float, scheduled: int) -> None:
        self.wake_rebuilds.inc()
        self.wake_rebuild_records.inc(records)
        self.wake_rebuild_decoded.inc(decoded)
        self.wake_rebuild_seconds.inc(seconds)
        self.wake_scheduled.set(scheduled)

    def observe_deliveries(self, stats: Any) -> None:
        """One outbox run's counts (``sinks.outbox.RunStats``)."""
        self.deliveries_done.inc(stats.delivered)
        self.deliveries_failed.inc(stats.failed)
        self.deliveries_skipped.inc(stats.skipped)

    def observe_alerts(self, updates: list[Any]) -> None:
        """Alert updates, from a batch of events or from the clock."""
        counts = CountOf((update.alert["detector"], update.alert["severity"], update.change) for update in updates)
        for labels, count in counts.items():
            self.alerts.labels(*labels).inc(count)

    def observe_batch(self, result: Any, records: list[Any], started: float, now_epoch: float,
                      timestamps: list[float]) -> None:
        """A committed batch: its events by topic and type, duplicates, dead letters, alerts, and each event's
        latency. Counted per batch (one ``inc`` per label set, one pass per histogram): per event, the metrics'
        locks and label lookups were a few per cent of the worker's event loop."""
        for labels, count in CountOf((event.topic_kind, event.type) for event in result.applied).items():
            self.events.labels(*labels).inc(count)
        if result.duplicates:
            self.duplicates.inc(result.duplicates)
        for topic, count in CountOf(letter.record.topic for letter in result.dead_letters).items():
            self.dead_letters.labels(topic).inc(count)
        self.observe_alerts(result.updates)
        stamps = [stamp for stamp in timestamps if stamp]
        observe_many(self.latency, [max(now_epoch - stamp, 0.0) for stamp in stamps])
        observe_many(self.to_agent, [max(started - stamp, 0.0) for stamp in stamps])
        self.batch_seconds.observe(now_epoch - started)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def serve_health(metrics: WorkerMetrics, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path == "/healthz":
                self._answer(200, b"ok\n", "text/plain")
            elif self.path == "/readyz":
                if metrics.ready:
                    self._answer(200, b"ready\n", "text/plain")
                else:
                    self._answer(503, b"recovering\n", "text/plain")
            elif self.path == "/metrics":
                self._answer(200, metrics.render(), CONTENT_TYPE_LATEST)
            else:
                self._answer(404, b"not found\n", "text/plain")

        def _answer(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:  # probes every few seconds are not news
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="creditwatch-health", daemon=True).start()
    return server


class KeyValueFormatter(logging.Formatter):
    """``… message customer_id=C1 event_id=e9`` for the context fields a record carries."""

    FIELDS = ("customer_id", "event_id", "alert_id", "topic", "partition", "offset")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = [f"{name}={getattr(record, name)}" for name in self.FIELDS if hasattr(record, name)]
        return f"{text} {' '.join(extras)}" if extras else text
