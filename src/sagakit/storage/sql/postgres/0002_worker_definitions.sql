-- sagakit on PostgreSQL, migration 2: each worker records the definitions it runs, so that
-- list/show can say why an instance is not advancing (Semantics 1).
ALTER TABLE sagakit_workers ADD COLUMN fingerprints text NOT NULL DEFAULT '[]';
