-- perdure schema 8: what a run shows the world while it runs: its tags (given at trigger, to
-- find it by), its metadata (set from its body, read at once by anyone) and its streams
-- (realtime chunks, kept with the run so a late subscriber reads them from the start).

ALTER TABLE runs ADD COLUMN tags TEXT;                 -- JSON list, NULL: none
ALTER TABLE runs ADD COLUMN metadata_codec TEXT;
ALTER TABLE runs ADD COLUMN metadata BLOB;
ALTER TABLE runs ADD COLUMN metadata_blob TEXT;
ALTER TABLE runs ADD COLUMN metadata_raw_size INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN metadata_stored_size INTEGER NOT NULL DEFAULT 0;

CREATE TABLE streams (
    run_id            TEXT NOT NULL,
    name              TEXT NOT NULL,
    origin            TEXT NOT NULL,    -- where the run made it: a replay's same chunk is not added
    seq               INTEGER NOT NULL,    -- 1, 2, ... within the run (all its streams)
    data_codec        TEXT NOT NULL,
    data              BLOB,
    data_blob         TEXT,
    data_raw_size     INTEGER NOT NULL DEFAULT 0,
    data_stored_size  INTEGER NOT NULL DEFAULT 0,
    created_at        REAL NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;
CREATE INDEX streams_by_name ON streams (run_id, name, seq);
CREATE UNIQUE INDEX streams_origin ON streams (run_id, origin);
