-- sagakit on PostgreSQL, migration 3: a step that leaves an instance's status as it was is a
-- HOT update (the row rewritten in its page, no index touched).
-- Such a step changes updated_at, revision and state only. The listing and retention indexes
-- move from updated_at to status_at, the time the instance entered its status (the same value
-- once it is finished), and pages keep room for the new row version (fillfactor 70). Measured
-- on the benchmark: about 12 % more sagas/s with 64 in flight, from less index and WAL work.
ALTER TABLE sagakit_instances ADD COLUMN status_at double precision;
UPDATE sagakit_instances SET status_at = updated_at;
ALTER TABLE sagakit_instances ALTER COLUMN status_at SET NOT NULL;
ALTER TABLE sagakit_instances SET (fillfactor = 70);
DROP INDEX sagakit_instances_status;
DROP INDEX sagakit_instances_type;
DROP INDEX sagakit_instances_finished;
CREATE INDEX sagakit_instances_status ON sagakit_instances (status, status_at DESC);
CREATE INDEX sagakit_instances_type ON sagakit_instances (saga_type, status, status_at DESC);
CREATE INDEX sagakit_instances_finished ON sagakit_instances (status_at)
    WHERE status IN ('completed', 'failed');
