"""Alerts published to ``credit.alerts`` (CONTRACT §1), keyed by customer_id.

Each alert revision is one record whose value is the alert JSON (CONTRACT §3,
plus ``revision``); consumers keep the highest revision per ``alert_id``. The
outbox calls this sink only after the store has the alert, and retries it
until the broker acknowledged the record.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar

from pipeline.alerts import AlertUpdate
from sinks.base import SinkError, register_sink


@register_sink
class KafkaAlertSink:
    name: ClassVar[str] = "kafka"

    def __init__(self, bootstrap_servers: str, topic: str, timeout_s: float = 10.0):
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: Any = None

    def __repr__(self) -> str:
        return f"KafkaAlertSink(topic={self.topic!r})"

    def _ensure_producer(self) -> Any:
        if self._producer is None:
            from kafka import KafkaProducer
            from kafka.errors import KafkaError

            try:
                self._producer = KafkaProducer(
                    bootstrap_servers=self.bootstrap_servers,
                    acks="all",
                    linger_ms=5,
                    max_block_ms=int(self.timeout_s * 1000),
                    request_timeout_ms=int(self.timeout_s * 1000),
                    bootstrap_timeout_ms=int(self.timeout_s * 1000),
                )
            except KafkaError as problem:
                raise SinkError(f"kafka: cannot reach {self.bootstrap_servers}: {problem}") from None
        return self._producer

    def deliver(self, update: AlertUpdate) -> None:
        from kafka.errors import KafkaError

        producer = self._ensure_producer()
        try:
            self._send(producer, update).get(timeout=self.timeout_s)
        except KafkaError as problem:
            raise SinkError(f"kafka: {self.topic}: {problem}") from None

    def _send(self, producer: Any, update: AlertUpdate) -> Any:
        """The record of one alert update, keyed by customer; returns the producer's future."""
        alert = update.alert
        return producer.send(
            self.topic,
            key=alert["customer_id"].encode(),
            value=json.dumps(alert, default=str, separators=(",", ":")).encode(),
            headers=[("creditwatch.change", update.change.encode())],
        )

    def deliver_many(self, updates: list[AlertUpdate]) -> list[SinkError | None]:
        """Send every update, then wait for the broker's acknowledgements: one outcome per update, in order.

        The outbox's batch path (``sinks.outbox``): the records go out together instead of one round trip each.
        """
        from kafka.errors import KafkaError

        try:
            producer = self._ensure_producer()
        except SinkError as problem:
            return [problem] * len(updates)
        pending: list[Any] = []
        for update in updates:
            try:
                pending.append(self._send(producer, update))
            except KafkaError as problem:
                pending.append(SinkError(f"kafka: {self.topic}: {problem}"))
        outcomes: list[SinkError | None] = []
        for future in pending:
            if isinstance(future, SinkError):
                outcomes.append(future)
                continue
            try:
                future.get(timeout=self.timeout_s)
            except KafkaError as problem:
                outcomes.append(SinkError(f"kafka: {self.topic}: {problem}"))
            else:
                outcomes.append(None)
        return outcomes

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close(timeout=5)
            self._producer = None
