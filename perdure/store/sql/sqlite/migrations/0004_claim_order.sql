-- perdure schema 4: the claim's order (priority, then due time, then id) is the index's order,
-- so a claim reads as many rows as it takes even when thousands of runs are due at the same
-- moment (with ties on the due time it used to read and sort all of them).

DROP INDEX runs_claim_order;
CREATE INDEX runs_claim_order ON runs (app, priority DESC, available_at, id)
    WHERE status IN ('queued', 'waiting');
