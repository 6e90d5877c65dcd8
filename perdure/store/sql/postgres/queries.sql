-- Named queries of the PostgreSQL store. The SQLite store has a file with the same names.

-- name: insert_run
INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at,
                  priority, concurrency_key, expires_at, debounce_key, parent_id, awaited,
                  tags, trace_context, version, replay_of, children_done)
VALUES (%(id)s, %(app)s, %(task)s, %(queue)s, 'queued', %(args_codec)s, %(args)s, %(args_blob)s,
        %(args_raw_size)s, %(args_stored_size)s, %(idempotency_key)s, %(available_at)s, %(now)s,
        %(now)s, %(priority)s, %(concurrency_key)s, %(expires_at)s, %(debounce_key)s,
        %(parent_id)s, %(awaited)s, %(tags)s, %(trace_context)s, %(version)s,
        %(replay_of)s, %(children_done)s)
ON CONFLICT DO NOTHING;

-- name: copy_journal
-- a replay's reused positions: the entries of the run it replays below reuse_before, as they are
-- (values, blob references and sizes; a value is bound to its codec, not to its run)
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
SELECT %(id)s, seq, kind, name, status, codec, value, blob_key, raw_size, stored_size, error,
       started_at, finished_at, 1, attempt, attempt_started_at
FROM journal WHERE run_id = %(replay_of)s AND seq < %(reuse_before)s;

-- name: upsert_debounced_run
-- the burst's pending run takes the latest arguments and start time
INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at,
                  priority, concurrency_key, expires_at, debounce_key, parent_id, awaited,
                  tags, trace_context, version, replay_of, children_done)
VALUES (%(id)s, %(app)s, %(task)s, %(queue)s, 'queued', %(args_codec)s, %(args)s, %(args_blob)s,
        %(args_raw_size)s, %(args_stored_size)s, %(idempotency_key)s, %(available_at)s, %(now)s,
        %(now)s, %(priority)s, %(concurrency_key)s, %(expires_at)s, %(debounce_key)s,
        %(parent_id)s, %(awaited)s, %(tags)s, %(trace_context)s, %(version)s,
        %(replay_of)s, %(children_done)s)
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
WHERE id = %(id)s
   OR (app = %(app)s AND task = %(task)s AND idempotency_key = %(idempotency_key)s);

-- name: get_run
SELECT * FROM runs WHERE id = %(id)s;

-- name: get_runs
SELECT * FROM runs WHERE id = ANY(%(ids)s);

-- name: list_runs
SELECT id, app, task, queue, status, error, idempotency_key, attempt, lease, worker_id,
       available_at, cancel_requested, note, created_at, started_at, updated_at, finished_at,
       waiting_for, tags, version, replay_of
FROM runs
WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
  AND (%(before)s::text IS NULL OR id < %(before)s::text)
  AND (%(since)s::double precision IS NULL OR created_at >= %(since)s::double precision)
  AND (%(until)s::double precision IS NULL OR created_at < %(until)s::double precision)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: list_runs_tagged
-- list_runs of one tag: newest first from the tag's own index
SELECT r.id, r.app, r.task, r.queue, r.status, r.error, r.idempotency_key, r.attempt, r.lease,
       r.worker_id, r.available_at, r.cancel_requested, r.note, r.created_at, r.started_at,
       r.updated_at, r.finished_at, r.waiting_for, r.tags, r.version, r.replay_of
FROM run_tags AS t JOIN runs AS r ON r.id = t.run_id
WHERE t.tag = %(tag)s::text
  AND (%(before)s::text IS NULL OR t.run_id < %(before)s::text)
  AND (%(status)s::text IS NULL OR r.status = %(status)s::text)
  AND (%(task)s::text IS NULL OR r.task = %(task)s::text)
  AND (%(since)s::double precision IS NULL OR r.created_at >= %(since)s::double precision)
  AND (%(until)s::double precision IS NULL OR r.created_at < %(until)s::double precision)
ORDER BY t.run_id DESC
LIMIT %(limit)s;

-- name: claim_runs
-- no limit applies: the first claimable runs, higher priority first
UPDATE runs
SET status = 'running', worker_id = %(worker_id)s, lease = lease + 1,
    version = coalesce(version, %(version)s),  -- pinned to the code that first runs it
    note = CASE WHEN substr(note, 1, 9) = 'requeued:' THEN note END,  -- (kept: why it runs again)
    started_at = coalesce(started_at, %(now)s), updated_at = %(now)s
WHERE id IN (
    SELECT id FROM runs
    WHERE app = %(app)s AND status IN ('queued', 'waiting') AND available_at <= %(now)s
      AND task = ANY(%(tasks)s)
      AND (version IS NULL OR version = %(version)s)  -- runs of its own version
    ORDER BY priority DESC, available_at, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
  AND EXISTS (SELECT 1 FROM workers  -- a worker declared dead claims nothing
              WHERE id = %(worker_id)s AND status = 'alive')
RETURNING *;

-- name: claim_lock
-- limits apply: one claim at a time per app, so no two claims both take a limit's last slot
SELECT pg_advisory_xact_lock(%(lock_class)s, hashtext(%(app)s));

-- name: claim_candidates
-- candidates for admission; each queue and concurrency key in turn, higher priority first
-- within one
SELECT id, task, queue, concurrency_key, started_at, turn FROM (
    SELECT id, task, queue, concurrency_key, started_at, priority, available_at,
           row_number() OVER (PARTITION BY queue, concurrency_key
                              ORDER BY priority DESC, available_at, id) AS turn
    FROM runs
    WHERE app = %(app)s AND status IN ('queued', 'waiting') AND available_at <= %(now)s
      AND task = ANY(%(tasks)s)
      AND (version IS NULL OR version = %(version)s)  -- runs of its own version
) c
ORDER BY turn, priority DESC, available_at, id
LIMIT %(scan)s;

-- name: running_runs
SELECT id, task, queue, concurrency_key FROM runs WHERE app = %(app)s AND status = 'running';

-- name: recent_starts
SELECT queue, concurrency_key, started_at FROM runs
WHERE app = %(app)s AND started_at > %(since)s;

-- name: claim_ids
UPDATE runs
SET status = 'running', worker_id = %(worker_id)s, lease = lease + 1,
    version = coalesce(version, %(version)s),  -- pinned to the code that first runs it
    note = CASE WHEN substr(note, 1, 9) = 'requeued:' THEN note END,  -- (kept: why it runs again)
    started_at = coalesce(started_at, %(now)s), updated_at = %(now)s
WHERE id = ANY(%(ids)s) AND status IN ('queued', 'waiting')
  AND (version IS NULL OR version = %(version)s)
  AND EXISTS (SELECT 1 FROM workers  -- a worker declared dead claims nothing
              WHERE id = %(worker_id)s AND status = 'alive')
RETURNING *;

-- name: cancel_queued_ids
UPDATE runs
SET status = 'cancelled', worker_id = NULL, available_at = NULL, updated_at = %(now)s,
    finished_at = %(now)s, note = %(note)s
WHERE id = ANY(%(ids)s) AND status IN ('queued', 'waiting');

-- name: request_cancel_ids
UPDATE runs SET cancel_requested = 1, updated_at = %(now)s
WHERE id = ANY(%(ids)s) AND status = 'running';

-- name: expire_runs
UPDATE runs
SET status = 'expired', worker_id = NULL, available_at = NULL, updated_at = %(now)s,
    finished_at = %(now)s, note = 'expired: not started within its ttl'
WHERE (%(app)s::text IS NULL OR app = %(app)s::text) AND expires_at <= %(now)s
  AND started_at IS NULL AND status = 'queued';

-- name: runs_lack_statistics
-- the runs table was never analyzed and holds at least :enough runs: until autovacuum's first
-- ANALYZE (up to a minute after the table filled) the planner guesses, and a guess can read
-- and sort every due run on each claim instead of walking the claim order (docs/performance.md)
SELECT (SELECT reltuples < 0 FROM pg_class WHERE oid = 'runs'::regclass)
   AND (SELECT count(*) FROM (SELECT 1 FROM runs LIMIT %(enough)s) AS counted) >= %(enough)s
       AS lacking;

-- name: analyze_runs
ANALYZE runs;

-- name: app_queues
SELECT * FROM queues WHERE app = %(app)s;

-- name: declare_queue
INSERT INTO queues (app, name, concurrency, key_concurrency, rate_limit, rate_period,
                    rate_by_key, strategy, paused, updated_at)
VALUES (%(app)s, %(name)s, %(concurrency)s, %(key_concurrency)s, %(rate_limit)s,
        %(rate_period)s, %(rate_by_key)s, %(strategy)s, 0, %(now)s)
ON CONFLICT (app, name) DO UPDATE
SET concurrency = CASE WHEN queues.overridden = 1 THEN queues.concurrency
                       ELSE excluded.concurrency END,
    key_concurrency = excluded.key_concurrency, rate_limit = excluded.rate_limit,
    rate_period = excluded.rate_period, rate_by_key = excluded.rate_by_key,
    strategy = excluded.strategy, updated_at = excluded.updated_at;

-- name: set_queue
INSERT INTO queues (app, name, concurrency, paused, overridden, updated_at)
VALUES (%(app)s, %(name)s, %(concurrency)s, coalesce(%(paused)s::integer, 0), %(set_limit)s,
        %(now)s)
ON CONFLICT (app, name) DO UPDATE
SET concurrency = CASE WHEN %(set_limit)s = 1 THEN excluded.concurrency
                       ELSE queues.concurrency END,
    overridden = greatest(queues.overridden, %(set_limit)s),
    paused = coalesce(%(paused)s::integer, queues.paused),
    updated_at = excluded.updated_at
RETURNING *;

-- name: queue_stats
WITH names AS (
    SELECT app, name FROM queues WHERE %(app)s::text IS NULL OR app = %(app)s::text
    UNION
    SELECT DISTINCT app, queue FROM runs
    WHERE (%(app)s::text IS NULL OR app = %(app)s::text)
      AND status IN ('queued', 'waiting', 'running')
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
          AND r.available_at <= %(now)s) AS oldest_waiting_at
FROM names n LEFT JOIN queues q ON q.app = n.app AND q.name = n.name
ORDER BY n.app, n.name;

-- name: next_wake_at
SELECT min(available_at) AS wake_at FROM runs
WHERE app = %(app)s AND status IN ('queued', 'waiting')
  AND task = ANY(%(tasks)s)
  AND (version IS NULL OR version = %(version)s);

-- name: check_lease
SELECT lease, worker_id, status, cancel_requested FROM runs WHERE id = %(id)s FOR UPDATE;

-- name: insert_entry
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
VALUES (%(run_id)s, %(seq)s, %(kind)s, %(name)s, %(status)s, %(codec)s, %(value)s, %(blob_key)s, %(raw_size)s,
        %(stored_size)s, %(error)s, %(started_at)s, %(finished_at)s, %(run_attempt)s, %(attempt)s,
        %(attempt_started_at)s)
ON CONFLICT (run_id, seq) DO NOTHING;

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

-- name: histories
-- the journals of runs just claimed, read with the claim
SELECT * FROM journal WHERE run_id = ANY(%(ids)s) ORDER BY run_id, seq;

-- name: histories_attempts
SELECT run_id, run_attempt, seq, attempt, started_at, finished_at, error
FROM attempts WHERE run_id = ANY(%(ids)s)
UNION ALL
SELECT run_id, run_attempt, seq, attempt, attempt_started_at, finished_at, NULL::bytea
FROM journal WHERE run_id = ANY(%(ids)s) AND attempt > 0
ORDER BY run_id, run_attempt, seq, attempt;

-- name: finish_attempt
UPDATE runs
SET status = %(status)s, worker_id = NULL,
    available_at = CASE
        WHEN signals > %(signals)s::bigint THEN %(now)s  -- a signal came while it ran
        WHEN %(children_target)s::integer IS NULL THEN %(available_at)s::double precision
        WHEN children_done >= %(children_target)s::integer THEN %(now)s
        END,
    children_target = %(children_target)s::integer, waiting_for = %(waiting_for)s::text,
    result_codec = %(result_codec)s, result = %(result)s, result_blob = %(result_blob)s,
    result_raw_size = %(result_raw_size)s, result_stored_size = %(result_stored_size)s,
    error = coalesce(%(error)s, error), attempt = attempt + %(bump)s, cancel_requested = 0,
    updated_at = %(now)s, finished_at = %(finished_at)s, note = %(note)s
WHERE id = %(id)s AND lease = %(lease)s AND worker_id = %(worker_id)s
  AND status = 'running'
  AND (cancel_requested = 0 OR %(status)s = 'cancelled');  -- a cancel is never overwritten

-- name: drop_failed_entries
DELETE FROM journal
WHERE run_id = %(run_id)s
  AND seq >= (SELECT min(seq) FROM journal WHERE run_id = %(run_id)s AND status = 'failed');

-- name: lock_tree
-- the run and its descendants, locked first: a change committing meanwhile (a suspension,
-- a finish) is waited for and then seen by the two updates below
WITH RECURSIVE tree(id) AS (
    SELECT %(id)s::text UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id
)
SELECT id FROM runs WHERE id IN (SELECT id FROM tree) ORDER BY id FOR UPDATE;

-- name: cancel_idle_tree
-- the run and its descendants that are not running end at once
WITH RECURSIVE tree(id) AS (
    SELECT %(id)s::text UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id
)
UPDATE runs
SET status = 'cancelled', worker_id = NULL, available_at = NULL, updated_at = %(now)s,
    finished_at = %(now)s
WHERE id IN (SELECT id FROM tree)
  AND (status IN ('queued', 'waiting')
       OR status = 'running' AND NOT EXISTS (  -- no live worker to stop it
           SELECT 1 FROM workers w WHERE w.id = runs.worker_id AND w.status = 'alive'));

-- name: request_cancel_tree
-- the running ones are asked to stop
WITH RECURSIVE tree(id) AS (
    SELECT %(id)s::text UNION SELECT r.id FROM runs r JOIN tree t ON r.parent_id = t.id
)
UPDATE runs SET cancel_requested = 1, updated_at = %(now)s
WHERE id IN (SELECT id FROM tree) AND status = 'running';

-- name: cancel_requests
SELECT id, lease FROM runs
WHERE worker_id = %(worker_id)s AND status = 'running' AND cancel_requested = 1;

-- name: register_worker
INSERT INTO workers (id, app, host, host_key, pid, pid_started, tasks, started_at, heartbeat_at,
                     status, version)
VALUES (%(id)s, %(app)s, %(host)s, %(host_key)s, %(pid)s, %(pid_started)s, %(tasks)s, %(started_at)s, %(heartbeat_at)s,
        'alive', %(version)s)
ON CONFLICT DO NOTHING;

-- name: heartbeat
-- on the server's clock, which it returns (the worker keeps its estimate of it up to date)
UPDATE workers SET heartbeat_at = extract(epoch FROM clock_timestamp())
WHERE id = %(id)s AND status = 'alive'
RETURNING heartbeat_at AS server_now;

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

-- name: requeue_orphans
-- running runs whose worker is not alive (declared dead, stopped, or never registered): a claim
-- that committed while its worker was being declared dead, a release lost with its connection
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN %(now)s::double precision END,
    worker_id = NULL, available_at = %(now)s, updated_at = %(now)s,
    note = 'requeued: its worker ' || coalesce(worker_id, '?') || ' is no longer alive'
WHERE status = 'running' AND NOT EXISTS (
    SELECT 1 FROM workers w WHERE w.id = runs.worker_id AND w.status = 'alive');

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
       extract(epoch FROM now() - pg_postmaster_start_time())::float8 AS uptime,
       extract(epoch FROM clock_timestamp())::float8 AS server_now;

-- name: clock
SELECT extract(epoch FROM clock_timestamp())::float8 AS server_now;

-- name: entry_at
SELECT kind, name, status, codec, value, blob_key, error FROM journal
WHERE run_id = %(run_id)s AND seq = %(seq)s;

-- name: release_strays
-- (a run asked to cancel ends cancelled: released, it would run again)
UPDATE runs
SET status = CASE WHEN cancel_requested = 1 THEN 'cancelled' ELSE 'queued' END,
    finished_at = CASE WHEN cancel_requested = 1 THEN %(now)s::double precision END,
    worker_id = NULL, available_at = %(now)s, updated_at = %(now)s,
    note = 'requeued: its worker no longer ran it'
WHERE worker_id = %(worker_id)s AND status = 'running' AND id <> ALL(%(keep)s)
RETURNING id;

-- name: append_entry_fenced
-- One journal entry in one statement, fenced by the run's lease (the share lock on the run
-- orders it against a concurrent claim): a row count of 0 means a lost lease or a taken
-- position.
INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                     stored_size, error, started_at, finished_at, run_attempt, attempt,
                     attempt_started_at)
SELECT %(run_id)s, %(seq)s, %(kind)s, %(name)s, %(status)s, %(codec)s, %(value)s,
       %(blob_key)s, %(raw_size)s, %(stored_size)s, %(error)s, %(started_at)s,
       %(finished_at)s, %(run_attempt)s, %(attempt)s, %(attempt_started_at)s
FROM runs
WHERE id = %(run_id)s AND lease = %(lease)s AND worker_id = %(worker_id)s
  AND status = 'running'
FOR SHARE
ON CONFLICT (run_id, seq) DO NOTHING;

-- name: insert_run_notify
-- insert_run and its wake-up in one statement (one round trip, autocommit)
WITH inserted AS (
    INSERT INTO runs (id, app, task, queue, status, args_codec, args, args_blob, args_raw_size,
                  args_stored_size, idempotency_key, available_at, created_at, updated_at,
                  priority, concurrency_key, expires_at, debounce_key, parent_id, awaited,
                  tags, trace_context, version, replay_of, children_done)
    VALUES (%(id)s, %(app)s, %(task)s, %(queue)s, 'queued', %(args_codec)s, %(args)s, %(args_blob)s,
        %(args_raw_size)s, %(args_stored_size)s, %(idempotency_key)s, %(available_at)s, %(now)s,
        %(now)s, %(priority)s, %(concurrency_key)s, %(expires_at)s, %(debounce_key)s,
        %(parent_id)s, %(awaited)s, %(tags)s, %(trace_context)s, %(version)s,
        %(replay_of)s, %(children_done)s)
    ON CONFLICT DO NOTHING
    RETURNING id
)
SELECT id, pg_notify('perdure', 'claimable') FROM inserted;

-- name: finish_attempt_at_once
-- finish_attempt, its journal entries, its attempts and its wake-ups in one statement (one round
-- trip). It does nothing if the lease is stale or a position is taken; the caller then takes the
-- step-by-step path, which says which. The entries and attempts come as rows of parameters
-- (no row, one row of scalars, or one array per column): see postgres.finish_statement.
WITH e AS (
    /* entries */
), a AS (
    /* attempts */
), fin AS (
    UPDATE runs
    SET status = %(status)s, worker_id = NULL,
        available_at = CASE
            WHEN signals > %(signals)s::bigint THEN %(now)s  -- a signal came while it ran
            WHEN %(children_target)s::integer IS NULL THEN %(available_at)s::double precision
            WHEN children_done >= %(children_target)s::integer THEN %(now)s
            END,
        children_target = %(children_target)s::integer, waiting_for = %(waiting_for)s::text,
        result_codec = %(result_codec)s, result = %(result)s, result_blob = %(result_blob)s,
        result_raw_size = %(result_raw_size)s, result_stored_size = %(result_stored_size)s,
        error = coalesce(%(error)s, error), attempt = attempt + %(bump)s, cancel_requested = 0,
        updated_at = %(now)s, finished_at = %(finished_at)s, note = %(note)s
    WHERE id = %(id)s AND lease = %(lease)s AND worker_id = %(worker_id)s
      AND status = 'running' AND (cancel_requested = 0 OR %(status)s = 'cancelled')
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

-- name: finish_many
-- the completions of several runs (each as in finish_attempt_at_once) in one statement: a run
-- whose lease is stale or one of whose entries' positions is taken is left out (the returned
-- ids are those finished), and the caller takes the step-by-step path for it
WITH f AS (
    SELECT * FROM unnest(
        %(f_id)s::text[], %(f_lease)s::bigint[], %(f_worker_id)s::text[], %(f_status)s::text[],
        %(f_available_at)s::float8[], %(f_children_target)s::integer[],
        %(f_result_codec)s::text[], %(f_result)s::bytea[], %(f_result_blob)s::text[],
        %(f_result_raw_size)s::bigint[], %(f_result_stored_size)s::bigint[],
        %(f_error)s::bytea[], %(f_bump)s::integer[], %(f_now)s::float8[],
        %(f_finished_at)s::float8[], %(f_note)s::text[], %(f_waiting_for)s::text[],
        %(f_signals)s::bigint[]
    ) AS f(id, lease, worker_id, status, available_at, children_target, result_codec, result,
           result_blob, result_raw_size, result_stored_size, error, bump, now, finished_at,
           note, waiting_for, signals)
), e AS (
    /* entries */
), a AS (
    /* attempts */
), fin AS (
    UPDATE runs r
    SET status = f.status, worker_id = NULL,
        available_at = CASE
            WHEN r.signals > f.signals THEN f.now  -- a signal came while it ran
            WHEN f.children_target IS NULL THEN f.available_at
            WHEN r.children_done >= f.children_target THEN f.now
            END,
        children_target = f.children_target, waiting_for = f.waiting_for,
        result_codec = f.result_codec, result = f.result, result_blob = f.result_blob,
        result_raw_size = f.result_raw_size, result_stored_size = f.result_stored_size,
        error = coalesce(f.error, r.error), attempt = r.attempt + f.bump, cancel_requested = 0,
        updated_at = f.now, finished_at = f.finished_at, note = f.note
    FROM f
    WHERE r.id = f.id AND r.lease = f.lease AND r.worker_id = f.worker_id
      AND r.status = 'running' AND (r.cancel_requested = 0 OR f.status = 'cancelled')
      AND NOT EXISTS (
          SELECT 1 FROM e JOIN journal j ON j.run_id = e.run_id AND j.seq = e.seq
          WHERE e.run_id = f.id)
    RETURNING r.id
), entries AS (
    INSERT INTO journal (run_id, seq, kind, name, status, codec, value, blob_key, raw_size,
                         stored_size, error, started_at, finished_at, run_attempt, attempt,
                         attempt_started_at)
    SELECT e.run_id, e.seq, e.kind, e.name, e.status, e.codec, e.value, e.blob_key, e.raw_size,
           e.stored_size, e.error, e.started_at, e.finished_at, e.run_attempt, e.attempt,
           e.attempt_started_at
    FROM e WHERE e.run_id IN (SELECT id FROM fin)
), attempts_in AS (
    INSERT INTO attempts (run_id, run_attempt, seq, attempt, started_at, finished_at, error)
    SELECT a.run_id, a.run_attempt, a.seq, a.attempt, a.started_at, a.finished_at, a.error
    FROM a WHERE a.run_id IN (SELECT id FROM fin)
    ON CONFLICT DO NOTHING
), woken AS (
    SELECT pg_notify('perdure', t.topic)
    FROM unnest(%(t_run)s::text[], %(t_topic)s::text[]) AS t(run_id, topic)
    WHERE t.run_id IN (SELECT id FROM fin)
)
SELECT id, (SELECT count(*) FROM woken) AS woken FROM fin;

-- name: purgeable_runs
-- ended before the cutoff; never a child whose parent still waits for it
SELECT id FROM runs
WHERE finished_at < %(before)s AND status = ANY(%(statuses)s)
  AND (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (parent_id IS NULL OR NOT EXISTS (
      SELECT 1 FROM runs p WHERE p.id = runs.parent_id
        AND p.status NOT IN ('completed', 'failed', 'cancelled', 'expired')))
ORDER BY finished_at
LIMIT %(limit)s;

-- name: delete_journals
DELETE FROM journal WHERE run_id = ANY(%(ids)s);

-- name: delete_attempts
DELETE FROM attempts WHERE run_id = ANY(%(ids)s);

-- name: delete_tokens
DELETE FROM tokens WHERE run_id = ANY(%(ids)s);

-- name: delete_messages
DELETE FROM messages WHERE run_id = ANY(%(ids)s);

-- name: delete_waits
DELETE FROM waits WHERE run_id = ANY(%(ids)s);

-- name: delete_events
-- events sent before the cutoff, but none that ended a wait of a run still kept
DELETE FROM events
WHERE id IN (SELECT id FROM events
             WHERE created_at < %(before)s AND (%(app)s::text IS NULL OR app = %(app)s::text)
               AND id NOT IN (SELECT event_id FROM waits WHERE event_id IS NOT NULL)
             LIMIT %(limit)s);

-- name: delete_runs
DELETE FROM runs WHERE id = ANY(%(ids)s);

-- name: referenced_blobs
SELECT blob_key AS key FROM journal WHERE blob_key = ANY(%(keys)s)
UNION
SELECT args_blob FROM runs WHERE args_blob = ANY(%(keys)s)
UNION
SELECT result_blob FROM runs WHERE result_blob = ANY(%(keys)s)
UNION
SELECT data_blob FROM tokens WHERE data_blob = ANY(%(keys)s)
UNION
SELECT data_blob FROM messages WHERE data_blob = ANY(%(keys)s)
UNION
SELECT payload_blob FROM events WHERE payload_blob = ANY(%(keys)s)
UNION
SELECT match_blob FROM waits WHERE match_blob = ANY(%(keys)s)
UNION
SELECT metadata_blob FROM runs WHERE metadata_blob = ANY(%(keys)s);

-- name: run_ids_after
SELECT id FROM runs WHERE id > %(after)s ORDER BY id LIMIT %(limit)s;

-- name: inline_values_of
-- encryption rotation: the inline values of these runs (blobs are rotated in the blob store)
SELECT 'args' AS col, id, 0 AS seq, args_codec AS codec, args AS value
FROM runs WHERE id IN (SELECT unnest(%(ids)s::text[])) AND args IS NOT NULL
UNION ALL
SELECT 'result', id, 0, result_codec, result
FROM runs WHERE id IN (SELECT unnest(%(ids)s::text[])) AND result IS NOT NULL
UNION ALL
SELECT 'journal', run_id, seq, codec, value
FROM journal WHERE run_id IN (SELECT unnest(%(ids)s::text[])) AND value IS NOT NULL
UNION ALL
SELECT 'token', id, 0, data_codec, data
FROM tokens WHERE run_id IN (SELECT unnest(%(ids)s::text[])) AND data IS NOT NULL
UNION ALL
SELECT 'message', id, 0, data_codec, data
FROM messages WHERE run_id IN (SELECT unnest(%(ids)s::text[])) AND data IS NOT NULL
UNION ALL
SELECT 'wait_match', run_id, seq, match_codec, match
FROM waits WHERE run_id IN (SELECT unnest(%(ids)s::text[])) AND match IS NOT NULL
UNION ALL
SELECT 'metadata', id, 0, metadata_codec, metadata
FROM runs WHERE id IN (SELECT unnest(%(ids)s::text[])) AND metadata IS NOT NULL
UNION ALL
SELECT 'stream', run_id, seq, data_codec, data
FROM streams WHERE run_id IN (SELECT unnest(%(ids)s::text[])) AND data IS NOT NULL
UNION ALL
-- what belongs to no run (tokens made outside runs, events), in the same range of ids (ids
-- sort by time): after the last walk's end, up to this walk's last run (to the end if none)
SELECT 'token', id, 0, data_codec, data
FROM tokens
WHERE run_id IS NULL AND id > %(after)s AND (%(last)s::text IS NULL OR id <= %(last)s)
  AND data IS NOT NULL
UNION ALL
SELECT 'event', id, 0, payload_codec, payload
FROM events
WHERE id > %(after)s AND (%(last)s::text IS NULL OR id <= %(last)s) AND payload IS NOT NULL;

-- name: rewrite_args
UPDATE runs SET args_codec = %(codec)s, args = %(value)s
WHERE id = %(id)s AND args_codec = %(old_codec)s AND args = %(old_value)s;

-- name: rewrite_result
UPDATE runs SET result_codec = %(codec)s, result = %(value)s
WHERE id = %(id)s AND result_codec = %(old_codec)s AND result = %(old_value)s;

-- name: rewrite_token
UPDATE tokens SET data_codec = %(codec)s, data = %(value)s
WHERE id = %(id)s AND data_codec = %(old_codec)s AND data = %(old_value)s;

-- name: rewrite_message
UPDATE messages SET data_codec = %(codec)s, data = %(value)s
WHERE id = %(id)s AND data_codec = %(old_codec)s AND data = %(old_value)s;

-- name: rewrite_event
UPDATE events SET payload_codec = %(codec)s, payload = %(value)s
WHERE id = %(id)s AND payload_codec = %(old_codec)s AND payload = %(old_value)s;

-- name: rewrite_wait_match
UPDATE waits SET match_codec = %(codec)s, match = %(value)s
WHERE run_id = %(id)s AND seq = %(seq)s AND match_codec = %(old_codec)s
  AND match = %(old_value)s;

-- name: rewrite_metadata
UPDATE runs SET metadata_codec = %(codec)s, metadata = %(value)s
WHERE id = %(id)s AND metadata_codec = %(old_codec)s AND metadata = %(old_value)s;

-- name: rewrite_stream
UPDATE streams SET data_codec = %(codec)s, data = %(value)s
WHERE run_id = %(id)s AND seq = %(seq)s AND data_codec = %(old_codec)s AND data = %(old_value)s;

-- name: rewrite_journal
UPDATE journal SET codec = %(codec)s, value = %(value)s
WHERE run_id = %(id)s AND seq = %(seq)s AND codec = %(old_codec)s AND value = %(old_value)s;

-- Waits on the outside world: tokens, events, mailboxes (schema 6) ---------------------------

-- name: lock_signal
-- waits for this key and signals of it one at a time: a wait registering and an event sent
-- at once would otherwise each miss the other (neither sees the other's uncommitted row)
SELECT pg_advisory_xact_lock(%(lock_class)s, hashtext(%(key)s));

-- name: insert_token
INSERT INTO tokens (id, app, run_id, name, status, tags, idempotency_key, created_at,
                    expires_at)
VALUES (%(id)s, %(app)s, %(run_id)s, %(name)s, 'waiting', %(tags)s, %(idempotency_key)s, %(now)s, %(expires_at)s)
ON CONFLICT DO NOTHING;

-- name: token_like
-- the token a create with these parameters made (itself, or the first with its key or name)
SELECT * FROM tokens
WHERE id = %(id)s
   OR (app = %(app)s AND idempotency_key = %(idempotency_key)s)
   OR (run_id = %(run_id)s AND name = %(name)s)
ORDER BY (id = %(id)s) DESC
LIMIT 1;

-- name: token
SELECT * FROM tokens WHERE id = %(id)s;

-- name: token_held
-- the token, read for a wait: a completion committing meanwhile is waited for, then seen
SELECT * FROM tokens WHERE id = %(id)s FOR SHARE;

-- name: named_token
SELECT * FROM tokens WHERE run_id = %(run_id)s AND name = %(name)s;

-- name: complete_token
UPDATE tokens
SET status = 'completed', data_codec = %(data_codec)s, data = %(data)s, data_blob = %(data_blob)s,
    data_raw_size = %(data_raw_size)s, data_stored_size = %(data_stored_size)s, completed_at = %(now)s
WHERE id = %(id)s AND status = 'waiting' AND (expires_at IS NULL OR expires_at > %(now)s)
RETURNING *;

-- name: insert_completed_token
-- a named token completed before its run made it: the run finds it completed
INSERT INTO tokens (id, app, run_id, name, status, data_codec, data, data_blob, data_raw_size,
                    data_stored_size, tags, created_at, completed_at)
VALUES (%(id)s, %(app)s, %(run_id)s, %(name)s, 'completed', %(data_codec)s, %(data)s, %(data_blob)s,
        %(data_raw_size)s, %(data_stored_size)s, '[]', %(now)s, %(now)s)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: time_out_token
UPDATE tokens SET status = 'timed_out'
WHERE id = %(id)s AND status = 'waiting' AND expires_at <= %(now)s;

-- name: list_tokens
SELECT id, app, run_id, name, status, data_codec, data_blob, data_raw_size, data_stored_size,
       tags, idempotency_key, created_at, expires_at, completed_at
FROM tokens
WHERE (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(run_id)s::text IS NULL OR run_id = %(run_id)s::text)
  AND (%(status)s::text IS NULL
       OR CASE WHEN status = 'waiting' AND expires_at <= %(now)s THEN 'timed_out'
               ELSE status END = %(status)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: insert_wait
INSERT INTO waits (run_id, seq, app, kind, key, match_codec, match, match_blob, match_raw_size,
                   match_stored_size, since, deadline, created_at)
VALUES (%(run_id)s, %(seq)s, %(app)s, %(kind)s, %(key)s, %(match_codec)s, %(match)s, %(match_blob)s, %(match_raw_size)s,
        %(match_stored_size)s, %(since)s, %(deadline)s, %(now)s)
ON CONFLICT DO NOTHING;

-- name: wait_at
SELECT * FROM waits WHERE run_id = %(run_id)s AND seq = %(seq)s;

-- name: run_waits
SELECT * FROM waits WHERE run_id = %(run_id)s ORDER BY seq;

-- name: waiters
-- the runs not ended that registered a wait for this key, not yet over
SELECT w.* FROM waits w JOIN runs r ON r.id = w.run_id
WHERE w.app = %(app)s AND w.kind = %(kind)s AND w.key = %(key)s AND w.event_id IS NULL
  AND r.status IN ('queued', 'running', 'waiting');

-- name: signal_runs
-- a signal for these runs: counted on each (a run suspending compares), and a run waiting for
-- this key is claimable at once
UPDATE runs
SET signals = signals + 1,
    available_at = CASE WHEN status = 'waiting' AND waiting_for = %(waiting_for)s::text
                        THEN %(now)s ELSE available_at END
WHERE id = ANY(%(ids)s);

-- name: insert_event
INSERT INTO events (id, app, name, payload_codec, payload, payload_blob, payload_raw_size,
                    payload_stored_size, idempotency_key, created_at)
VALUES (%(id)s, %(app)s, %(name)s, %(payload_codec)s, %(payload)s, %(payload_blob)s, %(payload_raw_size)s,
        %(payload_stored_size)s, %(idempotency_key)s, %(now)s)
ON CONFLICT DO NOTHING;

-- name: event_by_idempotency_key
SELECT id FROM events WHERE app = %(app)s AND name = %(name)s AND idempotency_key = %(idempotency_key)s;

-- name: event
SELECT * FROM events WHERE id = %(id)s;

-- name: events_since
SELECT * FROM events
WHERE app = %(app)s AND name = %(name)s AND created_at >= %(since)s
ORDER BY created_at, id
LIMIT %(limit)s;

-- name: list_events
SELECT id, app, name, payload_codec, payload_blob, payload_raw_size, payload_stored_size,
       idempotency_key, created_at
FROM events
WHERE (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(name)s::text IS NULL OR name = %(name)s::text)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: events_taken
SELECT event_id FROM waits WHERE run_id = %(run_id)s AND event_id IS NOT NULL;

-- name: resolve_wait
UPDATE waits SET event_id = %(event_id)s
WHERE run_id = %(run_id)s AND seq = %(seq)s AND event_id IS NULL;

-- name: run_for_message
SELECT app, status FROM runs WHERE id = %(run_id)s;

-- name: insert_message
INSERT INTO messages (id, app, run_id, topic, data_codec, data, data_blob, data_raw_size,
                      data_stored_size, idempotency_key, created_at)
VALUES (%(id)s, %(app)s, %(run_id)s, %(topic)s, %(data_codec)s, %(data)s, %(data_blob)s, %(data_raw_size)s,
        %(data_stored_size)s, %(idempotency_key)s, %(now)s)
ON CONFLICT DO NOTHING;

-- name: message_by_idempotency_key
SELECT id FROM messages WHERE run_id = %(run_id)s AND idempotency_key = %(idempotency_key)s;

-- name: message_taken
SELECT * FROM messages WHERE run_id = %(run_id)s AND taken_seq = %(seq)s;

-- name: next_message
SELECT * FROM messages
WHERE run_id = %(run_id)s AND topic = %(topic)s AND taken_seq IS NULL
ORDER BY id
LIMIT 1;

-- name: take_message
UPDATE messages SET taken_seq = %(seq)s WHERE id = %(id)s AND taken_seq IS NULL;

-- Cron schedules (schema 7) ---------------------------------------------------------------------

-- name: put_schedule
-- create or replace; a schedule whose expression and zone stay keeps its next tick
INSERT INTO schedules (app, key, task, queue, cron, tz, missed, declared, next_at,
                       created_at, updated_at)
VALUES (%(app)s, %(key)s, %(task)s, %(queue)s, %(cron)s, %(tz)s, %(missed)s, %(declared)s,
        %(next_at)s, %(now)s, %(now)s)
ON CONFLICT (app, key) DO UPDATE
SET task = excluded.task, queue = excluded.queue, missed = excluded.missed, declared = excluded.declared,
    next_at = CASE WHEN schedules.cron = excluded.cron AND schedules.tz = excluded.tz
                   THEN schedules.next_at ELSE excluded.next_at END,
    cron = excluded.cron, tz = excluded.tz, updated_at = excluded.updated_at
RETURNING *;

-- name: schedule
SELECT * FROM schedules WHERE app = %(app)s AND key = %(key)s;

-- name: list_schedules
SELECT * FROM schedules WHERE (%(app)s::text IS NULL OR app = %(app)s::text) ORDER BY app, key;

-- name: pause_schedule
UPDATE schedules
SET paused = %(paused)s, next_at = coalesce(%(next_at)s::double precision, next_at),
    updated_at = %(now)s
WHERE app = %(app)s AND key = %(key)s
RETURNING *;

-- name: delete_schedule
DELETE FROM schedules WHERE app = %(app)s AND key = %(key)s;

-- name: prune_declared
-- schedules once declared in code that the code no longer declares
DELETE FROM schedules
WHERE app = %(app)s AND declared = 1 AND NOT (key = ANY(%(keys)s));

-- name: due_schedules
SELECT * FROM schedules
WHERE app = %(app)s AND paused = 0 AND next_at <= %(now)s
  AND task = ANY(%(tasks)s)
ORDER BY next_at
LIMIT %(limit)s;

-- name: advance_schedule
-- only if no other worker advanced it since it was read: one run per tick
UPDATE schedules
SET next_at = %(next_at)s, last_tick = coalesce(%(tick)s::double precision, last_tick),
    last_run_id = coalesce(%(run_id)s::text, last_run_id), updated_at = %(now)s
WHERE app = %(app)s AND key = %(key)s AND next_at = %(seen)s;

-- name: next_schedule_at
SELECT min(next_at) AS next_at FROM schedules
WHERE app = %(app)s AND paused = 0 AND task = ANY(%(tasks)s);

-- Run data: metadata and streams (schema 8) -----------------------------------------------------

-- name: set_metadata
UPDATE runs
SET metadata_codec = %(metadata_codec)s, metadata = %(metadata)s, metadata_blob = %(metadata_blob)s,
    metadata_raw_size = %(metadata_raw_size)s, metadata_stored_size = %(metadata_stored_size)s
WHERE id = %(id)s AND lease = %(lease)s AND worker_id = %(worker_id)s AND status = 'running';

-- name: append_stream
-- the run's next chunk, fenced by its lease; nothing when the run holds %(max_chunks)s already,
-- or holds this chunk already (made at the same place by an execution before: a replay)
INSERT INTO streams (run_id, name, origin, seq, data_codec, data, data_blob, data_raw_size,
                     data_stored_size, created_at)
SELECT %(run_id)s, %(name)s, %(origin)s, coalesce(max(s.seq), 0) + 1, %(data_codec)s, %(data)s,
       %(data_blob)s, %(data_raw_size)s, %(data_stored_size)s, %(now)s
FROM streams s
WHERE s.run_id = %(run_id)s
HAVING count(*) < %(max_chunks)s
   AND EXISTS (SELECT 1 FROM runs r WHERE r.id = %(run_id)s AND r.lease = %(lease)s
               AND r.worker_id = %(worker_id)s AND r.status = 'running')
ON CONFLICT (run_id, origin) DO NOTHING
RETURNING seq;

-- name: stream_chunk_from
SELECT seq FROM streams WHERE run_id = %(run_id)s AND origin = %(origin)s;

-- name: read_stream
SELECT * FROM streams
WHERE run_id = %(run_id)s AND (%(name)s::text IS NULL OR name = %(name)s::text)
  AND seq > %(after)s
ORDER BY seq
LIMIT %(limit)s;

-- name: delete_streams
DELETE FROM streams WHERE run_id = ANY(%(ids)s);

-- name: insert_run_tags
INSERT INTO run_tags (tag, run_id)
SELECT DISTINCT tag, %(run_id)s FROM jsonb_array_elements_text(%(tags)s::jsonb) AS tag
ON CONFLICT DO NOTHING;

-- name: delete_run_hooks
DELETE FROM run_hooks WHERE run_id = ANY(%(ids)s);

-- name: delete_run_tags
DELETE FROM run_tags WHERE run_id = ANY(%(ids)s);

-- API keys (schema 9) ----------------------------------------------------------------------------

-- name: insert_api_key
INSERT INTO api_keys (id, name, scope, hash, created_at)
VALUES (%(id)s, %(name)s, %(scope)s, %(hash)s, %(now)s);

-- name: api_key
SELECT * FROM api_keys WHERE id = %(id)s;

-- name: list_api_keys
SELECT * FROM api_keys ORDER BY created_at, id;

-- name: revoke_api_key
UPDATE api_keys SET revoked_at = %(now)s WHERE id = %(id)s AND revoked_at IS NULL;

-- Run statistics (schema 10) -------------------------------------------------------------------

-- name: stats_active
-- each half by the partial index of its statuses (claimable runs, running runs)
SELECT task, status, count(*) AS n FROM runs
WHERE status IN ('queued', 'waiting')
  AND (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
GROUP BY task, status
UNION ALL
SELECT task, status, count(*) AS n FROM runs
WHERE status = 'running'
  AND (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
GROUP BY task, status;

-- name: stats_ended
-- runs ended since since by task, status and duration: a histogram whose buckets are 1/scale
-- of a natural log wide (NULL: the run never started)
SELECT task, status,
       CASE WHEN started_at IS NULL THEN NULL
            ELSE floor(ln(greatest(finished_at - started_at, 0.0001)) * %(scale)s)::bigint
       END AS bucket,
       count(*) AS n
FROM runs
WHERE finished_at IS NOT NULL AND finished_at >= %(since)s
  AND (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
GROUP BY 1, 2, 3;

-- name: stats_throughput
SELECT floor((finished_at - %(since)s) / %(bucket)s)::bigint AS bucket,
       count(*) FILTER (WHERE status = 'completed') AS completed,
       count(*) FILTER (WHERE status = 'failed') AS failed
FROM runs
WHERE finished_at IS NOT NULL AND finished_at >= %(since)s
  AND (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(task)s::text IS NULL OR task = %(task)s::text)
GROUP BY 1;

-- name: stats_step_sample
-- the steps and failed attempts of the latest sample runs to end in the window (by the index
-- of ended runs, then the journal's and attempts' keys): one row per step (failed = 0) and one
-- per failed step attempt (failed = 1)
WITH latest AS (
    SELECT id, task, result_stored_size FROM runs
    WHERE finished_at IS NOT NULL AND finished_at >= %(since)s
      AND (%(app)s::text IS NULL OR app = %(app)s::text)
      AND (%(task)s::text IS NULL OR task = %(task)s::text)
    ORDER BY finished_at DESC
    LIMIT %(sample)s
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
  AND (%(app)s::text IS NULL OR app = %(app)s::text)
  AND (%(before)s::text IS NULL OR id < %(before)s::text)
  AND NOT EXISTS (SELECT 1 FROM workers w
                  WHERE w.app = runs.app AND w.status = 'alive' AND w.version = runs.version)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: repin_run
-- a run moved to another version of its code (after a replay check): only while no worker
-- holds it, and only as the check saw it (its lease)
UPDATE runs SET version = %(version)s, note = NULL, updated_at = %(now)s
WHERE id = %(id)s AND lease = %(lease)s AND status IN ('queued', 'waiting');

-- name: mark_hook
-- a lifecycle hook about to run, once per event of a run, and only by the worker that holds it
INSERT INTO run_hooks (run_id, event, key, fired_at)
SELECT %(run_id)s, %(event)s, %(key)s, %(now)s
WHERE EXISTS (SELECT 1 FROM runs WHERE id = %(run_id)s AND lease = %(lease)s
              AND worker_id = %(worker_id)s AND status = 'running')
ON CONFLICT DO NOTHING;

-- name: set_continued_as
-- the run it continues as (with its end, in one transaction)
UPDATE runs SET continued_as = %(continued_as)s WHERE id = %(id)s;
