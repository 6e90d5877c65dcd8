"""Both dialects' migrations build the same schema: the same tables with the same columns, and
the same named queries. A column added to one dialect only fails here."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from perdure.blobs import LocalBlobStore
from perdure.store.queries import load_queries
from perdure.store.sqlite import SQLiteStore

TABLES = ("runs", "journal", "attempts", "workers")


def sqlite_columns(path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(path)
    try:
        return {
            table: sorted(row[1] for row in conn.execute(f"PRAGMA table_info({table})"))
            for table in TABLES
        }
    finally:
        conn.close()


def postgres_columns(url: str) -> dict[str, list[str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'perdure' AND table_name = ANY(%s)",
            (list(TABLES),),
        ).fetchall()
    columns: dict[str, list[str]] = {table: [] for table in TABLES}
    for table, column in rows:
        columns[table].append(column)
    return {table: sorted(names) for table, names in columns.items()}


async def test_dialects_build_the_same_tables(tmp_path: Path, postgres_url: str) -> None:
    store = SQLiteStore(tmp_path / "p.db", blobs=LocalBlobStore(tmp_path / "b"))
    assert await store.migrate() == ["0001_initial"]
    from_sqlite = sqlite_columns(tmp_path / "p.db")
    from_postgres = postgres_columns(postgres_url)
    assert all(from_sqlite[table] for table in TABLES)
    assert from_sqlite == from_postgres


def test_dialects_name_the_same_queries() -> None:
    sqlite_names = set(load_queries("sqlite"))
    postgres_names = set(load_queries("postgres"))
    # PostgreSQL has a few single-statement shortcuts and its session locks on top
    assert sqlite_names <= postgres_names
    assert postgres_names - sqlite_names == {
        "append_entry_fenced",
        "insert_run_notify",
        "session_locks",
    }
