-- Scratch tables for six_writes.sql: the shape of a durable-execution system's rows
-- (a workflow row, one row per step), as DBOS's system database keeps them.
DROP TABLE IF EXISTS pgb_steps;
DROP TABLE IF EXISTS pgb_workflows;
CREATE TABLE pgb_workflows (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL,
    status      text NOT NULL,
    input       text NOT NULL,
    output      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pgb_workflows_status ON pgb_workflows (status, created_at);
CREATE TABLE pgb_steps (
    workflow_id bigint NOT NULL REFERENCES pgb_workflows (id),
    step_id     int NOT NULL,
    name        text NOT NULL,
    output      text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (workflow_id, step_id)
);
