"""The worker's store writes in a child process (``CREDITWATCH_STORE_WRITER=process``, the default).

A batch's store transaction (alert upserts, outbox rows, positions, snapshots,
events; ``AlertStore.record``) and the positions and snapshots it stores
(``streams.runtime.store_rows``, from the child's own copies of the ledgers,
kept up to date with each batch's events, or from the records' Table bytes)
are ledger, SQLAlchemy and JSON work: in a thread of the
worker it holds the GIL that the engine and faust need, and it was a sixth to
a third of the worker's CPU. In a child process it runs on another core while
the worker works on the next batch (streams.app commits a batch while the next
one is processed). The batch crosses as a pickle of plain values; the worker
still waits for the commit before it acknowledges the batch, and the child
raises ``StoreUnavailable`` back to the worker's retry loop during an outage,
exactly as the thread did.

The child dies with the worker (a worker killed with SIGKILL leaves no writer
behind): the kernel signals it when its parent dies (``streams.delivery.die_with_parent``,
as for the delivery child), and where it cannot, it checks every second. If the child
dies, the next write fails, and the worker stops without acknowledging the
batch (crash-only, as for any failed batch); its restart replays the batch.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Any

_STORE: Any = None
_LEDGER: Any = None
_REPLICAS: Any = None
_HEAP: Any = None


def _open_store(url: str, parent: int, ledger: Any, replicas: int, gc_full_interval_s: float) -> None:
    global _STORE, _LEDGER, _REPLICAS, _HEAP
    from sinks.store import AlertStore
    from streams.delivery import die_with_parent
    from streams.runtime import LedgerReplicas, LongLivedHeap

    if not die_with_parent(parent):
        os._exit(0)
    _STORE = AlertStore(url)
    _LEDGER = ledger
    _REPLICAS = LedgerReplicas(replicas)
    # The ledger copies are millions of long-lived objects: without this, each full collection of the
    # child walked them all (0.1-0.25 s every ~5 s at 1,000 events/s), and the batch being stored waited.
    _HEAP = LongLivedHeap(gc_full_interval_s, collect_young=True)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=exit_with_parent, name="exit-with-worker", daemon=True).start()


def _record(updates: list[Any], sinks: list[str], jobs: list[Any], now: Any, events: list[Any] | None) -> None:
    from streams.runtime import store_batch

    try:
        store_batch(_STORE, _LEDGER, updates, sinks, jobs, now, events, _REPLICAS)
    finally:
        _HEAP.after_batch()


class StoreWriter:
    """``AlertStore.record`` of the worker's batches, one at a time, in a child process."""

    def __init__(self, url: str, ledger: Any, replicas: int = 100_000, gc_full_interval_s: float = 600.0):
        """``ledger``: the worker's ``LedgerConfig`` (the positions are computed with it); ``replicas``: how many
        customers' ledgers the child keeps to compute positions without decoding (``LedgerReplicas``);
        ``gc_full_interval_s``: how often the child collects all its objects (``LongLivedHeap``)."""
        self._pool = ProcessPoolExecutor(
            max_workers=1, mp_context=multiprocessing.get_context("spawn"),  # never fork a threaded process
            initializer=_open_store, initargs=(url, os.getpid(), ledger, replicas, gc_full_interval_s),
        )

    async def record(self, updates: list[Any], sinks: list[str], jobs: list[Any], now: Any,
                     events: list[Any] | None) -> None:
        """Store a batch: its alert updates, the positions and snapshots of its ``PositionJob``s, its events."""
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, _record, updates, sinks, jobs, now, events)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
