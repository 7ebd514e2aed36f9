"""The outbox relay in a process of its own (``CREDITWATCH_DELIVERY=process``).

Delivering alerts (claim due rows, send them to the Kafka alert topic and
Slack or the console, mark them) is Python work: in the worker's process it
holds the GIL the stream processor needs (a profile put it at 12-17 % of the
worker's busy samples). With ``CREDITWATCH_DELIVERY=process`` the worker
starts ``python -m streams.delivery`` instead, which runs the same
``sinks.outbox.OutboxDeliverer`` on the same store; the store stays the only
thing the two share (it is the record of truth, and claims make a second
deliverer safe, see ``sinks.outbox``).

The child lives and dies with its worker:

* it asks Linux to send it SIGTERM when the worker dies, even of SIGKILL
  (``prctl(PR_SET_PDEATHSIG)``), and its loop also stops once its parent pid
  changes (another OS, or a worker that died before the ``prctl``);
* a worker stopping normally sends it SIGTERM and waits for it; it finishes the
  run in hand, so no claim is left to expire;
* a child that exits on its own is started again by the worker
  (:class:`DeliveryProcess`) after :data:`RESTART_DELAY_S`.

Each run's counts travel back over a pipe whose write end the child inherits
(``--counts-fd``), one ``"delivered failed skipped"`` line per run, to the
worker's /metrics (``WorkerMetrics.observe_deliveries``). The console sink
prints to the stdout the child inherited, the worker's.
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any, Callable

log = logging.getLogger("creditwatch.delivery")

#: Linux ``prctl`` option: the signal a process gets when the thread that forked it ends.
PR_SET_PDEATHSIG = 1
#: How long the worker waits before starting a delivery process that exited unexpectedly again.
RESTART_DELAY_S = 2.0
#: How long a stopping worker waits for its delivery process before killing it.
STOP_TIMEOUT_S = 10.0


# --- the child --------------------------------------------------------------------------------


def die_with_parent(parent: int) -> bool:
    """Have the kernel SIGTERM this process when ``parent`` dies; False if it is already gone.

    Where ``prctl`` does not exist (not Linux) only the loop's parent check is left.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):
        pass
    # The parent may have died between our fork and the prctl: then nobody will signal us.
    return os.getppid() == parent


class StopFlag:
    """``threading.Event``'s ``set``/``is_set``/``wait`` for a flag set by a signal handler (the stop of
    ``OutboxDeliverer.run_until_stopped`` here).

    A handler runs on the main thread between two bytecodes; ``Event.set`` there takes the lock that an
    ``Event.wait`` in progress on the same thread holds, and the process hangs for good (seen: a delivery child
    that ignored SIGTERM). A plain attribute and short sleeps take no lock.
    """

    def __init__(self) -> None:
        self.stopped = False

    def set(self) -> None:
        self.stopped = True

    def is_set(self) -> bool:
        return self.stopped

    def wait(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while not self.stopped and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, 0.05))
        return self.stopped


class CountsWriter:
    """Writes each outbox run's counts to the worker as one ``"delivered failed skipped"`` line."""

    def __init__(self, fd: int, on_broken: Callable[[], None]):
        self.fd = fd
        self.on_broken = on_broken

    def __call__(self, stats: Any) -> None:
        try:
            os.write(self.fd, f"{stats.delivered} {stats.failed} {stats.skipped}\n".encode())
        except OSError:  # the worker closed its end: it is gone or going
            self.on_broken()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m streams.delivery",
                                     description="The outbox relay of one creditwatch worker (its child process).")
    parser.add_argument("--parent", type=int, required=True, help="pid of the worker; delivery stops when it is gone")
    parser.add_argument("--counts-fd", type=int, default=None, help="inherited pipe for each run's counts")
    args = parser.parse_args(argv)

    from pipeline.clock import SystemClock
    from pipeline.config import ConfigError, load_settings
    from sinks.outbox import OutboxDeliverer
    from sinks.store import AlertStore
    from streams.runtime import notify_sinks
    from streams.worker import quiet_logging

    try:
        settings = load_settings()
    except ConfigError as problem:
        print(f"creditwatch delivery: error: {problem}", file=sys.stderr)
        return 2
    quiet_logging(getattr(logging, settings.log_level))
    from streams.affinity import pin_child

    pin_child()
    stop = StopFlag()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C reaches the worker too, which stops us in order
    if not die_with_parent(args.parent):
        return 0
    observe = CountsWriter(args.counts_fd, stop.set) if args.counts_fd is not None else None
    store = AlertStore(settings.resolved_database_url)
    sinks = notify_sinks(settings)
    # Retries wait in wall time, even when the detection clock is accelerated (demo).
    deliverer = OutboxDeliverer(store, sinks, SystemClock(), observe=observe)
    try:
        deliverer.run_until_stopped(stop, poll_interval=0.5, alive=lambda: os.getppid() == args.parent)
    finally:
        for sink in sinks.values():
            close = getattr(sink, "close", None)
            if close is not None:
                try:
                    close()
                except Exception:  # noqa: BLE001 - closing on the way out; nothing is lost (the store has it all)
                    pass
        store.close()
    return 0


# --- the worker's side --------------------------------------------------------------------------


class DeliveryProcess:
    """The worker's delivery child: started, watched (restarted if it dies), stopped with the worker.

    ``observe`` is told each run's counts (``sinks.outbox.RunStats``), on a reader thread.
    """

    def __init__(self, observe: Callable[[Any], None] | None = None, restart_delay: float = RESTART_DELAY_S,
                 command: list[str] | None = None):
        self.observe = observe
        self.restart_delay = restart_delay
        self.command = command or [sys.executable, "-m", "streams.delivery"]
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.stopped = False

    def start(self) -> None:
        """Start the child. Called on the event loop's (main) thread: the child's PDEATHSIG follows the thread
        that forked it, so a helper thread that ends would take the child with it."""
        read_fd, write_fd = os.pipe()
        try:
            self.process = subprocess.Popen(
                [*self.command, "--parent", str(os.getpid()), "--counts-fd", str(write_fd)],
                stdin=subprocess.DEVNULL, pass_fds=(write_fd,),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)  # the child has its copy; ours would keep the reader from seeing its end
        self.starts += 1
        threading.Thread(target=self._read_counts, args=(read_fd,), name="creditwatch-delivery-counts",
                         daemon=True).start()

    def _read_counts(self, fd: int) -> None:
        from sinks.outbox import RunStats

        with os.fdopen(fd, "rb") as pipe:
            for line in pipe:
                try:
                    delivered, failed, skipped = (int(part) for part in line.split())
                except ValueError:
                    log.warning("unreadable counts from the delivery process: %r", line)
                    continue
                if self.observe is not None:
                    self.observe(RunStats(delivered, failed, skipped))

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    async def supervise(self, stopping: asyncio.Event, check_interval: float = 0.5) -> None:
        """Start the child and keep one running until ``stopping`` is set."""
        if stopping.is_set() or self.stopped:
            return
        self.start()
        while not await _wait(stopping, check_interval):
            assert self.process is not None
            status = self.process.poll()
            if status is None or self.stopped:
                continue
            log.warning("delivery process %s exited with status %s; starting it again in %gs",
                        self.process.pid, status, self.restart_delay)
            if await _wait(stopping, self.restart_delay) or self.stopped:
                return
            self.start()

    def _terminate(self) -> "subprocess.Popen[bytes] | None":
        """Mark the child stopped (not to be restarted) and SIGTERM it if it runs; its Popen, if any."""
        self.stopped = True
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
        return process

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int | None:
        """SIGTERM the child and wait (it finishes its run in hand); SIGKILL after ``timeout``."""
        process = self._terminate()
        if process is None:
            return None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while process.poll() is None and loop.time() < deadline:
            await asyncio.sleep(0.05)
        return self.stop_now()

    def stop_now(self, timeout: float = 2.0) -> int | None:
        """The same without an event loop, for the worker's way out: SIGTERM, a short wait, SIGKILL."""
        process = self._terminate()
        if process is None:
            return None
        try:
            return process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
        return process.wait()


async def _wait(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; whether it is set."""
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except asyncio.TimeoutError:
        pass
    return event.is_set()


if __name__ == "__main__":
    sys.exit(main())
