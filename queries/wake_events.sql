-- Wake events (00008_electric_runtime): one message in a runner's wake
-- stream per queued wake and target runner.

-- name: PurgeWakeEvents :one
-- One bounded batch; the sweeper repeats it while the count equals max_rows.
SELECT purge_wake_events(@older_than::interval, @max_rows::integer, sqlc.narg('now')::timestamptz,
                         @tenant_id::text)::integer AS deleted;

-- name: WakeStreamTails :many
-- The tails of the wake streams a server's live readers wait on.
SELECT s.path, s.tail_seq FROM streams s WHERE s.tenant_id = @tenant_id AND s.path = ANY(@paths::text[]);

-- name: SweepWakeEvents :one
-- The wake-event rule's backstop: new events for claimable wakes whose
-- events their runners have read past without claiming.
SELECT sweep_wake_events(@min_age::interval, @max_wakes::integer, sqlc.narg('now')::timestamptz,
                         @tenant_id::text)::integer AS wakes;

-- name: PublishWakeEvents :one
-- Publishes up to max_rows rows of the wake-event log (behind the snapshot
-- fence) to the runners' wake streams; the events written.
SELECT pw_publish_wake_events(@max_rows::integer)::integer AS events;
