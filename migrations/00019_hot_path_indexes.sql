-- +goose Up
-- Hot statements are driven by keys (sql/lifecycle.sql, "Plans").
--
-- consumer_claims_active_runner_idx, keyed by tenant and runner, could
-- answer a by-key statement on an active claim by reading every live claim
-- of the tenant, and looked cheapest when the statistics said live claims
-- were few. A runner's health reads its active claims through
-- consumer_claims_active_lease_idx instead.
--
-- wake_queue is keyed by the runner a wake is for (runner_key: its
-- runner_id, '' for any runner; a runner id is never empty), then in claim
-- order: the claim pick reads the wakes for any runner and those for the
-- claiming runner, each a range of the primary key, and never the wakes
-- addressed to other runners. It is the table's only index, so no plan can
-- pick another one and filter.
DROP INDEX consumer_claims_active_runner_idx;
ALTER TABLE wake_queue ADD COLUMN runner_key text GENERATED ALWAYS AS (coalesce(runner_id, '')) STORED;
ALTER TABLE wake_queue DROP CONSTRAINT wake_queue_pkey,
    ADD CONSTRAINT wake_queue_pkey PRIMARY KEY (tenant_id, runner_key, created_at, wake_id);

-- +goose Down
ALTER TABLE wake_queue DROP CONSTRAINT wake_queue_pkey,
    ADD CONSTRAINT wake_queue_pkey PRIMARY KEY (tenant_id, created_at, wake_id);
ALTER TABLE wake_queue DROP COLUMN runner_key;
CREATE INDEX consumer_claims_active_runner_idx ON consumer_claims (tenant_id, runner_id) WHERE status = 'active';
