-- perdure schema 1: runs, their journal and attempts, and workers.
-- Run ids sort by creation time, so runs are clustered by id and listed newest first by id.

CREATE TABLE runs (
    id                 TEXT PRIMARY KEY,
    app                TEXT NOT NULL,
    task               TEXT NOT NULL,
    queue              TEXT NOT NULL,
    status             TEXT NOT NULL,
    args_codec         TEXT NOT NULL,
    args               BLOB,
    args_blob          TEXT,
    args_raw_size      INTEGER NOT NULL DEFAULT 0,
    args_stored_size   INTEGER NOT NULL DEFAULT 0,
    result_codec       TEXT,
    result             BLOB,
    result_blob        TEXT,
    result_raw_size    INTEGER NOT NULL DEFAULT 0,
    result_stored_size INTEGER NOT NULL DEFAULT 0,
    error              BLOB,
    idempotency_key    TEXT,
    attempt            INTEGER NOT NULL DEFAULT 1,
    lease              INTEGER NOT NULL DEFAULT 0,
    worker_id          TEXT,
    available_at       REAL,
    cancel_requested   INTEGER NOT NULL DEFAULT 0,
    note               TEXT,
    created_at         REAL NOT NULL,
    started_at         REAL,
    updated_at         REAL NOT NULL,
    finished_at        REAL
) WITHOUT ROWID;
CREATE UNIQUE INDEX runs_idempotency ON runs (app, task, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_claimable ON runs (app, available_at) WHERE status IN ('queued', 'waiting');
CREATE INDEX runs_worker ON runs (worker_id) WHERE worker_id IS NOT NULL;

CREATE TABLE journal (
    run_id       TEXT NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    codec        TEXT,
    value        BLOB,
    blob_key     TEXT,
    raw_size     INTEGER NOT NULL DEFAULT 0,
    stored_size  INTEGER NOT NULL DEFAULT 0,
    error        BLOB,
    started_at   REAL NOT NULL,
    finished_at  REAL NOT NULL,
    -- the attempt that succeeded lives here, not in attempts: one row per step, one page
    run_attempt         INTEGER NOT NULL DEFAULT 1,
    attempt             INTEGER NOT NULL DEFAULT 0,
    attempt_started_at  REAL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE attempts (
    run_id       TEXT NOT NULL,
    run_attempt  INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    attempt      INTEGER NOT NULL,
    started_at   REAL NOT NULL,
    finished_at  REAL NOT NULL,
    error        BLOB,
    PRIMARY KEY (run_id, run_attempt, seq, attempt)
) WITHOUT ROWID;

CREATE TABLE workers (
    id            TEXT PRIMARY KEY,
    app           TEXT NOT NULL,
    host          TEXT NOT NULL,
    host_key      TEXT NOT NULL,
    pid           INTEGER NOT NULL,
    pid_started   INTEGER NOT NULL,
    tasks         TEXT NOT NULL,
    started_at    REAL NOT NULL,
    heartbeat_at  REAL NOT NULL,
    status        TEXT NOT NULL
);
