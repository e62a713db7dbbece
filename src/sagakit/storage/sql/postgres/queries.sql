-- sagakit's queries on PostgreSQL, by name (loaded by sagakit.storage.queries).
-- Not a migration: only files named NNNN_name.sql are applied by `sagakit migrate`.
-- Times are judged by the database's clock: extract(epoch FROM clock_timestamp()).
-- A {marker} stands for a part assembled in Python at run time: a filter's WHERE clause, a
-- schema name (see postgres.py and postgres_schema.py).

-- Schema and migrations ------------------------------------------------------------------------

-- name: has_schema
-- Whether the sagakit tables exist in the search path (a reader that does not migrate).
SELECT to_regclass('sagakit_instances') IS NOT NULL;

-- name: lock_migrations
-- Serialise concurrent migrators for the rest of the transaction.
SELECT pg_advisory_xact_lock(hashtext('sagakit.migrate'));

-- name: create_schema
-- The URL's ?schema= (a checked identifier: an identifier cannot be a bound parameter).
CREATE SCHEMA IF NOT EXISTS "{schema}";

-- name: create_migrations_table
-- The record of applied migrations.
CREATE TABLE IF NOT EXISTS sagakit_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now());

-- name: applied_migrations
-- The versions already applied.
SELECT version FROM sagakit_migrations;

-- name: record_migration
-- Record a migration just applied.
INSERT INTO sagakit_migrations (version, name) VALUES ($1, $2);

-- TransitionStore: a batch's writes -----------------------------------------------------------

-- The usual batch (one transition per instance) commits in one statement (one round trip),
-- put together in postgres_commit.py from the commit_* parts below that the batch has rows
-- for: each part is one data-modifying CTE, its parameters numbered from $1 on its own. A part
-- that reads "ok" (the instances whose write passed its revision check, or that only add side
-- records) keeps only those transitions' records. The timer deletes never touch a timer that is
-- upserted, so no row is modified twice. Leaving out the empty parts halves the commit's latency.

-- name: commit_ins
-- Create instances (starts); a duplicate saga_id or idempotency key is skipped, not returned.
ins AS (
    INSERT INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status,
        correlation_id, idempotency_key, created_at, updated_at, revision, state, owner,
        status_at)
    SELECT v.*, v.updated_at FROM unnest($1::text[], $2::text[], $3::int[], $4::text[],
        $5::text[], $6::text[], $7::text[], $8::float8[], $9::float8[], $10::bigint[],
        $11::text[], $12::text[]) AS v(saga_id, saga_type, version, fingerprint, status,
        correlation_id, idempotency_key, created_at, updated_at, revision, state, owner)
    ON CONFLICT DO NOTHING RETURNING saga_id
)

-- name: commit_upd
-- Advance instances whose revision is still the expected one (optimistic concurrency).
upd AS (
    UPDATE sagakit_instances AS i SET status = v.status, updated_at = v.updated_at,
        status_at = CASE WHEN i.status = v.status THEN i.status_at ELSE v.updated_at END,
        revision = v.revision, state = v.state
    FROM unnest($1::text[], $2::bigint[], $3::text[], $4::float8[], $5::bigint[],
        $6::text[]) AS v(saga_id, expected, status, updated_at, revision, state)
    WHERE i.saga_id = v.saga_id AND i.revision = v.expected RETURNING i.saga_id
)

-- name: commit_hist
-- Append history entries, in the order the batch gives them.
hist AS (
    -- The join with "ok" may emit rows in any order (a hash built on the entries reverses a
    -- saga's), and ids are drawn in the order rows come: hence the ordinality.
    INSERT INTO sagakit_history (saga_id, at, kind, step, phase, attempt, detail)
    SELECT h.saga_id, h.at, h.kind, h.step, h.phase, h.attempt, h.detail
    FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[], $5::text[],
        $6::int[], $7::text[]) WITH ORDINALITY AS h(saga_id, at, kind, step, phase, attempt,
        detail, n)
    WHERE h.saga_id IN (SELECT saga_id FROM ok)
    ORDER BY h.n
)

-- name: commit_obx
-- Queue outgoing messages, with the worker that wrote them; an id already queued is kept.
obx AS (
    INSERT INTO sagakit_outbox (id, source, destination, saga_id, body, owner)
    SELECT o.id, o.source, o.destination, o.saga_id, o.body, o.owner
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[],
        $7::text[]) WITH ORDINALITY AS o(id, source, destination, saga_id, body, owner, tsaga, n)
    WHERE o.tsaga IN (SELECT saga_id FROM ok)
    ORDER BY o.n
    ON CONFLICT (id) DO NOTHING
)

-- name: commit_tclr
-- Cancel every timer of some instances, except those the batch upserts ($2, $3).
tclr AS (
    DELETE FROM sagakit_timers AS t WHERE t.saga_id = ANY($1::text[])
    AND t.saga_id IN (SELECT saga_id FROM ok)
    AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS u(saga_id, name)
        WHERE u.saga_id = t.saga_id AND u.name = t.name)
)

-- name: commit_tdel
-- Cancel timers by instance and name.
tdel AS (
    DELETE FROM sagakit_timers AS t USING unnest($1::text[], $2::text[]) AS v(saga_id, name)
    WHERE t.saga_id = v.saga_id AND t.name = v.name AND v.saga_id IN (SELECT saga_id FROM ok)
)

-- name: commit_tfir
-- Drop timers that fired, unless set again since (then their due_at or attempt differ).
tfir AS (
    DELETE FROM sagakit_timers AS t USING unnest($1::text[], $2::text[], $3::float8[],
        $4::int[], $5::text[]) AS v(saga_id, name, due_at, attempt, tsaga)
    WHERE t.saga_id = v.saga_id AND t.name = v.name AND t.due_at = v.due_at
        AND t.attempt = v.attempt AND v.tsaga IN (SELECT saga_id FROM ok)
)

-- name: commit_tset
-- Set (or reset) timers, keyed by instance and name.
tset AS (
    INSERT INTO sagakit_timers (saga_id, name, kind, step, phase, attempt, due_at)
    SELECT v.saga_id, v.name, v.kind, v.step, v.phase, v.attempt, v.due_at
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
        $7::float8[], $8::text[]) AS v(saga_id, name, kind, step, phase, attempt, due_at, tsaga)
    WHERE v.tsaga IN (SELECT saga_id FROM ok)
    ON CONFLICT (saga_id, name) DO UPDATE SET kind = excluded.kind, step = excluded.step,
        phase = excluded.phase, attempt = excluded.attempt, due_at = excluded.due_at
)

-- name: commit_done
-- Drop messages the relay has sent.
done AS (
    DELETE FROM sagakit_outbox WHERE id = ANY($1::text[])
)

-- name: commit_cons
-- Drop messages consumed by the transitions that wrote.
cons AS (
    DELETE FROM sagakit_outbox WHERE id IN (
        SELECT c.id FROM unnest($1::text[], $2::text[]) AS c(saga_id, id)
        WHERE c.saga_id IN (SELECT saga_id FROM ok))
)

-- name: commit_cmd
-- Record the outcome of operator commands (a null saga_id: a command that belongs to none).
cmd AS (
    UPDATE sagakit_commands AS c SET state = v.state, error = v.error,
        applied_at = extract(epoch FROM clock_timestamp())
    FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[])
        AS v(id, state, error, saga_id)
    WHERE c.id = v.id AND c.state = 'pending'
        AND (v.saga_id IS NULL OR v.saga_id IN (SELECT saga_id FROM ok))
)

-- name: commit_dl
-- Keep messages that could not be handled, with the reasons.
dl AS (
    INSERT INTO sagakit_dead_letters (at, source, reason, body)
    SELECT extract(epoch FROM clock_timestamp()), *
    FROM unnest($1::text[], $2::text[], $3::bytea[])
)

-- One step of one saga (a batch of one update, its history, perhaps all its timers cancelled):
-- the usual commit with one saga in flight. Scalar parameters spare the server unpacking
-- one-element arrays (about a third of the statement's planning and execution time).

-- name: commit_one_update
-- One step of one saga: its update (revision checked), then its history and timers cleared.
WITH upd AS (
    -- History and the timer delete run only if the update passed; $13: cancel all timers.
    UPDATE sagakit_instances AS i SET status = $3, updated_at = $4,
        status_at = CASE WHEN i.status = $3 THEN i.status_at ELSE $4 END,
        revision = $5, state = $6
    WHERE i.saga_id = $1 AND i.revision = $2 RETURNING i.saga_id
),
hist AS (
    INSERT INTO sagakit_history (saga_id, at, kind, step, phase, attempt, detail)
    SELECT $1, h.at, h.kind, h.step, h.phase, h.attempt, h.detail
    FROM unnest($7::float8[], $8::text[], $9::text[], $10::text[], $11::int[], $12::text[])
        WITH ORDINALITY AS h(at, kind, step, phase, attempt, detail, n)
    WHERE EXISTS (SELECT 1 FROM upd)
    ORDER BY h.n
),
tclr AS (
    DELETE FROM sagakit_timers WHERE $13::boolean AND saga_id = $1 AND EXISTS (SELECT 1 FROM upd)
)
SELECT saga_id FROM upd;

-- The ordered path: a batch that repeats a saga commits in rounds, one statement per kind.

-- name: insert_instances
-- Create instances (starts); a duplicate saga_id or idempotency key is skipped, not returned.
INSERT INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status, correlation_id,
    idempotency_key, created_at, updated_at, revision, state, owner, status_at)
SELECT v.*, v.updated_at FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[],
    $6::text[], $7::text[], $8::float8[], $9::float8[], $10::bigint[], $11::text[], $12::text[])
    AS v(saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner)
ON CONFLICT DO NOTHING RETURNING saga_id;

-- name: update_instances
-- Advance instances whose revision is still the expected one (optimistic concurrency).
UPDATE sagakit_instances AS i SET status = v.status, updated_at = v.updated_at,
    status_at = CASE WHEN i.status = v.status THEN i.status_at ELSE v.updated_at END,
    revision = v.revision, state = v.state
FROM unnest($1::text[], $2::bigint[], $3::text[], $4::float8[], $5::bigint[], $6::text[])
    AS v(saga_id, expected, status, updated_at, revision, state)
WHERE i.saga_id = v.saga_id AND i.revision = v.expected RETURNING i.saga_id;

-- name: insert_history
-- Append history entries (read back through index sagakit_history_saga).
INSERT INTO sagakit_history (saga_id, at, kind, step, phase, attempt, detail)
SELECT h.saga_id, h.at, h.kind, h.step, h.phase, h.attempt, h.detail
FROM unnest($1::text[], $2::float8[], $3::text[], $4::text[], $5::text[], $6::int[],
    $7::text[]) WITH ORDINALITY AS h(saga_id, at, kind, step, phase, attempt, detail, n)
ORDER BY h.n;

-- name: insert_outbox
-- Queue outgoing messages, with the worker that wrote them; an id already queued is kept.
INSERT INTO sagakit_outbox (id, source, destination, saga_id, body, owner)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::bytea[], $6::text[])
ON CONFLICT (id) DO NOTHING;

-- name: delete_outbox
-- Drop messages from the outbox once their consumer has committed (or they were sent).
DELETE FROM sagakit_outbox WHERE id = ANY($1::text[]);

-- name: apply_commands
-- Record the outcome of operator commands.
UPDATE sagakit_commands AS c SET state = v.state, error = v.error,
    applied_at = extract(epoch FROM clock_timestamp())
FROM unnest($1::bigint[], $2::text[], $3::text[]) AS v(id, state, error)
WHERE c.id = v.id AND c.state = 'pending';

-- name: insert_dead_letters
-- Keep messages that could not be handled, with the reasons.
INSERT INTO sagakit_dead_letters (at, source, reason, body)
SELECT extract(epoch FROM clock_timestamp()), *
FROM unnest($1::text[], $2::text[], $3::bytea[]);

-- name: clear_timers
-- Cancel every timer of some instances, except those set again in the same batch.
DELETE FROM sagakit_timers AS t WHERE t.saga_id = ANY($1::text[])
AND NOT EXISTS (SELECT 1 FROM unnest($2::text[], $3::text[]) AS u(saga_id, name)
    WHERE u.saga_id = t.saga_id AND u.name = t.name);

-- name: delete_timers
-- Cancel timers by instance and name.
DELETE FROM sagakit_timers AS t USING unnest($1::text[], $2::text[]) AS v(saga_id, name)
WHERE t.saga_id = v.saga_id AND t.name = v.name;

-- name: delete_fired_timers
-- Drop timers that fired, unless set again since (then their due_at or attempt differ).
DELETE FROM sagakit_timers AS t
USING unnest($1::text[], $2::text[], $3::float8[], $4::int[]) AS v(saga_id, name, due_at, attempt)
WHERE t.saga_id = v.saga_id AND t.name = v.name AND t.due_at = v.due_at
    AND t.attempt = v.attempt;

-- name: set_timers
-- Set (or reset) timers, keyed by instance and name.
INSERT INTO sagakit_timers (saga_id, name, kind, step, phase, attempt, due_at)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::int[],
    $7::float8[])
ON CONFLICT (saga_id, name) DO UPDATE SET kind = excluded.kind, step = excluded.step,
    phase = excluded.phase, attempt = excluded.attempt, due_at = excluded.due_at;

-- Leases ---------------------------------------------------------------------------------------

-- name: attach_worker
-- Register a worker, the definitions it runs and its first lease (or renew a worker come back).
INSERT INTO sagakit_workers (worker_id, host, pid, started_at, heartbeat_at, lease_expires_at,
    fingerprints)
VALUES ($1, $2, $3, extract(epoch FROM clock_timestamp()),
    extract(epoch FROM clock_timestamp()), extract(epoch FROM clock_timestamp()) + $4, $5)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    lease_expires_at = excluded.lease_expires_at, fingerprints = excluded.fingerprints,
    stopped_at = NULL;

-- name: forget_dead_workers
-- Workers whose lease ran out over $1 s ago, owning no unfinished instance (index _live_owner).
DELETE FROM sagakit_workers AS w
WHERE w.lease_expires_at < extract(epoch FROM clock_timestamp()) - $1 AND NOT EXISTS (
    SELECT 1 FROM sagakit_instances AS i WHERE i.owner = w.worker_id
        AND i.status IN ('started', 'pending', 'compensating', 'stuck'));

-- name: live_fingerprints
-- The definitions that workers with a live lease run (why an instance is not advancing).
SELECT fingerprints FROM sagakit_workers
WHERE lease_expires_at >= extract(epoch FROM clock_timestamp()) AND stopped_at IS NULL;

-- name: heartbeat
-- Renew a worker's lease; returns whether the lease it renews had not expired yet.
WITH old AS (
    SELECT lease_expires_at FROM sagakit_workers WHERE worker_id = $1 FOR UPDATE)
UPDATE sagakit_workers AS w SET heartbeat_at = extract(epoch FROM clock_timestamp()),
    lease_expires_at = extract(epoch FROM clock_timestamp()) + $2
FROM old WHERE w.worker_id = $1
RETURNING old.lease_expires_at >= extract(epoch FROM clock_timestamp());

-- name: claim_instances
-- Take over instances whose owner has no live lease (revision bump = fencing); write takeovers.
WITH defs AS (
    -- The definitions claimed for; an instance carrying a legacy fingerprint gets the new one.
    SELECT * FROM unnest($3::text[], $4::int[], $5::text[], $6::text[])
        AS d(saga_type, version, fingerprint, legacy)),
candidates AS (
    SELECT i.saga_id, d.fingerprint, coalesce(i.owner, i.released_by) AS previous,
        CASE WHEN i.owner IS NULL AND i.released_by IS NULL THEN 'no owner'
            WHEN i.owner IS NULL OR w.stopped_at IS NOT NULL THEN 'worker stopped'
            ELSE 'lease expired' END AS reason,
        extract(epoch FROM clock_timestamp())::double precision AS at
    FROM sagakit_instances AS i
    JOIN defs AS d ON d.saga_type = i.saga_type AND d.version = i.version
        AND (i.fingerprint = d.fingerprint OR i.fingerprint = d.legacy)
    LEFT JOIN sagakit_workers AS w ON w.worker_id = i.owner
    WHERE i.status = ANY($2::text[]) AND i.owner IS DISTINCT FROM $1
        AND (i.owner IS NULL OR w.worker_id IS NULL OR w.stopped_at IS NOT NULL
            OR w.lease_expires_at < extract(epoch FROM clock_timestamp()))
    ORDER BY i.created_at LIMIT $7 FOR UPDATE OF i SKIP LOCKED),
claimed AS (
    UPDATE sagakit_instances AS i SET owner = $1, released_by = NULL, revision = i.revision + 1,
        fingerprint = c.fingerprint
    FROM candidates AS c WHERE i.saga_id = c.saga_id
    RETURNING i.saga_id, i.saga_type, i.version, i.fingerprint, i.status, i.correlation_id,
        i.idempotency_key, i.created_at, i.updated_at, i.revision, i.state, i.owner,
        c.previous, c.reason, c.at),
hist AS (
    INSERT INTO sagakit_history (saga_id, at, kind, step, phase, attempt, detail)
    SELECT saga_id, at, 'takeover', NULL, NULL, NULL,
        json_build_object('from', previous, 'to', $1::text, 'reason', reason)::text
    FROM claimed)
SELECT * FROM claimed;

-- name: unsettled_definitions
-- The definitions unsettled instances of some saga types carry (index sagakit_instances_type).
SELECT DISTINCT saga_type, version, fingerprint FROM sagakit_instances
WHERE saga_type = ANY($1::text[]) AND status = ANY($2::text[]);

-- name: release_instances
-- A stopping worker gives up its live instances (revision bump = fencing), noting itself.
UPDATE sagakit_instances SET owner = NULL, released_by = owner, revision = revision + 1
WHERE owner = $1 AND status = ANY($2::text[]);

-- name: stop_worker
-- A stopping worker ends its lease now; its row stays for `sagakit workers`.
UPDATE sagakit_workers SET stopped_at = extract(epoch FROM clock_timestamp()),
    lease_expires_at = extract(epoch FROM clock_timestamp())
WHERE worker_id = $1;

-- name: notify_released
-- Wake the other workers (channel sagakit_work) to claim what a stopping worker released.
NOTIFY sagakit_work, 'released';

-- Catalog ----------------------------------------------------------------------------------------

-- name: record_definitions
-- The definitions a worker runs, by name, version and fingerprint (the same one is overwritten).
INSERT INTO sagakit_definitions (saga_type, version, fingerprint, spec, recorded_at)
SELECT *, extract(epoch FROM clock_timestamp())
FROM unnest($1::text[], $2::int[], $3::text[], $4::text[])
ON CONFLICT (saga_type, version, fingerprint) DO UPDATE SET spec = excluded.spec,
    recorded_at = excluded.recorded_at;

-- name: definitions
-- Every recorded definition, by name and version.
SELECT spec, recorded_at FROM sagakit_definitions ORDER BY saga_type, version, recorded_at;

-- name: workers
-- Every worker, live ones first, with the unfinished instances each owns (index _live_owner).
SELECT w.worker_id, w.host, w.pid, w.started_at, w.heartbeat_at, w.lease_expires_at,
    w.stopped_at, w.fingerprints,
    (SELECT count(*) FROM sagakit_instances AS i WHERE i.owner = w.worker_id
        AND i.status IN ('started', 'pending', 'compensating', 'stuck')),
    w.stopped_at IS NULL AND w.lease_expires_at >= extract(epoch FROM clock_timestamp())
        AS alive
FROM sagakit_workers AS w
ORDER BY alive DESC, w.started_at DESC;

-- Retention ------------------------------------------------------------------------------------

-- name: finished_before
-- Instances finished (status_at) before a cutoff, oldest first (index _finished).
SELECT saga_id FROM sagakit_instances WHERE status IN ('completed', 'failed')
    AND status_at < extract(epoch FROM clock_timestamp()) - $1
ORDER BY status_at LIMIT $2;

-- name: purge_instances
-- Purge: delete the finished ones of the instances asked for, returning what retires their key.
DELETE FROM sagakit_instances WHERE saga_id = ANY($1::text[])
    AND status IN ('completed', 'failed')
RETURNING saga_id, saga_type, idempotency_key, state;

-- name: retire_keys
-- Purge: keep the idempotency keys of purged instances, so a duplicate start is still answered.
INSERT INTO sagakit_retired_keys (saga_type, idempotency_key, saga_id, input_digest, retired_at)
SELECT *, extract(epoch FROM clock_timestamp())
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[])
ON CONFLICT DO NOTHING;

-- name: purge_history
-- Purge: the history of the purged instances (index sagakit_history_saga).
DELETE FROM sagakit_history WHERE saga_id = ANY($1::text[]);

-- name: purge_timers
-- Purge: the timers of the purged instances.
DELETE FROM sagakit_timers WHERE saga_id = ANY($1::text[]);

-- name: purge_retired_keys
-- Retention: forget retired idempotency keys older than the cutoff (sagakit_retired_keys_at).
DELETE FROM sagakit_retired_keys
WHERE retired_at < extract(epoch FROM clock_timestamp()) - $1;

-- name: purge_inbox
-- Retention: old inbox keys, but a live saga's stay for an operator's retry (sagakit_inbox_at).
DELETE FROM sagakit_inbox AS x
WHERE x.at < extract(epoch FROM clock_timestamp()) - $1 AND NOT EXISTS (
    SELECT 1 FROM sagakit_instances AS i
    WHERE i.saga_id = split_part(x.key, ':', 1) AND i.status = ANY($2::text[]));

-- name: purge_commands
-- Retention: operator commands already applied or refused, older than the cutoff.
DELETE FROM sagakit_commands
WHERE state != 'pending' AND created_at < extract(epoch FROM clock_timestamp()) - $1;

-- name: retired_key
-- The instance an idempotency key named before it was purged (primary key of the table).
SELECT saga_id, input_digest FROM sagakit_retired_keys
WHERE saga_type = $1 AND idempotency_key = $2;

-- InstanceQueries ------------------------------------------------------------------------------

-- name: get_instance
-- One instance by id.
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner
FROM sagakit_instances WHERE saga_id = $1;

-- name: find_by_key
-- The instance started under an idempotency key (index sagakit_instances_key).
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner
FROM sagakit_instances WHERE saga_type = $1 AND idempotency_key = $2;

-- name: list_instances
-- Filtered listing, latest into its status first (indexes _status/_type/_correlation/_created).
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner
FROM sagakit_instances{where}
ORDER BY status_at DESC LIMIT $1;

-- name: history
-- An instance's history in order (index sagakit_history_saga).
SELECT at, kind, step, phase, attempt, detail FROM sagakit_history
WHERE saga_id = $1 ORDER BY id;

-- name: count_by_status
-- How many instances are in each status.
SELECT status, count(*) FROM sagakit_instances GROUP BY status;

-- TimerQueue -----------------------------------------------------------------------------------

-- name: now
-- The database's clock, which judges due timers and expired leases.
SELECT extract(epoch FROM clock_timestamp());

-- name: due_timers
-- Due timers of this worker's (or no) instance, earliest first (index sagakit_timers_due).
SELECT t.saga_id, t.name, t.kind, t.step, t.phase, t.attempt, t.due_at
FROM sagakit_timers AS t LEFT JOIN sagakit_instances AS i ON i.saga_id = t.saga_id
WHERE t.due_at <= extract(epoch FROM clock_timestamp())
    AND ($1::text IS NULL OR i.owner = $1 OR i.saga_id IS NULL)
ORDER BY t.due_at LIMIT $2;

-- name: next_due
-- When this worker's next timer is due, so the timer loop can sleep until then.
SELECT min(t.due_at) FROM sagakit_timers AS t
LEFT JOIN sagakit_instances AS i ON i.saga_id = t.saga_id
WHERE ($1::text IS NULL OR i.owner = $1 OR i.saga_id IS NULL);

-- Outbox ---------------------------------------------------------------------------------------

-- name: pending_outbox
-- A source's messages this worker sends, in order (index sagakit_outbox_source).
SELECT o.id, o.source, o.destination, o.body, o.saga_id FROM sagakit_outbox AS o
LEFT JOIN sagakit_instances AS i ON i.saga_id = o.saga_id AND $3
LEFT JOIN sagakit_workers AS w ON w.worker_id = o.owner
WHERE o.source = $1 AND ($2::text IS NULL
    OR ($3 AND i.owner = $2)
    OR (NOT $3 AND (o.owner = $2 OR o.owner IS NULL OR w.worker_id IS NULL
        OR w.lease_expires_at < extract(epoch FROM clock_timestamp()))))
ORDER BY o.seq LIMIT $4;

-- CommandQueue ---------------------------------------------------------------------------------

-- name: enqueue_command
-- Queue an operator command.
INSERT INTO sagakit_commands (saga_id, kind, body, state, created_at)
VALUES ($1, $2, $3, $4, extract(epoch FROM clock_timestamp())) RETURNING id;

-- name: notify_command
-- Wake the workers (channel sagakit_work): a command is queued.
NOTIFY sagakit_work, 'command';

-- name: pending_commands
-- Pending commands this worker applies: starts and its instances' (sagakit_commands_pending).
SELECT c.id, c.saga_id, c.kind, c.body, c.state, c.error, c.created_at
FROM sagakit_commands AS c
WHERE c.state = 'pending' AND c.id > $3 AND ($1::text IS NULL OR c.kind = 'start' OR EXISTS (
    SELECT 1 FROM sagakit_instances AS i WHERE i.saga_id = c.saga_id AND i.owner = $1))
ORDER BY c.id LIMIT $2;

-- name: get_command
-- One command by id, to follow its outcome.
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands WHERE id = $1;

-- StartQueue -----------------------------------------------------------------------------------

-- name: queued_start
-- The oldest pending start of a saga type with a key (index sagakit_commands_pending).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE state = 'pending' AND kind = 'start' AND body::jsonb ->> 'saga_type' = $1
    AND body::jsonb ->> 'key' = $2
ORDER BY id LIMIT 1;

-- name: start_command
-- The latest start queued for an instance id, in any state (index sagakit_commands_saga).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE saga_id = $1 AND kind = 'start' ORDER BY id DESC LIMIT 1;

-- name: queued_starts
-- Pending starts, oldest first (index sagakit_commands_pending).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE state = 'pending' AND kind = 'start' ORDER BY id LIMIT $1;

-- name: cancel_start
-- Refuse a start no worker has answered yet (waits for a worker's lock on it: see lock_pending).
UPDATE sagakit_commands SET state = 'refused', error = $2,
    applied_at = extract(epoch FROM clock_timestamp())
WHERE id = $1 AND kind = 'start' AND state = 'pending' RETURNING id;

-- name: lock_pending
-- Lock the queued starts still pending, whose instances a commit then creates (the others not).
SELECT id FROM sagakit_commands WHERE id = ANY($1::bigint[]) AND state = 'pending' FOR UPDATE;

-- DeadLetters ----------------------------------------------------------------------------------

-- name: dead_letters
-- The latest dead letters first.
SELECT id, at, source, reason, body FROM sagakit_dead_letters ORDER BY id DESC LIMIT $1;

-- ParticipantStore -----------------------------------------------------------------------------

-- name: inbox_get
-- A participant's stored reply under an idempotency key (primary key of sagakit_inbox).
SELECT reply FROM sagakit_inbox WHERE participant = $1 AND key = $2;

-- name: inbox_put
-- Store a participant's reply under its idempotency key, at the database's time.
INSERT INTO sagakit_inbox (participant, key, reply, at)
VALUES ($1, $2, $3, extract(epoch FROM clock_timestamp()));

-- name: inbox_touch
-- A key presented again (a duplicate): its retention counts from now (primary key).
UPDATE sagakit_inbox SET at = extract(epoch FROM clock_timestamp())
WHERE participant = $1 AND key = $2;

-- name: insert_outbox_message
-- A participant queues a reply in its transaction; a message id already queued is kept.
INSERT INTO sagakit_outbox (id, source, destination, saga_id, body, owner)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING;

-- name: insert_dead_letter
-- A participant keeps a message it could not handle, with the reason.
INSERT INTO sagakit_dead_letters (at, source, reason, body) VALUES ($1, $2, $3, $4);
