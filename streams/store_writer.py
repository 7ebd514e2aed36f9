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

The worker does not wait for a batch to be stored before it sends the next
one: each batch gets a ticket, in batch order, and the child stores a batch
only in its turn (the ticket after the last one it stored). A batch out of
turn, which can only happen after an outage failed the one before it, is
refused with ``OutOfTurn`` and sent again once the one before it is stored.
So the stores stay in batch order, while the child always has the next batch
waiting instead of waiting for the worker's event loop to notice that the
last one was stored and to send the next (which held each store for as long
as the engine held the loop, and made the store writer the worker's bottleneck).

The child dies with the worker (a worker killed with SIGKILL leaves no writer
behind): the kernel signals it when its parent dies (``streams.delivery.die_with_parent``,
as for the delivery child), and where it cannot, it checks every second. If the child
dies, the next write fails, and the worker stops without acknowledging the
batch (crash-only, as for any failed batch); its restart replays the batch.
"""

from __future__ import annotations

import asyncio
import itertools
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
_STORED = -1  # the ticket of the last batch stored


class OutOfTurn(Exception):
    """A batch reached the store writer before the batch before it was stored (that one failed and is retried)."""


def _open_store(url: str, parent: int, ledger: Any, replicas: int, gc_full_interval_s: float) -> None:
    global _STORE, _LEDGER, _REPLICAS, _HEAP
    from sinks.store import AlertStore
    from streams.affinity import pin_child
    from streams.delivery import die_with_parent
    from streams.runtime import LedgerReplicas, LongLivedHeap

    pin_child()

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


def _record(ticket: int, updates: list[Any], sinks: list[str], jobs: list[Any], now: Any,
            events: list[Any] | None) -> None:
    global _STORED
    from streams.runtime import store_batch

    if ticket != _STORED + 1:
        raise OutOfTurn(f"batch {ticket} arrived before batch {_STORED + 1} was stored")
    try:
        store_batch(_STORE, _LEDGER, updates, sinks, jobs, now, events, _REPLICAS)
    finally:
        _HEAP.after_batch()
    _STORED = ticket


def _started() -> int:
    """Nothing to do: running it at all means the child is up, with its imports done and its store open."""
    from sqlalchemy.orm import configure_mappers

    configure_mappers()  # (otherwise the first batch's first query would)
    return os.getpid()


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
        self._tickets = itertools.count()

    async def start(self) -> int:
        """Start the child now and wait until it can store (its pid): its start-up (imports, opening the store,
        about half a second of CPU) then happens before the worker says it is ready, not on the first batches."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, _started)

    def ticket(self) -> int:
        """The next batch's place in the order of stores: take one per batch, in batch order."""
        return next(self._tickets)

    async def record(self, ticket: int, updates: list[Any], sinks: list[str], jobs: list[Any], now: Any,
                     events: list[Any] | None) -> None:
        """Store a batch: its alert updates, the positions and snapshots of its ``PositionJob``s, its events.

        Raises ``OutOfTurn`` if the batch before ``ticket`` is not stored yet, ``StoreUnavailable`` in an outage.
        """
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._pool, _record, ticket, updates, sinks, jobs, now, events)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
