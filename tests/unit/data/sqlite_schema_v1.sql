-- The part of sagakit's SQLite schema version 1 that version 2 changes (the instances table
-- and its indexes), with the meta table: a version-1 file for the upgrade test.
CREATE TABLE IF NOT EXISTS sagakit_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE IF NOT EXISTS sagakit_instances (
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
    owner           TEXT
);
CREATE UNIQUE INDEX IF NOT EXISTS sagakit_instances_key
    ON sagakit_instances (saga_type, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS sagakit_instances_status ON sagakit_instances (status, updated_at);
CREATE INDEX IF NOT EXISTS sagakit_instances_type ON sagakit_instances (saga_type, status, updated_at);
CREATE INDEX IF NOT EXISTS sagakit_instances_correlation ON sagakit_instances (correlation_id);
CREATE INDEX IF NOT EXISTS sagakit_instances_created ON sagakit_instances (created_at);

INSERT OR IGNORE INTO sagakit_meta (key, value) VALUES ('schema_version', '1');
