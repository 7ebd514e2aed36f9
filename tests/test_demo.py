"""`creditwatch demo`: everything up on embedded defaults, alerts within a minute, Ctrl-C stops it all."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

from streams.broker import free_port
from tests.worker_harness import creditwatch_command


def _port_open(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def test_demo_serves_the_web_app_raises_alerts_within_a_minute_and_stops_cleanly_on_ctrl_c(tmp_path):
    web_port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith("CREDITWATCH_")}
    env["PYTHONUNBUFFERED"] = "1"
    log = tmp_path / "demo.out"
    started = time.monotonic()
    with log.open("wb") as out:
        demo = subprocess.Popen([*creditwatch_command(), "demo", "--web-port", str(web_port), "--customers", "40"],
                                env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=tmp_path)
    try:
        text = ""
        while time.monotonic() - started < 60 and "press Ctrl-C" not in text:
            assert demo.poll() is None, f"demo exited early:\n{log.read_text()}"
            time.sleep(0.3)
            text = log.read_text()
        match = re.search(r"data in (\S+)\)", text)
        login = re.search(r"login: demo / (\S+)", text)
        broker = re.search(r"broker:\s+kafka://127\.0\.0\.1:(\d+)", text)
        assert match and login and broker, f"the demo did not print its URL and login:\n{text}"
        assert f"http://127.0.0.1:{web_port}/" in text

        from sinks.store import AlertStore

        store = AlertStore(f"sqlite:///{Path(match.group(1)) / 'creditwatch.db'}")
        first_alert_after = None
        while time.monotonic() - started < 60:
            if store.count_alerts():
                first_alert_after = time.monotonic() - started
                break
            time.sleep(1)
        store.close()
        assert first_alert_after is not None, f"no alert within a minute:\n{log.read_text()}"
        print(f"first alerts stored {first_alert_after:.1f} s after `creditwatch demo` started")

        with urllib.request.urlopen(f"http://127.0.0.1:{web_port}/login", timeout=10) as page:
            assert page.status == 200 and b"password" in page.read().lower()

        demo.send_signal(signal.SIGINT)
        assert demo.wait(timeout=45) == 0, log.read_text()
        assert log.read_text().rstrip().endswith("stopped")
        assert not _port_open(web_port), "the web app is still listening after Ctrl-C"
        assert not _port_open(int(broker.group(1))), "the broker is still listening after Ctrl-C"
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait(timeout=10)
