-- perdure schema 11: runs by tag through a table of (tag, run id) pairs, kept by the database
-- from runs.tags, so that a tag's runs come newest first from its own index: at once for a tag
-- no run has, and without reading the runs of other tags for a common one.

CREATE TABLE run_tags (
    tag     text NOT NULL,
    run_id  text NOT NULL,
    PRIMARY KEY (tag, run_id)
);

CREATE FUNCTION run_tags_add() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO run_tags (tag, run_id)
    SELECT DISTINCT tag, NEW.id FROM jsonb_array_elements_text(NEW.tags::jsonb) AS tag
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$$;

CREATE FUNCTION run_tags_remove() RETURNS trigger LANGUAGE plpgsql SET search_path FROM CURRENT AS $$
BEGIN
    DELETE FROM run_tags
    WHERE run_id = OLD.id
      AND tag IN (SELECT jsonb_array_elements_text(OLD.tags::jsonb));
    RETURN NULL;
END
$$;

CREATE TRIGGER runs_tags_add AFTER INSERT ON runs
FOR EACH ROW WHEN (NEW.tags IS NOT NULL) EXECUTE FUNCTION run_tags_add();
CREATE TRIGGER runs_tags_remove AFTER DELETE ON runs
FOR EACH ROW WHEN (OLD.tags IS NOT NULL) EXECUTE FUNCTION run_tags_remove();

INSERT INTO run_tags (tag, run_id)
SELECT DISTINCT tag, id FROM runs, jsonb_array_elements_text(tags::jsonb) AS tag
WHERE tags IS NOT NULL;

DROP INDEX runs_tags;
