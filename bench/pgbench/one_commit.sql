-- A trivial durable write, its own transaction (autocommit): bench/floor.py times its round
-- trip with one client to get the cost of one commit on this server (SPEC.md section 8).
INSERT INTO pgb_commits DEFAULT VALUES;
