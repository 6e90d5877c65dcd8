-- perdure schema 2: flow control (priority, delayed start, TTL, concurrency keys, debounce,
-- queues with limits) and child runs a parent waits for.

ALTER TABLE runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN concurrency_key TEXT;
ALTER TABLE runs ADD COLUMN expires_at REAL;
ALTER TABLE runs ADD COLUMN debounce_key TEXT;
ALTER TABLE runs ADD COLUMN parent_id TEXT;
ALTER TABLE runs ADD COLUMN awaited INTEGER NOT NULL DEFAULT 0;
-- a parent suspended until children_done reaches children_target
ALTER TABLE runs ADD COLUMN children_target INTEGER;
ALTER TABLE runs ADD COLUMN children_done INTEGER NOT NULL DEFAULT 0;

CREATE INDEX runs_parent ON runs (parent_id) WHERE parent_id IS NOT NULL;
CREATE INDEX runs_running ON runs (app, queue) WHERE status = 'running';
CREATE INDEX runs_starts ON runs (app, queue, started_at) WHERE started_at IS NOT NULL;
CREATE INDEX runs_claim_order ON runs (app, priority DESC, available_at)
    WHERE status IN ('queued', 'waiting');
CREATE INDEX runs_expiring ON runs (app, expires_at)
    WHERE expires_at IS NOT NULL AND started_at IS NULL;
-- one pending run per debounce key: later triggers of the burst update it
CREATE UNIQUE INDEX runs_debounce ON runs (app, task, debounce_key)
    WHERE debounce_key IS NOT NULL AND status = 'queued' AND started_at IS NULL;

CREATE TABLE queues (
    app              TEXT NOT NULL,
    name             TEXT NOT NULL,
    concurrency      INTEGER,              -- runs of the queue running at once; NULL: no limit
    key_concurrency  INTEGER,              -- per concurrency key; NULL: no per-key limit
    rate_limit       INTEGER,              -- starts per rate_period; NULL: no rate limit
    rate_period      REAL,
    rate_by_key      INTEGER NOT NULL DEFAULT 0,
    strategy         TEXT NOT NULL DEFAULT 'queue',
    paused           INTEGER NOT NULL DEFAULT 0,
    overridden       INTEGER NOT NULL DEFAULT 0,  -- set at run time: code no longer changes it
    updated_at       REAL NOT NULL,
    PRIMARY KEY (app, name)
) WITHOUT ROWID;

-- an awaited child that ends counts towards its parent, and wakes the parent once the count
-- reaches what it waits for; every path to an end passes here
CREATE TRIGGER runs_child_done AFTER UPDATE OF status ON runs
WHEN NEW.parent_id IS NOT NULL AND NEW.awaited = 1
  AND NEW.status IN ('completed', 'failed', 'cancelled', 'expired')
  AND OLD.status NOT IN ('completed', 'failed', 'cancelled', 'expired')
BEGIN
    UPDATE runs
    SET children_done = children_done + 1,
        available_at = CASE
            WHEN status = 'waiting' AND children_target IS NOT NULL
                 AND children_done + 1 >= children_target
            THEN (julianday('now') - 2440587.5) * 86400.0
            ELSE available_at END
    WHERE id = NEW.parent_id;
END;
