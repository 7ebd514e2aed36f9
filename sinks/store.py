"""The SQL store: the record of truth for alerts, and the outbox of their notifications.

SQLite by default (a file under ``CREDITWATCH_DATA_DIR``), PostgreSQL through
``CREDITWATCH_DATABASE_URL``; the schema is managed by Alembic
(``sinks/migrations``, ``creditwatch db upgrade``), and a worker refuses an
outdated schema (:func:`check_schema_current`).

Tables::

    alerts              one row per alert_id (CONTRACT §3 + revision, assignee, Slack thread)
    alert_history       every change: who, when, status from → to, assignee from → to, note
    deliveries          the outbox: one row per (alert_id, revision, sink, kind, seq)
    risk_snapshots      a customer's risk over time (charts, incident review)
    customer_positions  each customer's position as last seen (Position.to_json + key figures)
    customer_events     the input events applied, per customer (the web app's timeline)
    threshold_changes   every thresholds file the engine ran with, by version
    users               for the web app: name, password hash, role

Writing alerts (:meth:`AlertStore.record`) is one transaction: the alerts are
upserted by ``alert_id`` — new ones inserted, a higher ``revision`` updates
severity, title, reasons, score, never downgrading; the same or a lower
revision changes nothing — and a delivery is enqueued per sink *in that same
transaction*, under a unique key, so a redelivered or replayed update is stored
once and notified once (``INSERT … ON CONFLICT DO NOTHING`` on both dialects).

Status workflow (:data:`TRANSITIONS`)::

    open ──────────→ acknowledged, resolved, false_positive
    acknowledged ──→ open, resolved, false_positive
    resolved ──────→ open            (reopen; a note is required)
    false_positive → open            (reopen; a note is required)

A person's move to ``resolved`` is a reviewer's verdict *confirmed* (a real
problem, acted on); to ``false_positive``, *false positive* (it should not
have been raised). Workers learn them in order of their history id
(:meth:`AlertStore.verdicts_after`, ``pipeline.feedback``); the what-if report
reads each alert's standing verdict (:meth:`AlertStore.feedback_labels`).

``resolved`` and ``false_positive`` are final for every other move (a
resolved alert cannot be acknowledged); resolving and marking a false
positive need a note. The engine reopens an alert by itself when it sends a
higher revision (the episode worsened or came back): whatever its status, the
alert is ``open`` again, recorded in the history as done by ``engine``.

Every failure to reach the database raises :class:`StoreUnavailable` (connect
timeouts are set, so it never hangs); a missing or old schema raises
:class:`SchemaOutdated`. Both carry a one-line message without credentials.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from sqlalchemy import (
    JSON,
    CheckConstraint,
    Computed,
    Date,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    bindparam,
    create_engine,
    event,
    exists,
    func,
    insert,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, make_url
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, aliased, mapped_column

from pipeline.clock import Clock, SystemClock
from pipeline.alerts import finite_float
from sinks.outbox import Delivery

if TYPE_CHECKING:
    from pipeline.alerts import AlertUpdate

UTC = timezone.utc
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
#: Every migration in ``migrations/versions``, oldest first; the last is the schema
#: this code needs. (tests/test_store.py checks this against Alembic, so that
#: checking the schema at start needs no Alembic import.)
SCHEMA_REVISIONS: tuple[str, ...] = ("0001", "0002", "0003", "0005", "0006", "0007")
SCHEMA_HEAD = SCHEMA_REVISIONS[-1]

SEVERITIES = ("info", "warning", "critical")
SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
STATUSES = ("open", "acknowledged", "resolved", "false_positive")
FINAL_STATUSES = frozenset({"resolved", "false_positive"})
ROLES = ("viewer", "controller", "ops", "admin")
DELIVERY_STATUSES = ("pending", "delivered", "failed", "skipped")

#: Moves a person may make (the engine reopens on its own; see the module docstring).
TRANSITIONS: dict[str, frozenset[str]] = {
    "open": frozenset({"acknowledged", "resolved", "false_positive"}),
    "acknowledged": frozenset({"open", "resolved", "false_positive"}),
    "resolved": frozenset({"open"}),
    "false_positive": frozenset({"open"}),
}
#: Target statuses that need a note saying why.
NOTE_REQUIRED = frozenset({"resolved", "false_positive"})

ENGINE_ACTOR = "engine"


# --- errors -------------------------------------------------------------------


class StoreError(Exception):
    """Base of the store's errors; the message is one line."""


class StoreUnavailable(StoreError):
    """The database cannot be reached (or is locked); nothing was written. Wait and try again."""


class SchemaOutdated(StoreError):
    """The database schema is missing, older or newer than this code."""


class AlertNotFound(StoreError, LookupError):
    """No alert with that id."""


class TransitionRefused(StoreError, ValueError):
    """A status change or assignment the workflow does not allow; the message says why."""


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# --- types --------------------------------------------------------------------


class UTCDateTime(TypeDecorator[datetime]):
    """Aware datetimes in, aware UTC datetimes out, on both dialects (SQLite keeps no offset)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if not (value.__class__ is datetime and value.tzinfo is UTC):  # (the common case, once per row and column)
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if isinstance(value, str):  # raw SQLite text, e.g. from a hand-written query
            value = datetime.fromisoformat(value)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


JSONType = JSON().with_variant(postgresql.JSONB(), "postgresql")
Money = Numeric(20, 4)
Ratio = Numeric(12, 6)


# --- models -------------------------------------------------------------------

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


#: (SQLite's lower() folds ASCII letters only; PostgreSQL's folds all.)
SEARCH_TEXT_SQL = "lower(alert_id || ' ' || customer_id || ' ' || coalesce(customer_name, '') || ' ' || title)"


#: SQLite: the FTS5 trigram index on ``alerts.search_text`` (migration 0007; kept in step by triggers on
#: ``alerts``), and the shadow tables FTS5 keeps it in. Not in the models (SQLAlchemy does not describe
#: virtual tables): the schema check leaves out these tables, by name.
SQLITE_SEARCH_FTS = "alerts_fts"
SQLITE_SEARCH_TABLES = frozenset({SQLITE_SEARCH_FTS, *(f"{SQLITE_SEARCH_FTS}_{shadow}" for shadow in
                                                       ("data", "idx", "docsize", "config"))})
#: The trigram index finds words of at least this many characters; shorter ones only by a scan.
TRIGRAM = 3


def fts_phrases(words: Iterable[str]) -> str | None:
    """An FTS5 MATCH for rows holding each of ``words`` (trigram: as substrings, case folded), or None if
    no word is long enough for the trigram index. Each word is one quoted phrase, so nothing in it is
    FTS5 syntax."""
    phrases = ['"' + word.replace('"', '""') + '"' for word in words if len(word) >= TRIGRAM]
    return " AND ".join(phrases) or None


#: What the inbox search looks for a customer's name or id in (``pipeline.web.queries.find_customers``):
#: ``lower(coalesce(name, '') || ' ' || customer_id)``, spelt as PostgreSQL shows it back (so that the
#: schema check compares equal).
CUSTOMER_SEARCH_SQL = "lower((COALESCE(name, ''::character varying)::text || ' '::text) || customer_id::text)"


def _in(column: str, values: Iterable[str]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Alert(Base):
    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(64), unique=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    customer_name: Mapped[str | None] = mapped_column(String(200))
    detector: Mapped[str] = mapped_column(String(64))
    severity: Mapped[str] = mapped_column(String(16))
    severity_rank: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str] = mapped_column(Text)
    reasons: Mapped[list[dict[str, Any]]] = mapped_column(JSONType)
    score: Mapped[float | None] = mapped_column(Float)
    event_ids: Mapped[list[str]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    revision: Mapped[int] = mapped_column(Integer)
    threshold_version: Mapped[int | None] = mapped_column(Integer)
    assignee: Mapped[str | None] = mapped_column(String(64))
    slack_channel: Mapped[str | None] = mapped_column(String(64))
    slack_ts: Mapped[str | None] = mapped_column(String(64))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    stored_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: lower-cased alert_id, customer_id, customer_name and title: one LIKE for the inbox search box.
    #: Computed by the database, so every way of inserting alerts fills it.
    search_text: Mapped[str | None] = mapped_column(Text, Computed(SEARCH_TEXT_SQL, persisted=True))
    #: Reviewer feedback (pipeline.feedback): the features of the latest revision and the estimate on them.
    feedback: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    #: P(a reviewer confirms this alert); null until the feedback model has learned enough verdicts.
    confirm_probability: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        CheckConstraint(_in("status", STATUSES), name="status"),
        CheckConstraint(_in("severity", SEVERITIES), name="severity"),
        # The inbox: open alerts, worst first, newest first.
        Index("ix_alerts_status_severity_rank_raised_at", "status", "severity_rank", "raised_at"),
        Index("ix_alerts_assignee_status", "assignee", "status"),
        # One index per inbox sort, with the id (the tie-breaker) and the status filter in it: a page's ids
        # come from the index alone (migration 0006; pipeline.web.queries).
        Index("ix_alerts_severity_rank_raised_at_id_status", "severity_rank", "raised_at", "id", "status"),
        Index("ix_alerts_raised_at_id_status", "raised_at", "id", "status"),
        Index("ix_alerts_updated_at_id_status", "updated_at", "id", "status"),
        Index("ix_alerts_detector_severity_rank_raised_at_id", "detector", "severity_rank", "raised_at", "id"),
        # A customer's alerts (the customer page, a search naming customers), counted and sorted from here.
        Index("ix_alerts_customer_inbox", "customer_id", "raised_at", "id", "severity_rank", "status", "updated_at"),
        Index("ix_alerts_status_confirm_probability", "status", "confirm_probability"),
        # Inbox search: a trigram GIN index on PostgreSQL (where pg_trgm is available, see migration
        # 0003); on SQLite a plain index, which a count of matches scans instead of the whole table.
        Index("ix_alerts_search_text_trgm", "search_text", postgresql_using="gin",
              postgresql_ops={"search_text": "gin_trgm_ops"}),
    )


class AlertHistory(Base):
    __tablename__ = "alert_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(64), ForeignKey("alerts.alert_id", ondelete="CASCADE"), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
    by: Mapped[str] = mapped_column(String(64))
    #: raised | escalated | reopened (the engine) | status | assigned (a person)
    change: Mapped[str] = mapped_column(String(16))
    from_status: Mapped[str | None] = mapped_column(String(16))
    to_status: Mapped[str] = mapped_column(String(16))
    from_assignee: Mapped[str | None] = mapped_column(String(64))
    to_assignee: Mapped[str | None] = mapped_column(String(64))
    revision: Mapped[int] = mapped_column(Integer)
    note: Mapped[str | None] = mapped_column(Text)

    # Workers follow reviewers' verdicts by id (AlertStore.verdicts_after).
    __table_args__ = (Index("ix_alert_history_change_to_status_id", "change", "to_status", "id"),)


class DeliveryRow(Base):
    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    alert_id: Mapped[str] = mapped_column(String(64), ForeignKey("alerts.alert_id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(Integer)
    sink: Mapped[str] = mapped_column(String(32))
    #: alert | status_change
    kind: Mapped[str] = mapped_column(String(16))
    #: 0 for alert deliveries; the alert_history id for status changes.
    seq: Mapped[int] = mapped_column(Integer)
    #: alert: raised | escalated | reopened; status_change: the new status
    change: Mapped[str] = mapped_column(String(16))
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(Text)
    #: When a pending delivery is due; also pushed ahead while a deliverer holds its claim.
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    external_ref: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (
        UniqueConstraint("alert_id", "revision", "sink", "kind", "seq"),
        CheckConstraint(_in("status", DELIVERY_STATUSES), name="status"),
        CheckConstraint(_in("kind", ("alert", "status_change")), name="kind"),
        Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
        Index("ix_deliveries_alert_id_sink_status", "alert_id", "sink", "status"),
    )


class RiskSnapshotRow(Base):
    __tablename__ = "risk_snapshots"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    risk_score: Mapped[float | None] = mapped_column(Float)
    exposure: Mapped[Decimal | None] = mapped_column(Money)
    credit_limit: Mapped[Decimal | None] = mapped_column(Money)
    utilisation: Mapped[Decimal | None] = mapped_column(Ratio)
    overdue: Mapped[Decimal | None] = mapped_column(Money)
    dso_days: Mapped[Decimal | None] = mapped_column(Money)
    open_alerts: Mapped[int | None] = mapped_column(Integer)
    details: Mapped[dict[str, Any] | None] = mapped_column(JSONType)

    __table_args__ = (UniqueConstraint("customer_id", "taken_at"),)


class CustomerPositionRow(Base):
    __tablename__ = "customer_positions"

    customer_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str | None] = mapped_column(String(200))
    as_of: Mapped[date] = mapped_column(Date)
    currency: Mapped[str | None] = mapped_column(String(3))
    exposure: Mapped[Decimal | None] = mapped_column(Money)
    credit_limit: Mapped[Decimal | None] = mapped_column(Money)
    utilisation: Mapped[Decimal | None] = mapped_column(Ratio)
    overdue: Mapped[Decimal | None] = mapped_column(Money)
    dso_days: Mapped[Decimal | None] = mapped_column(Money)
    rating: Mapped[str | None] = mapped_column(String(32))
    position: Mapped[dict[str, Any]] = mapped_column(JSONType)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The model's latest risk score (``position["risk_score"]``), for "the riskiest customers".
    risk_score: Mapped[float | None] = mapped_column(Float, index=True)

    # Searching customers by name or id reads this small index, not the rows (with their JSON).
    __table_args__ = (
        Index("ix_customer_positions_name_customer_id", "name", "customer_id"),
        # PostgreSQL (with pg_trgm): a trigram index on what the inbox search looks in (migration 0006).
        Index("ix_customer_positions_search_trgm", text(CUSTOMER_SEARCH_SQL), postgresql_using="gin")
        .ddl_if(dialect="postgresql"),
    )


class CustomerEventRow(Base):
    """An input event the worker applied: the customer page's timeline."""

    __tablename__ = "customer_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(128), unique=True)
    customer_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(64))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime)
    #: The event's own fields (everything but the envelope), as JSON.
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (Index("ix_customer_events_customer_id_occurred_at", "customer_id", "occurred_at"),)


class ThresholdChange(Base):
    __tablename__ = "threshold_changes"

    version: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    changed_at: Mapped[datetime] = mapped_column(UTCDateTime)
    changed_by: Mapped[str] = mapped_column(String(64))
    source: Mapped[str | None] = mapped_column(String(500))
    digest: Mapped[str] = mapped_column(String(64), index=True)
    content: Mapped[str] = mapped_column(Text)
    note: Mapped[str | None] = mapped_column(Text)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint(_in("role", ROLES), name="role"),)


# --- engine -------------------------------------------------------------------


def normalize_url(url: str | URL) -> URL:
    """``postgresql://`` → psycopg 3; anything else as given."""
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def safe_url(url: str | URL) -> str:
    return make_url(url).render_as_string(hide_password=True)


def _sqlite_path(url: URL) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("mode") == "memory":
        return None
    return Path(url.database)


def json_text(value: Any) -> str:
    """The text of a JSON column: orjson's, compact (the positions alone are kilobytes per customer per batch,
    and the standard encoder was a tenth of the store writer's time). Integers beyond 64 bits, which orjson
    refuses, go through the standard encoder. orjson writes a NaN as null, which PostgreSQL's JSONB accepts
    (the standard encoder's NaN it rejects)."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)


def json_value(text: str | bytes) -> Any:
    """A JSON column's value: orjson's parse (the outbox relay reads every delivery's payload, and the standard
    decoder was a sixth of its time). What orjson refuses (``NaN`` written by an older version's standard
    encoder) goes through the standard decoder, so every stored value still reads; so does text with a run of
    19 digits or more, because orjson reads an integer beyond 64 bits as a float, silently inexact."""
    raw = text.encode() if isinstance(text, str) else bytes(text)  # psycopg hands JSONB over as bytes
    # Every digit made "0", everything else a space, then one substring search: a regular expression
    # for the run took longer than the standard decoder on a delivery's payload.
    if _LONG_DIGIT_RUN in raw.translate(_DIGITS_AS_ZERO):
        return json.loads(raw)
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def make_engine(url: str | URL, connect_timeout: float = 5.0) -> Engine:
    """An engine that fails fast instead of hanging, and serialises SQLite writers properly."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        engine = create_engine(parsed, connect_args={"timeout": connect_timeout}, json_serializer=json_text,
                               json_deserializer=json_value)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, record: Any) -> None:
            # Let SQLAlchemy, not the driver, decide where transactions begin (see _on_begin).
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={int(connect_timeout * 1000)}")
            if _sqlite_path(parsed) is not None:
                cursor.execute("PRAGMA journal_mode=WAL")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _on_begin(connection: Any) -> None:
            # A writer takes the write lock up front: no deadlock upgrading a read lock.
            write = connection.get_execution_options().get("creditwatch_write")
            connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    connect_args: dict[str, Any] = {}
    if backend == "postgresql":
        connect_args = {"connect_timeout": max(1, int(round(connect_timeout))), "application_name": "creditwatch"}
    return create_engine(parsed, connect_args=connect_args, pool_pre_ping=True, pool_timeout=connect_timeout,
                         json_serializer=json_text, json_deserializer=json_value)


def _translate(problem: BaseException) -> StoreError | None:
    if isinstance(problem, StoreError):
        return problem
    if isinstance(problem, sa_exc.DBAPIError):
        message = _one_line(str(problem.orig))
        lowered = message.lower()
        if "no such table" in lowered or "no such column" in lowered or type(problem.orig).__name__ in (
            "UndefinedTable",
            "UndefinedColumn",
        ):
            return SchemaOutdated(f"the database schema is missing or outdated ({message}); run `creditwatch db upgrade`")
        if problem.connection_invalidated or isinstance(problem, (sa_exc.OperationalError, sa_exc.InterfaceError)):
            return StoreUnavailable(f"database unavailable: {message}")
        return None
    if isinstance(problem, (sa_exc.TimeoutError, sa_exc.DisconnectionError)):
        return StoreUnavailable(f"database unavailable: {_one_line(str(problem))}")
    if isinstance(problem, (ConnectionError, TimeoutError)):
        return StoreUnavailable(f"database unavailable: {_one_line(str(problem))}")
    return None


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except StoreError:
        raise
    except Exception as problem:
        mapped = _translate(problem)
        if mapped is None:
            raise
        raise mapped from problem


# --- schema management --------------------------------------------------------


def _alembic_config(connection: Any = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    return config


def schema_heads() -> tuple[str, ...]:
    from alembic.script import ScriptDirectory

    return tuple(ScriptDirectory.from_config(_alembic_config()).get_heads())


def upgrade_database(url: str | URL, revision: str = "head") -> tuple[str | None, str | None]:
    """Create or migrate the schema; returns (revision before, revision after)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    parsed = normalize_url(url)
    path = _sqlite_path(parsed)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as problem:
            raise StoreUnavailable(f"cannot create {path.parent}: {problem.strerror}") from None
    engine = make_engine(parsed)
    try:
        with _translated():
            with engine.connect() as connection:
                connection.execution_options(creditwatch_write=True)
                before = MigrationContext.configure(connection).get_current_revision()
                connection.rollback()
                with connection.begin():
                    command.upgrade(_alembic_config(connection), revision)
                after = MigrationContext.configure(connection).get_current_revision()
                connection.rollback()
        return before, after
    finally:
        engine.dispose()


def downgrade_database(url: str | URL, revision: str) -> None:
    """For tests and emergencies: migrate the schema down to ``revision`` (``base`` = empty)."""
    from alembic import command

    engine = make_engine(url)
    try:
        with _translated(), engine.connect() as connection:
            connection.execution_options(creditwatch_write=True)
            with connection.begin():
                command.downgrade(_alembic_config(connection), revision)
    finally:
        engine.dispose()


def check_schema_current(url: str | URL) -> None:
    """Return if the database is at this code's schema; else raise SchemaOutdated (one line).

    Raises StoreUnavailable if the database cannot be reached. Reads Alembic's
    version table directly, so the worker and the CLI start without Alembic.
    """
    parsed = normalize_url(url)
    path = _sqlite_path(parsed)
    if path is not None and not path.exists():
        raise SchemaOutdated(f"no database at {path}; run `creditwatch db upgrade`")
    engine = make_engine(parsed)
    try:
        with _translated(), engine.connect() as connection:
            if not inspect(connection).has_table("alembic_version"):
                current: set[str] = set()
            else:
                current = set(connection.execute(text("SELECT version_num FROM alembic_version")).scalars())
    finally:
        engine.dispose()
    if current == {SCHEMA_HEAD}:
        return
    if not current:
        raise SchemaOutdated(
            f"the database has no creditwatch schema (this version needs {SCHEMA_HEAD}); run `creditwatch db upgrade`"
        )
    have = ", ".join(sorted(current))
    if current - set(SCHEMA_REVISIONS):
        raise SchemaOutdated(
            f"the database schema is at revision {have}, newer than this creditwatch knows (head {SCHEMA_HEAD}); "
            "upgrade creditwatch"
        )
    raise SchemaOutdated(
        f"the database schema is at revision {have}, this version needs {SCHEMA_HEAD}; run `creditwatch db upgrade`"
    )


# --- value helpers ------------------------------------------------------------


def _when(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, date):
        moment = datetime(value.year, value.month, value.day)
    else:
        moment = datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _decimal(value: Any) -> Decimal | None:
    if value is None or value == "":
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return None
    return number if number.is_finite() else None


#: Envelope fields of an input event (CONTRACT §2); the rest is an event's summary.
_ENVELOPE = frozenset({"event_id", "type", "customer_id", "occurred_at", "schema_version", "source"})


def _num(value: Decimal | None) -> str | None:
    return None if value is None else format(value.normalize(), "f")


def _many(value: str | Iterable[str] | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def alert_json(row: Alert) -> dict[str, Any]:
    """An alert as CONTRACT §3 shapes it, plus the store's own fields."""
    return {
        "alert_id": row.alert_id,
        "customer_id": row.customer_id,
        "customer_name": row.customer_name,
        "detector": row.detector,
        "severity": row.severity,
        "title": row.title,
        "reasons": row.reasons,
        "score": row.score,
        "raised_at": _iso(row.raised_at),
        "updated_at": _iso(row.updated_at),
        "event_ids": row.event_ids,
        "status": row.status,
        "revision": row.revision,
        "threshold_version": row.threshold_version,
        "confirm_probability": row.confirm_probability,
        "assignee": row.assignee,
        "slack_channel": row.slack_channel,
        "slack_ts": row.slack_ts,
    }


def _alert_values(alert: Mapping[str, Any], now: datetime) -> dict[str, Any]:
    """The ``alerts`` row of a new alert (CONTRACT §3), checked; ``stored_at`` is ``now``."""
    alert_id = alert["alert_id"]
    severity = alert["severity"]
    if severity not in SEVERITY_RANK:
        raise ValueError(f"alert {alert_id}: unknown severity {severity!r}")
    raised_at = _when(alert.get("raised_at")) or now
    return {
        "alert_id": alert_id,
        "customer_id": alert["customer_id"],
        "customer_name": alert.get("customer_name"),
        "detector": alert["detector"],
        "severity": severity,
        "severity_rank": SEVERITY_RANK[severity],
        "title": alert["title"],
        "reasons": list(alert.get("reasons") or []),
        "score": alert.get("score"),
        "event_ids": list(alert.get("event_ids") or []),
        "status": "open",
        "revision": int(alert.get("revision") or 1),
        "threshold_version": alert.get("threshold_version"),
        "feedback": alert.get("feedback"),
        "confirm_probability": finite_float((alert.get("feedback") or {}).get("confirm_probability")),
        "raised_at": raised_at,
        "updated_at": _when(alert.get("updated_at")) or raised_at,
        "stored_at": now,
    }


def _apply(row: Alert, values: Mapping[str, Any]) -> None:
    """A higher revision onto a stored alert: never a lower severity; raised_at, assignee and Slack thread kept."""
    if values["severity_rank"] >= row.severity_rank:
        row.severity, row.severity_rank = values["severity"], values["severity_rank"]
    row.title = values["title"]
    row.reasons = values["reasons"]
    row.score = values["score"]
    row.event_ids = values["event_ids"]
    row.revision = values["revision"]
    row.updated_at = values["updated_at"]
    if values["threshold_version"] is not None:
        row.threshold_version = values["threshold_version"]
    if values["feedback"] is not None:
        row.feedback, row.confirm_probability = values["feedback"], values["confirm_probability"]
    if values["customer_name"]:
        row.customer_name = values["customer_name"]
    row.status = "open"

def _history_json(row: AlertHistory) -> dict[str, Any]:
    return {
        "at": _iso(row.at),
        "by": row.by,
        "change": row.change,
        "from_status": row.from_status,
        "to_status": row.to_status,
        "from_assignee": row.from_assignee,
        "to_assignee": row.to_assignee,
        "revision": row.revision,
        "note": row.note,
    }


def _delivery_json(row: DeliveryRow) -> dict[str, Any]:
    return {
        "delivery_id": row.id,
        "sink": row.sink,
        "kind": row.kind,
        "change": row.change,
        "revision": row.revision,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "next_attempt_at": _iso(row.next_attempt_at),
        "created_at": _iso(row.created_at),
        "delivered_at": _iso(row.delivered_at),
        "external_ref": row.external_ref,
    }


@dataclass(frozen=True, slots=True)
class RiskSnapshot:
    """A customer's risk at one moment; ``details`` holds anything else worth charting."""

    customer_id: str
    taken_at: datetime
    risk_score: float | None = None
    exposure: Decimal | None = None
    credit_limit: Decimal | None = None
    utilisation: Decimal | None = None
    overdue: Decimal | None = None
    dso_days: Decimal | None = None
    open_alerts: int | None = None
    details: dict[str, Any] | None = None

    @classmethod
    def from_position(
        cls, position: Mapping[str, Any], taken_at: datetime, risk_score: float | None = None, **extra: Any
    ) -> RiskSnapshot:
        """From ``Position.to_json()``."""
        return cls(
            customer_id=position["customer_id"],
            taken_at=taken_at,
            risk_score=risk_score,
            exposure=_decimal(position.get("exposure")),
            credit_limit=_decimal(position.get("credit_limit")),
            utilisation=_decimal(position.get("utilisation")),
            overdue=_decimal(position.get("overdue")),
            dso_days=_decimal(position.get("dso_days")),
            **extra,
        )

    @classmethod
    def coerce(cls, value: RiskSnapshot | Mapping[str, Any]) -> RiskSnapshot:
        if isinstance(value, RiskSnapshot):
            return value
        data = dict(value)
        taken_at = _when(data.pop("taken_at", None) or data.pop("at", None))
        if taken_at is None:
            raise ValueError(f"risk snapshot for {data.get('customer_id')!r} has no taken_at")
        known = {name for name in cls.__slots__ if name not in ("customer_id", "taken_at")}  # type: ignore[attr-defined]
        fields = {name: data.pop(name) for name in list(data) if name in known}
        for name in ("exposure", "credit_limit", "utilisation", "overdue", "dso_days"):
            if name in fields:
                fields[name] = _decimal(fields[name])
        customer_id = data.pop("customer_id")
        if data:
            fields["details"] = {**(fields.get("details") or {}), **data}
        return cls(customer_id=customer_id, taken_at=taken_at, **fields)

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "taken_at": _iso(self.taken_at),
            "risk_score": self.risk_score,
            "exposure": _num(self.exposure),
            "credit_limit": _num(self.credit_limit),
            "utilisation": _num(self.utilisation),
            "overdue": _num(self.overdue),
            "dso_days": _num(self.dso_days),
            "open_alerts": self.open_alerts,
            "details": self.details,
        }


@dataclass
class RecordResult:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    enqueued: int = 0


ORDERS: dict[str, tuple[Any, ...]] = {
    "-raised_at": (Alert.raised_at.desc(), Alert.id.desc()),
    "raised_at": (Alert.raised_at.asc(), Alert.id.asc()),
    "-updated_at": (Alert.updated_at.desc(), Alert.id.desc()),
    "updated_at": (Alert.updated_at.asc(), Alert.id.asc()),
    "-severity": (Alert.severity_rank.desc(), Alert.raised_at.desc(), Alert.id.desc()),
    "severity": (Alert.severity_rank.asc(), Alert.raised_at.desc(), Alert.id.desc()),
    "customer": (Alert.customer_id.asc(), Alert.raised_at.desc(), Alert.id.desc()),
    # Most likely to be confirmed by a reviewer first; alerts without an estimate last (on both dialects).
    "-confirm_probability": (func.coalesce(Alert.confirm_probability, -1.0).desc(), Alert.raised_at.desc(),
                             Alert.id.desc()),
}


# --- the store ----------------------------------------------------------------


class AlertStore:
    """Alerts, their history and their outbox, on one SQLAlchemy engine. Thread-safe."""

    def __init__(self, url: str | URL, clock: Clock | None = None, connect_timeout: float = 5.0):
        self.url = normalize_url(url)
        self.clock = clock or SystemClock()
        self.engine = make_engine(self.url, connect_timeout)
        self.dialect = self.engine.dialect.name
        #: The transaction of the reading() block this thread (context) is in, if any.
        self._shared: ContextVar[Session | None] = ContextVar(f"creditwatch_store_{id(self)}", default=None)

    def __repr__(self) -> str:
        return f"AlertStore({safe_url(self.url)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def check_schema(self) -> None:
        check_schema_current(self.url)

    @contextmanager
    def reading(self) -> Iterator[None]:
        """A block whose reads share one session: a web page's handful of queries cost one
        connection checkout (on SQLite one transaction), not one each. Writes inside it still get
        their own transaction; a nested block joins the outer one.
        """
        if self._shared.get() is not None:
            yield
            return
        with self._session() as session:
            token = self._shared.set(session)
            try:
                yield
            finally:
                self._shared.reset(token)

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        shared = None if write else self._shared.get()
        if shared is not None:  # inside reading(): its transaction
            with _translated():
                yield shared
            return
        with _translated():
            with Session(self.engine, expire_on_commit=False, autoflush=False) as session:
                with session.begin():
                    options: dict[str, Any] = {"creditwatch_write": write}
                    if not write and self.dialect == "postgresql":
                        # Reads without BEGIN and COMMIT (two round trips fewer): at READ COMMITTED each
                        # statement sees its own snapshot whether or not a transaction groups them.
                        options["isolation_level"] = "AUTOCOMMIT"
                    session.connection(execution_options=options)
                    yield session

    def _insert(self, model: type[Base]) -> Any:
        table = model.__table__
        return postgresql.insert(table) if self.dialect == "postgresql" else sqlite.insert(table)

    def _now(self, now: datetime | None) -> datetime:
        return _when(now) or self.clock.now()

    # --- writing alerts -------------------------------------------------------

    def record(
        self,
        updates: Iterable[AlertUpdate],
        notify: Iterable[str] = (),
        positions: Mapping[str, Mapping[str, Any]] | None = None,
        snapshots: Iterable[RiskSnapshot | Mapping[str, Any]] | None = None,
        now: datetime | None = None,
        events: Iterable[Any] | None = None,
    ) -> RecordResult:
        """Store alert updates, enqueue their deliveries, save positions, snapshots and events: one transaction.

        ``events`` are the batch's applied input events (see :meth:`record_events`).
        """
        now = self._now(now)
        sinks = list(dict.fromkeys(notify))
        result = RecordResult()
        batch = [(item.change, _alert_values(item.alert, now)) for item in updates]
        with self._session(write=True) as session:
            if batch:
                self._upsert(session, batch, sinks, now, result)
            if positions:
                self._save_positions(session, positions, now)
            if snapshots:
                self._save_snapshots(session, snapshots)
            if events:
                self._save_events(session, events, now)
        return result

    def _upsert(
        self, session: Session, batch: list[tuple[str, dict[str, Any]]], sinks: list[str], now: datetime,
        result: RecordResult,
    ) -> None:
        """Apply a batch of (change, alert row values) in batch order, as if one at a time.

        Per update: an alert_id not stored yet is inserted (its history says ``change``, from no status);
        a stored one with a higher revision gets severity (never lower), title, reasons, score, event ids,
        revision, updated_at, and threshold version, feedback and customer name when given, and is open
        again; the same or a lower revision changes nothing and enqueues nothing. Each insert or change
        is one history row and, per sink, one delivery whose payload is the alert as it was right after
        that update (so an alert raised then escalated in one batch is notified twice, in order).

        A handful of statements per batch, not per update: one SELECT of the stored rows; one multi-row
        ``INSERT … ON CONFLICT DO NOTHING`` of the new ids (each with its first update's values); one
        SELECT reading back the rows just inserted (when needed) and those another writer inserted first
        (which are then stored ones); the changes in memory, flushed at commit; one multi-row INSERT of
        the deliveries. On PostgreSQL both SELECTs lock their rows (``FOR UPDATE``) in alert_id order, so
        workers changing the same stored alerts wait for each other instead of deadlocking.
        """
        # batch: [(change, {"alert_id", "revision", "severity_rank", … the alert's row values}), …] in order
        ids = sorted({values["alert_id"] for _, values in batch})
        rows = self._lock_alerts(session, ids)
        first: dict[str, dict[str, Any]] = {}
        seen: dict[str, int] = {}
        for _, values in batch:
            seen[values["alert_id"]] = seen.get(values["alert_id"], 0) + 1
            if values["alert_id"] not in rows:
                first.setdefault(values["alert_id"], values)
        new: set[str] = set()
        if first:
            statement = self._insert(Alert).on_conflict_do_nothing(index_elements=["alert_id"]).returning(
                Alert.__table__.c.alert_id)
            # In batch order, as one at a time would (alerts.id breaks ties in the inbox sorts). RETURNING names
            # the ids this statement inserted; the others another writer inserted meanwhile.
            new = set(session.execute(statement, list(first.values())).scalars())
            # Read back as stored: the payloads and any later update of the batch start from the stored row.
            rows.update(self._lock_alerts(session, [
                alert_id for alert_id in sorted(first) if alert_id not in new or sinks or seen[alert_id] > 1]))
        # History rows as plain values, inserted in one statement: ORM objects cost more to build and to
        # flush than the INSERT itself. Into the table, not the entity: the ORM's bulk insert leaves out the
        # keys whose value is None and starts a new statement whenever that set changes (a statement per
        # row or two, here). The same for the changed alerts: one UPDATE of every column ``_apply`` set on any
        # of them (a row whose value of one did not change writes back the value it has).
        history: list[dict[str, Any]] = []
        changed: dict[int, Alert] = {}
        deliveries: list[tuple[str, int, str, int, str, dict[str, Any]]] = []
        for change, values in batch:
            alert_id, revision = values["alert_id"], values["revision"]
            row = rows.get(alert_id)
            if alert_id in new:
                new.discard(alert_id)  # its first update is the insert; any later one is a change
                result.inserted += 1
                history.append(dict(alert_id=alert_id, at=now, by=ENGINE_ACTOR, change=change, from_status=None,
                                    to_status="open", from_assignee=None, to_assignee=None, revision=revision,
                                    note=None))
            else:
                assert row is not None
                if revision <= row.revision:
                    result.unchanged += 1
                    continue
                result.updated += 1
                history.append(dict(alert_id=alert_id, at=now, by=ENGINE_ACTOR, change=change,
                                    from_status=row.status, to_status="open", from_assignee=row.assignee,
                                    to_assignee=row.assignee, revision=revision, note=None))
                _apply(row, values)
                changed[row.id] = row
            if sinks:
                assert row is not None
                deliveries.append((alert_id, revision, "alert", 0, change,
                                   {"alert": alert_json(row), "status_change": None}))
        if history:
            session.execute(insert(AlertHistory.__table__), history)
        if changed:
            table = Alert.__table__
            columns = Alert.__mapper__.column_attrs.keys()
            modified: set[str] = set()
            for row in changed.values():
                unmodified = inspect(row).unmodified
                modified.update(name for name in columns if name not in unmodified)
            names = sorted(modified)
            statement = update(table).where(table.c.id == bindparam("row_id")).values(
                {name: bindparam(f"new_{name}") for name in names})
            session.execute(statement, [{"row_id": row_id, **{f"new_{name}": getattr(row, name) for name in names}}
                                        for row_id, row in changed.items()])
            for row in changed.values():
                session.expunge(row)  # written above: the flush at commit must not write it again
        result.enqueued += self._enqueue(session, deliveries, sinks, now)

    def _lock_alerts(self, session: Session, alert_ids: list[str]) -> dict[str, Alert]:
        """The stored rows of ``alert_ids`` by alert_id; on PostgreSQL locked, in alert_id order."""
        rows: dict[str, Alert] = {}
        for start in range(0, len(alert_ids), 1000):  # (bound parameters per statement are limited)
            query = select(Alert).where(Alert.alert_id.in_(alert_ids[start:start + 1000])).order_by(Alert.alert_id)
            if self.dialect == "postgresql":
                query = query.with_for_update()
            rows.update((row.alert_id, row) for row in session.execute(query).scalars())
        return rows

    def _enqueue(
        self, session: Session, deliveries: list[tuple[str, int, str, int, str, dict[str, Any]]], sinks: list[str],
        now: datetime,
    ) -> int:
        """Enqueue (alert_id, revision, kind, seq, change, payload) to each sink in one statement; how many
        were new (a delivery already enqueued under its key is left as it is)."""
        rows = [
            {"alert_id": alert_id, "revision": revision, "sink": sink, "kind": kind, "seq": seq, "change": change,
             "payload": payload, "status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now}
            for alert_id, revision, kind, seq, change, payload in deliveries
            for sink in sinks
        ]
        if not rows:
            return 0
        statement = self._insert(DeliveryRow).on_conflict_do_nothing(
            index_elements=["alert_id", "revision", "sink", "kind", "seq"]
        ).returning(DeliveryRow.__table__.c.id)
        # (rowcount is not reliable with ON CONFLICT on every driver; RETURNING is)
        return len(session.execute(statement, rows).all())

    # --- people changing alerts -----------------------------------------------

    def change_status(
        self, alert_id: str, to_status: str, by: str, note: str | None = None,
        notify: Iterable[str] | None = None, now: datetime | None = None,
    ) -> dict[str, Any]:
        """Move an alert to ``to_status`` as ``by``; validated, recorded, and enqueued to the alert's sinks.

        ``notify`` defaults to every sink the alert was ever sent to (so Slack
        posts the change in the alert's thread). Returns the alert.
        """
        if to_status not in STATUSES:
            raise TransitionRefused(f"unknown status {to_status!r} (one of {', '.join(STATUSES)})")
        note = (note or "").strip() or None
        by = (by or "").strip()
        if not by:
            raise TransitionRefused("who made the change is required")
        now = self._now(now)
        with self._session(write=True) as session:
            row = self._lock_alert(session, alert_id)
            current = row.status
            if to_status == current:
                raise TransitionRefused(f"alert {alert_id} is already {_STATE[current]}")
            if to_status not in TRANSITIONS[current]:
                raise TransitionRefused(
                    f"alert {alert_id} is {_STATE[current]}; {_NOUN[current]} cannot be {_VERB[to_status]}"
                    + (" (reopen it first)" if current in FINAL_STATUSES else "")
                )
            if note is None and (to_status in NOTE_REQUIRED or current in FINAL_STATUSES):
                raise TransitionRefused(f"a note saying why is required to {_DO[to_status].format(alert_id)}")
            row.status = to_status
            entry = AlertHistory(alert_id=alert_id, at=now, by=by, change="status", from_status=current,
                                 to_status=to_status, from_assignee=row.assignee, to_assignee=row.assignee,
                                 revision=row.revision, note=note)
            session.add(entry)
            session.flush()
            if notify is None:
                sinks = list(session.execute(
                    select(DeliveryRow.sink).where(DeliveryRow.alert_id == alert_id, DeliveryRow.kind == "alert")
                    .distinct().order_by(DeliveryRow.sink)
                ).scalars())
            else:
                sinks = list(dict.fromkeys(notify))
            if sinks:
                payload = {"alert": alert_json(row), "status_change": _history_json(entry)}
                self._enqueue(session, [(alert_id, row.revision, "status_change", entry.id, to_status, payload)],
                              sinks, now)
            return alert_json(row)

    def assign(
        self, alert_id: str, assignee: str | None, by: str, note: str | None = None, now: datetime | None = None
    ) -> dict[str, Any]:
        """Give the alert to ``assignee`` (``None`` unassigns); recorded in the history. Returns the alert."""
        assignee = (assignee or "").strip() or None
        by = (by or "").strip()
        if not by:
            raise TransitionRefused("who made the change is required")
        if assignee is not None and len(assignee) > 64:
            raise TransitionRefused("an assignee name is at most 64 characters")
        now = self._now(now)
        with self._session(write=True) as session:
            row = self._lock_alert(session, alert_id)
            if row.assignee == assignee:
                return alert_json(row)
            session.add(AlertHistory(alert_id=alert_id, at=now, by=by, change="assigned", from_status=row.status,
                                     to_status=row.status, from_assignee=row.assignee, to_assignee=assignee,
                                     revision=row.revision, note=(note or "").strip() or None))
            row.assignee = assignee
            return alert_json(row)

    def _lock_alert(self, session: Session, alert_id: str) -> Alert:
        query = select(Alert).where(Alert.alert_id == alert_id)
        if self.dialect == "postgresql":
            query = query.with_for_update()
        row = session.execute(query).scalar_one_or_none()
        if row is None:
            raise AlertNotFound(f"no alert {alert_id!r}")
        return row

    # --- reading alerts -------------------------------------------------------

    def _filtered(
        self, query: Any, status: Any, severity: Any, detector: Any, assignee: Any, customer: Any, search: str | None
    ) -> Any:
        # Severity by its rank: the inbox and sort indexes lead with severity_rank (an unknown name matches none).
        ranks = None if severity is None else [SEVERITY_RANK.get(name, -1) for name in _many(severity) or []]
        for column, wanted in ((Alert.status, status), (Alert.severity_rank, ranks), (Alert.detector, detector),
                               (Alert.customer_id, customer)):
            values = _many(wanted)
            if values is not None:
                query = query.where(column == values[0] if len(values) == 1 else column.in_(values))
        if assignee is not None:
            query = query.where(Alert.assignee.is_(None) if assignee == "" else Alert.assignee == assignee)
        words = (search or "").lower().split()
        for word in words:  # every word somewhere in the id, customer or title
            escaped = word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            query = query.where(Alert.search_text.like(f"%{escaped}%", escape="\\"))
        return query

    def list_alerts(
        self,
        status: str | Iterable[str] | None = None,
        severity: str | Iterable[str] | None = None,
        detector: str | Iterable[str] | None = None,
        assignee: str | None = None,
        customer: str | Iterable[str] | None = None,
        search: str | None = None,
        order: str = "-raised_at",
        limit: int | None = 100,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Alerts matching every filter given (a list matches any of its values; ``assignee=""`` = unassigned)."""
        if order not in ORDERS:
            raise ValueError(f"unknown order {order!r} (one of {', '.join(ORDERS)})")
        query = self._filtered(select(Alert), status, severity, detector, assignee, customer, search)
        query = query.order_by(*ORDERS[order]).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [alert_json(row) for row in session.execute(query).scalars()]

    def count_alerts(
        self, status: Any = None, severity: Any = None, detector: Any = None, assignee: str | None = None,
        customer: Any = None, search: str | None = None,
    ) -> int:
        query = self._filtered(select(func.count()).select_from(Alert), status, severity, detector, assignee,
                               customer, search)
        with self._session() as session:
            return int(session.execute(query).scalar_one())

    def get_alert(self, alert_id: str) -> dict[str, Any] | None:
        """The alert with its ``history`` and ``deliveries``, oldest first; None if there is none."""
        with self._session() as session:
            row = session.execute(select(Alert).where(Alert.alert_id == alert_id)).scalar_one_or_none()
            if row is None:
                return None
            alert = alert_json(row)
            alert["history"] = [_history_json(item) for item in session.execute(
                select(AlertHistory).where(AlertHistory.alert_id == alert_id).order_by(AlertHistory.id)).scalars()]
            alert["deliveries"] = [_delivery_json(item) for item in session.execute(
                select(DeliveryRow).where(DeliveryRow.alert_id == alert_id).order_by(DeliveryRow.id)).scalars()]
            return alert

    # --- reviewers' verdicts (pipeline.feedback) -----------------------------------

    def verdicts_after(self, after_id: int = 0, limit: int = 1000) -> tuple[list[int], list[dict[str, Any]]]:
        """The next ``limit`` history ids after ``after_id``, and the reviewers' verdicts among them.

        A verdict is a person's status change to ``resolved`` (confirmed) or
        ``false_positive``: ``{"id", "alert_id", "confirmed", "at", "by",
        "alert"}`` with the alert as it is now, its ``feedback`` included. All
        ids are returned (verdicts or not) so that a follower can tell a gap —
        a transaction still in flight — from rows that are no verdicts.
        """
        with self._session() as session:
            ids = list(session.execute(select(AlertHistory.id).where(AlertHistory.id > after_id)
                                       .order_by(AlertHistory.id).limit(limit)).scalars())
            if not ids:
                return [], []
            rows = session.execute(
                select(AlertHistory, Alert).join(Alert, Alert.alert_id == AlertHistory.alert_id)
                .where(AlertHistory.change == "status", AlertHistory.to_status.in_(sorted(FINAL_STATUSES)),
                       AlertHistory.id > after_id, AlertHistory.id <= ids[-1], AlertHistory.by != ENGINE_ACTOR)
                .order_by(AlertHistory.id)
            ).all()
            verdicts = [
                {"id": entry.id, "alert_id": entry.alert_id, "confirmed": entry.to_status == "resolved",
                 "at": _iso(entry.at), "by": entry.by, "alert": {**alert_json(alert), "feedback": alert.feedback}}
                for entry, alert in rows
            ]
            return ids, verdicts

    def feedback_labels(self) -> dict[str, str]:
        """alert_id → "confirmed" | "false_positive": each alert's standing verdict.

        The latest verdict by a person, unless a person reopened the alert after
        it (withdrawn); the engine reopening a worsened alert withdraws nothing.
        """
        labels: dict[str, str] = {}
        with self._session() as session:
            rows = session.execute(
                select(AlertHistory.alert_id, AlertHistory.to_status).where(
                    AlertHistory.change == "status", AlertHistory.by != ENGINE_ACTOR)
                .order_by(AlertHistory.id))
            for alert_id, to_status in rows:
                if to_status == "resolved":
                    labels[alert_id] = "confirmed"
                elif to_status == "false_positive":
                    labels[alert_id] = "false_positive"
                elif to_status == "open":
                    labels.pop(alert_id, None)
        return labels

    # --- the outbox -----------------------------------------------------------

    def due_deliveries(
        self, now: datetime | None = None, limit: int = 100, lease: timedelta = timedelta(seconds=60),
        sinks: Collection[str] | None = None, excluding: Collection[str] = (), with_refs: bool = True,
    ) -> list[Delivery]:
        """Claim up to ``limit`` due deliveries for ``lease`` (the next one per alert and sink, oldest first).

        A claimed delivery is not due again until the lease ends, so several
        workers can drain one outbox; one that dies leaves its claims to expire.
        ``sinks`` claims only the deliveries to those sinks, ``excluding`` none of those to these;
        ``with_refs=False`` leaves out the references of earlier deliveries (sinks that do not read them).
        """
        now = self._now(now)
        table = DeliveryRow.__table__
        earlier = aliased(DeliveryRow)
        blocked = exists().where(
            earlier.alert_id == DeliveryRow.alert_id,
            earlier.sink == DeliveryRow.sink,
            earlier.status == "pending",
            earlier.id < DeliveryRow.id,
        )
        # Plain rows, not ORM objects: a claim holds up to a thousand, and nothing here changes them.
        query = (
            select(table.c.id, table.c.alert_id, table.c.sink, table.c.kind, table.c.change, table.c.payload,
                   table.c.revision, table.c.attempts)
            .where(DeliveryRow.status == "pending", DeliveryRow.next_attempt_at <= now, ~blocked)
            .order_by(DeliveryRow.next_attempt_at, DeliveryRow.id)
            .limit(limit)
        )
        if sinks is not None:
            query = query.where(DeliveryRow.sink.in_(list(sinks)))
        if excluding:
            query = query.where(DeliveryRow.sink.not_in(list(excluding)))
        if self.dialect == "postgresql":
            query = query.with_for_update(skip_locked=True, of=table)
        with self._session(write=True) as session:
            rows = list(session.execute(query))
            if not rows:
                return []
            # One statement, executed per claimed id: an IN list of a thousand ids cost more to render than this.
            session.execute(update(table).where(table.c.id == bindparam("claimed")).values(next_attempt_at=now + lease),
                            [{"claimed": r.id} for r in rows])
            pairs = {(r.alert_id, r.sink) for r in rows} if with_refs else set()
            refs: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for alert_id, sink, ref in () if not pairs else session.execute(
                select(DeliveryRow.alert_id, DeliveryRow.sink, DeliveryRow.external_ref)
                .where(tuple_(DeliveryRow.alert_id, DeliveryRow.sink).in_(list(pairs)),
                       DeliveryRow.status == "delivered", DeliveryRow.external_ref.is_not(None))
                .order_by(DeliveryRow.id)
            ):
                refs.setdefault((alert_id, sink), []).append(ref)
            return [
                Delivery(
                    delivery_id=r.id, sink=r.sink, kind=r.kind, change=r.change,  # type: ignore[arg-type]
                    alert=r.payload["alert"], revision=r.revision, attempt=r.attempts + 1,
                    refs=tuple(refs.get((r.alert_id, r.sink), ())), status_change=r.payload.get("status_change"),
                )
                for r in rows
            ]

    def mark_delivered(
        self, delivery_id: int, external_ref: Mapping[str, Any] | None = None, now: datetime | None = None
    ) -> None:
        now = self._now(now)
        ref = dict(external_ref) if external_ref else None
        with self._session(write=True) as session:
            row = session.get(DeliveryRow, delivery_id)
            if row is None or row.status != "pending":
                return
            row.status, row.attempts, row.delivered_at = "delivered", row.attempts + 1, now
            row.external_ref, row.last_error, row.next_attempt_at = ref, None, None
            if ref and isinstance(ref.get("channel"), str) and isinstance(ref.get("ts"), str):
                session.execute(update(Alert).where(Alert.alert_id == row.alert_id, Alert.slack_ts.is_(None))
                                .values(slack_channel=ref["channel"], slack_ts=ref["ts"]))

    def mark_delivered_many(self, delivery_ids: Iterable[int], now: datetime | None = None) -> int:
        """Mark several deliveries made (no external references) in one transaction; return how many changed.

        For sinks whose deliveries are cheap and idempotent by ``alert_id`` + ``revision``
        (``sinks.outbox``): one commit for a batch instead of one per delivery. Rows no longer
        pending (marked by someone else) are left as they are, as in :meth:`mark_delivered`.
        """
        ids = list(dict.fromkeys(delivery_ids))
        if not ids:
            return 0
        now = self._now(now)
        with self._session(write=True) as session:
            result = session.execute(
                update(DeliveryRow)
                .where(DeliveryRow.id.in_(ids), DeliveryRow.status == "pending")
                .values(status="delivered", attempts=DeliveryRow.attempts + 1, delivered_at=now,
                        last_error=None, next_attempt_at=None)
                .execution_options(synchronize_session=False)
            )
            return int(result.rowcount or 0)

    def mark_failed(
        self, delivery_id: int, error: str, next_attempt_at: datetime, permanent: bool = False,
        now: datetime | None = None,
    ) -> None:
        """Count a failed attempt; retry at ``next_attempt_at``, or never if ``permanent``."""
        with self._session(write=True) as session:
            row = session.get(DeliveryRow, delivery_id)
            if row is None or row.status != "pending":
                return
            row.attempts += 1
            row.last_error = _one_line(error)[:2000]
            if permanent:
                row.status, row.next_attempt_at = "failed", None
            else:
                row.next_attempt_at = _when(next_attempt_at)

    def mark_skipped(self, delivery_id: int, reason: str) -> None:
        """A delivery the sink has no way to make (e.g. a status change to a sink without threads)."""
        with self._session(write=True) as session:
            row = session.get(DeliveryRow, delivery_id)
            if row is None or row.status != "pending":
                return
            row.status, row.last_error, row.next_attempt_at = "skipped", _one_line(reason)[:2000], None

    def release(self, delivery_ids: Iterable[int], now: datetime | None = None) -> None:
        """Give back claims without an attempt (a deliverer stopping mid-batch)."""
        ids = list(delivery_ids)
        if not ids:
            return
        now = self._now(now)
        with self._session(write=True) as session:
            session.execute(update(DeliveryRow).where(DeliveryRow.id.in_(ids), DeliveryRow.status == "pending")
                            .values(next_attempt_at=now))

    def delivery_counts(self) -> dict[str, int]:
        """How many deliveries are in each status (pending = not yet made)."""
        with self._session() as session:
            rows = session.execute(select(DeliveryRow.status, func.count()).group_by(DeliveryRow.status))
            return {status: int(count) for status, count in rows}

    # --- customers ------------------------------------------------------------

    def save_positions(
        self,
        positions: Mapping[str, Mapping[str, Any]] | None = None,
        snapshots: Iterable[RiskSnapshot | Mapping[str, Any]] | None = None,
        now: datetime | None = None,
    ) -> None:
        """Positions as last seen (``Position.to_json()`` by customer_id) and risk snapshots; one transaction."""
        now = self._now(now)
        with self._session(write=True) as session:
            if positions:
                self._save_positions(session, positions, now)
            if snapshots:
                self._save_snapshots(session, snapshots)

    def _save_positions(self, session: Session, positions: Mapping[str, Mapping[str, Any]], now: datetime) -> None:
        # One multi-row statement per batch (SQLAlchemy's "insertmanyvalues"): a worker's batch touches
        # hundreds of customers, and a statement per customer made the store the worker's bottleneck.
        if not positions:
            return
        table = CustomerPositionRow.__table__
        rows = []
        for customer_id, position in positions.items():
            as_of = position.get("as_of")
            rows.append({
                "customer_id": customer_id,
                "name": position.get("name"),
                "as_of": date.fromisoformat(as_of) if isinstance(as_of, str) else (as_of or now.date()),
                "currency": position.get("currency"),
                "exposure": _decimal(position.get("exposure")),
                "credit_limit": _decimal(position.get("credit_limit")),
                "utilisation": _decimal(position.get("utilisation")),
                "overdue": _decimal(position.get("overdue")),
                "dso_days": _decimal(position.get("dso_days")),
                "rating": position.get("rating"),
                "position": dict(position),
                "updated_at": now,
                "risk_score": finite_float(position.get("risk_score")),
            })
        statement = self._insert(CustomerPositionRow)
        statement = statement.on_conflict_do_update(
            index_elements=["customer_id"],
            set_={name: statement.excluded[name] for name in rows[0] if name != "customer_id"},
            where=table.c.as_of <= statement.excluded.as_of,  # never go back to an older day
        )
        session.execute(statement, rows)

    def _save_snapshots(self, session: Session, snapshots: Iterable[RiskSnapshot | Mapping[str, Any]]) -> None:
        rows: dict[tuple[str, Any], dict[str, Any]] = {}
        for item in snapshots:
            snap = RiskSnapshot.coerce(item)
            rows.setdefault((snap.customer_id, snap.taken_at), dict(
                customer_id=snap.customer_id, taken_at=snap.taken_at, risk_score=snap.risk_score,
                exposure=snap.exposure, credit_limit=snap.credit_limit, utilisation=snap.utilisation,
                overdue=snap.overdue, dso_days=snap.dso_days, open_alerts=snap.open_alerts, details=snap.details,
            ))
        if rows:
            statement = self._insert(RiskSnapshotRow).on_conflict_do_nothing(index_elements=["customer_id", "taken_at"])
            session.execute(statement, list(rows.values()))

    def get_position(self, customer_id: str) -> dict[str, Any] | None:
        """The customer's position as last seen (``Position.to_json()``), with ``updated_at``."""
        with self._session() as session:
            row = session.get(CustomerPositionRow, customer_id)
            if row is None:
                return None
            return {**row.position, "updated_at": _iso(row.updated_at)}

    def customer_history(
        self, customer_id: str, since: datetime | None = None, until: datetime | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """The customer's risk snapshots, oldest first (the last ``limit`` if given)."""
        query = select(RiskSnapshotRow).where(RiskSnapshotRow.customer_id == customer_id)
        if since is not None:
            query = query.where(RiskSnapshotRow.taken_at >= _when(since))
        if until is not None:
            query = query.where(RiskSnapshotRow.taken_at <= _when(until))
        if limit is not None:
            query = query.order_by(RiskSnapshotRow.taken_at.desc()).limit(limit)
        else:
            query = query.order_by(RiskSnapshotRow.taken_at)
        with self._session() as session:
            rows = list(session.execute(query).scalars())
        if limit is not None:
            rows.reverse()
        return [
            RiskSnapshot(row.customer_id, row.taken_at, row.risk_score, row.exposure, row.credit_limit,
                         row.utilisation, row.overdue, row.dso_days, row.open_alerts, row.details).to_json()
            for row in rows
        ]

    # --- customer events (the timeline) -----------------------------------------

    def record_events(self, events: Iterable[Any], now: datetime | None = None) -> int:
        """Keep applied input events for the customer timeline; returns how many were new.

        Each event is a ``pipeline.events.Event`` or its JSON object (CONTRACT §2).
        Stored once by ``event_id`` (a replay or redelivery changes nothing):
        ``type``, ``occurred_at`` and, as ``summary``, every field but the envelope.
        """
        now = self._now(now)
        with self._session(write=True) as session:
            return self._save_events(session, events, now)

    def _save_events(self, session: Session, events: Iterable[Any], now: datetime) -> int:
        rows: dict[str, dict[str, Any]] = {}
        for item in events:
            data = item.model_dump(mode="json") if hasattr(item, "model_dump") else dict(item)
            summary = {key: value for key, value in data.items() if key not in _ENVELOPE}
            rows.setdefault(str(data["event_id"]), dict(
                event_id=str(data["event_id"]), customer_id=str(data["customer_id"]), type=str(data["type"]),
                occurred_at=_when(data["occurred_at"]), summary=summary or None, recorded_at=now,
            ))
        if not rows:
            return 0
        statement = self._insert(CustomerEventRow).on_conflict_do_nothing(index_elements=["event_id"]).returning(
            CustomerEventRow.__table__.c.id)
        # one multi-row statement for the batch; RETURNING names the rows that were new
        return len(session.execute(statement, list(rows.values())).all())

    def customer_events(
        self, customer_id: str, limit: int | None = 200, before: datetime | None = None
    ) -> list[dict[str, Any]]:
        """The customer's events, newest first (at most ``limit``; only those before ``before`` if given)."""
        query = select(CustomerEventRow).where(CustomerEventRow.customer_id == customer_id)
        if before is not None:
            query = query.where(CustomerEventRow.occurred_at < _when(before))
        query = query.order_by(CustomerEventRow.occurred_at.desc(), CustomerEventRow.id.desc())
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [
                {"event_id": row.event_id, "customer_id": row.customer_id, "type": row.type,
                 "occurred_at": _iso(row.occurred_at), "summary": row.summary or {},
                 "recorded_at": _iso(row.recorded_at)}
                for row in session.execute(query).scalars()
            ]

    # --- thresholds -----------------------------------------------------------

    def record_thresholds(
        self, content: str, by: str, source: str | None = None, note: str | None = None, now: datetime | None = None
    ) -> int:
        """The version for this thresholds text: the latest one if unchanged, else a new one."""
        digest = hashlib.sha256(content.encode()).hexdigest()
        now = self._now(now)
        with self._session(write=True) as session:
            latest = session.execute(select(ThresholdChange).order_by(ThresholdChange.version.desc()).limit(1)).scalar()
            if latest is not None and latest.digest == digest:
                return latest.version
            change = ThresholdChange(changed_at=now, changed_by=by, source=source, digest=digest, content=content,
                                     note=note)
            session.add(change)
            session.flush()
            return change.version

    def threshold_changes(self, limit: int = 50) -> list[dict[str, Any]]:
        """Newest first."""
        with self._session() as session:
            rows = session.execute(select(ThresholdChange).order_by(ThresholdChange.version.desc()).limit(limit))
            return [
                {"version": r.version, "changed_at": _iso(r.changed_at), "changed_by": r.changed_by, "source": r.source,
                 "digest": r.digest, "content": r.content, "note": r.note}
                for r in rows.scalars()
            ]

    # --- users ----------------------------------------------------------------

    def add_user(self, name: str, password_hash: str, role: str, now: datetime | None = None) -> None:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
        now = self._now(now)
        with self._session(write=True) as session:
            if session.execute(select(User.id).where(User.name == name)).first() is not None:
                raise ValueError(f"user {name!r} exists already")
            session.add(User(name=name, password_hash=password_hash, role=role, created_at=now))

    def list_users(self) -> list[dict[str, Any]]:
        """Every user by name (without password hashes)."""
        with self._session() as session:
            return [{"name": row.name, "role": row.role, "created_at": _iso(row.created_at)}
                    for row in session.execute(select(User).order_by(User.name)).scalars()]

    def get_user(self, name: str) -> dict[str, Any] | None:
        with self._session() as session:
            row = session.execute(select(User).where(User.name == name)).scalar_one_or_none()
            if row is None:
                return None
            return {"name": row.name, "password_hash": row.password_hash, "role": row.role,
                    "created_at": _iso(row.created_at)}


_STATE = {"open": "open", "acknowledged": "acknowledged", "resolved": "resolved",
          "false_positive": "marked a false positive"}
_NOUN = {"open": "an open alert", "acknowledged": "an acknowledged alert", "resolved": "a resolved alert",
         "false_positive": "an alert marked a false positive"}
_VERB = {"open": "reopened", "acknowledged": "acknowledged", "resolved": "resolved",
         "false_positive": "marked a false positive"}
_DO = {"open": "reopen alert {}", "resolved": "resolve alert {}", "false_positive": "mark alert {} a false positive"}


def default_user() -> str:
    """Who a command-line change is made by when ``--by`` is not given."""
    for name in ("CREDITWATCH_USER", "USER", "USERNAME", "LOGNAME"):
        if os.environ.get(name):
            return os.environ[name]
    return "unknown"


__all__ = [
    "AlertNotFound", "AlertStore", "Delivery", "RecordResult", "RiskSnapshot", "SchemaOutdated", "StoreError",
    "StoreUnavailable", "TransitionRefused", "check_schema_current", "downgrade_database", "upgrade_database",
    "make_engine", "TRANSITIONS",
]

