"""Shared fixtures.

``broker``: ONE Kafka-protocol broker for the whole session. By default an
embedded Tansu broker on a free port (in memory, gone at the end); set
``CREDITWATCH_TEST_BROKER=host:port`` to use a broker that is already running
instead (it is then neither started nor stopped). Tests isolate themselves
with ``unique_prefix`` topic names rather than with a broker each.
"""

from __future__ import annotations

import os
import uuid

import pytest

from streams.broker import BrokerError, EmbeddedBroker, probe


@pytest.fixture(scope="session")
def broker():
    external = os.environ.get("CREDITWATCH_TEST_BROKER", "").strip()
    if external:
        host, _, port = external.split("://", 1)[-1].rpartition(":")
        handle = EmbeddedBroker(port=int(port), host=host or "127.0.0.1")  # never started: stop() is a no-op
        problem = None
        try:
            probe(handle.host, handle.port, timeout=3)
        except Exception as exc:
            problem = f"CREDITWATCH_TEST_BROKER={external} does not answer Kafka requests: {exc}"
        if problem:
            pytest.fail(problem, pytrace=False)
        yield handle
        return
    handle = EmbeddedBroker(port=0)
    try:
        handle.start()
    except BrokerError as exc:
        problem = f"cannot start the embedded test broker: {exc}"
    else:
        problem = None
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def unique_prefix() -> str:
    """A fresh topic prefix such as ``t1a2b3c4d.`` so tests sharing the broker never collide."""
    return f"t{uuid.uuid4().hex[:8]}."


@pytest.fixture
def workers(tmp_path):
    """Factory for ``creditwatch worker`` subprocesses (``tests.worker_harness.WorkerProcess``).

    ``workers(env)`` starts one, its stdout/stderr in ``tmp_path/workers/``; all
    still running at the end of the test are SIGKILLed.
    """
    from tests.worker_harness import WorkerProcess

    started: list[WorkerProcess] = []

    def start(env, name: str | None = None) -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / "workers", name=name or f"worker{len(started) + 1}")
        started.append(worker)
        return worker.start()

    yield start
    for worker in started:
        worker.stop_quietly()


# --- SQL store: every store test runs on SQLite and on PostgreSQL ---------------
#
# ``database_url`` is a fresh, empty database per test: a SQLite file in
# tmp_path, or a schema of its own in ONE PostgreSQL database created for the
# session (dropped at the end). The server is CREDITWATCH_TEST_POSTGRES_URL
# (default postgresql://postgres@127.0.0.1:5432/test, used only to create and
# drop that database); if it does not answer, the postgresql cases are
# skipped, unless CREDITWATCH_TEST_POSTGRES_REQUIRED=1 makes that a failure.


@pytest.fixture(scope="session")
def postgres_database():
    """URL of a PostgreSQL database that lives for the test session."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin_url = make_url(os.environ.get("CREDITWATCH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test"))
    admin_url = admin_url.set(drivername="postgresql+psycopg")
    name = f"creditwatch_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", connect_args={"connect_timeout": 3})
    try:
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # noqa: BLE001
        admin.dispose()
        message = f"PostgreSQL at {admin_url.render_as_string(hide_password=True)} unavailable: {str(exc).splitlines()[0]}"
        if os.environ.get("CREDITWATCH_TEST_POSTGRES_REQUIRED") == "1":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
    try:
        yield admin_url.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path):
    """An empty database, once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'creditwatch.db'}"
        return
    from tests.databases import postgres_schema

    with postgres_schema(request.getfixturevalue("postgres_database")) as url:
        yield url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def _migrated_templates(tmp_path_factory):
    """Databases migrated once per session: a SQLite file to copy, a PostgreSQL schema to truncate."""
    from sinks.store import upgrade_database

    made: dict[str, str] = {}

    def get(kind: str, request) -> str:
        if kind not in made:
            if kind == "sqlite":
                url = f"sqlite:///{tmp_path_factory.mktemp('store-template') / 'template.db'}"
            else:
                from sqlalchemy import create_engine, text
                from sqlalchemy.engine import make_url

                base = make_url(request.getfixturevalue("postgres_database"))
                engine = create_engine(base, isolation_level="AUTOCOMMIT")
                with engine.connect() as connection:
                    connection.execute(text('CREATE SCHEMA "migrated"'))
                engine.dispose()
                url = base.update_query_dict({"options": "-csearch_path=migrated"}).render_as_string(hide_password=False)
            upgrade_database(url)
            made[kind] = url
        return made[kind]

    return get


@pytest.fixture(params=["sqlite", "postgresql"])
def migrated_database_url(request, tmp_path, _migrated_templates):
    """A database at the current schema with no rows (SQLite and PostgreSQL).

    Migrated once per session (``test_store`` covers the migrations themselves):
    SQLite copies the migrated file, PostgreSQL empties one migrated schema.
    Tests must not change the schema of this database.
    """
    import shutil

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    kind = request.param
    template = _migrated_templates(kind, request)
    if kind == "sqlite":
        path = tmp_path / "creditwatch.db"
        shutil.copyfile(make_url(template).database, path)
        return f"sqlite:///{path}"
    engine = create_engine(template)
    with engine.connect() as connection, connection.begin():
        connection.execute(text("SET LOCAL lock_timeout = '5s'"))
        # DELETE, not TRUNCATE: on a few rows it is many times faster.
        for table in ("deliveries", "alert_history", "alerts", "risk_snapshots", "customer_positions",
                      "threshold_changes", "users", "customer_events"):
            connection.execute(text(f"DELETE FROM {table}"))
    engine.dispose()
    return template


@pytest.fixture
def alert_store(migrated_database_url):
    """An ``AlertStore`` on a migrated, empty database (SQLite and PostgreSQL)."""
    from sinks.store import AlertStore

    store = AlertStore(migrated_database_url)
    yield store
    store.close()
