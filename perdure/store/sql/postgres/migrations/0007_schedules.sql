-- perdure schema 7 (PostgreSQL): cron schedules. Each row fires its task once per tick, however
-- many workers look: a worker advances next_at only if it still holds the value it read, and the
-- tick's run is created in the same transaction (its idempotency key names the tick too).

CREATE TABLE schedules (
    app          text NOT NULL,
    key          text NOT NULL,          -- a declared schedule's task name, or the key given
    task         text NOT NULL,
    queue        text NOT NULL,
    cron         text NOT NULL,
    tz           text NOT NULL,
    missed       text NOT NULL,          -- run_once | skip
    declared     integer NOT NULL DEFAULT 0,
    paused       integer NOT NULL DEFAULT 0,
    next_at      double precision NOT NULL,
    last_tick    double precision,
    last_run_id  text,
    created_at   double precision NOT NULL,
    updated_at   double precision NOT NULL,
    PRIMARY KEY (app, key)
);
CREATE INDEX schedules_due ON schedules (app, next_at) WHERE paused = 0;
