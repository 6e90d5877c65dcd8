"""Schemas: a database upgraded one migration at a time equals a fresh one migrated at once
(per dialect), and both dialects build the same tables and columns and name the same queries.
A migration edited after release, or a column added to one dialect only, fails here."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg

from perdure.blobs import LocalBlobStore
from perdure.store.queries import load_queries
from perdure.store.sqlite import MIGRATIONS as SQLITE_MIGRATIONS
from perdure.store.sqlite import SQLiteStore

from ..conftest import STORE_TABLES

TABLES = STORE_TABLES


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
    assert await store.migrate() == [
        "0001_initial",
        "0002_flow_control",
        "0003_retention",
        "0004_claim_order",
        "0005_running_by_worker",
        "0006_waits",
        "0007_schedules",
        "0008_run_data",
        "0009_api_keys",
        "0010_run_stats",
        "0011_run_tags",
        "0012_trace_context",
        "0013_versions",
        "0014_run_hooks",
        "0015_continue_as_new",
    ]
    from_sqlite = sqlite_columns(tmp_path / "p.db")
    from_postgres = postgres_columns(postgres_url)
    assert all(from_sqlite[table] for table in TABLES)
    assert from_sqlite == from_postgres


def test_dialects_name_the_same_queries() -> None:
    sqlite_names = set(load_queries("sqlite"))
    postgres_names = set(load_queries("postgres"))
    # PostgreSQL has its fast paths (single-statement finishes and triggers), its workers'
    # session locks and its clock on top
    assert sqlite_names <= postgres_names
    assert postgres_names - sqlite_names == {
        "clock",
        "finish_attempt_at_once",
        "finish_many",
        "insert_run_notify",
        "session_locks",
    }


def sqlite_schema(path: Path) -> list[tuple[str, str]]:
    conn = sqlite3.connect(path)
    try:
        return sorted(
            (row[0], " ".join(row[1].split()))
            for row in conn.execute("SELECT name, sql FROM sqlite_master WHERE sql IS NOT NULL")
        )
    finally:
        conn.close()


def postgres_schema(url: str) -> list[tuple[str, ...]]:
    with psycopg.connect(url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '') "
            "FROM information_schema.columns WHERE table_schema = 'perdure'"
        ).fetchall()
        indexes = conn.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'perdure'"
        ).fetchall()
    return sorted(tuple(str(v) for v in row) for row in [*columns, *indexes])


async def test_sqlite_upgraded_step_by_step_equals_fresh(tmp_path: Path) -> None:
    fresh = SQLiteStore(tmp_path / "fresh.db", blobs=LocalBlobStore(tmp_path / "b"))
    await fresh.migrate()
    stepwise = SQLiteStore(tmp_path / "steps.db", blobs=LocalBlobStore(tmp_path / "b"))
    for version, name, _sql in SQLITE_MIGRATIONS:
        assert await stepwise.migrate(target=version) == [name]
    assert await stepwise.migrate() == []
    assert sqlite_schema(tmp_path / "steps.db") == sqlite_schema(tmp_path / "fresh.db")
    assert len(sqlite_schema(tmp_path / "fresh.db")) >= len(TABLES)


async def test_tags_of_runs_stored_before_schema_11_are_found_after_it(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "old.db", blobs=LocalBlobStore(tmp_path / "b"))
    await store.migrate(target=10)
    conn = sqlite3.connect(tmp_path / "old.db")
    for run_id, tags in (("r1", '["user:1", "beta"]'), ("r2", '["user:1"]'), ("r3", None)):
        conn.execute(
            "INSERT INTO runs (id, app, task, queue, status, args_codec, created_at, updated_at,"
            " tags) VALUES (?, 'a', 't', 'default', 'completed', 'msgpack', 1, 1, ?)",
            (run_id, tags),
        )
    conn.commit()
    conn.close()
    assert await store.migrate(target=11) == ["0011_run_tags"]
    assert [r.id for r in await store.list_runs(tag="user:1")] == ["r2", "r1"]
    assert [r.id for r in await store.list_runs(tag="beta")] == ["r1"]
    await store.close()


async def test_postgres_upgraded_step_by_step_equals_fresh(
    tmp_path: Path, postgres_template: None
) -> None:
    from perdure.store.postgres import MIGRATIONS, PostgresStore

    from .. import pg

    names = [pg.create_fresh_database(), pg.create_fresh_database()]
    try:
        fresh_url, steps_url = (pg.url_for(name) for name in names)
        fresh = PostgresStore(fresh_url, blobs=LocalBlobStore(tmp_path), inline_limit=0)
        await fresh.migrate()
        stepwise = PostgresStore(steps_url, blobs=LocalBlobStore(tmp_path), inline_limit=0)
        for version, name, _sql in MIGRATIONS:
            assert await stepwise.migrate(target=version) == [name]
        assert await stepwise.migrate() == []
        assert postgres_schema(steps_url) == postgres_schema(fresh_url)
        assert len(postgres_schema(fresh_url)) > 40
    finally:
        for name in names:
            pg.drop_database(name)


def _claim_select(dialect: str) -> str:
    """The claim's choice of runs (the subquery of claim_runs)."""
    claim = load_queries(dialect)["claim_runs"]
    start = claim.index("WITH RECURSIVE") if "WITH RECURSIVE" in claim else claim.index("SELECT id")
    return claim[start : claim.index("\n)\n")]


_INSERT_RUN = (
    "INSERT INTO runs (id, app, task, queue, status, args_codec, args, available_at, "
    "created_at, updated_at, attempt, lease, priority, cancel_requested) VALUES "
    "({p}, 'app', 'nap', 'default', 'waiting', 'msgpack', {empty}, {p}, 1, 1, 1, 1, {p}, 0)"
)
"""A waiting run of task "nap": its id, when it is due, its priority."""


def _sqlite_claim_work(path: Path, params: dict[str, object]) -> tuple[int, list[str]]:
    """What SQLite's claim chooses, and the work it does to choose: virtual-machine steps (in
    hundreds), counted, not timed."""
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0  # go on

    conn = sqlite3.connect(path)
    try:
        conn.set_progress_handler(count, 100)
        chosen = [row[0] for row in conn.execute(_claim_select("sqlite"), params)]
    finally:
        conn.close()
    return steps, chosen


async def _sqlite_runs(path: Path, runs: list[tuple[str, float, int]]) -> None:
    store = SQLiteStore(path, blobs=LocalBlobStore(path.parent / "b"))
    await store.migrate()
    conn = sqlite3.connect(path)
    conn.executemany(_INSERT_RUN.format(p="?", empty="x''"), runs)
    conn.commit()
    conn.close()


async def test_a_claim_reads_only_the_runs_it_takes(tmp_path: Path, postgres_url: str) -> None:
    """10,000 runs due at the same moment (say, sleeps that end together): the claim walks
    the claim-order index and stops after its limit, on both dialects, instead of reading and
    sorting every due run on each claim."""
    params = {"app": "app", "tasks": '["nap"]', "now": 1000.0, "limit": 50, "version": "v1"}
    few = [(f"{i:08d}", 100.0, 0) for i in range(50)]
    ids = [(f"{i:08d}", 100.0, 0) for i in range(10_000)]
    await _sqlite_runs(tmp_path / "few.db", few)
    await _sqlite_runs(tmp_path / "many.db", ids)
    work_few, chosen_few = _sqlite_claim_work(tmp_path / "few.db", params)
    work_many, chosen_many = _sqlite_claim_work(tmp_path / "many.db", params)
    assert chosen_many == chosen_few == [run[0] for run in few]
    assert work_many < 2 * work_few, (work_few, work_many)  # (reading all: ~200 times as much)

    with psycopg.connect(postgres_url, autocommit=True) as pg:
        pg.execute("SET search_path = perdure")
        with pg.cursor() as cur:
            cur.executemany(_INSERT_RUN.format(p="%s", empty="''::bytea"), ids)
        pg.execute("ANALYZE runs")
        params = {**params, "tasks": ["nap"]}
        lines = pg.execute("EXPLAIN " + _claim_select("postgres"), params).fetchall()
    plan = " | ".join(line[0] for line in lines)
    assert "runs_claim_order" in plan, plan
    assert "Sort" not in plan, plan


async def test_a_claim_does_not_walk_the_runs_not_due_yet(tmp_path: Path) -> None:
    """10,000 runs asleep (or waiting for a person) at several priorities, and three due: a
    claim reads the due ones, in claim order, with about the work it takes when only those
    three exist (the claim-order index is ordered by priority first, so walking it for the
    runs due now would read every run asleep above and between them)."""
    params = {"app": "app", "tasks": '["nap"]', "now": 1000.0, "limit": 50, "version": "v1"}
    due = [("d-low", 10.0, -3), ("d-late", 20.0, 0), ("d-early", 10.0, 0)]
    asleep = [(f"{i:08d}", 2000.0 + i, (5, 0, -3)[i % 3]) for i in range(10_000)]
    await _sqlite_runs(tmp_path / "due.db", due)
    await _sqlite_runs(tmp_path / "asleep.db", due + asleep)
    work_due, chosen_due = _sqlite_claim_work(tmp_path / "due.db", params)
    work_asleep, chosen_asleep = _sqlite_claim_work(tmp_path / "asleep.db", params)
    assert chosen_asleep == chosen_due == ["d-early", "d-late", "d-low"]
    assert work_asleep < 2 * work_due, (work_due, work_asleep)  # (walking: ~1,000 times as much)
    conn = sqlite3.connect(tmp_path / "asleep.db")
    conn.execute("ANALYZE")  # (someone's maintenance: the planner then has statistics)
    conn.close()
    work_analyzed, chosen_analyzed = _sqlite_claim_work(tmp_path / "asleep.db", params)
    assert chosen_analyzed == chosen_due
    assert work_analyzed < 2 * work_due, (work_due, work_analyzed)
