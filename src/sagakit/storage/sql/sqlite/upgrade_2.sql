-- Version 1 -> 2: instances get status_at, the time they entered their status, and the
-- listing indexes move to it from updated_at (as PostgreSQL's migration 0003). A step that
-- keeps the status then updates no index. Run in one transaction when a version-1 file is
-- opened. The column's DEFAULT is there only because SQLite adds a NOT NULL column with one.
ALTER TABLE sagakit_instances ADD COLUMN status_at REAL NOT NULL DEFAULT 0;
UPDATE sagakit_instances SET status_at = updated_at;
DROP INDEX IF EXISTS sagakit_instances_status;
DROP INDEX IF EXISTS sagakit_instances_type;
CREATE INDEX sagakit_instances_status ON sagakit_instances (status, status_at);
CREATE INDEX sagakit_instances_type ON sagakit_instances (saga_type, status, status_at);
UPDATE sagakit_meta SET value = '2' WHERE key = 'schema_version';
