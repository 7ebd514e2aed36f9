"""The backtest pauses the cyclic garbage collector for its replay and leaves the process as it found it."""

from __future__ import annotations

import gc

import pytest

from detectors.config import Thresholds
from pipeline.backtest import build_engine, run_backtest
from pipeline.config import LedgerConfig
from pipeline.simulate import simulate, to_line


@pytest.fixture(scope="module")
def lines() -> list[bytes]:
    return [to_line(event).encode() for event in simulate(customers=5, days=60, seed=2)]


def _run(lines: list[bytes]):
    return run_backtest(lines, build_engine(Thresholds(), LedgerConfig(), with_models=True))


def _summary(result) -> tuple:
    return (result.events, result.ticks, sorted(result.alerts), result.model)


def test_collector_is_back_on_after_the_replay_and_results_do_not_depend_on_it(lines):
    assert gc.isenabled()
    with_gc = _run(lines)
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0  # nothing of ours was left frozen
    gc.disable()
    try:
        without = _run(lines)
        assert not gc.isenabled()  # a caller that had it off keeps it off
    finally:
        gc.enable()
    assert with_gc.events > 0 and _summary(with_gc) == _summary(without)


def test_objects_the_caller_froze_stay_frozen(lines):
    gc.freeze()
    try:
        assert gc.get_freeze_count() > 0
        _run(lines)
        assert gc.get_freeze_count() > 0  # not thawed (some may have been freed meanwhile: the count can only fall)
    finally:
        gc.unfreeze()
