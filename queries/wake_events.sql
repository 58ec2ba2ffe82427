-- Wake events (00008_electric_runtime): one message in a runner's wake
-- stream per queued wake and target runner.

-- name: PurgeWakeEvents :one
-- One bounded batch; the sweeper repeats it while the count equals max_rows.
SELECT purge_wake_events(@older_than::interval, @max_rows::integer, sqlc.narg('now')::timestamptz,
                         @tenant_id::text)::integer AS deleted;
