-- Named queries of the PostgreSQL store. The SQLite store has a file with the same names.

-- name: insert_run
INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at)
VALUES (%(id)s, %(app)s, %(task)s, %(queue)s, 'queued', %(args_codec)s, %(args)s, %(args_blob)s, %(args_raw_size)s,
        %(args_stored_size)s, %(idempotency_key)s, %(available_at)s, %(now)s, %(now)s)
ON CONFLICT DO NOTHING;

-- name: run_by_idempotency_key
SELECT id FROM runs
WHERE id = %(id)s
   OR (app = %(app)s AND task = %(task)s AND idempotency_key = %(idempotency_key)s);

-- name: get_run
SELECT * FROM runs WHERE id = %(id)s;

-- name: list_runs
SELECT id, app, task, queue, status, error, idempotency_key, attempt, lease, worker_id,
       available_at, cancel_requested, note, created_at, started_at, updated_at, finished_at
FROM runs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: claim_runs
UPDATE runs
SET status = 'running', worker_id = %(worker_id)s, lease = lease + 1, note = NULL,
    started_at = coalesce(started_at, %(now)s), updated_at = %(now)s
WHERE id IN (
    SELECT id FROM runs
    WHERE app = %(app)s AND status IN ('queued', 'waiting') AND available_at <= %(now)s
      AND task = ANY(%(tasks)s)
    ORDER BY available_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
RETURNING *;

-- name: next_wake_at
SELECT min(available_at) FROM runs
WHERE app = %(app)s AND status IN ('queued', 'waiting')
  AND task = ANY(%(tasks)s);

-- name: check_lease
SELECT lease, status FROM runs WHERE id = %(id)s FOR UPDATE;

-- name: insert_entry
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
VALUES (%(run_id)s, %(seq)s, %(kind)s, %(name)s, %(status)s, %(codec)s, %(value)s, %(blob_key)s, %(raw_size)s,
        %(stored_size)s, %(error)s, %(started_at)s, %(finished_at)s, %(run_attempt)s, %(attempt)s,
        %(attempt_started_at)s)
ON CONFLICT (run_id, seq) DO NOTHING
RETURNING seq;

-- name: insert_attempt
INSERT INTO attempts (run_id, run_attempt, seq, attempt, started_at, finished_at, error)
VALUES (%(run_id)s, %(run_attempt)s, %(seq)s, %(attempt)s, %(started_at)s, %(finished_at)s, %(error)s)
ON CONFLICT DO NOTHING;

-- name: load_journal
SELECT * FROM journal WHERE run_id = %(run_id)s ORDER BY seq;

-- name: load_attempts
SELECT run_id, run_attempt, seq, attempt, started_at, finished_at, error
FROM attempts WHERE run_id = %(run_id)s
UNION ALL
SELECT run_id, run_attempt, seq, attempt, attempt_started_at, finished_at, NULL::bytea
FROM journal WHERE run_id = %(run_id)s AND attempt > 0
ORDER BY run_attempt, seq, attempt;

-- name: finish_attempt
UPDATE runs
SET status = %(status)s, available_at = %(available_at)s, worker_id = NULL,
    result_codec = %(result_codec)s, result = %(result)s, result_blob = %(result_blob)s,
    result_raw_size = %(result_raw_size)s, result_stored_size = %(result_stored_size)s,
    error = coalesce(%(error)s, error), attempt = attempt + %(bump)s, cancel_requested = 0,
    updated_at = %(now)s, finished_at = %(finished_at)s
WHERE id = %(id)s AND lease = %(lease)s AND status = 'running';

-- name: drop_failed_entries
DELETE FROM journal
WHERE run_id = %(run_id)s
  AND seq >= (SELECT min(seq) FROM journal WHERE run_id = %(run_id)s AND status = 'failed');

-- name: cancel_idle_run
UPDATE runs
SET status = 'cancelled', worker_id = NULL, available_at = NULL, updated_at = %(now)s,
    finished_at = %(now)s
WHERE id = %(id)s AND status IN ('queued', 'waiting');

-- name: request_cancel
UPDATE runs SET cancel_requested = 1, updated_at = %(now)s WHERE id = %(id)s AND status = 'running';

-- name: cancel_requests
SELECT id, lease FROM runs
WHERE worker_id = %(worker_id)s AND status = 'running' AND cancel_requested = 1;

-- name: register_worker
INSERT INTO workers (id, app, host, host_key, pid, pid_started, tasks, started_at, heartbeat_at,
                     status)
VALUES (%(id)s, %(app)s, %(host)s, %(host_key)s, %(pid)s, %(pid_started)s, %(tasks)s, %(started_at)s, %(heartbeat_at)s,
        'alive')
ON CONFLICT DO NOTHING;

-- name: heartbeat
UPDATE workers SET heartbeat_at = %(now)s WHERE id = %(id)s AND status = 'alive';

-- name: live_workers
SELECT * FROM workers WHERE app = %(app)s AND status = 'alive';

-- name: mark_worker_dead
UPDATE workers SET status = %(status)s WHERE id = %(id)s AND status = 'alive';

-- name: requeue_worker_runs
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN %(now)s::double precision END,
    worker_id = NULL, available_at = %(now)s, updated_at = %(now)s, note = %(note)s
WHERE worker_id = %(worker_id)s AND status = 'running';

-- name: note_unclaimable
UPDATE runs SET note = %(note)s
WHERE app = %(app)s AND status IN ('queued', 'waiting') AND available_at <= %(now)s
  AND task <> ALL(%(tasks)s) AND note IS DISTINCT FROM %(note)s;

-- name: session_locks
SELECT array(
           SELECT objid::bigint FROM pg_locks
           WHERE locktype = 'advisory' AND classid = %(lock_class)s::bigint::oid
             AND objsubid = 2 AND granted
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
       ) AS held,
       extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime;

-- name: entry_at
SELECT kind, name, status, codec, value, blob_key, error FROM journal
WHERE run_id = %(run_id)s AND seq = %(seq)s;

-- name: release_strays
UPDATE runs
SET status = 'queued', worker_id = NULL, available_at = %(now)s, updated_at = %(now)s,
    note = 'requeued: its worker no longer ran it'
WHERE worker_id = %(worker_id)s AND status = 'running' AND id <> ALL(%(keep)s)
RETURNING id;

-- name: append_entry_fenced
-- One journal entry in one statement, fenced by the run's lease (the share lock on the run
-- orders it against a concurrent claim): no rows back means a lost lease or a taken position.
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
SELECT %(run_id)s, %(seq)s, %(kind)s, %(name)s, %(status)s, %(codec)s, %(value)s,
       %(blob_key)s, %(raw_size)s, %(stored_size)s, %(error)s, %(started_at)s,
       %(finished_at)s, %(run_attempt)s, %(attempt)s, %(attempt_started_at)s
FROM runs
WHERE id = %(run_id)s AND lease = %(lease)s AND status = 'running'
FOR SHARE
ON CONFLICT (run_id, seq) DO NOTHING
RETURNING seq;

-- name: insert_run_notify
-- insert_run and its wake-up in one statement (one round trip, autocommit)
WITH inserted AS (
    INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                      args_stored_size, idempotency_key, available_at, created_at, updated_at)
    VALUES (%(id)s, %(app)s, %(task)s, %(queue)s, 'queued', %(args_codec)s, %(args)s,
            %(args_blob)s, %(args_raw_size)s, %(args_stored_size)s, %(idempotency_key)s,
            %(available_at)s, %(now)s, %(now)s)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, pg_notify('perdure', 'claimable') FROM inserted;

-- name: finish_attempt_at_once
-- finish_attempt, its journal entries, its attempts and its wake-ups in one statement (one round
-- trip). It does nothing if the lease is stale or a position is taken; the caller then takes the
-- step-by-step path, which says which.
WITH e AS (
    SELECT * FROM unnest(
        %(e_seq)s::integer[], %(e_kind)s::text[], %(e_name)s::text[], %(e_status)s::text[],
        %(e_codec)s::text[], %(e_value)s::bytea[], %(e_blob_key)s::text[],
        %(e_raw_size)s::bigint[], %(e_stored_size)s::bigint[], %(e_error)s::bytea[],
        %(e_started_at)s::float8[], %(e_finished_at)s::float8[], %(e_run_attempt)s::integer[],
        %(e_attempt)s::integer[], %(e_attempt_started_at)s::float8[]
    ) AS e(seq, kind, name, status, codec, value, blob_key, raw_size, stored_size, error,
           started_at, finished_at, run_attempt, attempt, attempt_started_at)
), a AS (
    SELECT * FROM unnest(
        %(a_run_attempt)s::integer[], %(a_seq)s::integer[], %(a_attempt)s::integer[],
        %(a_started_at)s::float8[], %(a_finished_at)s::float8[], %(a_error)s::bytea[]
    ) AS a(run_attempt, seq, attempt, started_at, finished_at, error)
), fin AS (
    UPDATE runs
    SET status = %(status)s, available_at = %(available_at)s, worker_id = NULL,
        result_codec = %(result_codec)s, result = %(result)s, result_blob = %(result_blob)s,
        result_raw_size = %(result_raw_size)s, result_stored_size = %(result_stored_size)s,
        error = coalesce(%(error)s, error), attempt = attempt + %(bump)s, cancel_requested = 0,
        updated_at = %(now)s, finished_at = %(finished_at)s
    WHERE id = %(id)s AND lease = %(lease)s AND status = 'running'
      AND NOT EXISTS (SELECT 1 FROM journal j JOIN e ON j.seq = e.seq WHERE j.run_id = %(id)s)
    RETURNING id
), entries AS (
    INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                         stored_size, error, started_at, finished_at, run_attempt, attempt,
                         attempt_started_at)
    SELECT %(id)s, e.seq, e.kind, e.name, e.status, e.codec, e.value, e.blob_key, e.raw_size,
           e.stored_size, e.error, e.started_at, e.finished_at, e.run_attempt, e.attempt,
           e.attempt_started_at
    FROM e WHERE EXISTS (SELECT 1 FROM fin)
), attempts_in AS (
    INSERT INTO attempts (run_id, run_attempt, seq, attempt, started_at, finished_at, error)
    SELECT %(id)s, a.run_attempt, a.seq, a.attempt, a.started_at, a.finished_at, a.error
    FROM a WHERE EXISTS (SELECT 1 FROM fin)
    ON CONFLICT DO NOTHING
), woken AS (
    SELECT pg_notify('perdure', t) FROM fin, unnest(%(topics)s::text[]) AS t
)
SELECT (SELECT count(*) FROM fin) AS finished, (SELECT count(*) FROM woken) AS woken;
