-- Named queries of the SQLite store. The PostgreSQL store has a file with the same names.

-- name: insert_run
INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at,
                  priority, concurrency_key, expires_at, debounce_key, parent_id, awaited,
                  tags, trace_context, version, replay_of, children_done)
VALUES (:id, :app, :task, :queue, 'queued', :args_codec, :args, :args_blob, :args_raw_size,
        :args_stored_size, :idempotency_key, :available_at, :now, :now,
        :priority, :concurrency_key, :expires_at, :debounce_key, :parent_id, :awaited,
        :tags, :trace_context, :version,
        :replay_of, :children_done)
ON CONFLICT DO NOTHING;

-- name: copy_journal
-- a replay's reused positions: the entries of the run it replays below reuse_before, as they are
-- (values, blob references and sizes; a value is bound to its codec, not to its run)
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
SELECT :id, seq, kind, name, status, codec, value, blob_key, raw_size, stored_size, error,
       started_at, finished_at, 1, attempt, attempt_started_at
FROM journal WHERE run_id = :replay_of AND seq < :reuse_before;

-- name: upsert_debounced_run
-- the burst's pending run takes the latest arguments and start time
INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at,
                  priority, concurrency_key, expires_at, debounce_key, parent_id, awaited,
                  tags, trace_context, version, replay_of, children_done)
VALUES (:id, :app, :task, :queue, 'queued', :args_codec, :args, :args_blob, :args_raw_size,
        :args_stored_size, :idempotency_key, :available_at, :now, :now,
        :priority, :concurrency_key, :expires_at, :debounce_key, :parent_id, :awaited,
        :tags, :trace_context, :version,
        :replay_of, :children_done)
ON CONFLICT (app, task, debounce_key)
    WHERE debounce_key IS NOT NULL AND status = 'queued' AND started_at IS NULL
DO UPDATE SET args_codec = excluded.args_codec, args = excluded.args,
              args_blob = excluded.args_blob, args_raw_size = excluded.args_raw_size,
              args_stored_size = excluded.args_stored_size,
              available_at = excluded.available_at, priority = excluded.priority,
              concurrency_key = excluded.concurrency_key, expires_at = excluded.expires_at,
              updated_at = excluded.updated_at
RETURNING id;

-- name: run_by_idempotency_key
SELECT id FROM runs
WHERE id = :id
   OR (app = :app AND task = :task AND idempotency_key = :idempotency_key);

-- name: get_run
SELECT * FROM runs WHERE id = :id;

-- name: get_runs
SELECT * FROM runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: list_runs
SELECT id, app, task, queue, status, error, idempotency_key, attempt, lease, worker_id,
       available_at, cancel_requested, note, created_at, started_at, updated_at, finished_at,
       waiting_for, tags, version, replay_of
FROM runs
WHERE (:status IS NULL OR status = :status) AND (:task IS NULL OR task = :task)
  AND (:before IS NULL OR id < :before)
  AND (:since IS NULL OR created_at >= :since) AND (:until IS NULL OR created_at < :until)
ORDER BY id DESC
LIMIT :limit;

-- name: list_runs_tagged
-- list_runs of one tag: newest first from the tag's own index
SELECT r.id, r.app, r.task, r.queue, r.status, r.error, r.idempotency_key, r.attempt, r.lease,
       r.worker_id, r.available_at, r.cancel_requested, r.note, r.created_at, r.started_at,
       r.updated_at, r.finished_at, r.waiting_for, r.tags, r.version, r.replay_of
FROM run_tags AS t JOIN runs AS r ON r.id = t.run_id
WHERE t.tag = :tag AND (:before IS NULL OR t.run_id < :before)
  AND (:status IS NULL OR r.status = :status) AND (:task IS NULL OR r.task = :task)
  AND (:since IS NULL OR r.created_at >= :since) AND (:until IS NULL OR r.created_at < :until)
ORDER BY t.run_id DESC
LIMIT :limit;

-- name: claim_runs
-- no limit applies: the first claimable runs, higher priority first. The priorities of the
-- app's claimable runs are found one index seek each, highest first; within each, only the runs
-- due by now are read (a range of the claim-order index), in claim order, and no more than the
-- claim takes. So a claim never walks the runs not due yet (thousands asleep, or waiting for a
-- person): the index cannot bound "due by now" across priorities, only within one.
UPDATE runs
SET status = 'running', worker_id = :worker_id, lease = lease + 1,
    version = coalesce(version, :version),  -- pinned to the code that first runs it
    note = CASE WHEN substr(note, 1, 9) = 'requeued:' THEN note END,  -- (kept: why it runs again)
    started_at = coalesce(started_at, :now), updated_at = :now
WHERE id IN (
    WITH RECURSIVE levels(priority) AS (
        SELECT max(priority) FROM runs INDEXED BY runs_claim_order
        WHERE app = :app AND status IN ('queued', 'waiting')
        UNION ALL
        SELECT (SELECT max(priority) FROM runs INDEXED BY runs_claim_order
                WHERE app = :app AND status IN ('queued', 'waiting')
                  AND priority < levels.priority)
        FROM levels
        -- (a hint: few levels, so the planner builds no Bloom filter of the runs per claim,
        -- as it would once `ANALYZE` has run)
        WHERE likelihood(levels.priority IS NOT NULL, 0.0001)
    )
    SELECT r.id
    FROM levels CROSS JOIN runs AS r INDEXED BY runs_claim_order  -- (CROSS JOIN: levels outside)
    WHERE r.app = :app AND r.status IN ('queued', 'waiting')
      AND r.priority = levels.priority AND r.available_at <= :now
      AND r.task IN (SELECT value FROM json_each(:tasks))
      AND (r.version IS NULL OR r.version = :version)  -- runs of its own version
    ORDER BY r.priority DESC, r.available_at, r.id
    LIMIT :limit
)
  AND EXISTS (SELECT 1 FROM workers  -- a worker declared dead claims nothing
              WHERE id = :worker_id AND status = 'alive')
RETURNING *;

-- name: claim_candidates
-- limits apply: candidates for admission; each queue and concurrency key in turn, higher
-- priority first within one
SELECT id, task, queue, concurrency_key, started_at, turn FROM (
    SELECT id, task, queue, concurrency_key, started_at, priority, available_at,
           row_number() OVER (PARTITION BY queue, concurrency_key
                              ORDER BY priority DESC, available_at, id) AS turn
    FROM runs
    WHERE app = :app AND status IN ('queued', 'waiting') AND available_at <= :now
      AND task IN (SELECT value FROM json_each(:tasks))
      AND (version IS NULL OR version = :version)  -- runs of its own version
)
ORDER BY turn, priority DESC, available_at, id
LIMIT :scan;

-- name: running_runs
SELECT id, task, queue, concurrency_key FROM runs WHERE app = :app AND status = 'running';

-- name: recent_starts
SELECT queue, concurrency_key, started_at FROM runs
WHERE app = :app AND started_at > :since;

-- name: claim_ids
UPDATE runs
SET status = 'running', worker_id = :worker_id, lease = lease + 1,
    version = coalesce(version, :version),  -- pinned to the code that first runs it
    note = CASE WHEN substr(note, 1, 9) = 'requeued:' THEN note END,  -- (kept: why it runs again)
    started_at = coalesce(started_at, :now), updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('queued', 'waiting')
  AND (version IS NULL OR version = :version)
  AND EXISTS (SELECT 1 FROM workers  -- a worker declared dead claims nothing
              WHERE id = :worker_id AND status = 'alive')
RETURNING *;

-- name: cancel_queued_ids
UPDATE runs
SET status = 'cancelled', worker_id = NULL, available_at = NULL, updated_at = :now,
    finished_at = :now, note = :note
WHERE id IN (SELECT value FROM json_each(:ids)) AND status IN ('queued', 'waiting');

-- name: request_cancel_ids
UPDATE runs SET cancel_requested = 1, updated_at = :now
WHERE id IN (SELECT value FROM json_each(:ids)) AND status = 'running';

-- name: expire_runs
UPDATE runs
SET status = 'expired', worker_id = NULL, available_at = NULL, updated_at = :now,
    finished_at = :now, note = 'expired: not started within its ttl'
WHERE (:app IS NULL OR app = :app) AND expires_at <= :now AND started_at IS NULL
  AND status = 'queued';

-- name: runs_lack_statistics
-- never: perdure does not analyze SQLite's tables (the claim's plan is fixed by the query)
SELECT 0 AS lacking;

-- name: analyze_runs
SELECT NULL WHERE 0;

-- name: app_queues
SELECT * FROM queues WHERE app = :app;

-- name: declare_queue
INSERT INTO queues (app, name, concurrency, key_concurrency, rate_limit, rate_period,
                    rate_by_key, strategy, paused, updated_at)
VALUES (:app, :name, :concurrency, :key_concurrency, :rate_limit, :rate_period, :rate_by_key,
        :strategy, 0, :now)
ON CONFLICT (app, name) DO UPDATE
SET concurrency = CASE WHEN queues.overridden = 1 THEN queues.concurrency
                       ELSE excluded.concurrency END,
    key_concurrency = excluded.key_concurrency, rate_limit = excluded.rate_limit,
    rate_period = excluded.rate_period, rate_by_key = excluded.rate_by_key,
    strategy = excluded.strategy, updated_at = excluded.updated_at;

-- name: set_queue
INSERT INTO queues (app, name, concurrency, paused, overridden, updated_at)
VALUES (:app, :name, :concurrency, coalesce(:paused, 0), :set_limit, :now)
ON CONFLICT (app, name) DO UPDATE
SET concurrency = CASE WHEN :set_limit = 1 THEN excluded.concurrency
                       ELSE queues.concurrency END,
    overridden = max(queues.overridden, :set_limit),
    paused = coalesce(:paused, queues.paused),
    updated_at = excluded.updated_at
RETURNING *;

-- name: queue_stats
WITH names AS (
    SELECT app, name FROM queues WHERE :app IS NULL OR app = :app
    UNION
    SELECT DISTINCT app, queue FROM runs
    WHERE (:app IS NULL OR app = :app) AND status IN ('queued', 'waiting', 'running')
)
SELECT n.app, n.name, q.concurrency, q.key_concurrency, q.rate_limit, q.rate_period,
       coalesce(q.rate_by_key, 0) AS rate_by_key, coalesce(q.strategy, 'queue') AS strategy,
       coalesce(q.paused, 0) AS paused, coalesce(q.overridden, 0) AS overridden,
       (SELECT count(*) FROM runs r
        WHERE r.app = n.app AND r.queue = n.name AND r.status = 'running') AS running,
       (SELECT count(*) FROM runs r
        WHERE r.app = n.app AND r.queue = n.name AND r.status IN ('queued', 'waiting')
          AND r.available_at IS NOT NULL) AS queued,
       (SELECT min(r.available_at) FROM runs r
        WHERE r.app = n.app AND r.queue = n.name AND r.status IN ('queued', 'waiting')
          AND r.available_at <= :now) AS oldest_waiting_at
FROM names n LEFT JOIN queues q ON q.app = n.app AND q.name = n.name
ORDER BY n.app, n.name;

-- name: next_wake_at
SELECT min(available_at) AS wake_at FROM runs
WHERE app = :app AND status IN ('queued', 'waiting')
  AND task IN (SELECT value FROM json_each(:tasks))
  AND (version IS NULL OR version = :version);

-- name: check_lease
SELECT lease, worker_id, status, cancel_requested FROM runs WHERE id = :id;

-- name: insert_entry
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
VALUES (:run_id, :seq, :kind, :name, :status, :codec, :value, :blob_key, :raw_size,
        :stored_size, :error, :started_at, :finished_at, :run_attempt, :attempt,
        :attempt_started_at)
ON CONFLICT (run_id, seq) DO NOTHING;

-- name: insert_attempt
INSERT INTO attempts (run_id, run_attempt, seq, attempt, started_at, finished_at, error)
VALUES (:run_id, :run_attempt, :seq, :attempt, :started_at, :finished_at, :error)
ON CONFLICT DO NOTHING;

-- name: load_journal
SELECT * FROM journal WHERE run_id = :run_id ORDER BY seq;

-- name: load_attempts
SELECT run_id, run_attempt, seq, attempt, started_at, finished_at, error
FROM attempts WHERE run_id = :run_id
UNION ALL
SELECT run_id, run_attempt, seq, attempt, attempt_started_at, finished_at, NULL
FROM journal WHERE run_id = :run_id AND attempt > 0
ORDER BY run_attempt, seq, attempt;

-- name: histories
-- the journals of runs just claimed, read with the claim
SELECT * FROM journal WHERE run_id IN (SELECT value FROM json_each(:ids)) ORDER BY run_id, seq;

-- name: histories_attempts
SELECT run_id, run_attempt, seq, attempt, started_at, finished_at, error
FROM attempts WHERE run_id IN (SELECT value FROM json_each(:ids))
UNION ALL
SELECT run_id, run_attempt, seq, attempt, attempt_started_at, finished_at, NULL
FROM journal WHERE run_id IN (SELECT value FROM json_each(:ids)) AND attempt > 0
ORDER BY run_id, run_attempt, seq, attempt;

-- name: finish_attempt
UPDATE runs
SET status = :status, worker_id = NULL,
    result_codec = :result_codec, result = :result, result_blob = :result_blob,
    result_raw_size = :result_raw_size, result_stored_size = :result_stored_size,
    error = coalesce(:error, error), attempt = attempt + :bump, cancel_requested = 0,
    updated_at = :now, finished_at = :finished_at, note = :note,
    children_target = :children_target, waiting_for = :waiting_for,
    available_at = CASE
        WHEN signals > :signals THEN :now  -- a signal came while it ran: it is over already
        WHEN :children_target IS NULL THEN :available_at
        WHEN children_done >= :children_target THEN :now
        END
WHERE id = :id AND lease = :lease AND worker_id = :worker_id
  AND status = 'running'
  AND (cancel_requested = 0 OR :status = 'cancelled');  -- a cancel is never overwritten

-- name: drop_failed_entries
DELETE FROM journal
WHERE run_id = :run_id
  AND seq >= (SELECT min(seq) FROM journal WHERE run_id = :run_id AND status = 'failed');

-- name: cancel_idle_tree
-- the run and its descendants that are not running end at once
WITH RECURSIVE tree(id) AS (
    SELECT :id UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id
)
UPDATE runs
SET status = 'cancelled', worker_id = NULL, available_at = NULL, updated_at = :now,
    finished_at = :now
WHERE id IN (SELECT id FROM tree)
  AND (status IN ('queued', 'waiting')
       OR status = 'running' AND NOT EXISTS (  -- no live worker to stop it
           SELECT 1 FROM workers w WHERE w.id = runs.worker_id AND w.status = 'alive'));

-- name: request_cancel_tree
-- the running ones are asked to stop
WITH RECURSIVE tree(id) AS (
    SELECT :id UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id
)
UPDATE runs SET cancel_requested = 1, updated_at = :now
WHERE id IN (SELECT id FROM tree) AND status = 'running';

-- name: cancel_requests
SELECT id, lease FROM runs
WHERE worker_id = :worker_id AND status = 'running' AND cancel_requested = 1;

-- name: register_worker
INSERT INTO workers (id, app, host, host_key, pid, pid_started, tasks, started_at, heartbeat_at,
                     status, version)
VALUES (:id, :app, :host, :host_key, :pid, :pid_started, :tasks, :started_at, :heartbeat_at,
        'alive', :version)
ON CONFLICT DO NOTHING;

-- name: heartbeat
UPDATE workers SET heartbeat_at = :now WHERE id = :id AND status = 'alive'
RETURNING heartbeat_at AS server_now;

-- name: live_workers
SELECT * FROM workers WHERE app = :app AND status = 'alive';

-- name: mark_worker_dead
UPDATE workers SET status = :status WHERE id = :id AND status = 'alive';

-- name: requeue_worker_runs
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    worker_id = NULL, available_at = :now, updated_at = :now, note = :note
WHERE worker_id = :worker_id AND status = 'running';

-- name: requeue_orphans
-- running runs whose worker is not alive (declared dead, stopped, or never registered): a claim
-- that committed while its worker was being declared dead, a release lost with its connection
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    worker_id = NULL, available_at = :now, updated_at = :now,
    note = 'requeued: its worker ' || coalesce(worker_id, '?') || ' is no longer alive'
WHERE status = 'running' AND NOT EXISTS (
    SELECT 1 FROM workers w WHERE w.id = runs.worker_id AND w.status = 'alive');

-- name: note_unclaimable
UPDATE runs SET note = :note
WHERE app = :app AND status IN ('queued', 'waiting') AND available_at <= :now
  AND task NOT IN (SELECT value FROM json_each(:tasks)) AND note IS NOT :note;

-- name: entry_at
SELECT kind, name, status, codec, value, blob_key, error FROM journal
WHERE run_id = :run_id AND seq = :seq;

-- name: release_strays
-- (a run asked to cancel ends cancelled: released, it would run again)
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN :now END,
    worker_id = NULL, available_at = :now, updated_at = :now,
    note = 'requeued: its worker no longer ran it'
WHERE worker_id = :worker_id AND status = 'running'
  AND id NOT IN (SELECT value FROM json_each(:keep))
RETURNING id;

-- name: purgeable_runs
-- ended before the cutoff; never a child whose parent still waits for it
SELECT id FROM runs
WHERE finished_at < :before AND status IN (SELECT value FROM json_each(:statuses))
  AND (:app IS NULL OR app = :app)
  AND (parent_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM runs p WHERE p.id = runs.parent_id
        AND p.status NOT IN ('completed', 'failed', 'cancelled', 'expired')))
ORDER BY finished_at
LIMIT :limit;

-- name: delete_journals
DELETE FROM journal WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_attempts
DELETE FROM attempts WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_tokens
DELETE FROM tokens WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_messages
DELETE FROM messages WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_waits
DELETE FROM waits WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_events
-- events sent before the cutoff, but none that ended a wait of a run still kept
DELETE FROM events
WHERE id IN (SELECT id FROM events
             WHERE created_at < :before AND (:app IS NULL OR app = :app)
               AND id NOT IN (SELECT event_id FROM waits WHERE event_id IS NOT NULL)
             LIMIT :limit);

-- name: delete_runs
DELETE FROM runs WHERE id IN (SELECT value FROM json_each(:ids));

-- name: referenced_blobs
SELECT blob_key AS key FROM journal WHERE blob_key IN (SELECT value FROM json_each(:keys))
UNION
SELECT args_blob FROM runs WHERE args_blob IN (SELECT value FROM json_each(:keys))
UNION
SELECT result_blob FROM runs WHERE result_blob IN (SELECT value FROM json_each(:keys))
UNION
SELECT data_blob FROM tokens WHERE data_blob IN (SELECT value FROM json_each(:keys))
UNION
SELECT data_blob FROM messages WHERE data_blob IN (SELECT value FROM json_each(:keys))
UNION
SELECT payload_blob FROM events WHERE payload_blob IN (SELECT value FROM json_each(:keys))
UNION
SELECT match_blob FROM waits WHERE match_blob IN (SELECT value FROM json_each(:keys))
UNION
SELECT metadata_blob FROM runs WHERE metadata_blob IN (SELECT value FROM json_each(:keys));

-- name: run_ids_after
SELECT id FROM runs WHERE id > :after ORDER BY id LIMIT :limit;

-- name: inline_values_of
-- encryption rotation: the inline values of these runs (blobs are rotated in the blob store)
SELECT 'args' AS col, id, 0 AS seq, args_codec AS codec, args AS value
FROM runs WHERE id IN (SELECT value FROM json_each(:ids)) AND args IS NOT NULL
UNION ALL
SELECT 'result', id, 0, result_codec, result
FROM runs WHERE id IN (SELECT value FROM json_each(:ids)) AND result IS NOT NULL
UNION ALL
SELECT 'journal', run_id, seq, codec, value
FROM journal WHERE run_id IN (SELECT value FROM json_each(:ids)) AND value IS NOT NULL
UNION ALL
SELECT 'token', id, 0, data_codec, data
FROM tokens WHERE run_id IN (SELECT value FROM json_each(:ids)) AND data IS NOT NULL
UNION ALL
SELECT 'message', id, 0, data_codec, data
FROM messages WHERE run_id IN (SELECT value FROM json_each(:ids)) AND data IS NOT NULL
UNION ALL
SELECT 'wait_match', run_id, seq, match_codec, match
FROM waits WHERE run_id IN (SELECT value FROM json_each(:ids)) AND match IS NOT NULL
UNION ALL
SELECT 'metadata', id, 0, metadata_codec, metadata
FROM runs WHERE id IN (SELECT value FROM json_each(:ids)) AND metadata IS NOT NULL
UNION ALL
SELECT 'stream', run_id, seq, data_codec, data
FROM streams WHERE run_id IN (SELECT value FROM json_each(:ids)) AND data IS NOT NULL
UNION ALL
-- what belongs to no run (tokens made outside runs, events), in the same range of ids (ids
-- sort by time): after the last walk's end, up to this walk's last run (to the end if none)
SELECT 'token', id, 0, data_codec, data
FROM tokens
WHERE run_id IS NULL AND id > :after AND (:last IS NULL OR id <= :last)
  AND data IS NOT NULL
UNION ALL
SELECT 'event', id, 0, payload_codec, payload
FROM events
WHERE id > :after AND (:last IS NULL OR id <= :last) AND payload IS NOT NULL;

-- name: rewrite_args
UPDATE runs SET args_codec = :codec, args = :value
WHERE id = :id AND args_codec = :old_codec AND args = :old_value;

-- name: rewrite_result
UPDATE runs SET result_codec = :codec, result = :value
WHERE id = :id AND result_codec = :old_codec AND result = :old_value;

-- name: rewrite_token
UPDATE tokens SET data_codec = :codec, data = :value
WHERE id = :id AND data_codec = :old_codec AND data = :old_value;

-- name: rewrite_message
UPDATE messages SET data_codec = :codec, data = :value
WHERE id = :id AND data_codec = :old_codec AND data = :old_value;

-- name: rewrite_event
UPDATE events SET payload_codec = :codec, payload = :value
WHERE id = :id AND payload_codec = :old_codec AND payload = :old_value;

-- name: rewrite_wait_match
UPDATE waits SET match_codec = :codec, match = :value
WHERE run_id = :id AND seq = :seq AND match_codec = :old_codec
  AND match = :old_value;

-- name: rewrite_metadata
UPDATE runs SET metadata_codec = :codec, metadata = :value
WHERE id = :id AND metadata_codec = :old_codec AND metadata = :old_value;

-- name: rewrite_stream
UPDATE streams SET data_codec = :codec, data = :value
WHERE run_id = :id AND seq = :seq AND data_codec = :old_codec AND data = :old_value;

-- name: rewrite_journal
UPDATE journal SET codec = :codec, value = :value
WHERE run_id = :id AND seq = :seq AND codec = :old_codec AND value = :old_value;

-- name: claim_lock
-- nothing to lock: the one writer already makes claims one at a time
SELECT NULL WHERE 0;

-- name: lock_tree
-- nothing to lock: the one writer already makes writes one at a time
SELECT NULL WHERE 0;

-- name: append_entry_fenced
-- One journal entry in one statement, fenced by the run's lease: a row count of 0 means a lost
-- lease or a taken position (told by the count, not RETURNING: that costs SQLite ~5 us more)
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
SELECT :run_id, :seq, :kind, :name, :status, :codec, :value, :blob_key, :raw_size,
       :stored_size, :error, :started_at, :finished_at, :run_attempt, :attempt,
       :attempt_started_at
FROM runs
WHERE id = :run_id AND lease = :lease AND worker_id = :worker_id AND status = 'running'
ON CONFLICT (run_id, seq) DO NOTHING;

-- Waits on the outside world: tokens, events, mailboxes (schema 6) ---------------------------

-- name: lock_signal
-- nothing to lock: the one writer already makes writes one at a time
SELECT NULL WHERE 0;

-- name: insert_token
INSERT INTO tokens (id, app, run_id, name, status, tags, idempotency_key, created_at,
                    expires_at)
VALUES (:id, :app, :run_id, :name, 'waiting', :tags, :idempotency_key, :now, :expires_at)
ON CONFLICT DO NOTHING;

-- name: token_like
-- the token a create with these parameters made (itself, or the first with its key or name)
SELECT * FROM tokens
WHERE id = :id
   OR (app = :app AND idempotency_key = :idempotency_key)
   OR (run_id = :run_id AND name = :name)
ORDER BY id = :id DESC
LIMIT 1;

-- name: token
SELECT * FROM tokens WHERE id = :id;

-- name: token_held
-- the token, read for a wait: a completion committing meanwhile is waited for, then seen
SELECT * FROM tokens WHERE id = :id;

-- name: named_token
SELECT * FROM tokens WHERE run_id = :run_id AND name = :name;

-- name: complete_token
UPDATE tokens
SET status = 'completed', data_codec = :data_codec, data = :data, data_blob = :data_blob,
    data_raw_size = :data_raw_size, data_stored_size = :data_stored_size, completed_at = :now
WHERE id = :id AND status = 'waiting' AND (expires_at IS NULL OR expires_at > :now)
RETURNING *;

-- name: insert_completed_token
-- a named token completed before its run made it: the run finds it completed
INSERT INTO tokens (id, app, run_id, name, status, data_codec, data, data_blob, data_raw_size,
                    data_stored_size, tags, created_at, completed_at)
VALUES (:id, :app, :run_id, :name, 'completed', :data_codec, :data, :data_blob,
        :data_raw_size, :data_stored_size, '[]', :now, :now)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: time_out_token
UPDATE tokens SET status = 'timed_out'
WHERE id = :id AND status = 'waiting' AND expires_at <= :now;

-- name: list_tokens
SELECT id, app, run_id, name, status, data_codec, data_blob, data_raw_size, data_stored_size,
       tags, idempotency_key, created_at, expires_at, completed_at
FROM tokens
WHERE (:app IS NULL OR app = :app) AND (:run_id IS NULL OR run_id = :run_id)
  AND (:status IS NULL
       OR CASE WHEN status = 'waiting' AND expires_at <= :now THEN 'timed_out'
               ELSE status END = :status)
ORDER BY id DESC
LIMIT :limit;

-- name: insert_wait
INSERT INTO waits (run_id, seq, app, kind, key, match_codec, match, match_blob, match_raw_size,
                   match_stored_size, since, deadline, created_at)
VALUES (:run_id, :seq, :app, :kind, :key, :match_codec, :match, :match_blob, :match_raw_size,
        :match_stored_size, :since, :deadline, :now)
ON CONFLICT DO NOTHING;

-- name: wait_at
SELECT * FROM waits WHERE run_id = :run_id AND seq = :seq;

-- name: run_waits
SELECT * FROM waits WHERE run_id = :run_id ORDER BY seq;

-- name: waiters
-- the runs not ended that registered a wait for this key, not yet over
SELECT w.* FROM waits w JOIN runs r ON r.id = w.run_id
WHERE w.app = :app AND w.kind = :kind AND w.key = :key AND w.event_id IS NULL
  AND r.status IN ('queued', 'running', 'waiting');

-- name: signal_runs
-- a signal for these runs: counted on each (a run suspending compares), and a run waiting for
-- this key is claimable at once
UPDATE runs
SET signals = signals + 1,
    available_at = CASE WHEN status = 'waiting' AND waiting_for = :waiting_for THEN :now
                        ELSE available_at END
WHERE id IN (SELECT value FROM json_each(:ids));

-- name: insert_event
INSERT INTO events (id, app, name, payload_codec, payload, payload_blob, payload_raw_size,
                    payload_stored_size, idempotency_key, created_at)
VALUES (:id, :app, :name, :payload_codec, :payload, :payload_blob, :payload_raw_size,
        :payload_stored_size, :idempotency_key, :now)
ON CONFLICT DO NOTHING;

-- name: event_by_idempotency_key
SELECT id FROM events WHERE app = :app AND name = :name AND idempotency_key = :idempotency_key;

-- name: event
SELECT * FROM events WHERE id = :id;

-- name: events_since
SELECT * FROM events
WHERE app = :app AND name = :name AND created_at >= :since
ORDER BY created_at, id
LIMIT :limit;

-- name: list_events
SELECT id, app, name, payload_codec, payload_blob, payload_raw_size, payload_stored_size,
       idempotency_key, created_at
FROM events
WHERE (:app IS NULL OR app = :app) AND (:name IS NULL OR name = :name)
ORDER BY id DESC
LIMIT :limit;

-- name: events_taken
SELECT event_id FROM waits WHERE run_id = :run_id AND event_id IS NOT NULL;

-- name: resolve_wait
UPDATE waits SET event_id = :event_id
WHERE run_id = :run_id AND seq = :seq AND event_id IS NULL;

-- name: run_for_message
SELECT app, status FROM runs WHERE id = :run_id;

-- name: insert_message
INSERT INTO messages (id, app, run_id, topic, data_codec, data, data_blob, data_raw_size,
                      data_stored_size, idempotency_key, created_at)
VALUES (:id, :app, :run_id, :topic, :data_codec, :data, :data_blob, :data_raw_size,
        :data_stored_size, :idempotency_key, :now)
ON CONFLICT DO NOTHING;

-- name: message_by_idempotency_key
SELECT id FROM messages WHERE run_id = :run_id AND idempotency_key = :idempotency_key;

-- name: message_taken
SELECT * FROM messages WHERE run_id = :run_id AND taken_seq = :seq;

-- name: next_message
SELECT * FROM messages
WHERE run_id = :run_id AND topic = :topic AND taken_seq IS NULL
ORDER BY id
LIMIT 1;

-- name: take_message
UPDATE messages SET taken_seq = :seq WHERE id = :id AND taken_seq IS NULL;

-- Cron schedules (schema 7) ---------------------------------------------------------------------

-- name: put_schedule
-- create or replace; a schedule whose expression and zone stay keeps its next tick
INSERT INTO schedules (app, key, task, queue, cron, tz, missed, declared, next_at,
                       created_at, updated_at)
VALUES (:app, :key, :task, :queue, :cron, :tz, :missed, :declared, :next_at, :now, :now)
ON CONFLICT (app, key) DO UPDATE
SET task = excluded.task, queue = excluded.queue, missed = excluded.missed, declared = excluded.declared,
    next_at = CASE WHEN schedules.cron = excluded.cron AND schedules.tz = excluded.tz
                   THEN schedules.next_at ELSE excluded.next_at END,
    cron = excluded.cron, tz = excluded.tz, updated_at = excluded.updated_at
RETURNING *;

-- name: schedule
SELECT * FROM schedules WHERE app = :app AND key = :key;

-- name: list_schedules
SELECT * FROM schedules WHERE (:app IS NULL OR app = :app) ORDER BY app, key;

-- name: pause_schedule
UPDATE schedules
SET paused = :paused, next_at = coalesce(:next_at, next_at), updated_at = :now
WHERE app = :app AND key = :key
RETURNING *;

-- name: delete_schedule
DELETE FROM schedules WHERE app = :app AND key = :key;

-- name: prune_declared
-- schedules once declared in code that the code no longer declares
DELETE FROM schedules
WHERE app = :app AND declared = 1 AND key NOT IN (SELECT value FROM json_each(:keys));

-- name: due_schedules
SELECT * FROM schedules
WHERE app = :app AND paused = 0 AND next_at <= :now
  AND task IN (SELECT value FROM json_each(:tasks))
ORDER BY next_at
LIMIT :limit;

-- name: advance_schedule
-- only if no other worker advanced it since it was read: one run per tick
UPDATE schedules
SET next_at = :next_at, last_tick = coalesce(:tick, last_tick),
    last_run_id = coalesce(:run_id, last_run_id), updated_at = :now
WHERE app = :app AND key = :key AND next_at = :seen;

-- name: next_schedule_at
SELECT min(next_at) AS next_at FROM schedules
WHERE app = :app AND paused = 0 AND task IN (SELECT value FROM json_each(:tasks));

-- Run data: metadata and streams (schema 8) -----------------------------------------------------

-- name: set_metadata
UPDATE runs
SET metadata_codec = :metadata_codec, metadata = :metadata, metadata_blob = :metadata_blob,
    metadata_raw_size = :metadata_raw_size, metadata_stored_size = :metadata_stored_size
WHERE id = :id AND lease = :lease AND worker_id = :worker_id AND status = 'running';

-- name: append_stream
-- the run's next chunk, fenced by its lease; nothing when the run holds :max_chunks already,
-- or holds this chunk already (made at the same place by an execution before: a replay)
INSERT INTO streams (run_id, name, origin, seq, data_codec, data, data_blob, data_raw_size,
                     data_stored_size, created_at)
SELECT :run_id, :name, :origin, coalesce(max(s.seq), 0) + 1, :data_codec, :data,
       :data_blob, :data_raw_size, :data_stored_size, :now
FROM streams s
WHERE s.run_id = :run_id
HAVING count(*) < :max_chunks
   AND EXISTS (SELECT 1 FROM runs r WHERE r.id = :run_id AND r.lease = :lease
               AND r.worker_id = :worker_id AND r.status = 'running')
ON CONFLICT (run_id, origin) DO NOTHING
RETURNING seq;

-- name: stream_chunk_from
SELECT seq FROM streams WHERE run_id = :run_id AND origin = :origin;

-- name: read_stream
SELECT * FROM streams
WHERE run_id = :run_id AND (:name IS NULL OR name = :name) AND seq > :after
ORDER BY seq
LIMIT :limit;

-- name: delete_streams
DELETE FROM streams WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: insert_run_tags
INSERT OR IGNORE INTO run_tags (tag, run_id) SELECT value, :run_id FROM json_each(:tags);

-- name: delete_run_hooks
DELETE FROM run_hooks WHERE run_id IN (SELECT value FROM json_each(:ids));

-- name: delete_run_tags
DELETE FROM run_tags WHERE run_id IN (SELECT value FROM json_each(:ids));

-- API keys (schema 9) ----------------------------------------------------------------------------

-- name: insert_api_key
INSERT INTO api_keys (id, name, scope, hash, created_at)
VALUES (:id, :name, :scope, :hash, :now);

-- name: api_key
SELECT * FROM api_keys WHERE id = :id;

-- name: list_api_keys
SELECT * FROM api_keys ORDER BY created_at, id;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = :now WHERE id = :id AND revoked_at IS NULL;

-- Run statistics (schema 10) -------------------------------------------------------------------

-- name: stats_active
-- each half by the partial index of its statuses (claimable runs, running runs)
SELECT task, status, count(*) AS n FROM runs
WHERE status IN ('queued', 'waiting') AND (:app IS NULL OR app = :app)
  AND (:task IS NULL OR task = :task)
GROUP BY task, status
UNION ALL
SELECT task, status, count(*) AS n FROM runs
WHERE status = 'running' AND (:app IS NULL OR app = :app) AND (:task IS NULL OR task = :task)
GROUP BY task, status;

-- name: stats_ended
-- runs ended since :since by task, status and duration: a histogram whose buckets are 1/:scale
-- of a natural log wide (NULL: the run never started)
SELECT task, status,
       CASE WHEN started_at IS NULL THEN NULL
            ELSE CAST(floor(ln(max(finished_at - started_at, 0.0001)) * :scale) AS INTEGER)
       END AS bucket,
       count(*) AS n
FROM runs
WHERE finished_at IS NOT NULL AND finished_at >= :since AND (:app IS NULL OR app = :app)
  AND (:task IS NULL OR task = :task)
GROUP BY 1, 2, 3;

-- name: stats_throughput
SELECT CAST((finished_at - :since) / :bucket AS INTEGER) AS bucket,
       sum(status = 'completed') AS completed, sum(status = 'failed') AS failed
FROM runs
WHERE finished_at IS NOT NULL AND finished_at >= :since AND (:app IS NULL OR app = :app)
  AND (:task IS NULL OR task = :task)
GROUP BY 1;

-- name: stats_step_sample
-- the steps and failed attempts of the latest :sample runs to end in the window (by the index
-- of ended runs, then the journal's and attempts' keys): one row per step (failed = 0) and one
-- per failed step attempt (failed = 1)
WITH latest AS (
    SELECT id, task, result_stored_size FROM runs
    WHERE finished_at IS NOT NULL AND finished_at >= :since AND (:app IS NULL OR app = :app)
      AND (:task IS NULL OR task = :task)
    ORDER BY finished_at DESC
    LIMIT :sample
)
SELECT l.id AS run_id, l.task, 0 AS failed, j.status, j.finished_at - j.started_at AS duration,
       j.stored_size, l.result_stored_size AS result_size
FROM latest l LEFT JOIN journal j ON j.run_id = l.id AND j.kind = 'step'
UNION ALL
SELECT l.id, l.task, 1, NULL, NULL, 0, 0
FROM latest l JOIN attempts a ON a.run_id = l.id AND a.seq > 0 AND a.error IS NOT NULL;

-- name: stranded_runs
-- runs pinned to a version that no live worker of their app runs, newest first
SELECT id, app, task, queue, status, error, idempotency_key, attempt, lease, worker_id,
       available_at, cancel_requested, note, created_at, started_at, updated_at, finished_at,
       waiting_for, tags, version, replay_of
FROM runs
WHERE status IN ('queued', 'waiting') AND version IS NOT NULL
  AND (:app IS NULL OR app = :app)
  AND (:before IS NULL OR id < :before)
  AND NOT EXISTS (SELECT 1 FROM workers w
                  WHERE w.app = runs.app AND w.status = 'alive' AND w.version = runs.version)
ORDER BY id DESC
LIMIT :limit;

-- name: repin_run
-- a run moved to another version of its code (after a replay check): only while no worker
-- holds it, and only as the check saw it (its lease)
UPDATE runs SET version = :version, note = NULL, updated_at = :now
WHERE id = :id AND lease = :lease AND status IN ('queued', 'waiting');

-- name: mark_hook
-- a lifecycle hook about to run, once per event of a run, and only by the worker that holds it
INSERT INTO run_hooks (run_id, event, key, fired_at)
SELECT :run_id, :event, :key, :now
WHERE EXISTS (SELECT 1 FROM runs WHERE id = :run_id AND lease = :lease
              AND worker_id = :worker_id AND status = 'running')
ON CONFLICT DO NOTHING;

-- name: set_continued_as
-- the run it continues as (with its end, in one transaction)
UPDATE runs SET continued_as = :continued_as WHERE id = :id;
