-- perdure schema 8 (PostgreSQL): what a run shows the world while it runs: its tags (given at
-- trigger, to find it by), its metadata (set from its body, read at once by anyone) and its
-- streams (realtime chunks, kept with the run so a late subscriber reads them from the start).

ALTER TABLE runs ADD COLUMN tags text;                 -- JSON list, NULL: none
ALTER TABLE runs ADD COLUMN metadata_codec text;
ALTER TABLE runs ADD COLUMN metadata bytea;
ALTER TABLE runs ADD COLUMN metadata_blob text;
ALTER TABLE runs ADD COLUMN metadata_raw_size bigint NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN metadata_stored_size bigint NOT NULL DEFAULT 0;

CREATE TABLE streams (
    run_id            text NOT NULL,
    name              text NOT NULL,
    origin            text NOT NULL,    -- where the run made it: a replay's same chunk is not added
    seq               integer NOT NULL,    -- 1, 2, ... within the run (all its streams)
    data_codec        text NOT NULL,
    data              bytea,
    data_blob         text,
    data_raw_size     bigint NOT NULL DEFAULT 0,
    data_stored_size  bigint NOT NULL DEFAULT 0,
    created_at        double precision NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX streams_by_name ON streams (run_id, name, seq);
CREATE UNIQUE INDEX streams_origin ON streams (run_id, origin);
CREATE INDEX runs_tags ON runs USING gin ((tags::jsonb)) WHERE tags IS NOT NULL;
