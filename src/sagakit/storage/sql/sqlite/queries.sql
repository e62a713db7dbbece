-- sagakit's queries on SQLite, by name (loaded by sagakit.storage.queries).
-- A {marker} stands for a part assembled in Python at run time: a filter's WHERE clause, the
-- ? placeholders of an IN list, a PRAGMA value (see sqlite.py and sqlite_file.py).

-- Connection and transactions ----------------------------------------------------------------

-- name: set_busy_timeout
-- Every connection waits up to 10 s for a lock held by another connection or process.
PRAGMA busy_timeout = 10000;

-- name: set_journal_mode_wal
-- The writer puts the file in WAL mode: the reader and the writer do not block each other.
PRAGMA journal_mode = WAL;

-- name: set_synchronous
-- The writer connection's durability (the store's synchronous option, FULL by default).
PRAGMA synchronous = {level};

-- name: schema_version
-- The file's schema version (no such table in a new file).
SELECT value FROM sagakit_meta WHERE key = 'schema_version';

-- name: begin_immediate
-- Open a write transaction, taking the write lock at once (no failed lock upgrade later).
BEGIN IMMEDIATE;

-- name: commit
-- Commit the open transaction.
COMMIT;

-- name: rollback
-- Roll back the open transaction.
ROLLBACK;

-- TransitionStore: a batch's writes -----------------------------------------------------------

-- name: insert_instance
-- Create an instance; a duplicate saga_id or idempotency key is ignored (rowcount 0).
INSERT OR IGNORE INTO sagakit_instances (saga_id, saga_type, version, fingerprint, status,
    correlation_id, idempotency_key, created_at, updated_at, revision, state, owner, status_at)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?);

-- name: update_instance_in_status
-- Advance an instance that keeps its status, at the expected revision; names no indexed column.
UPDATE sagakit_instances SET updated_at = ?, revision = ?, state = ?
WHERE saga_id = ? AND revision = ? AND status = ?;

-- name: update_instance
-- Advance an instance (into another status) if its revision is the expected one.
UPDATE sagakit_instances SET status = ?, status_at = ?, updated_at = ?, revision = ?, state = ?
WHERE saga_id = ? AND revision = ?;

-- name: insert_history
-- Append a history entry of an instance (read back through index sagakit_history_saga).
INSERT INTO sagakit_history (saga_id, at, kind, step, phase, attempt, detail)
VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: insert_outbox
-- Queue an outgoing message; a message id already queued is ignored (idempotent re-send).
INSERT OR IGNORE INTO sagakit_outbox (id, source, destination, saga_id, body)
VALUES (?, ?, ?, ?, ?);

-- name: delete_outbox
-- Drop a message from the outbox once its consumer has committed (or it was sent).
DELETE FROM sagakit_outbox WHERE id = ?;

-- name: apply_command
-- Record the outcome of an operator command.
UPDATE sagakit_commands SET state = ?, error = ?, applied_at = ? WHERE id = ? AND state = 'pending';

-- name: insert_dead_letter
-- Keep a message that could not be handled, with the reason.
INSERT INTO sagakit_dead_letters (at, source, reason, body) VALUES (?, ?, ?, ?);

-- name: set_timer
-- Set (or reset) a timer of an instance, keyed by its name.
INSERT OR REPLACE INTO sagakit_timers (saga_id, name, kind, step, phase, attempt, due_at)
VALUES (?, ?, ?, ?, ?, ?, ?);

-- name: delete_timers
-- Cancel every timer of an instance.
DELETE FROM sagakit_timers WHERE saga_id = ?;

-- name: delete_timer
-- Cancel one timer of an instance by name.
DELETE FROM sagakit_timers WHERE saga_id = ? AND name = ?;

-- name: delete_fired_timer
-- Drop a timer that fired, unless it was set again since (then its due_at or attempt differ).
DELETE FROM sagakit_timers WHERE saga_id = ? AND name = ? AND due_at = ? AND attempt = ?;

-- Leases ---------------------------------------------------------------------------------------

-- name: claim_candidates
-- Live instances (stuck too) of known definitions not this worker's, with last owner and why.
WITH defs AS (
    SELECT json_extract(value, '$[0]') AS saga_type, json_extract(value, '$[1]') AS version,
        json_extract(value, '$[2]') AS fingerprint, json_extract(value, '$[3]') AS legacy
    FROM json_each(?))
-- index sagakit_instances_status; the definitions are few, joined by type and version. The
-- file's lock is the lease: an owner that did not stop cleanly died (its lease expired).
SELECT i.saga_id, d.fingerprint, coalesce(i.owner, i.released_by),
    CASE WHEN i.owner IS NULL AND i.released_by IS NULL THEN 'no owner'
        WHEN i.owner IS NULL OR w.stopped_at IS NOT NULL THEN 'worker stopped'
        ELSE 'lease expired' END
FROM sagakit_instances AS i
JOIN defs AS d ON d.saga_type = i.saga_type AND d.version = i.version
    AND (i.fingerprint = d.fingerprint OR i.fingerprint = d.legacy)
LEFT JOIN sagakit_workers AS w ON w.worker_id = i.owner
WHERE i.status IN ({live}) AND (i.owner IS NULL OR i.owner != ?)
LIMIT ?;

-- name: claim_instances
-- Take the candidates over (revision bump = fencing), a legacy fingerprint replaced.
UPDATE sagakit_instances SET owner = ?, released_by = NULL, revision = revision + 1,
    fingerprint = picked.fingerprint
FROM (SELECT json_extract(value, '$[0]') AS saga_id, json_extract(value, '$[1]') AS fingerprint
    FROM json_each(?)) AS picked
WHERE sagakit_instances.saga_id = picked.saga_id
RETURNING saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner;

-- name: release_instances
-- A stopping worker gives up its live instances (revision bump = fencing), noting itself.
UPDATE sagakit_instances SET owner = NULL, released_by = owner, revision = revision + 1
WHERE owner = ? AND status IN ('started', 'pending', 'compensating', 'stuck');

-- name: unsettled_definitions
-- The definitions unsettled instances of some saga types carry (index sagakit_instances_type).
SELECT DISTINCT saga_type, version, fingerprint FROM sagakit_instances
WHERE saga_type IN (SELECT value FROM json_each(?)) AND status IN ({live});

-- Retention ------------------------------------------------------------------------------------

-- name: finished_before
-- Instances finished before a cutoff, oldest first (index sagakit_instances_status).
SELECT saga_id FROM sagakit_instances WHERE status IN ('completed', 'failed')
    AND status_at < ? ORDER BY status_at LIMIT ?;

-- name: create_purge_table
-- Purge: the connection's scratch table of the instances to delete.
CREATE TEMP TABLE IF NOT EXISTS sagakit_purge (saga_id TEXT);

-- name: clear_purge_table
-- Purge: empty the scratch table left by a previous purge.
DELETE FROM sagakit_purge;

-- name: add_purge_id
-- Purge: one instance asked for.
INSERT INTO sagakit_purge VALUES (?);

-- name: keep_finished_purge_ids
-- Purge: only finished instances are deleted; forget the others asked for.
DELETE FROM sagakit_purge WHERE saga_id NOT IN (
    SELECT saga_id FROM sagakit_instances WHERE status IN ('completed', 'failed'));

-- name: retire_purged_keys
-- Purge: keep the idempotency keys of purged instances, so a duplicate start is still answered.
INSERT OR REPLACE INTO sagakit_retired_keys (saga_type, idempotency_key, saga_id, input_digest,
    retired_at)
SELECT saga_type, idempotency_key, saga_id, json_extract(state, '$.input_digest'), ?
FROM sagakit_instances
WHERE idempotency_key IS NOT NULL AND saga_id IN (SELECT saga_id FROM sagakit_purge);

-- name: purge_history
-- Purge: the history of the purged instances (index sagakit_history_saga).
DELETE FROM sagakit_history WHERE saga_id IN (SELECT saga_id FROM sagakit_purge);

-- name: purge_timers
-- Purge: the timers of the purged instances.
DELETE FROM sagakit_timers WHERE saga_id IN (SELECT saga_id FROM sagakit_purge);

-- name: purge_instances
-- Purge: the purged instances themselves.
DELETE FROM sagakit_instances WHERE saga_id IN (SELECT saga_id FROM sagakit_purge);

-- name: count_purged
-- Purge: how many instances were purged.
SELECT count(*) FROM sagakit_purge;

-- name: purge_retired_keys
-- Retention: forget retired idempotency keys older than the cutoff.
DELETE FROM sagakit_retired_keys WHERE retired_at < ?;

-- name: purge_inbox
-- Retention: old inbox keys, but a live saga's stay for an operator's retry (sagakit_inbox_at).
DELETE FROM sagakit_inbox WHERE at < ? AND NOT EXISTS (
    SELECT 1 FROM sagakit_instances AS i
    WHERE i.saga_id = substr(sagakit_inbox.key, 1, instr(sagakit_inbox.key, ':') - 1)
        AND i.status NOT IN ('completed', 'failed'));

-- name: purge_commands
-- Retention: operator commands already applied or refused, older than the cutoff.
DELETE FROM sagakit_commands WHERE state != 'pending' AND created_at < ?;

-- name: retired_key
-- The instance an idempotency key named before it was purged (primary key of the table).
SELECT saga_id, input_digest FROM sagakit_retired_keys
WHERE saga_type = ? AND idempotency_key = ?;

-- InstanceQueries ------------------------------------------------------------------------------

-- name: get_instance
-- One instance by id.
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner
FROM sagakit_instances WHERE saga_id = ?;

-- name: find_by_key
-- The instance started under an idempotency key (index sagakit_instances_key).
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner
FROM sagakit_instances WHERE saga_type = ? AND idempotency_key = ?;

-- name: list_instances
-- Filtered listing, latest into its status first (indexes _status/_type/_correlation/_created).
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner
FROM sagakit_instances{where}
ORDER BY status_at DESC LIMIT ?;

-- name: history
-- An instance's history in order (index sagakit_history_saga).
SELECT at, kind, step, phase, attempt, detail FROM sagakit_history
WHERE saga_id = ? ORDER BY id;

-- name: count_by_status
-- How many instances are in each status.
SELECT status, count(*) FROM sagakit_instances GROUP BY status;

-- TimerQueue -----------------------------------------------------------------------------------

-- name: due_timers
-- Timers due by now, earliest first (index sagakit_timers_due).
SELECT saga_id, name, kind, step, phase, attempt, due_at FROM sagakit_timers
WHERE due_at <= ? ORDER BY due_at LIMIT ?;

-- name: next_due
-- When the next timer is due, so the timer loop can sleep until then (index sagakit_timers_due).
SELECT min(due_at) FROM sagakit_timers;

-- Outbox ---------------------------------------------------------------------------------------

-- name: pending_outbox
-- A source's queued messages in order, for the sender (index sagakit_outbox_source).
SELECT id, source, destination, body, saga_id FROM sagakit_outbox
WHERE source = ? ORDER BY seq LIMIT ?;

-- CommandQueue ---------------------------------------------------------------------------------

-- name: enqueue_command
-- Queue an operator command.
INSERT INTO sagakit_commands (saga_id, kind, body, state, created_at) VALUES (?, ?, ?, ?, ?);

-- name: pending_commands
-- Commands waiting to be applied, in order, after a cursor (index sagakit_commands_pending).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE state = ? AND id > ? ORDER BY id LIMIT ?;

-- name: get_command
-- One command by id, to follow its outcome.
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands WHERE id = ?;

-- StartQueue -----------------------------------------------------------------------------------

-- name: queued_start
-- The oldest pending start of a saga type with a key (index sagakit_commands_pending).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE state = 'pending' AND kind = 'start' AND json_extract(body, '$.saga_type') = ?
    AND json_extract(body, '$.key') = ?
ORDER BY id LIMIT 1;

-- name: start_command
-- The latest start queued for an instance id, in any state (index sagakit_commands_saga).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE saga_id = ? AND kind = 'start' ORDER BY id DESC LIMIT 1;

-- name: queued_starts
-- Pending starts, oldest first (index sagakit_commands_pending).
SELECT id, saga_id, kind, body, state, error, created_at FROM sagakit_commands
WHERE state = 'pending' AND kind = 'start' ORDER BY id LIMIT ?;

-- name: cancel_start
-- Refuse a start no worker has answered yet (then no worker creates its instance).
UPDATE sagakit_commands SET state = 'refused', error = ?, applied_at = ?
WHERE id = ? AND kind = 'start' AND state = 'pending';

-- name: command_pending
-- Whether a command is still pending: a queued start's instance is created only then.
SELECT 1 FROM sagakit_commands WHERE id = ? AND state = 'pending';

-- DeadLetters ----------------------------------------------------------------------------------

-- name: dead_letters
-- The latest dead letters first.
SELECT id, at, source, reason, body FROM sagakit_dead_letters ORDER BY id DESC LIMIT ?;

-- ParticipantStore -----------------------------------------------------------------------------

-- name: inbox_get
-- A participant's stored reply under an idempotency key (primary key of sagakit_inbox).
SELECT reply FROM sagakit_inbox WHERE participant = ? AND key = ?;

-- name: inbox_put
-- Store a participant's reply under its idempotency key.
INSERT INTO sagakit_inbox (participant, key, reply, at) VALUES (?, ?, ?, ?);

-- name: inbox_touch
-- A key presented again (a duplicate): its retention counts from now (primary key).
UPDATE sagakit_inbox SET at = ? WHERE participant = ? AND key = ?;

-- name: attach_worker
-- Register the worker, the definitions it runs and its first lease (or renew it, come back).
INSERT INTO sagakit_workers (worker_id, host, pid, started_at, heartbeat_at, lease_expires_at,
    stopped_at, fingerprints)
VALUES (?, ?, ?, ?, ?, ?, NULL, ?)
ON CONFLICT (worker_id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at,
    lease_expires_at = excluded.lease_expires_at, stopped_at = NULL,
    fingerprints = excluded.fingerprints;

-- name: expire_other_workers
-- Earlier owners of the file are gone (the file's lock is this worker's): their leases end now.
UPDATE sagakit_workers SET lease_expires_at = ?
WHERE worker_id != ? AND stopped_at IS NULL AND lease_expires_at > ?;

-- name: forget_dead_workers
-- Workers whose lease ran out before a cutoff and that own no unfinished instance.
DELETE FROM sagakit_workers
WHERE lease_expires_at < ? AND NOT EXISTS (
    SELECT 1 FROM sagakit_instances AS i WHERE i.owner = sagakit_workers.worker_id
        AND i.status IN ('started', 'pending', 'compensating', 'stuck'));

-- name: renew_worker
-- Renew the owning worker's lease.
UPDATE sagakit_workers SET heartbeat_at = ?, lease_expires_at = ? WHERE worker_id = ?;

-- name: stop_worker
-- A worker that stops cleanly: its lease ends now; its row stays for `sagakit workers`.
UPDATE sagakit_workers SET stopped_at = ?, lease_expires_at = ? WHERE worker_id = ?;

-- name: live_fingerprints
-- The definitions the worker with a live lease runs (why an instance is not advancing).
SELECT fingerprints FROM sagakit_workers WHERE lease_expires_at >= ? AND stopped_at IS NULL;

-- Catalog ----------------------------------------------------------------------------------------

-- name: record_definition
-- A definition a worker runs, by name, version and fingerprint (the same one is overwritten).
INSERT INTO sagakit_definitions (saga_type, version, fingerprint, spec, recorded_at)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (saga_type, version, fingerprint) DO UPDATE SET spec = excluded.spec,
    recorded_at = excluded.recorded_at;

-- name: definitions
-- Every recorded definition, by name and version.
SELECT spec, recorded_at FROM sagakit_definitions ORDER BY saga_type, version, recorded_at;

-- name: workers
-- Every worker, live ones first, with the unfinished instances each owns (index _status).
SELECT w.worker_id, w.host, w.pid, w.started_at, w.heartbeat_at, w.lease_expires_at,
    w.stopped_at, w.fingerprints,
    (SELECT count(*) FROM sagakit_instances AS i WHERE i.owner = w.worker_id
        AND i.status IN ('started', 'pending', 'compensating', 'stuck')),
    w.stopped_at IS NULL AND w.lease_expires_at >= ? AS alive
FROM sagakit_workers AS w
ORDER BY alive DESC, w.started_at DESC;
