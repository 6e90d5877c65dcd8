"""PostgreSQL for tests: a template database migrated once per session, and a fresh database
cloned from it per test (CREATE DATABASE ... TEMPLATE), dropped afterwards.

The server is $PERDURE_TEST_POSTGRES_URL (default postgresql://postgres@127.0.0.1:5432/postgres).
Without it, tests that need it skip with a message saying how to start it; with CI=true they fail.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import uuid
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg import sql

ADMIN_URL = os.environ.get(
    "PERDURE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
TEMPLATE = f"perdure_test_template_{os.getpid()}"  # one per test session: sessions may overlap
HOW_TO_START = (
    "PostgreSQL is not reachable at {url}: start it with "
    "`pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start` "
    "(scripts/test does this), or set PERDURE_TEST_POSTGRES_URL"
)


def url_for(dbname: str) -> str:
    """The URL of database `dbname` on the test server."""
    return urlsplit(ADMIN_URL)._replace(path=f"/{dbname}").geturl()


def require_postgres() -> None:
    """Skip (or, with CI=true, fail) when the server is not reachable."""
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        message = HOW_TO_START.format(url=ADMIN_URL) + f" ({exc})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)


def drop_template() -> None:
    """Drop this session's template database."""
    drop_database(TEMPLATE)


def create_template() -> None:
    """(Re)create the template database with every migration applied."""
    from perdure.blobs import LocalBlobStore
    from perdure.store.postgres import PostgresStore

    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    store = PostgresStore(url_for(TEMPLATE), blobs=LocalBlobStore("/nonexistent"), inline_limit=0)
    # may be called from inside a running loop (an async fixture): migrate on a thread of its own
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, store.migrate()).result()


def create_database() -> str:
    """A fresh database cloned from the template; returns its name."""
    name = f"perdure_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(TEMPLATE)
            )
        )
    return name


def drop_database(name: str) -> None:
    """Drop a test database, closing whatever still holds it."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def require_postgres_or_exit() -> None:
    """For scripts: exit with the how-to message when the server is not reachable."""
    try:
        psycopg.connect(ADMIN_URL, connect_timeout=3).close()
    except psycopg.OperationalError as exc:
        raise SystemExit(HOW_TO_START.format(url=ADMIN_URL) + f" ({exc})") from None


def create_fresh_database() -> str:
    """An empty database (perdure migrates it on first use); returns its name."""
    name = f"perdure_chaos_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name
