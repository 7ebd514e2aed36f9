"""The per-batch work of a worker, free of any streaming framework.

``BatchProcessor.process`` takes raw records (as read from Kafka) and returns
what must be written: the new record of each customer touched (once per
customer per batch, however many of its events were in the batch), the alert
updates and the dead letters. The faust agent, the framework-free benchmark
loop and the tests all call this same code.

Shape of the data at each step::

    Record(topic, partition, offset, key, value bytes)
      → parse_event (the edge)                 → Event | dead letter
      → key and topic checks                   → Event | dead letter
      → engine.on_event(record, event, now)    → CustomerRecord, [AlertUpdate] | dead letter
    BatchResult(states: {customer_id: CustomerRecord}, updates: [AlertUpdate], dead_letters: [DeadLetter])
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from datetime import datetime

from pipeline.alerts import AlertUpdate
from pipeline.clock import Clock, SystemClock
from pipeline.engine import CustomerRecord, RiskEngine, decode_record, encode_record
from pipeline.events import Event, InvalidEvent, parse_event
from pipeline.ledger import LedgerRejected


@dataclass(frozen=True, slots=True)
class Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    record: Record
    reason: str

    def headers(self) -> list[tuple[str, bytes]]:
        """Kafka headers carrying where the bytes came from and why they were refused."""
        return [
            ("creditwatch.reason", self.reason.encode()),
            ("creditwatch.source_topic", self.record.topic.encode()),
            ("creditwatch.source_partition", str(self.record.partition).encode()),
            ("creditwatch.source_offset", str(self.record.offset).encode()),
        ]


@dataclass(slots=True)
class BatchResult:
    states: dict[str, CustomerRecord] = field(default_factory=dict)
    updates: list[AlertUpdate] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    applied: list[Event] = field(default_factory=list)
    duplicates: int = 0
    partitions: dict[str, int] = field(default_factory=dict)  # customer_id -> source partition


encode_state = encode_record
decode_state = decode_record


class StateCache:
    """Decoded states in front of the byte-valued table, bounded (LRU).

    Decoding a state costs more than applying an event, so a hot customer is
    decoded once, not once per event. Must be cleared whenever partitions move
    between workers, because the table may have changed under it.
    """

    def __init__(self, load: Callable[[str], bytes | None], capacity: int = 100_000):
        self._load = load
        self._capacity = capacity
        self._states: OrderedDict[str, CustomerRecord] = OrderedDict()

    def get(self, customer_id: str) -> CustomerRecord | None:
        state = self._states.get(customer_id)
        if state is not None:
            self._states.move_to_end(customer_id)
            return state
        raw = self._load(customer_id)
        if raw is None:
            return None
        state = decode_state(raw)
        self.put(customer_id, state)
        return state

    def put(self, customer_id: str, state: CustomerRecord) -> None:
        self._states[customer_id] = state
        self._states.move_to_end(customer_id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


class BatchProcessor:
    def __init__(self, cache: StateCache, engine: RiskEngine, topic_kinds: dict[str, str] | None = None,
                 clock: Clock | None = None):
        self.cache = cache
        self.engine = engine
        #: topic name -> "invoices" | "payments" | "customers"; None accepts any topic (offline use).
        self.topic_kinds = topic_kinds
        self.clock = clock or SystemClock()

    def process(self, records: Iterable[Record], now: datetime | None = None) -> BatchResult:
        result = BatchResult()
        now = now or self.clock.now()
        for record in records:
            try:
                event = self._edge(record)
                if self.topic_kinds is not None and self.topic_kinds.get(record.topic) != event.topic_kind:
                    raise InvalidEvent(
                        f"event type {event.type} belongs on the {event.topic_kind} topic, not on {record.topic}"
                    )
                state = result.states.get(event.customer_id) or self.cache.get(event.customer_id)
                if state is not None and state.ledger.has_seen(event.event_id):
                    result.duplicates += 1
                    continue
                state, updates = self.engine.on_event(state, event, now)
            except (InvalidEvent, LedgerRejected) as refused:
                result.dead_letters.append(DeadLetter(record, refused.reason))
                continue
            self.cache.put(event.customer_id, state)
            result.states[event.customer_id] = state
            result.updates.extend(updates)
            result.partitions[event.customer_id] = record.partition
            result.applied.append(event)
        return result

    @staticmethod
    def _edge(record: Record) -> Event:
        if record.value is None:
            raise InvalidEvent("message has no value")
        event = parse_event(record.value)
        key = record.key.decode("utf-8", "replace") if record.key is not None else None
        if key != event.customer_id:
            raise InvalidEvent(
                f"message key {key!r} does not equal customer_id {event.customer_id!r}; "
                "events must be keyed by customer_id so one worker owns each customer"
            )
        return event
