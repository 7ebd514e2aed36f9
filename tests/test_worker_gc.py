"""The worker keeps the cyclic collector off its long-lived state (streams.runtime.LongLivedHeap)."""

from __future__ import annotations

import gc
import weakref

import pytest

from streams.runtime import LongLivedHeap


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture
def thawed():
    yield
    gc.unfreeze()  # never leave the test process with frozen objects


def _cycle() -> weakref.ref:
    a, b = Node(), Node()
    a.other, b.other = b, a
    return weakref.ref(a)


def test_state_kept_over_a_batch_is_out_of_the_collectors_reach_until_the_periodic_full_collection(thawed):
    now = [0.0]
    heap = LongLivedHeap(full_interval_s=600, clock=lambda: now[0])
    cycle = _cycle()  # garbage already, but only the cyclic collector can free it
    heap.after_batch()
    assert gc.get_freeze_count() > 0
    gc.collect()
    assert cycle() is not None  # frozen: an ordinary collection does not look at it
    now[0] = 601.0
    heap.after_batch()  # the interval has passed: this one collects everything
    assert cycle() is None
    assert heap.full_collections == 1
    assert gc.get_freeze_count() > 0  # and freezes what survived


def test_frozen_objects_without_cycles_are_still_freed_when_dropped(thawed):
    heap = LongLivedHeap(full_interval_s=600)
    kept = [Node() for _ in range(3)]
    ref = weakref.ref(kept[0])
    heap.after_batch()
    del kept
    assert ref() is None  # reference counting frees them, frozen or not


def test_collect_young_frees_the_cycles_a_batch_left_before_freezing_and_keeps_live_state_frozen(thawed):
    # The store writer's heap: SQLAlchemy leaves a few cycles per batch; they must not wait 10 minutes, frozen.
    heap = LongLivedHeap(full_interval_s=600, collect_young=True)
    live = [Node() for _ in range(3)]
    live[0].other = live[1]
    garbage = _cycle()
    heap.after_batch()
    assert garbage() is None
    assert all(gc.is_tracked(node) for node in live)
    assert gc.get_freeze_count() > 0  # what survived is out of the collectors' reach
    assert heap.full_collections == 0
