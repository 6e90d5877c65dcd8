-- perdure schema 15: a run that ended by continuing as a new run (perdure.continue_as_new) names
-- that run, so its handle's result follows the chain to the end.

ALTER TABLE runs ADD COLUMN continued_as TEXT;
