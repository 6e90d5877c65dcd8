-- perdure schema 6 (PostgreSQL): waits on the outside world. Tokens (a person or a system
-- completes one), events (sent to the app, matched by fields), run mailboxes (messages by
-- topic), and the waits a run registered for them.
--
-- A run suspended on one of these has waiting_for set to its key ('token:ID', 'event:NAME',
-- 'message:TOPIC'); a completion, event or message for that key makes it claimable at once.
-- Every such signal also bumps the run's `signals`, running or not: a run suspending compares
-- it with the count its claim saw, so a signal that arrived while it ran is never missed.

ALTER TABLE runs ADD COLUMN signals bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN waiting_for text;

CREATE TABLE tokens (
    id                text PRIMARY KEY,
    app               text NOT NULL,
    run_id            text,            -- the run that made it (NULL: made outside a run)
    name              text,            -- a run's named token (wait_for_token("approval"))
    status            text NOT NULL,   -- waiting | completed | timed_out
    data_codec        text,
    data              bytea,
    data_blob         text,
    data_raw_size     bigint NOT NULL DEFAULT 0,
    data_stored_size  bigint NOT NULL DEFAULT 0,
    tags              text,            -- JSON list
    idempotency_key   text,
    created_at        double precision NOT NULL,
    expires_at        double precision,  -- not completed by then: timed out
    completed_at      double precision
);
CREATE UNIQUE INDEX tokens_by_name ON tokens (run_id, name) WHERE name IS NOT NULL;
CREATE UNIQUE INDEX tokens_idempotency ON tokens (app, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX tokens_by_app ON tokens (app, id);
CREATE INDEX tokens_by_run ON tokens (run_id) WHERE run_id IS NOT NULL;

CREATE TABLE events (
    id                   text PRIMARY KEY,  -- sorts by time
    app                  text NOT NULL,
    name                 text NOT NULL,
    payload_codec        text NOT NULL,
    payload              bytea,
    payload_blob         text,
    payload_raw_size     bigint NOT NULL DEFAULT 0,
    payload_stored_size  bigint NOT NULL DEFAULT 0,
    idempotency_key      text,
    created_at           double precision NOT NULL
);
CREATE UNIQUE INDEX events_idempotency ON events (app, name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX events_by_name ON events (app, name, created_at);
CREATE INDEX events_by_app ON events (app, id);

CREATE TABLE messages (
    id                text PRIMARY KEY,  -- sorts by time: a topic's messages are FIFO by id
    app               text NOT NULL,
    run_id            text NOT NULL,
    topic             text NOT NULL,
    data_codec        text NOT NULL,
    data              bytea,
    data_blob         text,
    data_raw_size     bigint NOT NULL DEFAULT 0,
    data_stored_size  bigint NOT NULL DEFAULT 0,
    idempotency_key   text,
    created_at        double precision NOT NULL,
    taken_seq         integer             -- the receive (journal position) that took it
);
CREATE INDEX messages_waiting ON messages (run_id, topic, id) WHERE taken_seq IS NULL;
CREATE UNIQUE INDEX messages_taken ON messages (run_id, taken_seq) WHERE taken_seq IS NOT NULL;
CREATE UNIQUE INDEX messages_idempotency ON messages (run_id, idempotency_key)
    WHERE idempotency_key IS NOT NULL;

CREATE TABLE waits (
    run_id            text NOT NULL,
    seq               integer NOT NULL,   -- the wait's journal position
    app               text NOT NULL,
    kind              text NOT NULL,      -- token | event | message
    key               text NOT NULL,      -- token id, event name or topic
    match_codec       text,               -- an event wait's match (an encoded dict)
    match             bytea,
    match_blob        text,
    match_raw_size    bigint NOT NULL DEFAULT 0,
    match_stored_size bigint NOT NULL DEFAULT 0,
    since             double precision NOT NULL,      -- events from then on count (look-back included)
    deadline          double precision,               -- the wait times out then (NULL: never)
    event_id          text,               -- the event that ended an event wait
    created_at        double precision NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX waits_by_key ON waits (app, kind, key);
