-- perdure schema 14: the lifecycle hooks a run has fired (on_start, on_success, ...): a hook
-- runs only after its row is written, and the row can be written once, so each hook runs at
-- most once per event of a run. `key` tells events of one kind apart (a wait's journal
-- position, a resume's execution); 0 for the others.

CREATE TABLE run_hooks (
    run_id    TEXT NOT NULL,
    event     TEXT NOT NULL,
    key       INTEGER NOT NULL,
    fired_at  REAL NOT NULL,
    PRIMARY KEY (run_id, event, key)
) WITHOUT ROWID;
