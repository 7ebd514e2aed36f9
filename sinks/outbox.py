"""The transactional outbox: notifications go out only after the store has the alert.

The worker writes an alert and one *delivery* row per sink in the same
transaction (:meth:`sinks.store.AlertStore.record`); nothing is sent before
that commit. An :class:`OutboxDeliverer` then drains the due deliveries::

    store.due_deliveries(now)   → [Delivery]   (claimed for ``lease`` seconds)
      sink.send(delivery) / sink.deliver(delivery.update)
    store.mark_delivered(id, external_ref)   or   store.mark_failed(id, error, next_attempt_at)
    store.mark_delivered_many(ids)           (plain sinks, once per batch; see "Batches")

A failed delivery is retried with exponential backoff (``base`` doubling up to
``max_delay``, with jitter) until it succeeds, or honours the far side's
``SinkError.retry_after``; a ``SinkError(permanent=True)`` stops it (status
``failed``). Deliveries are per sink and per alert in order: an escalation is
not sent while the alert's first message to that sink is still pending, so a
Slack thread always has its parent.

Delivery is at least once: if the worker dies between a sink's success and
``mark_delivered``, the claim expires and the delivery is made again, so sinks
stay idempotent by ``alert_id`` + ``revision`` (see ``sinks.base``). A worker
that restarts simply finds the pending rows and carries on.

Batches. A claimed batch holds at most one delivery per alert and sink (a
later one is not due while an earlier one is pending), so the order per alert
and sink holds however the batch is worked through. Plain sinks (``deliver``
only: the Kafka alert topic, console, log) are cheap and idempotent by
``alert_id`` + ``revision`` — a repeat is a record the consumers fold into the
same revision, or a line printed twice — so their deliveries of a batch are
made first (``sink.deliver_many`` when the sink has it: the Kafka sink sends
them all, then waits for the broker's acknowledgements) and the successful
ones are marked in ONE transaction (``store.mark_delivered_many``); a crash
before that commit repeats the batch's deliveries to those sinks, no more.
Rich sinks (``send``: Slack) stay one delivery, one mark: a repeated Slack
post is seen by people, so the window in which a crash repeats one is kept to
a single message, and each returns a reference that must be stored with it.
So each run makes two claims: up to ``plain_batch`` (1000) deliveries to the
plain sinks, whose cost is mostly the claim's and the mark's queries, and up
to ``batch`` (100) to the others, which must be worked through one by one
within the claim's lease.

The sink protocol, extended
---------------------------
A sink of ``sinks.base`` implements ``deliver(update: AlertUpdate)``; that
keeps working: for alert deliveries it is called with ``delivery.update``,
and status changes (acknowledged, resolved, …), which it has no way to
express, are recorded as ``skipped`` for it. A sink that wants more — the
kind of delivery, the status change, the references returned by its earlier
deliveries of the same alert (Slack: the parent message's ``ts``) —
implements :class:`RichSink`::

    def send(self, delivery: Delivery) -> Mapping[str, Any] | None

returning its own reference for the message it made (stored with the delivery
and handed back to it in ``delivery.refs`` next time). A reference holding
``channel`` and ``ts`` (Slack's ``chat.postMessage`` answer) also becomes the
alert's ``slack_channel`` / ``slack_ts``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, Mapping, Protocol, runtime_checkable

from pipeline.clock import Clock, SystemClock

if TYPE_CHECKING:
    from pipeline.alerts import AlertUpdate
    from sinks.store import AlertStore

log = logging.getLogger("creditwatch.outbox")

DeliveryKind = Literal["alert", "status_change"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One notification to make: what happened to which alert, for which sink.

    ``kind`` is ``alert`` (``change`` is raised | escalated | reopened, the
    alert is as of ``revision``) or ``status_change`` (``change`` is the new
    status, ``status_change`` says who moved it from what, when, and why).
    ``refs`` are the references this sink returned for its earlier deliveries
    of the same alert, oldest first; ``refs[0]`` is the thread's parent.
    """

    delivery_id: int
    sink: str
    kind: DeliveryKind
    change: str
    alert: dict[str, Any]
    revision: int
    attempt: int = 1
    refs: tuple[dict[str, Any], ...] = ()
    status_change: dict[str, Any] | None = None

    @property
    def update(self) -> AlertUpdate:
        """The plain ``AlertUpdate`` (alert deliveries only) for sinks that only implement ``deliver``."""
        from pipeline.alerts import AlertUpdate

        if self.kind != "alert":
            raise ValueError("a status change is not an AlertUpdate; see Delivery.status_change")
        return AlertUpdate(self.change, self.alert)  # type: ignore[arg-type]

    @property
    def thread(self) -> dict[str, Any] | None:
        """The reference of this sink's first message about the alert, if any."""
        return self.refs[0] if self.refs else None


@runtime_checkable
class RichSink(Protocol):
    name: ClassVar[str]

    def send(self, delivery: Delivery) -> Mapping[str, Any] | None:
        """Make one delivery (one attempt) or raise SinkError; return this sink's reference for it."""


@dataclass
class Backoff:
    """``base`` seconds doubling per attempt up to ``max_delay``; ``jitter`` shaves up to that fraction off."""

    base: float = 1.0
    max_delay: float = 300.0
    jitter: float = 0.2
    rng: random.Random = field(default_factory=random.Random)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after the ``attempt``-th failed attempt (1-based)."""
        if retry_after is not None and retry_after >= 0:
            return float(retry_after)  # the far side said when: neither earlier nor later
        raw = min(self.max_delay, self.base * 2.0 ** max(0, attempt - 1))
        return raw * (1.0 - self.jitter * self.rng.random())


@dataclass
class RunStats:
    delivered: int = 0
    failed: int = 0
    skipped: int = 0


class OutboxDeliverer:
    """Drains the store's due deliveries into the sinks.

    ``run_once`` is synchronous and cheap when nothing is due, so an asyncio
    worker calls it with ``asyncio.to_thread`` (``run_forever`` does that).
    """

    def __init__(
        self,
        store: AlertStore,
        sinks: Mapping[str, Any],
        clock: Clock | None = None,
        backoff: Backoff | None = None,
        batch: int = 100,
        lease: timedelta = timedelta(seconds=60),
        observe: Callable[[RunStats], None] | None = None,
        plain_batch: int = 1000,
    ):
        """``batch``: deliveries claimed per run for rich sinks (one send and one mark each: the claim must be
        worked through within ``lease``); ``plain_batch``: for plain sinks (sent together, marked in one
        transaction: a claim's cost is mostly its queries, so a large one costs less per delivery)."""
        #: Told each run's counts (the worker's /metrics); called on the delivering thread.
        self.observe = observe
        self.store = store
        self.sinks = dict(sinks)
        self.clock = clock or SystemClock()
        self.backoff = backoff or Backoff()
        self.batch = batch
        self.plain_batch = plain_batch
        self.lease = lease
        #: The sinks whose deliveries are claimed by the plain batch: those without ``send``.
        self.plain_sinks = sorted(name for name, sink in self.sinks.items() if getattr(sink, "send", None) is None)
        self.more_due = False  # a claim of the last run was full: more may be due right away
        self.last = RunStats()
        self._outage = 0  # runs in a row that found the store unreachable

    def run_once(self, now: datetime | None = None) -> int:
        """Attempt every delivery that is due; return how many were delivered.

        Store problems raise ``sinks.store.StoreUnavailable``; nothing is lost:
        what was claimed and not marked becomes due again when the claim expires.
        """
        now = now or self.clock.now()
        stats = RunStats()
        plain: dict[str, list[Delivery]] = {}
        outcomes: list[str] = []
        claimed: list[Delivery] = []
        self.more_due = False
        if self.plain_sinks:
            claim = self.store.due_deliveries(now, limit=self.plain_batch, lease=self.lease, sinks=self.plain_sinks,
                                              with_refs=False)  # plain sinks send the alert alone
            self.more_due = len(claim) >= self.plain_batch
            claimed.extend(claim)
        # Rich sinks, and sinks this worker does not have (kept for a worker that has them).
        claim = self.store.due_deliveries(now, limit=self.batch, lease=self.lease, excluding=self.plain_sinks)
        self.more_due = self.more_due or len(claim) >= self.batch
        claimed.extend(claim)
        for delivery in claimed:
            if delivery.sink in self.plain_sinks and delivery.kind == "alert":
                plain.setdefault(delivery.sink, []).append(delivery)
            else:
                outcomes.append(self._attempt(delivery, now))
        if plain:
            outcomes.extend(self._attempt_plain(plain, now))
        for outcome in outcomes:
            if outcome == "delivered":
                stats.delivered += 1
            elif outcome == "skipped":
                stats.skipped += 1
            else:
                stats.failed += 1
        self.last = stats
        if self.observe is not None and (stats.delivered or stats.failed or stats.skipped):
            self.observe(stats)
        return stats.delivered

    def _attempt_plain(self, batches: Mapping[str, list[Delivery]], now: datetime) -> list[str]:
        """Deliver each plain sink's share of the batch, then mark the successes in one transaction."""
        delivered: list[int] = []
        outcomes: list[str] = []
        for name, deliveries in batches.items():
            sink = self.sinks[name]
            many = getattr(sink, "deliver_many", None)
            problems: list[BaseException | None]
            if many is not None:
                try:
                    problems = list(many([d.update for d in deliveries]))
                except Exception as problem:  # noqa: BLE001 - the whole call failed: every delivery of it did
                    problems = [problem] * len(deliveries)
            else:
                problems = []
                for delivery in deliveries:
                    try:
                        sink.deliver(delivery.update)
                    except Exception as problem:  # noqa: BLE001 - retried like an outage, never raised
                        problems.append(problem)
                    else:
                        problems.append(None)
            for delivery, problem in zip(deliveries, problems):
                if problem is None:
                    delivered.append(delivery.delivery_id)
                    outcomes.append("delivered")
                else:
                    outcomes.append(self._failed_with(delivery, now, problem))
        self.store.mark_delivered_many(delivered)
        return outcomes

    def _attempt(self, delivery: Delivery, now: datetime) -> str:
        sink = self.sinks.get(delivery.sink)
        if sink is None:
            # Not configured in this worker (yet): keep it, look again later.
            when = now + timedelta(seconds=self.backoff.max_delay)
            self.store.mark_failed(delivery.delivery_id, f"no sink named {delivery.sink!r} is configured", when)
            return "failed"
        send = getattr(sink, "send", None)
        if send is None and delivery.kind != "alert":
            self.store.mark_skipped(delivery.delivery_id, f"sink {delivery.sink!r} does not take status changes")
            return "skipped"
        try:
            ref = send(delivery) if send is not None else sink.deliver(delivery.update)
        except Exception as problem:  # noqa: BLE001 - a sink bug is retried like an outage, never raised
            return self._failed_with(delivery, now, problem)
        self.store.mark_delivered(delivery.delivery_id, dict(ref) if isinstance(ref, Mapping) else None)
        return "delivered"

    def _failed_with(self, delivery: Delivery, now: datetime, problem: BaseException) -> str:
        """A sink's SinkError says when to retry or to give up; any other exception is retried like an outage."""
        from sinks.base import SinkError

        if isinstance(problem, SinkError):
            return self._failed(delivery, now, str(problem), problem.retry_after, problem.permanent)
        return self._failed(delivery, now, f"{type(problem).__name__}: {problem}", None, False)

    def _failed(self, delivery: Delivery, now: datetime, error: str, retry_after: float | None, permanent: bool) -> str:
        delay = self.backoff.delay(delivery.attempt, retry_after)
        log.warning(
            "delivery %s of %s (%s) to %s failed (attempt %d)%s: %s",
            delivery.delivery_id, delivery.alert.get("alert_id"), delivery.change, delivery.sink, delivery.attempt,
            "; giving up" if permanent else f"; next in {delay:.1f}s", error,
        )
        self.store.mark_failed(delivery.delivery_id, error, now + timedelta(seconds=delay), permanent=permanent)
        return "failed"

    def step(self, poll_interval: float = 1.0) -> float:
        """One run; how long to wait before the next (every loop that drives a deliverer uses this).

        0 after a full batch (more may be due right away); while the store is unreachable, waits
        that double up to 10 s, so that pending deliveries go out within seconds once it is back.
        """
        from sinks.store import StoreUnavailable

        try:
            self.run_once()
        except StoreUnavailable as problem:
            self._outage += 1
            if self._outage == 1:
                log.warning("outbox paused, store unavailable: %s", problem)
            return min(10.0, poll_interval * 2 ** min(self._outage, 8))
        if self._outage:
            log.warning("outbox resumed after the store came back")
            self._outage = 0
        return 0.0 if self.more_due else poll_interval

    async def run_forever(self, stop: asyncio.Event, poll_interval: float = 1.0) -> None:
        """Deliver until ``stop`` is set; while the store is unreachable, wait and try again."""
        while not stop.is_set():
            wait = await asyncio.to_thread(self.step, poll_interval)
            if wait:
                try:
                    await asyncio.wait_for(stop.wait(), timeout=wait)
                except asyncio.TimeoutError:
                    pass

    def run_until_stopped(self, stop: Any, poll_interval: float = 1.0, alive: Callable[[], bool] | None = None) -> None:
        """The same loop without an event loop: deliver until ``stop`` (``set``/``is_set``/``wait`` as
        ``threading.Event``) is set, or ``alive()`` says the process this deliverer serves is gone."""
        while not stop.is_set():
            if alive is not None and not alive():
                log.warning("the worker is gone; delivery stops")
                return
            wait = self.step(poll_interval)
            if wait:
                stop.wait(wait)

    def run_in_thread(self, stop: threading.Event, poll_interval: float = 1.0) -> threading.Thread:
        """The same loop on a daemon thread, for callers without an event loop."""
        thread = threading.Thread(target=self.run_until_stopped, args=(stop, poll_interval), name="creditwatch-outbox",
                                  daemon=True)
        thread.start()
        return thread
