-- perdure schema 1 (PostgreSQL): runs, their journal and attempts, and workers, in the schema
-- "perdure". Times are POSIX seconds (double precision), as in the SQLite store.
-- Run ids sort by creation time, so runs are listed newest first by id.

CREATE TABLE runs (
    id                 text PRIMARY KEY,
    app                text NOT NULL,
    task               text NOT NULL,
    queue              text NOT NULL,
    status             text NOT NULL,
    args_codec         text NOT NULL,
    args               bytea,
    args_blob          text,
    args_raw_size      bigint NOT NULL DEFAULT 0,
    args_stored_size   bigint NOT NULL DEFAULT 0,
    result_codec       text,
    result             bytea,
    result_blob        text,
    result_raw_size    bigint NOT NULL DEFAULT 0,
    result_stored_size bigint NOT NULL DEFAULT 0,
    error              bytea,
    idempotency_key    text,
    attempt            integer NOT NULL DEFAULT 1,
    lease              bigint NOT NULL DEFAULT 0,
    worker_id          text,
    available_at       double precision,
    cancel_requested   integer NOT NULL DEFAULT 0,
    note               text,
    created_at         double precision NOT NULL,
    started_at         double precision,
    updated_at         double precision NOT NULL,
    finished_at        double precision
);
CREATE UNIQUE INDEX runs_idempotency ON runs (app, task, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX runs_claimable ON runs (app, available_at) WHERE status IN ('queued', 'waiting');
CREATE INDEX runs_worker ON runs (worker_id) WHERE worker_id IS NOT NULL;

CREATE TABLE journal (
    run_id       text NOT NULL,
    seq          integer NOT NULL,
    kind         text NOT NULL,
    name         text NOT NULL,
    status       text NOT NULL,
    codec        text,
    value        bytea,
    blob_key     text,
    raw_size     bigint NOT NULL DEFAULT 0,
    stored_size  bigint NOT NULL DEFAULT 0,
    error        bytea,
    started_at   double precision NOT NULL,
    finished_at  double precision NOT NULL,
    -- the attempt that succeeded lives here, not in attempts: one row per step
    run_attempt         integer NOT NULL DEFAULT 1,
    attempt             integer NOT NULL DEFAULT 0,
    attempt_started_at  double precision,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE attempts (
    run_id       text NOT NULL,
    run_attempt  integer NOT NULL,
    seq          integer NOT NULL,
    attempt      integer NOT NULL,
    started_at   double precision NOT NULL,
    finished_at  double precision NOT NULL,
    error        bytea,
    PRIMARY KEY (run_id, run_attempt, seq, attempt)
);

CREATE TABLE workers (
    id            text PRIMARY KEY,
    app           text NOT NULL,
    host          text NOT NULL,
    host_key      text NOT NULL,
    pid           integer NOT NULL,
    pid_started   bigint NOT NULL,
    tasks         text NOT NULL,
    started_at    double precision NOT NULL,
    heartbeat_at  double precision NOT NULL,
    status        text NOT NULL
);
