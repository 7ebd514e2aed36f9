"""``CREDITWATCH_STORE_WRITER=process``: a worker's store transactions in a child process (streams.store_writer)."""

from __future__ import annotations

import pytest

from sinks.store import AlertStore
from streams.ingest import ingest_file
from tests.test_delivery_process import running, wait_for
from tests.test_end_to_end import EXAMPLES, wait_until_settled
from tests.worker_harness import children, cli_env, settings_of


@pytest.mark.broker
@pytest.mark.slow
def test_alerts_are_stored_by_the_writer_child_which_dies_with_a_sigkilled_worker(
    broker, unique_prefix, tmp_path, workers
):
    env = cli_env(broker, unique_prefix, f"{unique_prefix}worker", tmp_path / "data", CREDITWATCH_STORE_WRITER="process",
                  CREDITWATCH_DELIVERY="inline", CREDITWATCH_TICK_INTERVAL_MS=3_600_000)
    settings = settings_of(env)
    worker = workers(env)
    worker.wait_ready(timeout=60)
    ingest_file(EXAMPLES, settings)
    store = AlertStore(settings.resolved_database_url)
    try:
        alerts = wait_until_settled(store, settings, timeout=90, worker=worker)
    finally:
        store.close()
    assert alerts
    writer = children(worker.pid, b"multiprocessing.spawn")
    assert writer, "no store writer process under the worker"

    worker.kill()
    for pid in writer:
        wait_for(lambda: not running(pid), 10, f"store writer {pid} gone after its worker's SIGKILL")
