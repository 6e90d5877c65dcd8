-- perdure schema 10: the index of ended runs covers what statistics read (task, status, start)
-- so that figures over a window of time come from the index alone; purge reads it by end time
-- as it read the index it replaces.

DROP INDEX runs_finished;
CREATE INDEX runs_ended ON runs (finished_at, app, task, status, started_at)
    WHERE finished_at IS NOT NULL;
