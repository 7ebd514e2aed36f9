"""The sink protocol: where alerts go once the engine has raised them.

Every sink implements ``deliver(update)`` and turns its own failures into
:class:`SinkError` (with ``retry_after`` when the far side said when to come
back). The :class:`Dispatcher` is the only caller: it never lets anything
raise into the stream, and records each delivery's outcome. Retrying is the
outbox's business (``sinks.outbox``), so a sink makes one attempt per call and
must be idempotent by ``alert_id`` + ``revision``.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TextIO

from pipeline.alerts import AlertUpdate

log = logging.getLogger("creditwatch.sinks")


class SinkError(Exception):
    """A delivery that did not happen; ``retry_after`` seconds when the far side asked for a pause."""

    def __init__(self, message: str, retry_after: float | None = None, permanent: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.permanent = permanent


class Sink(Protocol):
    name: ClassVar[str]

    def deliver(self, update: AlertUpdate) -> None:
        """Deliver one alert update, or raise SinkError."""


SINKS: dict[str, type] = {}


def register_sink(cls: type) -> type:
    SINKS[cls.name] = cls
    return cls


@register_sink
class MemorySink:
    """Keeps what it was given; for tests and dry runs."""

    name: ClassVar[str] = "memory"

    def __init__(self) -> None:
        self.updates: list[AlertUpdate] = []
        self._seen: set[tuple[str, int]] = set()

    def deliver(self, update: AlertUpdate) -> None:
        key = (update.alert_id, update.alert.get("revision", 1))
        if key in self._seen:
            return
        self._seen.add(key)
        self.updates.append(update)

    @property
    def alerts(self) -> dict[str, dict[str, Any]]:
        latest: dict[str, dict[str, Any]] = {}
        for update in self.updates:
            latest[update.alert_id] = update.alert
        return latest


@register_sink
class ConsoleSink:
    """One line per alert on a stream (stdout by default): the demo without Slack."""

    name: ClassVar[str] = "console"

    def __init__(self, stream: TextIO | None = None, as_json: bool = False):
        self.stream = stream or sys.stdout
        self.as_json = as_json

    def deliver(self, update: AlertUpdate) -> None:
        alert = update.alert
        try:
            if self.as_json:
                self.stream.write(json.dumps(alert, default=str) + "\n")
            else:
                who = alert.get("customer_name") or alert["customer_id"]
                self.stream.write(
                    f"[{alert['severity'].upper():<8}] {update.change:<9} {who} ({alert['customer_id']}): "
                    f"{alert['title']}\n"
                )
            self.stream.flush()
        except (OSError, ValueError) as problem:
            raise SinkError(f"console: {problem}") from None


@register_sink
class LogSink:
    """Alerts as structured log records."""

    name: ClassVar[str] = "log"

    def deliver(self, update: AlertUpdate) -> None:
        alert = update.alert
        log.warning(
            "alert %s %s customer_id=%s detector=%s severity=%s: %s",
            alert["alert_id"], update.change, alert["customer_id"], alert["detector"], alert["severity"], alert["title"],
        )


@dataclass
class DeliveryOutcome:
    sink: str
    alert_id: str
    revision: int
    ok: bool
    error: str | None = None
    retry_after: float | None = None


@dataclass
class Dispatcher:
    """Hands each update to every sink; never raises; remembers outcomes."""

    sinks: list[Any]
    outcomes: list[DeliveryOutcome] = field(default_factory=list)
    keep_outcomes: int = 1000

    def dispatch(self, update: AlertUpdate) -> list[DeliveryOutcome]:
        results = []
        for sink in self.sinks:
            outcome = deliver_safely(sink, update)
            results.append(outcome)
            if not outcome.ok:
                log.warning("delivery of %s to %s failed: %s", update.alert_id, sink.name, outcome.error)
        self.outcomes.extend(results)
        del self.outcomes[: -self.keep_outcomes]
        return results


def deliver_safely(sink: Any, update: AlertUpdate) -> DeliveryOutcome:
    revision = int(update.alert.get("revision", 1))
    try:
        sink.deliver(update)
    except SinkError as problem:
        return DeliveryOutcome(sink.name, update.alert_id, revision, False, str(problem), problem.retry_after)
    except Exception as problem:  # noqa: BLE001 - a sink bug must not stop the stream
        return DeliveryOutcome(sink.name, update.alert_id, revision, False, f"{type(problem).__name__}: {problem}")
    return DeliveryOutcome(sink.name, update.alert_id, revision, True)
