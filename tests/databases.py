"""A fresh PostgreSQL schema for one test: the store tests' database and the workers' shared store."""

from __future__ import annotations

import uuid
from contextlib import contextmanager
from typing import Iterator

from sqlalchemy.engine import URL


@contextmanager
def postgres_schema(database_url: str, drop_lock_timeout: str | None = None) -> Iterator[URL]:
    """An empty schema in ``database_url`` (dropped afterwards); the URL whose search_path is that schema.

    ``drop_lock_timeout`` bounds how long the drop waits for locks that a killed process may still hold.
    """
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(database_url)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(base, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield base.update_query_dict({"options": f"-csearch_path={schema}"})
    finally:
        with engine.connect() as connection:
            if drop_lock_timeout is not None:
                connection.execute(text(f"SET lock_timeout = '{drop_lock_timeout}'"))
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()
