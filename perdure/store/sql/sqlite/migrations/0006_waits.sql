-- perdure schema 6: waits on the outside world. Tokens (a person or a system completes one),
-- events (sent to the app, matched by fields), run mailboxes (messages by topic), and the waits
-- a run registered for them.
--
-- A run suspended on one of these has waiting_for set to its key ('token:ID', 'event:NAME',
-- 'message:TOPIC'); a completion, event or message for that key makes it claimable at once.
-- Every such signal also bumps the run's `signals`, running or not: a run suspending compares
-- it with the count its claim saw, so a signal that arrived while it ran is never missed.

ALTER TABLE runs ADD COLUMN signals INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN waiting_for TEXT;

CREATE TABLE tokens (
    id                TEXT PRIMARY KEY,
    app               TEXT NOT NULL,
    run_id            TEXT,            -- the run that made it (NULL: made outside a run)
    name              TEXT,            -- a run's named token (wait_for_token("approval"))
    status            TEXT NOT NULL,   -- waiting | completed | timed_out
    data_codec        TEXT,
    data              BLOB,
    data_blob         TEXT,
    data_raw_size     INTEGER NOT NULL DEFAULT 0,
    data_stored_size  INTEGER NOT NULL DEFAULT 0,
    tags              TEXT,            -- JSON list
    idempotency_key   TEXT,
    created_at        REAL NOT NULL,
    expires_at        REAL,            -- not completed by then: timed out
    completed_at      REAL
);
CREATE UNIQUE INDEX tokens_by_name ON tokens (run_id, name) WHERE name IS NOT NULL;
CREATE UNIQUE INDEX tokens_idempotency ON tokens (app, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tokens_by_app ON tokens (app, id);
CREATE INDEX tokens_by_run ON tokens (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE events (
    id                   TEXT PRIMARY KEY,  -- sorts by time
    app                  TEXT NOT NULL,
    name                 TEXT NOT NULL,
    payload_codec        TEXT NOT NULL,
    payload              BLOB,
    payload_blob         TEXT,
    payload_raw_size     INTEGER NOT NULL DEFAULT 0,
    payload_stored_size  INTEGER NOT NULL DEFAULT 0,
    idempotency_key      TEXT,
    created_at           REAL NOT NULL
);
CREATE UNIQUE INDEX events_idempotency ON events (app, name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_by_name ON events (app, name, created_at);
CREATE INDEX events_by_app ON events (app, id);

CREATE TABLE messages (
    id                TEXT PRIMARY KEY,  -- sorts by time: a topic's messages are FIFO by id
    app               TEXT NOT NULL,
    run_id            TEXT NOT NULL,
    topic             TEXT NOT NULL,
    data_codec        TEXT NOT NULL,
    data              BLOB,
    data_blob         TEXT,
    data_raw_size     INTEGER NOT NULL DEFAULT 0,
    data_stored_size  INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT,
    created_at        REAL NOT NULL,
    taken_seq         INTEGER             -- the receive (journal position) that took it
);
CREATE INDEX messages_waiting ON messages (run_id, topic, id) WHERE taken_seq IS NULL;
CREATE UNIQUE INDEX messages_taken ON messages (run_id, taken_seq) WHERE taken_seq IS NOT NULL;
CREATE UNIQUE INDEX messages_idempotency ON messages (run_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE waits (
    run_id            TEXT NOT NULL,
    seq               INTEGER NOT NULL,   -- the wait's journal position
    app               TEXT NOT NULL,
    kind              TEXT NOT NULL,      -- token | event | message
    key               TEXT NOT NULL,      -- token id, event name or topic
    match_codec       TEXT,               -- an event wait's match (an encoded dict)
    match             BLOB,
    match_blob        TEXT,
    match_raw_size    INTEGER NOT NULL DEFAULT 0,
    match_stored_size INTEGER NOT NULL DEFAULT 0,
    since             REAL NOT NULL,      -- events from then on count (look-back included)
    deadline          REAL,               -- the wait times out then (NULL: never)
    event_id          TEXT,               -- the event that ended an event wait
    created_at        REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX waits_by_key ON waits (app, kind, key);
