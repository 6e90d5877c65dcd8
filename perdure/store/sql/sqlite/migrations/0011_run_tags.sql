-- perdure schema 11: runs by tag through a table of (tag, run id) pairs, kept by the database
-- from runs.tags, so that a tag's runs come newest first from its own index: at once for a tag
-- no run has, and without reading the runs of other tags for a common one.

CREATE TABLE run_tags (
    tag     TEXT NOT NULL,
    run_id  TEXT NOT NULL,
    PRIMARY KEY (tag, run_id)
) WITHOUT ROWID;

CREATE TRIGGER runs_tags_add AFTER INSERT ON runs WHEN NEW.tags IS NOT NULL
BEGIN
    INSERT OR IGNORE INTO run_tags (tag, run_id) SELECT value, NEW.id FROM json_each(NEW.tags);
END;

CREATE TRIGGER runs_tags_remove AFTER DELETE ON runs WHEN OLD.tags IS NOT NULL
BEGIN
    DELETE FROM run_tags
    WHERE run_id = OLD.id AND tag IN (SELECT value FROM json_each(OLD.tags));
END;

INSERT OR IGNORE INTO run_tags (tag, run_id)
SELECT j.value, runs.id FROM runs, json_each(runs.tags) AS j WHERE runs.tags IS NOT NULL;
