-- sagakit on PostgreSQL, migration 5: what workers run, visible to commands that run no user
-- code (describe, workers). A worker's row says when it stopped cleanly, and stays after it
-- stopped or died until a later attach forgets it; the definitions workers run are recorded
-- at attach. An instance released at a clean stop remembers by whom, for the takeover entry
-- the next claim writes.
ALTER TABLE sagakit_workers ADD COLUMN stopped_at double precision;
ALTER TABLE sagakit_instances ADD COLUMN released_by text;
CREATE TABLE sagakit_definitions (
    saga_type   text NOT NULL,
    version     integer NOT NULL,
    fingerprint text NOT NULL,
    spec        text NOT NULL,
    recorded_at double precision NOT NULL,
    PRIMARY KEY (saga_type, version, fingerprint)
);
