-- perdure schema 13: versions and replays. A run keeps the version of the code that first ran
-- it (NULL: not started, and not pinned at trigger: any worker may start it), a worker the
-- version it runs, so that runs of a version no live worker serves can be found; a run made by
-- replaying another names it.

ALTER TABLE runs ADD COLUMN version text;
ALTER TABLE runs ADD COLUMN replay_of text;
ALTER TABLE workers ADD COLUMN version text;
CREATE INDEX runs_replays ON runs (replay_of) WHERE replay_of IS NOT NULL;
