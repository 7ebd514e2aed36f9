"""``creditwatch worker``: check the topic layout, then run the faust app."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.config import Settings

if TYPE_CHECKING:
    from streams.runtime import WorkerRuntime

log = logging.getLogger("creditwatch.worker")


#: Libraries whose loggers the worker keeps quiet (see quiet_logging).
LIBRARY_LOGGERS = ("faust", "mode", "aiokafka", "kafka", "venusian")


class WorkerStartError(Exception):
    """The worker cannot start; the message is one line."""


def quiet_logging(level: int = logging.WARNING) -> None:
    """Our own log format; faust, mode and aiokafka only speak up when it matters.

    faust's worker sets the root logger to DEBUG under ``-l warn`` (its spinner
    handler), which costs about 30 % of throughput in formatting alone. At
    DEBUG they log at INFO: group joins, partition assignments and table
    recovery, what it takes to tell why a worker reads nothing (their own
    DEBUG output is far too much to read).
    """
    from streams.observability import KeyValueFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if level <= logging.DEBUG else max(level, logging.WARNING))


def prepare_topics(settings: Settings) -> None:
    """Create what is missing with the configured partition count; refuse a bad layout.

    faust creates no source topics, and the embedded broker auto-creates an
    unknown topic with 4 partitions whatever the app declares, so every topic
    is created here before any client can touch it.
    """
    from streams.admin import TopicLayoutError, check_copartitioned, ensure_topics
    from streams.app import changelog_topic_name, checkpoint_topic_name

    wanted = {topic: settings.partitions for topic in settings.input_topics}
    wanted[changelog_topic_name(settings)] = settings.partitions
    wanted[settings.topic("deadletter")] = settings.partitions
    wanted[settings.topic("alerts")] = settings.partitions
    wanted[checkpoint_topic_name(settings)] = 1
    try:
        ensure_topics(settings.bootstrap_servers, wanted)
        check_copartitioned(settings.bootstrap_servers, [*settings.input_topics, changelog_topic_name(settings)])
    except TopicLayoutError as problem:
        raise WorkerStartError(str(problem)) from None
    except Exception as problem:  # noqa: BLE001 - any client failure is one line for the user
        raise WorkerStartError(f"cannot prepare topics on {settings.bootstrap_servers}: {problem}") from None


def load_model_checkpoint(settings: Settings, key: bytes = b"models") -> bytes | None:
    """The last snapshot under ``key`` (``models``, ``feedback``) any worker of this group saved, or None.

    Checkpoints are saved together (models, then feedback), so the last few messages hold one of each.
    """
    from kafka import KafkaConsumer, TopicPartition

    from streams.admin import high_watermarks
    from streams.app import checkpoint_topic_name

    topic = checkpoint_topic_name(settings)
    end = high_watermarks(settings.bootstrap_servers, topic).get(0, 0)
    if end == 0:
        return None
    consumer = KafkaConsumer(bootstrap_servers=settings.bootstrap_servers, enable_auto_commit=False,
                             consumer_timeout_ms=5000)
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek(tp, max(end - CHECKPOINT_TAIL, 0))
        found = None
        for message in consumer:
            if message.key == key:
                found = message.value
            if message.offset >= end - 1:
                break
        return found
    finally:
        consumer.close()
    return None


#: How many of the last checkpoint messages are searched for a key.
CHECKPOINT_TAIL = 8


def open_runtime(settings: Settings, thresholds_path: Path | None = None) -> "WorkerRuntime":
    """Everything the worker needs besides faust; raises WorkerStartError with one line.

    The thresholds in force are the store's latest version; ``--config FILE``
    first records that file as a version (if it differs), so the store stays
    the one place that says which thresholds raised which alert.
    """
    from detectors.config import ThresholdError, load_thresholds
    from pipeline.tuning import current, record_file
    from sinks.store import AlertStore, SchemaOutdated, StoreUnavailable, check_schema_current
    from streams.runtime import WorkerRuntime, notify_sinks

    url = settings.resolved_database_url
    try:
        check_schema_current(url)
        store = AlertStore(url)
        if thresholds_path is not None:
            record_file(store, load_thresholds(thresholds_path), "worker", f"loaded at worker start from {thresholds_path}")
        version = current(store)
    except ThresholdError as problem:
        raise WorkerStartError(str(problem)) from None
    except (SchemaOutdated, StoreUnavailable) as problem:
        raise WorkerStartError(str(problem)) from None
    from pipeline.clock import clock_from_settings

    runtime = WorkerRuntime(settings, version.thresholds, store, notify_sinks(settings),
                            clock=clock_from_settings(settings.clock_speed, settings.clock_anchor),
                            threshold_version=version.number)
    checkpoint = load_model_checkpoint(settings)
    restore = getattr(runtime.models, "restore", None)
    if checkpoint and restore is not None:
        restore(checkpoint)
        log.warning("restored the online models from their last checkpoint")
    feedback = load_model_checkpoint(settings, b"feedback")
    if feedback:
        try:
            runtime.feedback.restore(feedback)
        except Exception as problem:  # noqa: BLE001 - an unreadable snapshot costs learning, not correctness
            log.warning("could not restore the reviewer-feedback model (%s); it starts again from the store", problem)
        else:
            log.warning("restored the reviewer-feedback model (%s verdicts learned)", runtime.feedback.learned)
    return runtime


def run_worker(settings: Settings, thresholds_path: Path | None = None) -> int:
    import faust

    from streams.app import build_app

    quiet_logging(getattr(logging, settings.log_level))
    from streams.affinity import AffinityError, pin_worker

    try:
        pin_worker(settings.worker_cpus, settings.child_cpus)  # before any child is started: they inherit it
    except AffinityError as problem:
        print(f"creditwatch: error: {problem}", file=sys.stderr)
        return 2
    if os.environ.get("CREDITWATCH_NAIVE_RECOVERY") == "1":
        # Test-only: faust's own ListOffsets-based recovery ends, which lose the
        # last changelog batch on Tansu (see streams.transport). Exists so that
        # tests/test_worker.py can show its recovery test detects that defect.
        from streams import transport

        transport.NAIVE_RECOVERY = True
        print("creditwatch: warning: CREDITWATCH_NAIVE_RECOVERY=1 (test only): table recovery may lose updates",
              file=sys.stderr, flush=True)
    from streams.observability import WorkerMetrics, serve_health

    metrics = WorkerMetrics()
    if settings.health_port:
        # Up before anything slow, so a liveness probe sees the process during start and recovery.
        try:
            serve_health(metrics, settings.health_port)
        except OSError as problem:
            print(f"creditwatch: error: cannot serve health on port {settings.health_port}: {problem.strerror}",
                  file=sys.stderr)
            return 2
    try:
        prepare_topics(settings)
        runtime = open_runtime(settings, thresholds_path)
    except WorkerStartError as problem:
        print(f"creditwatch: error: {problem}", file=sys.stderr)
        return 2
    if settings.store_writer == "process":
        from streams.store_writer import StoreWriter

        runtime.writer = StoreWriter(settings.resolved_database_url, settings.ledger, settings.state_cache,
                                    settings.gc_full_interval_s)
    (settings.data_dir / "faust").mkdir(parents=True, exist_ok=True)
    app = build_app(settings, runtime, tick_interval_s=settings.tick_interval_s, metrics=metrics)

    @app.on_before_shutdown.connect
    async def stop_delivering_and_checkpoint(app: Any, **kwargs: Any) -> None:
        runtime.stopping.set()
        try:
            await app.creditwatch_drain()  # the last batch's commit, so its offsets can be committed on the way out
            await app.creditwatch_save_checkpoint()
        except Exception:  # noqa: BLE001 - a lost checkpoint costs learning, not correctness
            log.warning("could not save the model checkpoint on shutdown", exc_info=True)
        if app.creditwatch_delivery is not None:
            await app.creditwatch_delivery.stop()  # it finishes the deliveries in hand

    worker = faust.Worker(app, loglevel="warn", redirect_stdouts=False, quiet=True, override_logging=False)
    worker.spinner = None  # its handler is what forces the root logger to DEBUG
    try:
        worker.execute_from_commandline()
    except SystemExit as stopped:
        return int(stopped.code or 0)
    finally:
        if app.creditwatch_delivery is not None:
            app.creditwatch_delivery.stop_now()  # already stopped unless the shutdown went wrong
        if runtime.writer is not None:
            runtime.writer.close()
        runtime.store.close()
    return 0
