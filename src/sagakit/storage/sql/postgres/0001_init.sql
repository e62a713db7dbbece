-- sagakit on PostgreSQL, migration 1: the initial schema.
-- Times are seconds since the Unix epoch (double precision), judged by the database's clock.

CREATE TABLE sagakit_instances (
    saga_id         text PRIMARY KEY,
    saga_type       text NOT NULL,
    version         integer NOT NULL,
    fingerprint     text NOT NULL,
    status          text NOT NULL,
    correlation_id  text NOT NULL,
    idempotency_key text,
    created_at      double precision NOT NULL,
    updated_at      double precision NOT NULL,
    revision        bigint NOT NULL,
    state           text NOT NULL,
    owner           text
);
-- Idempotent start (Semantics 15).
CREATE UNIQUE INDEX sagakit_instances_key
    ON sagakit_instances (saga_type, idempotency_key) WHERE idempotency_key IS NOT NULL;
-- list by status / type and time; the first page of stuck instances.
CREATE INDEX sagakit_instances_status ON sagakit_instances (status, updated_at DESC);
CREATE INDEX sagakit_instances_type ON sagakit_instances (saga_type, status, updated_at DESC);
CREATE INDEX sagakit_instances_correlation ON sagakit_instances (correlation_id);
CREATE INDEX sagakit_instances_created ON sagakit_instances (created_at);
-- Claims and owner-scoped scans touch only instances that are not finished.
CREATE INDEX sagakit_instances_live_owner ON sagakit_instances (owner, created_at)
    WHERE status IN ('started', 'pending', 'compensating', 'stuck');
-- Retention: finished instances by age.
CREATE INDEX sagakit_instances_finished ON sagakit_instances (updated_at)
    WHERE status IN ('completed', 'failed');

CREATE TABLE sagakit_history (
    id      bigserial PRIMARY KEY,
    saga_id text NOT NULL,
    at      double precision NOT NULL,
    kind    text NOT NULL,
    step    text,
    phase   text,
    attempt integer,
    detail  text NOT NULL
);
CREATE INDEX sagakit_history_saga ON sagakit_history (saga_id, id);

-- Pending messages only: a row is deleted once its consumer has committed.
CREATE TABLE sagakit_outbox (
    seq         bigserial PRIMARY KEY,
    id          text NOT NULL UNIQUE,
    source      text NOT NULL,
    destination text NOT NULL,
    saga_id     text NOT NULL,
    body        bytea NOT NULL,
    owner       text,
    created_at  double precision NOT NULL DEFAULT extract(epoch FROM clock_timestamp())
);
CREATE INDEX sagakit_outbox_source ON sagakit_outbox (source, seq);

CREATE TABLE sagakit_timers (
    saga_id text NOT NULL,
    name    text NOT NULL,
    kind    text NOT NULL,
    step    text,
    phase   text NOT NULL,
    attempt integer NOT NULL,
    due_at  double precision NOT NULL,
    PRIMARY KEY (saga_id, name)
);
CREATE INDEX sagakit_timers_due ON sagakit_timers (due_at);

CREATE TABLE sagakit_commands (
    id         bigserial PRIMARY KEY,
    saga_id    text NOT NULL,
    kind       text NOT NULL,
    body       text NOT NULL,
    state      text NOT NULL,
    error      text,
    created_at double precision NOT NULL,
    applied_at double precision
);
CREATE INDEX sagakit_commands_pending ON sagakit_commands (id) WHERE state = 'pending';

CREATE TABLE sagakit_dead_letters (
    id     bigserial PRIMARY KEY,
    at     double precision NOT NULL,
    source text NOT NULL,
    reason text NOT NULL,
    body   bytea NOT NULL
);

-- Participants' inbox: the reply stored under each idempotency key (Semantics 3).
CREATE TABLE sagakit_inbox (
    participant text NOT NULL,
    key         text NOT NULL,
    reply       bytea NOT NULL,
    at          double precision NOT NULL,
    PRIMARY KEY (participant, key)
);
CREATE INDEX sagakit_inbox_at ON sagakit_inbox (at);

-- Workers and their leases (F3).
CREATE TABLE sagakit_workers (
    worker_id        text PRIMARY KEY,
    host             text NOT NULL,
    pid              integer NOT NULL,
    started_at       double precision NOT NULL,
    heartbeat_at     double precision NOT NULL,
    lease_expires_at double precision NOT NULL
);

-- Idempotency keys of purged instances, kept so a purge never lets a duplicate start through.
CREATE TABLE sagakit_retired_keys (
    saga_type       text NOT NULL,
    idempotency_key text NOT NULL,
    saga_id         text NOT NULL,
    input_digest    text NOT NULL,
    retired_at      double precision NOT NULL,
    PRIMARY KEY (saga_type, idempotency_key)
);
CREATE INDEX sagakit_retired_keys_at ON sagakit_retired_keys (retired_at);
