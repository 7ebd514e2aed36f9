"""The per-batch work of a worker, free of any streaming framework.

``BatchProcessor.process`` takes raw records (as read from Kafka) and returns
what must be written: the new state of each customer touched (once per
customer per batch, however many of its events were in the batch) and the
dead letters. The faust agent, the framework-free benchmark loop and the
offline tools all call this same code.

Shape of the data at each step::

    Record(topic, partition, offset, key, value bytes)
      → parse_event (the edge)               → Event | dead letter
      → key check (key == customer_id)       → Event | dead letter
      → ledger.apply(state, event)           → state | dead letter
    BatchResult(states: {customer_id: CustomerState}, dead_letters: [DeadLetter])
"""

from __future__ import annotations

import json
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable

from pipeline.config import LedgerConfig
from pipeline.events import Event, InvalidEvent, parse_event
from pipeline.ledger import CustomerState, LedgerRejected, apply, state_from_dict, state_to_dict


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
    states: dict[str, CustomerState] = field(default_factory=dict)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    applied: list[Event] = field(default_factory=list)
    duplicates: int = 0
    partitions: dict[str, int] = field(default_factory=dict)  # customer_id -> source partition


def encode_state(state: CustomerState) -> bytes:
    return json.dumps(state_to_dict(state), separators=(",", ":")).encode()


def decode_state(raw: bytes) -> CustomerState:
    return state_from_dict(json.loads(raw))


class StateCache:
    """Decoded states in front of the byte-valued table, bounded (LRU).

    Decoding a state costs more than applying an event, so a hot customer is
    decoded once, not once per event. Must be cleared whenever partitions move
    between workers, because the table may have changed under it.
    """

    def __init__(self, load: Callable[[str], bytes | None], capacity: int = 100_000):
        self._load = load
        self._capacity = capacity
        self._states: OrderedDict[str, CustomerState] = OrderedDict()

    def get(self, customer_id: str) -> CustomerState | None:
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

    def put(self, customer_id: str, state: CustomerState) -> None:
        self._states[customer_id] = state
        self._states.move_to_end(customer_id)
        while len(self._states) > self._capacity:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


class BatchProcessor:
    def __init__(self, cache: StateCache, config: LedgerConfig, topic_kinds: dict[str, str] | None = None):
        self.cache = cache
        self.config = config
        #: topic name -> "invoices" | "payments" | "customers"; None accepts any topic (offline use).
        self.topic_kinds = topic_kinds

    def process(self, records: Iterable[Record]) -> BatchResult:
        result = BatchResult()
        for record in records:
            try:
                event = self._edge(record)
                if self.topic_kinds is not None and self.topic_kinds.get(record.topic) != event.topic_kind:
                    raise InvalidEvent(
                        f"event type {event.type} belongs on the {event.topic_kind} topic, not on {record.topic}"
                    )
                state = result.states.get(event.customer_id) or self.cache.get(event.customer_id)
                if state is not None and state.has_seen(event.event_id):
                    result.duplicates += 1
                    continue
                state = apply(state, event, self.config)
            except (InvalidEvent, LedgerRejected) as refused:
                result.dead_letters.append(DeadLetter(record, refused.reason))
                continue
            self.cache.put(event.customer_id, state)
            result.states[event.customer_id] = state
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
