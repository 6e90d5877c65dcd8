-- perdure schema 7: cron schedules. Each row fires its task once per tick, however many
-- workers look: a worker advances next_at only if it still holds the value it read, and the
-- tick's run is created in the same transaction (its idempotency key names the tick too).

CREATE TABLE schedules (
    app          TEXT NOT NULL,
    key          TEXT NOT NULL,          -- a declared schedule's task name, or the key given
    task         TEXT NOT NULL,
    queue        TEXT NOT NULL,
    cron         TEXT NOT NULL,
    tz           TEXT NOT NULL,
    missed       TEXT NOT NULL,          -- run_once | skip
    declared     INTEGER NOT NULL DEFAULT 0,
    paused       INTEGER NOT NULL DEFAULT 0,
    next_at      REAL NOT NULL,
    last_tick    REAL,
    last_run_id  TEXT,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    PRIMARY KEY (app, key)
) WITHOUT ROWID;
CREATE INDEX schedules_due ON schedules (app, next_at) WHERE paused = 0;
