"""``CREDITWATCH_DELIVERY=process``: the outbox relay in a child process of the worker (streams.delivery).

(And the other child of a worker, its store writer, streams.store_writer: it dies with the worker too.)

One ``creditwatch worker`` on the embedded broker with the Kafka alert sink
and the console sink (no Slack token). The test finds the worker's delivery
child in /proc and checks that it delivers every stored alert, that its counts
reach the worker's /metrics, that its console lines reach the worker's stdout,
that the worker starts it again when it dies, and that it does not outlive a
worker killed with SIGKILL (or stopped with SIGTERM).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from sinks.store import AlertStore
from streams.broker import free_port
from streams.ingest import ingest_file
from tests.test_end_to_end import EXAMPLES, deliveries, wait_until_settled
from tests.worker_harness import children, cli_env, delivery_children, metric_total as total, run_cli, scrape_metrics, settings_of


def running(pid: int) -> bool:
    """The process exists and is not a zombie waiting for a reaper."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g}s: {what}")
        time.sleep(0.1)


def process_env(broker, prefix: str, tmp_path: Path, **extra) -> dict[str, str]:
    # No clock ticks: once the outbox is drained the child has nothing to write to its counts pipe, whose broken
    # end would otherwise also tell it that the worker is gone; what ends it then is what this test is about.
    return cli_env(broker, prefix, f"{prefix}worker", tmp_path / "data", CREDITWATCH_DELIVERY="process",
                   CREDITWATCH_TICK_INTERVAL_MS=3_600_000, **extra)


@pytest.mark.broker
@pytest.mark.slow
def test_the_delivery_child_delivers_every_alert_and_it_and_the_store_writer_die_with_a_sigkilled_worker(
    broker, unique_prefix, tmp_path, workers
):
    port = free_port()
    env = process_env(broker, unique_prefix, tmp_path, CREDITWATCH_HEALTH_PORT=port)
    settings = settings_of(env)
    worker = workers(env)
    worker.wait_ready(timeout=60)
    child = wait_for(lambda: delivery_children(worker.pid), 10, "a delivery process under the worker")
    assert len(child) == 1, child
    # The store writer is up at the ready line, before any batch: its start-up is not paid by the first batches.
    assert len(children(worker.pid, b"multiprocessing.spawn")) == 1

    ingest_file(EXAMPLES, settings)
    store = AlertStore(settings.resolved_database_url)
    try:
        alerts = wait_until_settled(store, settings, timeout=90, worker=worker)
    finally:
        store.close()
    made = deliveries(alerts)
    assert made and all(d["status"] == "delivered" for d in made), made
    assert {d["sink"] for d in made} == {"kafka", "console"}
    # The child's counts come over the pipe to the worker's /metrics.
    wait_for(lambda: total(scrape_metrics(port), "creditwatch_deliveries_delivered_total") == len(made), 15,
             f"/metrics counting {len(made)} deliveries")
    # The child printed to the worker's stdout: one console line per console delivery.
    console = [d for d in made if d["sink"] == "console"]
    printed = [line for line in worker.stdout_path.read_text().splitlines() if line.startswith("[")]
    assert len(printed) == len(console), printed

    # The store writer (CREDITWATCH_STORE_WRITER=process, the default) stored those alerts.
    writer = children(worker.pid, b"multiprocessing.spawn")
    assert len(writer) == 1, writer

    # SIGKILL of the worker takes its delivery child along (this one delivered the alerts: it is long set up),
    # and its store writer.
    worker.kill()
    wait_for(lambda: not running(child[0]), 10, f"delivery process {child[0]} gone after its worker's SIGKILL")
    wait_for(lambda: not running(writer[0]), 10, f"store writer {writer[0]} gone after its worker's SIGKILL")


@pytest.mark.broker
@pytest.mark.slow
def test_a_delivery_child_that_dies_is_started_again_and_a_sigterm_stops_both(broker, unique_prefix, tmp_path,
                                                                             workers):
    worker = workers(process_env(broker, unique_prefix, tmp_path))
    worker.wait_ready(timeout=60)
    child = wait_for(lambda: delivery_children(worker.pid), 10, "a delivery process under the worker")
    os.kill(child[0], signal.SIGKILL)
    again = wait_for(lambda: [pid for pid in delivery_children(worker.pid) if pid != child[0]], 20,
                     "a new delivery process after the first was killed")
    assert "starting it again" in worker.stderr_text()
    assert worker.alive()
    assert worker.terminate() == 0, worker.stderr_tail()
    assert not running(again[0]), "the delivery process outlived its worker's normal stop"


def test_a_bad_delivery_mode_is_one_readable_line(tmp_path):
    result = run_cli(["worker"], env={"CREDITWATCH_DELIVERY": "thread", "CREDITWATCH_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "creditwatch: error: CREDITWATCH_DELIVERY='thread' is not one of inline, process"], result.stderr


def test_a_bad_store_writer_mode_is_one_readable_line(tmp_path):
    result = run_cli(["worker"], env={"CREDITWATCH_STORE_WRITER": "fork", "CREDITWATCH_DATA_DIR": str(tmp_path)})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "creditwatch: error: CREDITWATCH_STORE_WRITER='fork' is not one of process, thread"], result.stderr
