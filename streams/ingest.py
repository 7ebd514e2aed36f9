"""``creditwatch ingest FILE.jsonl``: validate each line and publish it.

Lines are validated with the same edge code the worker uses, so a producer
learns about a bad line here, with its line number, rather than in the
dead-letter topic. Valid lines are published as they were written (unknown
extra fields survive), keyed by customer_id, to the topic of their type.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pipeline.config import Settings
from pipeline.events import InvalidEvent, parse_event


class BrokerUnavailable(Exception):
    """The broker could not be reached or refused the events; one line."""


@dataclass
class IngestReport:
    published: int = 0
    skipped: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        topics = ", ".join(f"{topic}: {count}" for topic, count in sorted(self.by_topic.items()))
        text = f"published {self.published} event{'s' if self.published != 1 else ''}"
        if topics:
            text += f" ({topics})"
        if self.skipped:
            text += f"; skipped {self.skipped} bad line{'s' if self.skipped != 1 else ''}"
        return text


def ingest_file(path: Path, settings: Settings, errors: TextIO = sys.stderr) -> IngestReport:
    from kafka import KafkaProducer
    from kafka.errors import KafkaError

    from streams.admin import ensure_topics

    try:
        ensure_topics(settings.bootstrap_servers, {topic: settings.partitions for topic in settings.input_topics})
        producer = KafkaProducer(
            bootstrap_servers=settings.bootstrap_servers,
            acks="all",
            linger_ms=5,
            retries=5,
            max_block_ms=10_000,
            request_timeout_ms=15_000,
            bootstrap_timeout_ms=10_000,
        )
    except KafkaError as problem:
        raise BrokerUnavailable(f"cannot reach the broker at {settings.bootstrap_servers}: {problem}") from None
    except OSError as problem:
        raise BrokerUnavailable(f"cannot reach the broker at {settings.bootstrap_servers}: {problem}") from None
    report = IngestReport()
    pending = []
    try:
        with path.open("rb") as lines:
            for number, raw in enumerate(lines, start=1):
                raw = raw.rstrip(b"\r\n")
                if not raw.strip():
                    continue
                try:
                    event = parse_event(raw)
                except InvalidEvent as problem:
                    report.skipped += 1
                    print(f"{path.name}:{number}: {problem.reason}", file=errors)
                    continue
                topic = settings.topic(event.topic_kind)
                pending.append(producer.send(topic, key=event.customer_id.encode(), value=raw))
                report.by_topic[topic] = report.by_topic.get(topic, 0) + 1
        producer.flush(timeout=30)
        for future in pending:
            future.get(timeout=30)
            report.published += 1
    except KafkaError as problem:
        raise BrokerUnavailable(
            f"broker at {settings.bootstrap_servers} did not take the events ({report.published} confirmed): {problem}"
        ) from None
    finally:
        producer.close(timeout=5)
    return report
