"""``creditwatch demo``: the system on one machine with embedded defaults.

Starts the embedded broker, a worker process, publishes the events (the
contract examples unless ``--events`` names a file), waits until the worker
has applied them, prints every customer's position and the alerts, and then
keeps running until Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import date
from pathlib import Path

from pipeline.config import Settings

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "events.jsonl"


def _examples_file() -> Path:
    for candidate in (EXAMPLES, Path(__file__).resolve().parents[2] / "shared" / "examples" / "events.jsonl"):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("bundled examples/events.jsonl is missing")


def run_demo(settings: Settings, port: int | None = None, events_file: Path | None = None, once: bool = False) -> int:
    from pipeline.events import parse_event
    from pipeline.ledger import position
    from pipeline.report import format_position
    from streams.broker import EmbeddedBroker
    from streams.ingest import ingest_file
    from streams.state_reader import read_all_states

    events_file = events_file or _examples_file()
    workdir = Path(tempfile.mkdtemp(prefix="creditwatch-demo-"))
    broker = EmbeddedBroker(port=port or 0, log_path=workdir / "broker.log")
    broker.start()
    print(f"broker ready on {broker.url}", flush=True)
    demo_settings = replace(settings, broker_url=broker.url, data_dir=workdir, session_timeout_s=2.0)
    env = {
        **os.environ,
        "CREDITWATCH_BROKER_URL": broker.url,
        "CREDITWATCH_DATA_DIR": str(workdir),
        "CREDITWATCH_SESSION_TIMEOUT_MS": "2000",
        "CREDITWATCH_TOPIC_PREFIX": settings.topic_prefix,
        "CREDITWATCH_CONSUMER_GROUP": settings.consumer_group,
        "CREDITWATCH_PARTITIONS": str(settings.partitions),
    }
    worker_log = (workdir / "worker.log").open("wb")
    worker = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "worker"], env=env,
                              stdout=subprocess.PIPE, stderr=worker_log, start_new_session=True)
    try:
        report = ingest_file(events_file, demo_settings)
        print(report.summary(), flush=True)
        expected = {}
        for line in events_file.read_bytes().splitlines():
            try:
                event = parse_event(line)
            except Exception:  # noqa: BLE001 - ingest already reported bad lines
                continue
            expected.setdefault(event.customer_id, set()).add(event.event_id)
        deadline = time.monotonic() + 60
        states = {}
        while time.monotonic() < deadline:
            if worker.poll() is not None:
                print(f"creditwatch: error: the worker stopped (see {workdir / 'worker.log'})", file=sys.stderr)
                return 1
            try:
                states = read_all_states(demo_settings)
            except Exception:  # noqa: BLE001 - the changelog may not exist yet
                states = {}
            if all(cid in states and ids <= set(states[cid].seen) for cid, ids in expected.items()):
                break
            time.sleep(0.5)
        else:
            print("creditwatch: error: the worker did not apply the events within 60 s", file=sys.stderr)
            return 1
        today = date.today()
        for customer_id in sorted(states):
            print()
            print(format_position(position(states[customer_id], today, settings.ledger)))
        print(f"\nworker log: {workdir / 'worker.log'}", flush=True)
        if once:
            return 0
        print("running; press Ctrl-C to stop", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGTERM)
            try:
                worker.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
        worker_log.close()
        broker.stop()
        print("stopped", flush=True)
