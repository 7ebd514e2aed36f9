"""Shared fixtures.

``broker``: ONE Kafka-protocol broker for the whole session. By default an
embedded Tansu broker on a free port (in memory, gone at the end); set
``CREDITWATCH_TEST_BROKER=host:port`` to use a broker that is already running
instead (it is then neither started nor stopped). Tests isolate themselves
with ``unique_prefix`` topic names rather than with a broker each.
"""

from __future__ import annotations

import os
import uuid

import pytest

from streams.broker import BrokerError, EmbeddedBroker, probe


@pytest.fixture(scope="session")
def broker():
    external = os.environ.get("CREDITWATCH_TEST_BROKER", "").strip()
    if external:
        host, _, port = external.split("://", 1)[-1].rpartition(":")
        handle = EmbeddedBroker(port=int(port), host=host or "127.0.0.1")  # never started: stop() is a no-op
        problem = None
        try:
            probe(handle.host, handle.port, timeout=3)
        except Exception as exc:
            problem = f"CREDITWATCH_TEST_BROKER={external} does not answer Kafka requests: {exc}"
        if problem:
            pytest.fail(problem, pytrace=False)
        yield handle
        return
    handle = EmbeddedBroker(port=0)
    try:
        handle.start()
    except BrokerError as exc:
        problem = f"cannot start the embedded test broker: {exc}"
    else:
        problem = None
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def unique_prefix() -> str:
    """A fresh topic prefix such as ``t1a2b3c4d.`` so tests sharing the broker never collide."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def workers(tmp_path):
    """Factory for ``creditwatch worker`` subprocesses (``tests.worker_harness.WorkerProcess``).

    ``workers(env)`` starts one, its stdout/stderr in ``tmp_path/workers/``; all
    still running at the end of the test are SIGKILLed.
    """
    from tests.worker_harness import WorkerProcess

    started: list[WorkerProcess] = []

    def start(env, name: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / "workers", name=name or f"worker{len(started) + 1}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop_quietly()
