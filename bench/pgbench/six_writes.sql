-- One saga's six durable writes, each its own transaction (autocommit: pgbench sends each
-- statement alone, so each commits and, with synchronous_commit=on, waits for its WAL flush):
-- insert the workflow row, insert four step rows, update the workflow row.
-- pgbench counts one run of this script as one "transaction", so its tps = sagas/s and the
-- database commits 6 x tps transactions per second.
INSERT INTO pgb_workflows (name, status, input) VALUES ('order_fulfillment', 'PENDING', '{"order_id":"order-1","sku":"SKU-1","quantity":2,"amount_cents":1037}') RETURNING id AS wid \gset
INSERT INTO pgb_steps (workflow_id, step_id, name, output) VALUES (:wid, 1, 'reserve_inventory', '{"effect":"reserve_inventory"}');
INSERT INTO pgb_steps (workflow_id, step_id, name, output) VALUES (:wid, 2, 'process_payment', '{"effect":"process_payment"}');
INSERT INTO pgb_steps (workflow_id, step_id, name, output) VALUES (:wid, 3, 'create_shipment', '{"effect":"create_shipment"}');
INSERT INTO pgb_steps (workflow_id, step_id, name, output) VALUES (:wid, 4, 'send_confirmation', '{"effect":"send_confirmation"}');
UPDATE pgb_workflows SET status = 'SUCCESS', output = '"completed"', updated_at = now() WHERE id = :wid;
