-- sagakit schema for SQLite, version 2 (sqlite.SCHEMA_VERSION). Applied idempotently when
-- a store opens, after the upgrade of an older file (upgrade_<N>.sql).
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
    owner           TEXT,
    -- When the instance entered its status (for a finished one: when it finished). The
    -- listing indexes use it rather than updated_at, so a step that keeps the status updates
    -- no index.
    status_at       REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS sagakit_instances_key
    ON sagakit_instances (saga_type, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS sagakit_instances_status ON sagakit_instances (status, status_at);
CREATE INDEX IF NOT EXISTS sagakit_instances_type ON sagakit_instances (saga_type, status, status_at);
CREATE INDEX IF NOT EXISTS sagakit_instances_correlation ON sagakit_instances (correlation_id);
CREATE INDEX IF NOT EXISTS sagakit_instances_created ON sagakit_instances (created_at);

CREATE TABLE IF NOT EXISTS sagakit_history (
    id      INTEGER PRIMARY KEY,
    saga_id TEXT NOT NULL,
    at      REAL NOT NULL,
    kind    TEXT NOT NULL,
    step    TEXT,
    phase   TEXT,
    attempt INTEGER,
    detail  TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sagakit_history_saga ON sagakit_history (saga_id, id);

-- Pending messages only: a row is deleted once its consumer has committed.
CREATE TABLE IF NOT EXISTS sagakit_outbox (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    id          TEXT NOT NULL UNIQUE,
    source      TEXT NOT NULL,
    destination TEXT NOT NULL,
    saga_id     TEXT NOT NULL,
    body        BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS sagakit_outbox_source ON sagakit_outbox (source, seq);

CREATE TABLE IF NOT EXISTS sagakit_timers (
    saga_id TEXT NOT NULL,
    name    TEXT NOT NULL,
    kind    TEXT NOT NULL,
    step    TEXT,
    phase   TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    due_at  REAL NOT NULL,
    PRIMARY KEY (saga_id, name)
);
CREATE INDEX IF NOT EXISTS sagakit_timers_due ON sagakit_timers (due_at);

CREATE TABLE IF NOT EXISTS sagakit_commands (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    saga_id    TEXT NOT NULL,
    kind       TEXT NOT NULL,
    body       TEXT NOT NULL,
    state      TEXT NOT NULL,
    error      TEXT,
    created_at REAL NOT NULL,
    applied_at REAL
);
CREATE INDEX IF NOT EXISTS sagakit_commands_pending ON sagakit_commands (state, id);
-- A start's command, by the instance id it names (show and abort of a queued start).
CREATE INDEX IF NOT EXISTS sagakit_commands_saga ON sagakit_commands (saga_id);

CREATE TABLE IF NOT EXISTS sagakit_dead_letters (
    id     INTEGER PRIMARY KEY,
    at     REAL NOT NULL,
    source TEXT NOT NULL,
    reason TEXT NOT NULL,
    body   BLOB NOT NULL
);

-- Participants' inbox: the reply stored under each idempotency key (Semantics 3).
CREATE TABLE IF NOT EXISTS sagakit_inbox (
    participant TEXT NOT NULL,
    key         TEXT NOT NULL,
    reply       BLOB NOT NULL,
    at          REAL NOT NULL,
    PRIMARY KEY (participant, key)
);

-- Idempotency keys of purged instances, kept so a purge never lets a duplicate start through.
CREATE TABLE IF NOT EXISTS sagakit_retired_keys (
    saga_type       TEXT NOT NULL,
    idempotency_key TEXT NOT NULL,
    saga_id         TEXT NOT NULL,
    input_digest    TEXT NOT NULL,
    retired_at      REAL NOT NULL,
    PRIMARY KEY (saga_type, idempotency_key)
);
CREATE INDEX IF NOT EXISTS sagakit_inbox_at ON sagakit_inbox (at);

-- The worker that owns the file, the definitions it runs and its lease (renewed by heartbeat).
CREATE TABLE IF NOT EXISTS sagakit_workers (
    worker_id        TEXT PRIMARY KEY,
    fingerprints     TEXT NOT NULL,
    lease_expires_at REAL NOT NULL
);

INSERT OR IGNORE INTO sagakit_meta (key, value) VALUES ('schema_version', '2');
