-- Version 2 -> 3: workers say more about themselves (host, pid, start, heartbeat, a clean
-- stop, the definitions they run) and the definitions they run are recorded, as in
-- PostgreSQL's migration 0004, and an instance released at a clean stop remembers by whom. The
-- worker rows are dropped rather than altered: the upgrade runs under the file's lock, so no
-- worker is running, and a worker that attaches writes its row again. schema.sql, run next,
-- creates sagakit_workers and sagakit_definitions. One transaction.
ALTER TABLE sagakit_instances ADD COLUMN released_by TEXT;
DROP TABLE IF EXISTS sagakit_workers;
UPDATE sagakit_meta SET value = '3' WHERE key = 'schema_version';
