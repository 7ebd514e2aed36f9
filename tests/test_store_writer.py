"""The child store writer stores a worker's batches in batch order, though the worker sends each without waiting.

A batch goes to the child with a ticket (its place in the order of stores);
the child stores it only in its turn, so a batch sent while the one before it
waits out an outage is stored after that one, never before.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timezone

import pytest

from detectors.config import Thresholds
from pipeline.alerts import AlertUpdate
from pipeline.config import Settings
from sinks.base import MemorySink
from sinks.store import AlertStore, upgrade_database
from streams.runtime import Prepared, WorkerRuntime
from streams.store_writer import OutOfTurn, StoreWriter
from tests.test_delivery_faults import db_proxy, postgres_schema  # noqa: F401 - fixtures

NOW = datetime(2026, 3, 4, 9, 0, tzinfo=timezone.utc)


def update(revision: int, change: str, severity: str) -> AlertUpdate:
    return AlertUpdate(change, {
        "alert_id": "al_1", "customer_id": "C1", "customer_name": "Acme", "detector": "credit_limit",
        "severity": severity, "title": f"{severity}: exposure over limit", "reasons": [], "score": None,
        "raised_at": NOW.isoformat(), "updated_at": NOW.isoformat(), "event_ids": [f"e{revision}"],
        "status": "open", "revision": revision, "threshold_version": None,
    })


def changes(store: AlertStore) -> list[tuple[str, int]]:
    return [(entry["change"], entry["revision"]) for entry in store.get_alert("al_1")["history"]]


def test_the_store_writer_child_stores_a_batch_only_in_its_turn(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    upgrade_database(url)
    writer = StoreWriter(url, Settings().ledger, replicas=10)
    try:
        first, second = writer.ticket(), writer.ticket()
        with pytest.raises(OutOfTurn):
            asyncio.run(writer.record(second, [update(2, "escalated", "critical")], ["memory"], [], NOW, []))
        asyncio.run(writer.record(first, [update(1, "raised", "warning")], ["memory"], [], NOW, []))
        asyncio.run(writer.record(second, [update(2, "escalated", "critical")], ["memory"], [], NOW, []))
        with pytest.raises(OutOfTurn):  # a ticket is stored once
            asyncio.run(writer.record(second, [update(3, "escalated", "critical")], ["memory"], [], NOW, []))
    finally:
        writer.close()
    store = AlertStore(url)
    try:
        assert changes(store) == [("raised", 1), ("escalated", 2)]
        assert [d["revision"] for d in store.get_alert("al_1")["deliveries"]] == [1, 2]
    finally:
        store.close()


def test_a_batch_sent_while_the_one_before_waits_out_an_outage_is_stored_after_it(postgres_schema, db_proxy):  # noqa: F811
    direct = postgres_schema.render_as_string(hide_password=False)
    proxied = postgres_schema.set(host="127.0.0.1", port=db_proxy.port).render_as_string(hide_password=False)
    upgrade_database(direct)
    runtime = WorkerRuntime(Settings(), Thresholds(), store=None, sinks={"memory": MemorySink()})
    runtime.writer = StoreWriter(proxied, runtime.settings.ledger, replicas=10)

    async def scenario() -> None:
        db_proxy.cut()
        raised = Prepared([update(1, "raised", "warning")], [], {}, NOW)
        escalated = Prepared([update(2, "escalated", "critical")], [], {}, NOW)
        first = asyncio.create_task(runtime.store_prepared(raised, [], runtime.writer.ticket()))
        # Three failed attempts: the first batch's next is 4 s away, the second's first retries come sooner.
        deadline = time.monotonic() + 30
        while not (runtime.store_outage and db_proxy.refused >= 3):
            assert time.monotonic() < deadline, "the first batch never met the outage"
            await asyncio.sleep(0.05)
        first_stored = asyncio.Event()
        first.add_done_callback(lambda _: first_stored.set())
        second = asyncio.create_task(runtime.store_prepared(escalated, [], runtime.writer.ticket(), first_stored))
        await asyncio.sleep(1.0)  # the second reaches the child while the first waits to try again
        assert not first.done() and not second.done()
        db_proxy.restore()
        await asyncio.wait_for(asyncio.gather(first, second), timeout=60)

    try:
        asyncio.run(scenario())
    finally:
        runtime.writer.close()
    store = AlertStore(direct)
    try:
        # Stored second first, the escalation would have been the insert and the raise an older revision.
        assert changes(store) == [("raised", 1), ("escalated", 2)]
        assert [d["revision"] for d in store.get_alert("al_1")["deliveries"]] == [1, 2]
        assert store.get_alert("al_1")["severity"] == "critical"
    finally:
        store.close()
