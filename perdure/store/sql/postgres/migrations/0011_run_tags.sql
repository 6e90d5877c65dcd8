-- perdure schema 11: runs by tag through a table of (tag, run id) pairs, written with a tagged
-- run and deleted with it, so that a tag's runs come newest first from its own index: at once
-- for a tag no run has, and without reading the runs of other tags for a common one. A run
-- without tags writes nothing here.

CREATE TABLE run_tags (
    tag     text NOT NULL,
    run_id  text NOT NULL,
    PRIMARY KEY (tag, run_id)
);
CREATE INDEX run_tags_by_run ON run_tags (run_id);

INSERT INTO run_tags (tag, run_id)
SELECT DISTINCT tag, id FROM runs, jsonb_array_elements_text(tags::jsonb) AS tag
WHERE tags IS NOT NULL;

DROP INDEX runs_tags;
