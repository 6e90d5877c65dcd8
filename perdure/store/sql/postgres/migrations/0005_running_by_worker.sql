-- perdure schema 5: running runs by worker. A worker's stray claims, a reaped worker's runs and
-- the runs of workers no longer alive are found from this index (the sweep runs every few
-- seconds in every worker, so it must not read the whole table).

CREATE INDEX runs_running_by_worker ON runs (worker_id) WHERE status = 'running';
