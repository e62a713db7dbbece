-- Version 1 -> 2: instances get status_at, the time they entered their status, and the
-- listing indexes move to it from updated_at, as in PostgreSQL's migration 0003 (there also
-- a partial index of finished instances). A step that keeps the status then updates no index.
-- The table is rebuilt rather than altered, so that status_at is NOT NULL without a default,
-- as in a new file: an older sagakit still writing the old layout fails instead of writing
-- rows without the column. schema.sql, run next, creates the indexes. One transaction.
CREATE TABLE sagakit_instances_v2 (
    saga_id         TEXT PRIMARY KEY,
    saga_type       TEXT NOT NULL,
    version         INTEGER NOT NULL,
    fingerprint     TEXT NOT NULL,
    status          TEXT NOT NULL,
    correlation_id  TEXT NOT NULL,
    idempotency_key TEXT,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL,
    revision        INTEGER NOT NULL,
    state           TEXT NOT NULL,
    owner           TEXT,
    status_at       REAL NOT NULL
);
INSERT INTO sagakit_instances_v2 (saga_id, saga_type, version, fingerprint, status,
    correlation_id, idempotency_key, created_at, updated_at, revision, state, owner, status_at)
SELECT saga_id, saga_type, version, fingerprint, status, correlation_id, idempotency_key,
    created_at, updated_at, revision, state, owner, updated_at
FROM sagakit_instances;
DROP TABLE sagakit_instances;
ALTER TABLE sagakit_instances_v2 RENAME TO sagakit_instances;
UPDATE sagakit_meta SET value = '2' WHERE key = 'schema_version';
