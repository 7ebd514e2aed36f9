"""What a worker runs besides faust: engine, store, outbox, clock ticks, model checkpoints.

Kept apart from the faust wiring (``streams.app``) so that the framework-free
benchmark loop and tests can drive exactly the same steps.

Order of the steps for a batch, and why:

1. ``BatchProcessor.process`` — ledger, models, detectors, alert episodes.
2. ``prepare`` — what the store needs, taken from the records before the
   next batch changes them: the annotated alerts, and each touched
   customer's record bytes (the ones the Table gets) with the few figures
   only the worker knows (risk score, open alerts, whether today's risk
   snapshot is due).
3. ``store_prepared`` — positions and snapshots are computed by the store
   writer (``store_rows``: off the worker's GIL when it is a child process)
   from its own copy of each customer's ledger, brought up to date with the
   batch's events and checked against the record's revision, or else from
   the record's bytes; then alerts, their outbox rows, positions and risk
   snapshots are committed to the store in one transaction. If the store is
   down the batch waits here (retrying) and nothing after it happens, so no
   offset can be committed past an alert that is not stored.
4. The caller writes the customers' records to the Table and waits for the
   broker to confirm them, then lets faust acknowledge the batch.

``persist`` is 2 and 3 in one call.

A crash between 3 and 4 replays the batch: the engine recomputes the same
alert ids and revisions and the store ignores what it already has, so an
alert is stored once and notified once.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import zlib
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Iterable, Mapping

from detectors.config import Thresholds
from pipeline.alerts import AlertUpdate
from pipeline.clock import Clock, SystemClock
from pipeline.config import LedgerConfig, Settings
from pipeline import codec
from pipeline.engine import CustomerRecord, RiskEngine, decode_record, encode_record
from pipeline.feedback import POSITION_FIELDS
from pipeline.ledger import apply, position

log = logging.getLogger("creditwatch.worker")


def build_models(thresholds: Thresholds, settings: Settings) -> Any:
    from pipeline.models import OnlineModels

    return OnlineModels.from_options(thresholds.models, settings.ledger)


def notify_sinks(settings: Settings) -> dict[str, Any]:
    """The sinks the outbox delivers to: Slack when a token is configured, the console otherwise; Kafka always."""
    from sinks.base import ConsoleSink
    from sinks.kafka import KafkaAlertSink

    sinks: dict[str, Any] = {"kafka": KafkaAlertSink(settings.bootstrap_servers, settings.topic("alerts"))}
    if settings.slack_bot_token:
        from sinks.slack import SlackSink

        sinks["slack"] = SlackSink.from_settings(settings)
    else:
        sinks["console"] = ConsoleSink()
    return sinks


def wake_key(engine: RiskEngine) -> int:
    """A key of everything ``RiskEngine.next_wake`` reads besides the record and the day.

    The aging steps, the ledger settings (open invoices, promise grace) and the
    models' wake-up rules. A wake-up day written with a record is used again
    only under the same key.
    """
    import pipeline.engine as engine_module
    import pipeline.models as models_module

    models = engine.models
    rules = (engine_module._AGING_STEPS, engine._aging_first, engine.ledger_config, type(models).__qualname__,
             getattr(models, "late_days", None), getattr(models_module, "OVERDUE_FULL_DAYS", None),
             getattr(models_module, "DRIFT_ACTIVE_DAYS", None))
    return zlib.crc32(repr(rules).encode())


@dataclass(frozen=True, slots=True)
class PositionJob:
    """One touched customer for the store: its record bytes and what only the worker knows of it."""

    customer_id: str
    record: bytes  # the record as the Table gets it (``table_value``)
    risk_score: float | None
    open_alerts: int
    snapshot: bool  # today's risk snapshot is due
    revision: tuple[int, str, str] = (0, "", "")  # the ledger's (events applied, watermark, last event id)


def ledger_revision(state: Any) -> tuple[int, str, str]:
    """What tells two copies of a customer's ledger apart: events applied, watermark and the last event's id
    (a copy that missed an event or applied another differs in at least one)."""
    return state.events_applied, state.watermark, state.seen[-1] if state.seen else ""


class LedgerReplicas:
    """The store writer's own copies of recent customers' ledgers, so that a position needs no decode.

    Decoding a record from its bytes (decompress, parse, rebuild the
    allocation) cost the store writer more than the position itself. Each
    batch carries the events the worker applied, so a copy from an earlier
    batch is brought up to date by applying them: the same pure ledger code,
    in the same order, gives the same ledger. The copy is used only when its
    revision equals the one the worker reports for the record (a copy that
    missed a batch, say after the customer's partition moved to another
    worker and back, differs); otherwise the record's bytes are decoded, as
    before. At most ``capacity`` copies, the least recently used dropped.
    """

    def __init__(self, capacity: int = 100_000):
        self.capacity = capacity
        self._states: OrderedDict[str, Any] = OrderedDict()
        self.hits = self.decoded = 0

    def ledgers(self, jobs: Iterable[PositionJob], events: Iterable[Any] | None, config: LedgerConfig) -> Iterable[tuple[PositionJob, Any]]:
        by_customer: dict[str, list[Any]] = {}
        for event in events or ():
            by_customer.setdefault(event.customer_id, []).append(event)
        states = self._states
        for job in jobs:
            state = states.pop(job.customer_id, None)
            if state is not None:
                try:
                    for event in by_customer.get(job.customer_id, ()):
                        apply(state, event, config)
                except Exception:  # noqa: BLE001 - a copy that cannot follow is dropped; the bytes are the truth
                    state = None
            if state is not None and ledger_revision(state) == job.revision:
                self.hits += 1
            else:
                state, _ = codec.decode(job.record)
                self.decoded += 1
            states[job.customer_id] = state
            if len(states) > self.capacity:
                states.popitem(last=False)
            yield job, state

    def clear(self) -> None:
        self._states.clear()


@dataclass(frozen=True, slots=True)
class Prepared:
    """A batch as the store takes it: alert updates, the touched customers, and their Table bytes."""

    updates: list[AlertUpdate]
    jobs: list[PositionJob]
    values: dict[str, bytes]
    now: datetime  # the batch's time: the positions' day, the snapshots' time


def store_rows(jobs: Iterable[PositionJob], now: datetime, ledger: LedgerConfig, events: Iterable[Any] | None = None,
               replicas: LedgerReplicas | None = None) -> tuple[dict[str, Any], list[Any]]:
    """The positions (``Position.to_json`` + risk score, by customer) and risk snapshots of a batch's customers.

    This runs wherever the store transaction runs (the store writer's child
    process by default), so the worker's event loop does not pay for it.
    Each ledger comes from ``replicas`` (kept up to date with the batch's
    ``events``) when its revision is the record's, else it is decoded from
    the record bytes the Table gets. The codec round-trips a ledger exactly,
    so either way the position is the one the worker's own record gives
    (``tests/test_store_rows.py``; ``tests/test_worker.py`` checks the stored
    positions against the offline ledger).
    """
    from sinks.store import RiskSnapshot

    today = now.date()
    positions: dict[str, Any] = {}
    snapshots: list[Any] = []
    pairs = (replicas.ledgers(jobs, events, ledger) if replicas is not None
             else ((job, codec.decode(job.record)[0]) for job in jobs))
    for job, state in pairs:
        positions[job.customer_id] = pos = position_row(state, today, ledger, job.risk_score)
        if job.snapshot:
            snapshots.append(RiskSnapshot.from_position(pos, now, risk_score=job.risk_score,
                                                        open_alerts=job.open_alerts))
    return positions, snapshots


def position_row(state: Any, today: date, ledger: LedgerConfig, risk_score: float | None,
                 fields: Iterable[str] | None = None) -> dict[str, Any]:
    """A customer's position as the store keeps it: ``Position.to_json`` and the model's risk score.

    ``fields``: only those of the position (the reviewer-feedback features read ``FEEDBACK_FIELDS``).
    """
    row = position(state, today, ledger).to_json(fields)
    row["risk_score"] = risk_score
    return row


#: The position fields the reviewer-feedback features read (``feedback.POSITION_FIELDS`` but the risk score).
FEEDBACK_FIELDS = tuple(name for name in POSITION_FIELDS if name != "risk_score")


def store_batch(store: Any, ledger: LedgerConfig, updates: list[AlertUpdate], sinks: list[str],
                jobs: list[PositionJob], now: datetime, events: list[Any] | None,
                replicas: LedgerReplicas | None = None) -> None:
    """One batch's store transaction: its alerts, the positions and snapshots of its jobs, its events.

    Runs in the store writer's child process (``streams.store_writer``) or in a thread of the worker.
    """
    positions, snapshots = store_rows(jobs, now, ledger, events, replicas)
    store.record(updates, sinks, positions, snapshots, None, events)


@dataclass
class WakeSchedule:
    """When each customer next needs a clock tick; a heap, not a scan of all customers."""

    heap: list[tuple[date, str]] = field(default_factory=list)
    due: dict[str, date] = field(default_factory=dict)

    def set(self, customer_id: str, day: date | None) -> None:
        if day is None:
            self.due.pop(customer_id, None)
        elif self.due.get(customer_id) != day:
            self.due[customer_id] = day
            heapq.heappush(self.heap, (day, customer_id))

    def pop_due(self, today: date) -> list[str]:
        ready = []
        while self.heap and self.heap[0][0] <= today:
            day, customer_id = heapq.heappop(self.heap)
            if self.due.get(customer_id) == day:
                del self.due[customer_id]
                ready.append(customer_id)
        return ready

    def replace(self, due: dict[str, date]) -> None:
        """The schedule becomes exactly ``due`` (customer -> day): one heapify, not a push per customer."""
        self.due = due
        self.heap = [(day, customer_id) for customer_id, day in due.items()]
        heapq.heapify(self.heap)

    def clear(self) -> None:
        self.heap.clear()
        self.due.clear()

    def __len__(self) -> int:
        return len(self.due)


class WorkerRuntime:
    def __init__(self, settings: Settings, thresholds: Thresholds, store: Any, sinks: Mapping[str, Any],
                 clock: Clock | None = None, models: Any = None, threshold_version: int | None = None,
                 feedback: Any = None):
        self.settings = settings
        self.threshold_version = threshold_version
        self.clock = clock or SystemClock()
        self.models = models if models is not None else build_models(thresholds, settings)
        self.engine = RiskEngine(thresholds, settings.ledger, self.models, threshold_version)
        self.wake_key = wake_key(self.engine)
        self._days: dict[int, date] = {}
        self.store = store
        self.sinks = dict(sinks)
        self.wake = WakeSchedule()
        self.lock = asyncio.Lock()
        self.stopping = asyncio.Event()
        self.deliverer: Any = None
        #: A streams.store_writer.StoreWriter when batches are stored by a child process; None: by a thread.
        self.writer: Any = None
        #: The store's copies of ledgers when batches are stored by a thread (the child process keeps its own).
        self.replicas = LedgerReplicas(settings.state_cache)
        self.store_outage = False
        from pipeline.feedback import FeedbackModel

        #: P(a reviewer confirms an alert), learned from their verdicts (pipeline.feedback).
        self.feedback = feedback if feedback is not None else FeedbackModel()

    def reconfigure(self, thresholds: Thresholds, version: int | None) -> None:
        """Swap in new thresholds; customers' episodes and the models carry on."""
        self.engine = RiskEngine(thresholds, self.settings.ledger, self.models, version)
        self.wake_key = wake_key(self.engine)
        self.threshold_version = version

    # --- persisting --------------------------------------------------------------

    def _risk_score(self, record: CustomerRecord) -> float | None:
        current = getattr(self.models, "current_risk", None)
        if current is not None:
            return current(record)
        risk = record.risk.models.get("r")  # OnlineModels keeps [risk, previous risk] here
        return risk[0] if risk else None

    def prepare(self, updates: list[AlertUpdate], records: Mapping[str, CustomerRecord], now: datetime) -> Prepared:
        """What the store needs of a batch, taken from the records now (a later batch changes them).

        Call after ``schedule`` (or ``tick``): the Table bytes carry the wake-up
        day. Annotates the alerts with the reviewer-feedback features and
        estimate, at raise time (from the alerted customers' positions, the
        only ones computed here).
        """
        today = now.date()
        day = today.isoformat()
        jobs = []
        values = {}
        for customer_id, record in records.items():
            memory = record.risk.memory
            snapshot = memory.get("_snapshot", {}).get("on") != day
            if snapshot:
                # One risk snapshot per customer per day keeps the charts' table small. Marked before the
                # record is encoded, so that the Table's copy knows today's is taken.
                memory["_snapshot"] = {"on": day}
            values[customer_id] = value = self.table_value(record, today)
            jobs.append(PositionJob(customer_id, value, self._risk_score(record),
                                    len(record.risk.book.open_alerts()), snapshot, ledger_revision(record.ledger)))
        risk_scores = {job.customer_id: job.risk_score for job in jobs} if updates else {}
        alerted: dict[str, Any] = {}
        for update in updates:
            customer_id = update.alert["customer_id"]
            if customer_id not in alerted:
                record = records.get(customer_id)
                alerted[customer_id] = None if record is None else position_row(
                    record.ledger, today, self.settings.ledger, risk_scores[customer_id], FEEDBACK_FIELDS)
            self.feedback.annotate(update.alert, alerted[customer_id])
        return Prepared(updates, jobs, values, now)

    async def persist(self, updates: list[AlertUpdate], records: Mapping[str, CustomerRecord], now: datetime,
                      events: list[Any] | None = None) -> Prepared:
        """Commit the batch's alerts (with their outbox rows), positions, snapshots and events; wait out outages.

        Returns what was stored, with the records' Table bytes (``Prepared.values``).
        """
        prepared = self.prepare(updates, records, now)
        await self.store_prepared(prepared, events)
        return prepared

    @property
    def stores_in_turn(self) -> bool:
        """Whether the store keeps batches in order itself (the child store writer, by ticket): a batch may then
        be sent before the one before it is stored; otherwise the caller must wait for that."""
        return self.writer is not None

    async def store_prepared(self, prepared: Prepared, events: list[Any] | None = None, ticket: int | None = None,
                             previous: asyncio.Event | None = None) -> None:
        """Commit a prepared batch in one transaction; while the store is down, retry (the batch waits here).

        The events feed the customer timeline in the web app; the store keeps each ``event_id`` once. With
        the child store writer, ``ticket`` is the batch's place in the order of stores (one is taken when not
        given: the caller has nothing else in flight) and ``previous`` is set once the batch before is stored.
        """
        from sinks.store import StoreUnavailable
        from streams.store_writer import OutOfTurn

        if self.writer is not None and ticket is None:
            ticket = self.writer.ticket()
        delay = 0.5
        while True:
            try:
                if self.writer is not None:
                    await self.writer.record(ticket, prepared.updates, list(self.sinks), prepared.jobs, prepared.now,
                                             events)
                else:
                    await asyncio.to_thread(store_batch, self.store, self.settings.ledger, prepared.updates,
                                            list(self.sinks), prepared.jobs, prepared.now, events, self.replicas)
            except OutOfTurn:
                # The batch before failed (an outage) and is being retried: this one goes after it.
                if previous is not None:
                    await previous.wait()
                else:
                    await asyncio.sleep(0.01)
                continue
            except StoreUnavailable as problem:
                if not self.store_outage:
                    log.error("alert store unavailable, holding the batch until it is back: %s", problem)
                    self.store_outage = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                continue
            if self.store_outage:
                log.warning("alert store is back; batch stored")
                self.store_outage = False
            return

    # --- reviewers' verdicts ------------------------------------------------------

    async def follow_verdicts(self, page: int = 1000) -> int:
        """Learn the reviewers' new verdicts from the store, each once (see pipeline.feedback).

        The store is read outside the lock; learning happens under it, between
        batches, so every alert of a batch is annotated by one model state.
        Raises StoreUnavailable if the store cannot be reached.
        """
        from pipeline.feedback import Verdict

        total = 0
        while True:
            before = self.feedback.watermark
            ids, verdicts = await asyncio.to_thread(self.store.verdicts_after, before, page)
            async with self.lock:
                total += self.feedback.take(ids, [Verdict(**v) for v in verdicts])
            if len(ids) < page or self.feedback.watermark == before:
                return total

    # --- clock ticks -----------------------------------------------------------------

    def table_value(self, record: CustomerRecord, today: date) -> bytes:
        """The record's bytes for the Table: behind a header with its wake-up day as just scheduled.

        Call after ``schedule`` (or ``tick``) of this record on ``today``.
        """
        wake = self.wake.due.get(record.customer_id)
        return codec.with_wake(encode_record(record), today.toordinal(), wake.toordinal() if wake else 0,
                               self.wake_key)

    def wake_from_table(self, raw: bytes, today: date) -> tuple[date | None, bool]:
        """A customer's next wake-up day after ``today`` from its Table value; and whether it was decoded.

        ``next_wake`` of a record is the earliest after the given day of days
        the record alone fixes (aging steps, promise deadlines, the models'
        days), so the day written with it on day w is still the answer on any
        later day before it. The record is decoded only when that day has
        passed, the record was written on a later day (a clock set back), the
        rules changed (``wake_key``) or it has no header.
        """
        header = codec.wake_of(raw)
        if header is not None:
            written_on, wake_on, key = header
            t = today.toordinal()
            if key == self.wake_key and written_on <= t and (not wake_on or wake_on > t):
                if not wake_on:
                    return None, False
                day = self._days.get(wake_on)
                if day is None:  # one date object per day, not one per customer
                    day = self._days[wake_on] = date.fromordinal(wake_on)
                return day, False
        return self.engine.next_wake(decode_record(raw), today), True

    def schedule(self, records: Iterable[CustomerRecord], today: date) -> None:
        for record in records:
            self.wake.set(record.customer_id, self.engine.next_wake(record, today))

    def tick(self, load: Any, now: datetime) -> tuple[dict[str, CustomerRecord], list[AlertUpdate]]:
        """Run the engine's tick for every customer whose wake-up day has come."""
        today = now.date()
        touched: dict[str, CustomerRecord] = {}
        updates: list[AlertUpdate] = []
        for customer_id in self.wake.pop_due(today):
            record = load(customer_id)
            if record is None:
                continue
            updates.extend(self.engine.on_tick(record, now))
            touched[customer_id] = record
        self.schedule(touched.values(), today)
        return touched, updates


class LongLivedHeap:
    """Keeps the cyclic garbage collector off the worker's long-lived state.

    The state (decoded records, models) holds millions of objects and next to
    no reference cycles, yet each full collection walked all of it: a pause of
    150–300 ms every few seconds on the event loop at 1,000 events/s with 2,000
    customers, growing with the state, and nothing found (BENCHMARKS.md,
    latency section). ``after_batch`` moves everything the collector tracks
    into the permanent generation (``gc.freeze``, a list splice): collections
    then look only at what is newer than the last batch. Frozen objects are
    still freed by reference counting; only garbage *cycles* among them wait
    for ``collect_all``, which thaws, collects everything once and freezes
    again, every ``full_interval_s`` (a single pause of one full collection).
    """

    def __init__(self, full_interval_s: float = 600.0, clock: Any = None, collect_young: bool = False):
        """``collect_young``: collect the young generations before each freeze, so that the cycles a batch
        leaves (SQLAlchemy's sessions and results make some) are freed at once instead of waiting, frozen,
        for ``collect_all``. That walks only what the batch allocated."""
        import time

        self.full_interval_s = full_interval_s
        self.collect_young = collect_young
        self._monotonic = clock or time.monotonic
        self._last_full = self._monotonic()
        self.full_collections = 0

    def after_batch(self) -> None:
        import gc

        if self._monotonic() - self._last_full >= self.full_interval_s:
            self.collect_all()
        else:
            if self.collect_young:
                gc.collect(1)
            gc.freeze()

    def collect_all(self) -> int:
        """Collect everything once, frozen objects included; returns what was collected."""
        import gc

        gc.unfreeze()
        found = gc.collect()
        gc.freeze()
        self._last_full = self._monotonic()
        self.full_collections += 1
        return found
