"""Settings from ``CREDITWATCH_*`` environment variables (CONTRACT §4).

Read once at start; a bad value stops the start with one line naming the
variable. Secrets (the Slack token) are kept out of ``repr`` so that they are
never printed or logged by accident.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Mapping

from pipeline.codes import CURRENCIES


class ConfigError(ValueError):
    """A setting that cannot be used; the message is one line naming it."""


#: Value of one unit of each currency in the base currency. Used only when a
#: customer is invoiced or pays in a currency other than its limit currency.
#: Production sets CREDITWATCH_FX_RATES from its treasury feed.
DEFAULT_FX_RATES: dict[str, Decimal] = {
    "EUR": Decimal("1"),
    "USD": Decimal("0.92"),
    "GBP": Decimal("1.17"),
    "CHF": Decimal("1.05"),
    "SEK": Decimal("0.088"),
    "NOK": Decimal("0.086"),
    "DKK": Decimal("0.134"),
    "PLN": Decimal("0.23"),
    "CZK": Decimal("0.04"),
    "JPY": Decimal("0.0062"),
    "CAD": Decimal("0.68"),
    "AUD": Decimal("0.61"),
}


@dataclass(frozen=True)
class LedgerConfig:
    """What the pure ledger needs to know besides the events."""

    base_currency: str = "EUR"
    fx_rates: Mapping[str, Decimal] = field(default_factory=lambda: dict(DEFAULT_FX_RATES))
    #: DSO looks back this many days of credit sales.
    dso_window_days: int = 90
    #: A settled invoice (and the payments that settled it) leaves the state
    #: this many days after settlement; see ``pipeline.ledger`` for what that
    #: bounds and what it gives up.
    retention_days: int = 180
    #: How many recent event ids each customer remembers for duplicate detection.
    seen_ids: int = 256
    #: Days after ``promised_on`` before an unkept promise counts as broken.
    promise_grace_days: int = 0


@dataclass(frozen=True)
class Settings:
    broker_url: str = "kafka://127.0.0.1:9092"
    database_url: str = ""
    topic_prefix: str = "credit."
    partitions: int = 8
    data_dir: Path = Path("data")
    consumer_group: str = "creditwatch"
    #: How long the broker may hold a fetch waiting for data. faust hard-codes
    #: 1500 ms; the embedded broker answers an empty fetch only at the deadline,
    #: so a low value is what keeps event-to-alert latency low there.
    fetch_max_wait_ms: int = 20
    #: Consumer-group session timeout. Apache Kafka refuses less than its
    #: group.min.session.timeout.ms (6 s by default); on the embedded broker
    #: a group (re)join waits about this long, so dev and tests use 2 s.
    session_timeout_s: float = 6.0
    #: How many events one batch may hold, and how long to wait to fill it.
    batch_max: int = 1000
    batch_wait_s: float = 0.02
    #: How long a batch may keep filling while a backlog waits behind it (``CommitThenAckStream.take_batches``).
    batch_backlog_wait_s: float = 0.2
    #: CPUs for the worker process and for its children (``streams.affinity``); None: as the system schedules.
    worker_cpus: frozenset[int] | None = None
    child_cpus: frozenset[int] | None = None
    #: How often a worker checks whether the clock reached a customer's wake-up day.
    tick_interval_s: float = 30.0
    #: An accelerated clock for demos: speed × wall time from the anchor (ISO time). 1 and "" = real time.
    clock_speed: float = 1.0
    clock_anchor: str = ""
    #: How often a worker looks for a new thresholds version in the store.
    threshold_poll_s: float = 2.0
    #: Port of the worker's /healthz, /readyz and /metrics (0: none).
    health_port: int = 0
    slack_channel: str = ""
    slack_bot_token: str = field(default="", repr=False)
    #: Slack Web API base URL (Enterprise Grid proxies; the tests' local stand-in).
    slack_base_url: str = ""
    #: Link target of an alert in messages, with {alert_id}; defaults to the web app on this host.
    review_url: str = "http://127.0.0.1:8000/alerts/{alert_id}"
    #: faust store of the customers Table: ``memory://`` (all customers in RAM, rebuilt from the changelog at
    #: start) or ``rocksdb://`` (RocksDB files under data_dir through the ``rocksdict`` package, extra
    #: ``[rocksdb]``: state larger than RAM, and a restart reads only the changelog written since).
    store: str = "memory://"
    #: How many decoded customer records a worker keeps in memory in front of the Table (LRU).
    state_cache: int = 100_000
    #: RocksDB store, per partition: memtable size (two of them at most) and block cache, in MiB; 0 keeps
    #: faust's defaults (3 memtables of 64 MiB, a 2 GiB block cache).
    rocksdb_write_buffer_mb: int = 8
    rocksdb_block_cache_mb: int = 16
    #: The worker's log level (its own loggers; faust, mode and the Kafka clients stay at WARNING or above).
    log_level: str = "WARNING"
    #: Where the worker runs its outbox relay: ``process`` (a child process of its own, so delivery does not compete
    #: with the stream processor for the GIL; streams.delivery) or ``inline`` (a thread of the worker process).
    delivery: str = "process"
    #: Where the worker runs its store transactions: ``process`` (a child process: the SQL and JSON work does not
    #: hold the worker's GIL; streams.store_writer) or ``thread``.
    store_writer: str = "process"
    #: Seconds between two full garbage collections of the worker's state (streams.runtime.LongLivedHeap).
    gc_full_interval_s: float = 600.0
    ledger: LedgerConfig = field(default_factory=LedgerConfig)

    @property
    def bootstrap_servers(self) -> str:
        """host:port list for Kafka clients (without the ``kafka://`` scheme)."""
        return ",".join(part.split("://", 1)[-1] for part in self.broker_url.split(","))

    def topic(self, kind: str) -> str:
        """Full topic name for ``invoices``, ``payments``, ``customers``, ``alerts``, ``deadletter``."""
        return f"{self.topic_prefix}{kind}"

    @property
    def input_topics(self) -> tuple[str, str, str]:
        return (self.topic("invoices"), self.topic("payments"), self.topic("customers"))

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'creditwatch.db'}"


def _int(env: Mapping[str, str], name: str, default: int, low: int, high: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range ({low}..{high})")
    return value


def parse_cpus(name: str, text: str) -> frozenset[int]:
    """A CPU list as ``taskset`` takes it (``0``, ``0-3``, ``0,2-3``) → the CPU numbers; ConfigError naming ``name``."""
    cpus: set[int] = set()
    for part in text.replace(" ", "").split(","):
        low, dash, high = part.partition("-")
        try:
            first = int(low)
            last = int(high) if dash else first
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a CPU list (like 0, 0-3 or 0,2-3)") from None
        if first < 0 or last < first:
            raise ConfigError(f"{name}={text!r} is not a CPU list (like 0, 0-3 or 0,2-3)")
        cpus.update(range(first, last + 1))
    return frozenset(cpus)


def _cpus(env: Mapping[str, str], name: str) -> frozenset[int] | None:
    raw = env.get(name, "").strip()
    return parse_cpus(name, raw) if raw else None


def _fx_rates(raw: str) -> dict[str, Decimal]:
    """``USD=0.92,GBP=1.17`` → rates, each the value of one unit in the base currency."""
    rates: dict[str, Decimal] = {}
    for item in filter(None, (part.strip() for part in raw.split(","))):
        code, _, value = item.partition("=")
        code = code.strip().upper()
        if code not in CURRENCIES:
            raise ConfigError(f"CREDITWATCH_FX_RATES: {code!r} is not an ISO 4217 currency code")
        try:
            rate = Decimal(value.strip())
        except InvalidOperation:
            raise ConfigError(f"CREDITWATCH_FX_RATES: rate for {code} ({value!r}) is not a number") from None
        if not rate.is_finite() or rate <= 0:
            raise ConfigError(f"CREDITWATCH_FX_RATES: rate for {code} must be > 0")
        rates[code] = rate
    return rates


def _anchor(raw: str) -> str:
    if raw:
        from datetime import datetime

        try:
            parsed = datetime.fromisoformat(raw)
        except ValueError:
            raise ConfigError(f"CREDITWATCH_CLOCK_ANCHOR={raw!r} is not an ISO timestamp") from None
        if parsed.tzinfo is None:
            raise ConfigError(f"CREDITWATCH_CLOCK_ANCHOR={raw!r} needs a UTC offset")
    return raw


STORES = {"memory": "memory://", "rocksdb": "rocksdb://", "rocksdict": "rocksdb://"}


def _store(raw: str) -> str:
    """``memory``/``memory://``, or ``rocksdb``/``rocksdict`` (with or without ``://``) → the faust store URL."""
    name = raw.strip().lower().split("://", 1)[0] or "memory"
    if name not in STORES:
        raise ConfigError(f"CREDITWATCH_STORE={raw!r} is not one of memory://, rocksdb://")
    if STORES[name] == "rocksdb://":
        import importlib.util

        if importlib.util.find_spec("rocksdict") is None:
            raise ConfigError(f"CREDITWATCH_STORE={raw!r} needs the rocksdict package: pip install 'creditwatch[rocksdb]'")
    return STORES[name]


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(text: str) -> str:
    level = text.strip().upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"CREDITWATCH_LOG_LEVEL={text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


DELIVERY_MODES = ("inline", "process")
STORE_WRITERS = ("process", "thread")


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...], default: str) -> str:
    text = env.get(name, "") or default
    mode = text.strip().lower()
    if mode not in choices:
        raise ConfigError(f"{name}={text!r} is not one of {', '.join(choices)}")
    return mode


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    env = os.environ if env is None else env
    base = env.get("CREDITWATCH_BASE_CURRENCY", "EUR").upper()
    if base not in CURRENCIES:
        raise ConfigError(f"CREDITWATCH_BASE_CURRENCY={base!r} is not an ISO 4217 currency code")
    rates = dict(DEFAULT_FX_RATES) if base == "EUR" else {base: Decimal(1)}
    if env.get("CREDITWATCH_FX_RATES"):
        rates.update(_fx_rates(env["CREDITWATCH_FX_RATES"]))
    rates[base] = Decimal(1)
    broker_url = env.get("CREDITWATCH_BROKER_URL", "kafka://127.0.0.1:9092").strip()
    if not broker_url:
        raise ConfigError("CREDITWATCH_BROKER_URL is empty")
    if "://" not in broker_url:
        broker_url = f"kafka://{broker_url}"
    batch_wait_ms = _int(env, "CREDITWATCH_BATCH_WAIT_MS", 20, 1, 10_000)
    batch_backlog_wait_ms = _int(env, "CREDITWATCH_BATCH_BACKLOG_WAIT_MS", max(200, batch_wait_ms), 1, 60_000)
    if batch_backlog_wait_ms < batch_wait_ms:
        raise ConfigError(f"CREDITWATCH_BATCH_BACKLOG_WAIT_MS={batch_backlog_wait_ms} is shorter than "
                          f"CREDITWATCH_BATCH_WAIT_MS={batch_wait_ms}")
    return Settings(
        broker_url=broker_url,
        database_url=env.get("CREDITWATCH_DATABASE_URL", ""),
        topic_prefix=env.get("CREDITWATCH_TOPIC_PREFIX", "credit."),
        partitions=_int(env, "CREDITWATCH_PARTITIONS", 8, 1, 1024),
        data_dir=Path(env.get("CREDITWATCH_DATA_DIR", "data")),
        consumer_group=env.get("CREDITWATCH_CONSUMER_GROUP", "creditwatch"),
        fetch_max_wait_ms=_int(env, "CREDITWATCH_FETCH_MAX_WAIT_MS", 20, 0, 60_000),
        session_timeout_s=_int(env, "CREDITWATCH_SESSION_TIMEOUT_MS", 6000, 1000, 300_000) / 1000,
        batch_max=_int(env, "CREDITWATCH_BATCH_MAX", 1000, 1, 100_000),
        batch_wait_s=batch_wait_ms / 1000,
        batch_backlog_wait_s=batch_backlog_wait_ms / 1000,
        worker_cpus=_cpus(env, "CREDITWATCH_WORKER_CPUS"),
        child_cpus=_cpus(env, "CREDITWATCH_CHILD_CPUS"),
        tick_interval_s=_int(env, "CREDITWATCH_TICK_INTERVAL_MS", 30_000, 100, 3_600_000) / 1000,
        health_port=_int(env, "CREDITWATCH_HEALTH_PORT", 0, 0, 65535),
        threshold_poll_s=_int(env, "CREDITWATCH_THRESHOLD_POLL_MS", 2000, 100, 60_000) / 1000,
        clock_speed=_int(env, "CREDITWATCH_CLOCK_SPEED", 1, 1, 1_000_000),
        clock_anchor=_anchor(env.get("CREDITWATCH_CLOCK_ANCHOR", "")),
        slack_channel=env.get("CREDITWATCH_SLACK_CHANNEL", ""),
        slack_bot_token=env.get("CREDITWATCH_SLACK_BOT_TOKEN", ""),
        slack_base_url=env.get("CREDITWATCH_SLACK_BASE_URL", ""),
        review_url=env.get("CREDITWATCH_REVIEW_URL", "http://127.0.0.1:8000/alerts/{alert_id}"),
        store=_store(env.get("CREDITWATCH_STORE", "memory://")),
        state_cache=_int(env, "CREDITWATCH_STATE_CACHE", 100_000, 1, 100_000_000),
        rocksdb_write_buffer_mb=_int(env, "CREDITWATCH_ROCKSDB_WRITE_BUFFER_MB", 8, 0, 4096),
        rocksdb_block_cache_mb=_int(env, "CREDITWATCH_ROCKSDB_BLOCK_CACHE_MB", 16, 0, 65536),
        log_level=_log_level(env.get("CREDITWATCH_LOG_LEVEL", "WARNING")),
        delivery=_choice(env, "CREDITWATCH_DELIVERY", DELIVERY_MODES, "process"),
        store_writer=_choice(env, "CREDITWATCH_STORE_WRITER", STORE_WRITERS, "process"),
        gc_full_interval_s=_int(env, "CREDITWATCH_GC_FULL_INTERVAL_S", 600, 1, 86_400),
        ledger=LedgerConfig(
            base_currency=base,
            fx_rates=rates,
            dso_window_days=_int(env, "CREDITWATCH_DSO_WINDOW_DAYS", 90, 7, 730),
            retention_days=_int(env, "CREDITWATCH_RETENTION_DAYS", 180, 30, 3650),
        ),
    )
