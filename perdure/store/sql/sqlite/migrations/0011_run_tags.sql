-- perdure schema 11: runs by tag through a table of (tag, run id) pairs, written with a tagged
-- run and deleted with it, so that a tag's runs come newest first from its own index: at once
-- for a tag no run has, and without reading the runs of other tags for a common one. A run
-- without tags writes nothing here.

CREATE TABLE run_tags (
    tag     TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    PRIMARY KEY (tag, run_id)
) WITHOUT ROWID;
CREATE INDEX run_tags_by_run ON run_tags (run_id);

INSERT OR IGNORE INTO run_tags (tag, run_id)
SELECT j.value, runs.id FROM runs, json_each(runs.tags) AS j WHERE runs.tags IS NOT NULL;
