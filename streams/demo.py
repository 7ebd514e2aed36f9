"""``creditwatch demo``: the whole system on one machine with embedded defaults.

Brings up the embedded broker, a SQLite store, a worker, the web app and a
simulated portfolio that streams live (a few customers deteriorating toward
default). The recent past (``--history-days``) is published at once, so the
first alerts appear within a minute; after that simulated time runs
``--speed`` times as fast as the wall clock (default 3600×: a day every 24 s),
and the worker's clock runs at the same speed, so aging and broken promises
fire as simulated days pass. Slack is used when a token is configured, the
console otherwise. Ctrl-C stops everything.

``--events FILE`` publishes a file instead of the simulation (the contract
examples with ``--events examples/events.jsonl``).
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pipeline.config import Settings


def _free_port(preferred: int) -> int:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", preferred))
            return preferred
        except OSError:
            pass
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class _Publisher(threading.Thread):
    """Feeds the simulated portfolio to the input topics until stopped."""

    def __init__(self, settings: Settings, customers: int, seed: int, speed: float, history_days: int,
                 anchor: datetime, default_share: float):
        super().__init__(name="demo-publisher", daemon=True)
        self.settings = settings
        self.customers, self.seed, self.speed = customers, seed, speed
        self.history_days, self.anchor, self.default_share = history_days, anchor, default_share
        self.stop_event = threading.Event()
        self.published = 0
        self.error: str | None = None

    def run(self) -> None:
        import json

        from kafka import KafkaProducer

        from pipeline.clock import AcceleratedClock
        from pipeline.simulate import live_stream

        producer = KafkaProducer(bootstrap_servers=self.settings.bootstrap_servers, linger_ms=20, acks="all")
        wall_since_anchor = AcceleratedClock(self.anchor, 1.0)

        def sleep(seconds: float) -> None:
            if self.stop_event.wait(seconds):
                raise _Stopped

        try:
            for event in live_stream(self.customers, self.seed, wall_since_anchor, speed=self.speed,
                                     history_days=self.history_days, default_share=self.default_share, sleep=sleep):
                kind = event["type"].split(".", 1)[0] + "s"
                producer.send(self.settings.topic(kind), key=event["customer_id"].encode(),
                              value=json.dumps(event).encode())
                self.published += 1
                if self.stop_event.is_set():
                    break
        except _Stopped:
            pass
        except Exception as problem:  # noqa: BLE001 - reported by the demo loop, one line
            self.error = f"{type(problem).__name__}: {problem}"
        finally:
            producer.flush(timeout=10)
            producer.close(timeout=5)


class _Stopped(Exception):
    pass


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def _stop(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def run_demo(settings: Settings, port: int | None = None, events_file: Path | None = None, once: bool = False,
             web_port: int = 8000, customers: int = 60, seed: int = 7, speed: float = 3600.0,
             history_days: int = 150, run_for: float | None = None, workdir: Path | None = None) -> int:
    from sinks.store import AlertStore, upgrade_database
    from streams.broker import EmbeddedBroker

    workdir = workdir or Path(tempfile.mkdtemp(prefix="creditwatch-demo-"))
    workdir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker(port=port or 0, log_path=workdir / "broker.log")
    broker.start()
    anchor = datetime.now(timezone.utc)
    demo = replace(settings, broker_url=broker.url, data_dir=workdir, database_url="", session_timeout_s=2.0,
                   partitions=4, clock_speed=speed if events_file is None else 1.0,
                   clock_anchor=anchor.isoformat() if events_file is None else "")
    env = {key: value for key, value in os.environ.items() if not key.startswith("CREDITWATCH_")}
    env.update({
        "CREDITWATCH_BROKER_URL": broker.url,
        "CREDITWATCH_DATA_DIR": str(workdir),
        "CREDITWATCH_SESSION_TIMEOUT_MS": "2000",
        "CREDITWATCH_TICK_INTERVAL_MS": "1000",
        "CREDITWATCH_PARTITIONS": str(demo.partitions),
        "CREDITWATCH_CLOCK_SPEED": str(int(demo.clock_speed)),
        "CREDITWATCH_CLOCK_ANCHOR": demo.clock_anchor,
        "CREDITWATCH_REVIEW_URL": f"http://127.0.0.1:{web_port}/alerts/{{alert_id}}",
    })
    for name in ("CREDITWATCH_SLACK_BOT_TOKEN", "CREDITWATCH_SLACK_CHANNEL", "CREDITWATCH_SLACK_BASE_URL"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    url = demo.resolved_database_url
    upgrade_database(url)
    password = secrets.token_urlsafe(9)
    from pipeline.web.app import ensure_user

    store = AlertStore(url)
    ensure_user(store, "demo", "admin", password)
    web_port = _free_port(web_port)
    env["CREDITWATCH_REVIEW_URL"] = f"http://127.0.0.1:{web_port}/alerts/{{alert_id}}"
    command = [sys.executable, "-m", "pipeline.cli"]
    worker = web = None
    publisher: _Publisher | None = None
    try:
        worker = _start([*command, "worker"], env, workdir / "worker.log")
        web = _start([*command, "serve", "--port", str(web_port)], env, workdir / "web.log")
        if events_file is not None:
            from streams.ingest import ingest_file

            print(ingest_file(events_file, demo).summary(), flush=True)
        else:
            publisher = _Publisher(demo, customers, seed, speed, history_days, anchor, default_share=0.12)
            publisher.start()
        print(f"creditwatch demo is running (data in {workdir})", flush=True)
        print(f"  web app:  http://127.0.0.1:{web_port}/   login: demo / {password}", flush=True)
        print(f"  broker:   {broker.url}", flush=True)
        if events_file is None:
            print(f"  portfolio: {customers} simulated customers, the last {history_days} days at once, "
                  f"then {speed:g}× real time; new alerts are listed here and in the web app", flush=True)
        print("  press Ctrl-C to stop", flush=True)
        return _wait(store, worker, web, publisher, run_for, once)
    except KeyboardInterrupt:
        return 0
    finally:
        if publisher is not None:
            publisher.stop_event.set()
            publisher.join(timeout=15)
        _stop(web)
        _stop(worker)
        store.close()
        broker.stop()
        print("stopped", flush=True)


def _wait(store: Any, worker: subprocess.Popen[bytes], web: subprocess.Popen[bytes], publisher: _Publisher | None,
          run_for: float | None, once: bool) -> int:
    """Until Ctrl-C/SIGTERM (or ``run_for`` seconds); prints a line per minute on alerts found so far."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    started = time.monotonic()
    next_report = started + 15
    shown: set[str] = set()
    while not stop.is_set():
        if worker.poll() is not None or web.poll() is not None:
            which = "worker" if worker.poll() is not None else "web app"
            print(f"creditwatch: error: the {which} stopped; see its log in the data directory", file=sys.stderr)
            return 1
        if publisher is not None and publisher.error:
            print(f"creditwatch: error: the simulated portfolio stopped: {publisher.error}", file=sys.stderr)
            return 1
        now = time.monotonic()
        if now >= next_report:
            try:
                count = store.count_alerts()
            except Exception:  # noqa: BLE001 - the store may be busy; report next time
                count = None
            published = f", {publisher.published} events published" if publisher is not None else ""
            print(f"  {int(now - started)} s: {count if count is not None else '?'} alerts stored{published}", flush=True)
            try:
                newest = [a for a in store.list_alerts(severity="critical", limit=5) if a["alert_id"] not in shown]
            except Exception:  # noqa: BLE001
                newest = []
            for alert in newest:
                shown.add(alert["alert_id"])
                print(f"    [{alert['severity']}] {alert.get('customer_name') or alert['customer_id']}: {alert['title']}",
                      flush=True)
            next_report = now + 30
            if once and count:
                return 0
        if run_for is not None and now - started >= run_for:
            return 0
        stop.wait(0.5)
    return 0
