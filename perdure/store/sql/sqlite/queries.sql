-- Named queries of the SQLite store. The PostgreSQL store has a file with the same names.

-- name: insert_run
INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at)
VALUES (:id, :app, :task, :queue, 'queued', :args_codec, :args, :args_blob, :args_raw_size,
        :args_stored_size, :idempotency_key, :available_at, :now, :now)
ON CONFLICT DO NOTHING;

-- name: run_by_idempotency_key
SELECT id FROM runs
WHERE id = :id
   OR (app = :app AND task = :task AND idempotency_key = :idempotency_key);

-- name: get_run
SELECT * FROM runs WHERE id = :id;

-- name: list_runs
SELECT id, app, task, queue, status, error, idempotency_key, attempt, lease, worker_id,
       available_at, cancel_requested, note, created_at, started_at, updated_at, finished_at
FROM runs
WHERE (:status IS NULL OR status = :status) AND (:task IS NULL OR task = :task)
ORDER BY id DESC
LIMIT :limit;

-- name: claim_runs
UPDATE runs
SET status = 'running', worker_id = :worker_id, lease = lease + 1, note = NULL,
    started_at = coalesce(started_at, :now), updated_at = :now
WHERE id IN (
    SELECT id FROM runs
    WHERE app = :app AND status IN ('queued', 'waiting') AND available_at <= :now
      AND task IN (SELECT value FROM json_each(:tasks))
    ORDER BY available_at, id
    LIMIT :limit
)
RETURNING *;

-- name: next_wake_at
SELECT min(available_at) FROM runs
WHERE app = :app AND status IN ('queued', 'waiting')
  AND task IN (SELECT value FROM json_each(:tasks));

-- name: check_lease
SELECT lease, status FROM runs WHERE id = :id;

-- name: insert_entry
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
VALUES (:run_id, :seq, :kind, :name, :status, :codec, :value, :blob_key, :raw_size,
        :stored_size, :error, :started_at, :finished_at, :run_attempt, :attempt,
        :attempt_started_at);

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

-- name: finish_attempt
UPDATE runs
SET status = :status, available_at = :available_at, worker_id = NULL,
    result_codec = :result_codec, result = :result, result_blob = :result_blob,
    result_raw_size = :result_raw_size, result_stored_size = :result_stored_size,
    error = coalesce(:error, error), attempt = attempt + :bump, cancel_requested = 0,
    updated_at = :now, finished_at = :finished_at
WHERE id = :id AND lease = :lease AND status = 'running';

-- name: drop_failed_entries
DELETE FROM journal
WHERE run_id = :run_id
  AND seq >= (SELECT min(seq) FROM journal WHERE run_id = :run_id AND status = 'failed');

-- name: cancel_idle_run
UPDATE runs
SET status = 'cancelled', worker_id = NULL, available_at = NULL, updated_at = :now,
    finished_at = :now
WHERE id = :id AND status IN ('queued', 'waiting');

-- name: request_cancel
UPDATE runs SET cancel_requested = 1, updated_at = :now WHERE id = :id AND status = 'running';

-- name: cancel_requests
SELECT id, lease FROM runs
WHERE worker_id = :worker_id AND status = 'running' AND cancel_requested = 1;

-- name: register_worker
INSERT INTO workers (id, app, host, host_key, pid, pid_started, tasks, started_at, heartbeat_at,
                     status)
VALUES (:id, :app, :host, :host_key, :pid, :pid_started, :tasks, :started_at, :heartbeat_at,
        'alive')
ON CONFLICT DO NOTHING;

-- name: heartbeat
UPDATE workers SET heartbeat_at = :now WHERE id = :id AND status = 'alive';

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

-- name: note_unclaimable
UPDATE runs SET note = :note
WHERE app = :app AND status IN ('queued', 'waiting') AND available_at <= :now
  AND task NOT IN (SELECT value FROM json_each(:tasks)) AND note IS NOT :note;

-- name: entry_at
SELECT kind, name, status, codec, value, blob_key, error FROM journal
WHERE run_id = :run_id AND seq = :seq;

-- name: release_strays
UPDATE runs
SET status = 'queued', worker_id = NULL, available_at = :now, updated_at = :now,
    note = 'requeued: its worker no longer ran it'
WHERE worker_id = :worker_id AND status = 'running'
  AND id NOT IN (SELECT value FROM json_each(:keep))
RETURNING id;
