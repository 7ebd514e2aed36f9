"""CREDITWATCH_WORKER_CPUS and CREDITWATCH_CHILD_CPUS: a worker and its children on the CPUs the operator names."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_settings, parse_cpus
from streams.affinity import AffinityError, cpu_list, pin_worker
from tests.test_delivery_process import wait_for
from tests.worker_harness import children, cli_env, delivery_children, run_cli

AVAILABLE = sorted(os.sched_getaffinity(0))


def allowed(pid: int) -> list[frozenset[int]]:
    """The CPUs each thread of a process may run on."""
    found = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            found.append(frozenset(os.sched_getaffinity(int(task))))
        except ProcessLookupError:
            pass
    return found


@pytest.mark.parametrize("text, cpus", [("0", {0}), ("0-3", {0, 1, 2, 3}), ("0,2-3", {0, 2, 3}), (" 1 , 4 ", {1, 4})])
def test_cpu_lists_are_read_as_taskset_reads_them(text, cpus):
    assert parse_cpus("CREDITWATCH_WORKER_CPUS", text) == cpus
    assert parse_cpus("X", cpu_list(frozenset(cpus))) == cpus


@pytest.mark.parametrize("text", ["a", "3-1", "-1", "0,,2", "1-"])
def test_a_bad_cpu_list_stops_the_start_with_one_line_naming_the_setting(text):
    with pytest.raises(ConfigError) as refused:
        load_settings({"CREDITWATCH_CHILD_CPUS": text})
    assert str(refused.value) == f"CREDITWATCH_CHILD_CPUS={text!r} is not a CPU list (like 0, 0-3 or 0,2-3)"


def test_unset_cpu_settings_leave_the_scheduling_to_the_system():
    settings = load_settings({})
    assert settings.worker_cpus is None and settings.child_cpus is None


def test_a_cpu_this_process_may_not_use_is_refused_naming_it_and_the_available_ones():
    missing = max(AVAILABLE) + 1
    before = os.sched_getaffinity(0)
    with pytest.raises(AffinityError) as refused:
        pin_worker(frozenset({missing}), None)
    assert str(refused.value) == (f"CREDITWATCH_WORKER_CPUS={missing}: CPU {missing} is not available to this "
                                  f"process (available: {cpu_list(frozenset(AVAILABLE))})")
    assert os.sched_getaffinity(0) == before  # nothing pinned


def test_the_worker_command_refuses_an_unavailable_cpu_in_one_line(tmp_path):
    missing = max(AVAILABLE) + 1
    env = {**os.environ, "CREDITWATCH_WORKER_CPUS": str(missing), "CREDITWATCH_DATA_DIR": str(tmp_path),
           "CREDITWATCH_BROKER_URL": "kafka://127.0.0.1:1"}
    done = run_cli(["worker"], env, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"creditwatch: error: CREDITWATCH_WORKER_CPUS={missing}: CPU {missing} is not available to this process "
        f"(available: {cpu_list(frozenset(AVAILABLE))})"]


def started_worker(broker, prefix: str, tmp_path: Path, workers, **cpus: str):
    env = cli_env(broker, prefix, f"{prefix}worker", tmp_path / "data", CREDITWATCH_DELIVERY="process", **cpus)
    worker = workers(env)
    worker.wait_ready(timeout=60)
    relay = wait_for(lambda: delivery_children(worker.pid), 10, "the delivery child")
    writer = children(worker.pid, b"multiprocessing.spawn")
    assert len(relay) == 1 and len(writer) == 1
    return worker, relay[0], writer[0]


@pytest.mark.broker
@pytest.mark.slow
def test_the_worker_runs_on_its_cpus_and_its_children_on_theirs(broker, unique_prefix, tmp_path, workers):
    first, last = AVAILABLE[0], AVAILABLE[-1]  # the same CPU on a one-CPU machine: the check still applies
    worker, relay, writer = started_worker(broker, unique_prefix, tmp_path, workers,
                                           CREDITWATCH_WORKER_CPUS=str(first), CREDITWATCH_CHILD_CPUS=str(last))
    assert set(allowed(worker.pid)) == {frozenset({first})}  # every thread: faust's consumer thread too
    assert set(allowed(relay)) == {frozenset({last})}
    assert set(allowed(writer)) == {frozenset({last})}


@pytest.mark.broker
@pytest.mark.slow
def test_children_of_a_pinned_worker_get_the_cpus_it_started_with(broker, unique_prefix, tmp_path, workers):
    worker, relay, writer = started_worker(broker, unique_prefix, tmp_path, workers,
                                           CREDITWATCH_WORKER_CPUS=str(AVAILABLE[0]))
    assert set(allowed(worker.pid)) == {frozenset({AVAILABLE[0]})}
    assert set(allowed(relay)) == {frozenset(AVAILABLE)}  # not the worker's one CPU, which they inherited
    assert set(allowed(writer)) == {frozenset(AVAILABLE)}
