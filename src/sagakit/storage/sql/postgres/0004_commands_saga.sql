-- sagakit on PostgreSQL, migration 4: a start's command is found by the instance id it names
-- (show and abort of a queued start).
CREATE INDEX sagakit_commands_saga ON sagakit_commands (saga_id);
