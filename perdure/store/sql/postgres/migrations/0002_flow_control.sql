-- perdure schema 2 (PostgreSQL): flow control (priority, delayed start, TTL, concurrency keys,
-- debounce, queues with limits) and child runs a parent waits for.

ALTER TABLE runs
    ADD COLUMN priority integer NOT NULL DEFAULT 0,
    ADD COLUMN concurrency_key text,
    ADD COLUMN expires_at double precision,
    ADD COLUMN debounce_key text,
    ADD COLUMN parent_id text,
    ADD COLUMN awaited integer NOT NULL DEFAULT 0,
    -- a parent suspended until children_done reaches children_target
    ADD COLUMN children_target integer,
    ADD COLUMN children_done integer NOT NULL DEFAULT 0;

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
    app              text NOT NULL,
    name             text NOT NULL,
    concurrency      integer,              -- runs of the queue running at once; NULL: no limit
    key_concurrency  integer,              -- per concurrency key; NULL: no per-key limit
    rate_limit       integer,              -- starts per rate_period; NULL: no rate limit
    rate_period      double precision,
    rate_by_key      integer NOT NULL DEFAULT 0,
    strategy         text NOT NULL DEFAULT 'queue',
    paused           integer NOT NULL DEFAULT 0,
    overridden       integer NOT NULL DEFAULT 0,  -- set at run time: code no longer changes it
    updated_at       double precision NOT NULL,
    PRIMARY KEY (app, name)
);

-- an awaited child that ends counts towards its parent, and wakes the parent once the count
-- reaches what it waits for; every path to an end passes here. The update takes the parent's
-- row lock, so it serialises with the parent's own suspension (no lost wake-up).
CREATE FUNCTION child_done() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    UPDATE runs
    SET children_done = children_done + 1,
        available_at = CASE
            WHEN status = 'waiting' AND children_target IS NOT NULL
                 AND children_done + 1 >= children_target
            THEN extract(epoch FROM clock_timestamp())::double precision
            ELSE available_at END
    WHERE id = NEW.parent_id;
    PERFORM pg_notify('perdure', 'claimable');
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_child_done AFTER UPDATE OF status ON runs
FOR EACH ROW
WHEN (NEW.parent_id IS NOT NULL AND NEW.awaited = 1
      AND NEW.status IN ('completed', 'failed', 'cancelled', 'expired')
      AND OLD.status NOT IN ('completed', 'failed', 'cancelled', 'expired'))
EXECUTE FUNCTION child_done();
