-- name: QueuedWakeCount :one
-- The tenant's queued wakes, counted up to @max_count, for the sweeper's
-- pullwake_queued_wakes gauge (internal/metrics): a walk of wake_queue's
-- primary key (tenant_id, created_at, wake_id) that stops at the cap, so
-- its cost stays bounded however long the queue grows. A result equal to
-- the cap means at least that many.
SELECT count(*)::bigint AS queued
  FROM (SELECT 1 FROM wake_queue q WHERE q.tenant_id = @tenant_id LIMIT @max_count::integer) q;
