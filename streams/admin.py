"""Topic administration: explicit creation, layout checks and true end offsets.

Tansu facts these helpers are built around (measured on Tansu 0.6.0, pinned by
``tests/test_embedded_broker.py``):

* Metadata requests that allow auto-creation (aiokafka producers, subscribing
  consumers) create an unknown topic with 4 partitions. ``ensure_topics`` must
  therefore run before any producer or consumer touches a topic. The checks
  here only use ``list_topics``/``describe_topics`` of kafka-python's admin
  client, which send Metadata with auto-creation off: an unknown topic comes
  back as UNKNOWN_TOPIC_OR_PARTITION and is *not* created.
* CreateTopics honours the requested partition count; replication factor -1
  (broker default) becomes 1 on Tansu.
* ListOffsets(latest) is wrong on Tansu: it answers "base offset of the last
  record batch + 1". One batch of 900 records reports end offset 1. The high
  watermark in Fetch responses is right, so ``high_watermarks`` reads that.
"""

from __future__ import annotations

import time
from typing import Iterable, Mapping

from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

__all__ = [
    "TopicLayoutError",
    "ensure_topics",
    "partition_counts",
    "check_copartitioned",
    "high_watermarks",
]

_UNKNOWN_TOPIC = 3  # UNKNOWN_TOPIC_OR_PARTITION


class TopicLayoutError(RuntimeError):
    """Topics are missing or laid out in a way the pipeline cannot use; one line."""


def _admin(bootstrap: str, timeout: float) -> KafkaAdminClient:
    limits = {"request_timeout_ms": max(1000, int(timeout * 1000))}
    # kafka-python 3 bootstraps in the constructor for up to bootstrap_timeout_ms
    # (30 s by default), which would make an unreachable broker cost 30 s
    # whatever ``timeout`` says. Older releases do not know the option.
    if "bootstrap_timeout_ms" in KafkaAdminClient.DEFAULT_CONFIG:
        limits["bootstrap_timeout_ms"] = limits["request_timeout_ms"]
    return KafkaAdminClient(bootstrap_servers=bootstrap, client_id="creditwatch-admin", **limits)


def _describe(admin: KafkaAdminClient, topics: Iterable[str]) -> dict[str, int | None]:
    names = list(dict.fromkeys(topics))
    if not names:
        return {}
    counts: dict[str, int | None] = {name: None for name in names}
    for entry in admin.describe_topics(names):
        name = entry.get("name", entry.get("topic"))
        if name in counts and entry.get("error_code", 0) == 0:
            counts[name] = len(entry["partitions"])
    return counts


def partition_counts(bootstrap: str, topics: Iterable[str], timeout: float = 10) -> dict[str, int | None]:
    """Partition count of each topic, ``None`` for a topic that does not exist.

    Never creates a topic.
    """
    admin = _admin(bootstrap, timeout)
    try:
        return _describe(admin, topics)
    finally:
        admin.close()


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 10) -> list[str]:
    """Create each missing topic with the given partition count; return the names created.

    Existing topics are left alone, whatever their partition count (use
    ``check_copartitioned`` for the input topics). Another process creating
    the same topic at the same time is not an error. Returns once every topic
    is visible in metadata with a leader for each partition.
    """
    for name, partitions in topics.items():
        if not isinstance(partitions, int) or partitions < 1:
            raise ValueError(f"topic {name}: partition count must be a whole number >= 1, not {partitions!r}")
    if not topics:
        return []
    deadline = time.monotonic() + timeout
    admin = _admin(bootstrap, timeout)
    try:
        existing = set(admin.list_topics())
        missing = [name for name in topics if name not in existing]
        created: list[str] = []
        if missing:
            new = [NewTopic(name, topics[name], -1) for name in missing]  # -1: broker's default replication
            result = admin.create_topics(new, timeout_ms=int(timeout * 1000), raise_errors=False)
            for entry in result["topics"]:
                code = entry.get("error_code", 0)
                if code == 0:
                    created.append(entry["name"])
                elif code != TopicAlreadyExistsError.errno:
                    message = entry.get("error_message") or f"error code {code}"
                    raise TopicLayoutError(f"cannot create topic {entry['name']}: {message}")
        _wait_visible(admin, list(topics), deadline)
        return created
    finally:
        admin.close()


def _wait_visible(admin: KafkaAdminClient, names: list[str], deadline: float) -> None:
    while True:
        pending = []
        for entry in admin.describe_topics(names):
            parts = entry.get("partitions") or []
            if entry.get("error_code", 0) != 0 or not parts or any(
                p.get("error_code", 0) != 0 or p.get("leader_id", p.get("leader", -1)) < 0 for p in parts
            ):
                pending.append(entry.get("name", entry.get("topic")))
        if not pending:
            return
        if time.monotonic() >= deadline:
            raise TopicLayoutError(f"topics not ready in broker metadata in time: {', '.join(sorted(pending))}")
        time.sleep(0.05)


def check_copartitioned(bootstrap: str, topics: Iterable[str], timeout: float = 10) -> None:
    """Raise ``TopicLayoutError`` unless all topics exist with one partition count.

    CONTRACT §1: the input topics are co-partitioned, so that one worker owns
    all of a customer's events.
    """
    names = list(dict.fromkeys(topics))
    counts = partition_counts(bootstrap, names, timeout=timeout)
    layout_error = describe_layout_problem(counts)
    if layout_error:
        raise TopicLayoutError(layout_error)


def describe_layout_problem(counts: Mapping[str, int | None]) -> str | None:
    """The one-line complaint about ``counts`` (topic → partitions), or None if co-partitioned."""
    present = {count for count in counts.values() if count is not None}
    if len(present) <= 1 and None not in counts.values():
        return None
    parts = []
    for name, count in counts.items():
        if count is None:
            parts.append(f"{name} does not exist")
        else:
            parts.append(f"{name} has {count} partition{'' if count == 1 else 's'}")
    return (
        "input topics are not co-partitioned: "
        + ", ".join(parts)
        + "; they must all exist with the same partition count"
    )


def high_watermarks(bootstrap: str, topic: str, timeout: float = 10) -> dict[int, int]:
    """True end offset of each partition of ``topic``: the high watermark of Fetch responses.

    Use this instead of ListOffsets(latest) (``end_offsets`` in aiokafka and
    kafka-python), which Tansu answers wrongly. Reads at most one fetch per
    partition; never creates the topic (raises ``TopicLayoutError`` if it does
    not exist).
    """
    deadline = time.monotonic() + timeout
    count = partition_counts(bootstrap, [topic], timeout=timeout)[topic]
    if count is None:
        raise TopicLayoutError(f"topic {topic} does not exist")
    partitions = [TopicPartition(topic, p) for p in range(count)]
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        client_id="creditwatch-highwater",
        group_id=None,
        enable_auto_commit=False,
        allow_auto_create_topics=False,
        # Start from the log start if offset 0 is gone (retention).
        auto_offset_reset="earliest",
        # Tansu answers an empty fetch only at this deadline.
        fetch_max_wait_ms=10,
        # We only want the high watermark, not the data.
        max_partition_fetch_bytes=1024,
        request_timeout_ms=max(1000, int(timeout * 1000)) + 1000,
    )
    try:
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, 0)
        result: dict[int, int] = {}
        while True:
            consumer.poll(timeout_ms=50)
            for tp in partitions:
                if tp.partition not in result:
                    highwater = consumer.highwater(tp)
                    if highwater is not None:
                        result[tp.partition] = highwater
                        consumer.pause(tp)
            if len(result) == count:
                return dict(sorted(result.items()))
            if time.monotonic() >= deadline:
                missing = sorted(set(range(count)) - set(result))
                raise TimeoutError(f"no fetch response for {topic} partitions {missing} within {timeout:g}s")
    finally:
        consumer.close()
