"""Optional CPU pinning of a worker and its child processes (``CREDITWATCH_WORKER_CPUS``, ``CREDITWATCH_CHILD_CPUS``).

A worker is one busy event loop (faust, the engine) beside two busy children
(the store writer and the outbox relay) and, on a small host, the broker. Left
to the kernel, the event loop's thread moves between cores as the children
wake, and each move costs it its warm caches: on this project's 2-core machine
a worker pinned to one core with its children on the other used about a tenth
less CPU for the same backlog and handled it 5-20 % faster (BENCHMARKS.md,
worker throughput). Pinning is the operator's choice, never a default: several
workers on one host (docker compose, a shared node) must not all claim CPU 0.

Both settings take a CPU list as ``taskset`` does (``0``, ``0-3``, ``0,2-3``).
``CREDITWATCH_WORKER_CPUS`` pins every thread of the worker process;
``CREDITWATCH_CHILD_CPUS`` its children. A child started by a pinned worker
inherits the worker's CPUs, so when only the worker is pinned its children are
given back the CPUs the worker had at its start.
"""

from __future__ import annotations

import os

from pipeline.config import parse_cpus

CHILD_CPUS = "CREDITWATCH_CHILD_CPUS"


class AffinityError(ValueError):
    """CPUs this process may not use; the message is one line."""


def cpu_list(cpus: frozenset[int] | set[int]) -> str:
    """The CPUs as a list ``parse_cpus`` reads, runs joined: ``0-3,6``."""
    runs: list[list[int]] = []
    for cpu in sorted(cpus):
        if runs and cpu == runs[-1][1] + 1:
            runs[-1][1] = cpu
        else:
            runs.append([cpu, cpu])
    return ",".join(f"{first}" if first == last else f"{first}-{last}" for first, last in runs)


def check_available(name: str, cpus: frozenset[int]) -> None:
    """AffinityError unless this process may run on each of ``cpus``."""
    available = os.sched_getaffinity(0)
    missing = sorted(cpus - available)
    if missing:
        raise AffinityError(f"{name}={cpu_list(cpus)}: CPU {cpu_list(set(missing))} is not available to this process "
                            f"(available: {cpu_list(available)})")


def pin_process(cpus: frozenset[int]) -> None:
    """Every thread of this process (the calling one among them, and so what it starts from now on) on ``cpus``."""
    for task in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(task), cpus)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass


def pin_worker(worker_cpus: frozenset[int] | None, child_cpus: frozenset[int] | None) -> None:
    """Pin the worker as its settings say, before it starts its children; AffinityError with one line.

    The children read ``CREDITWATCH_CHILD_CPUS`` from the environment they inherit (``pin_child``): when only
    the worker is pinned, it is set to the CPUs the worker had before, so the children do not share its core.
    """
    if worker_cpus is not None:
        check_available("CREDITWATCH_WORKER_CPUS", worker_cpus)
    if child_cpus is not None:
        check_available(CHILD_CPUS, child_cpus)
    if worker_cpus is None:
        return
    if child_cpus is None:
        os.environ[CHILD_CPUS] = cpu_list(os.sched_getaffinity(0))
    pin_process(worker_cpus)


def pin_child() -> None:
    """In a worker's child process: run on ``CREDITWATCH_CHILD_CPUS`` if set (checked by the worker)."""
    text = os.environ.get(CHILD_CPUS, "").strip()
    if text:
        pin_process(parse_cpus(CHILD_CPUS, text))
