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

-- name: OldestWakeEventLogRow :many
-- The key of the oldest row of the wake-event log (none when it is empty):
-- the publisher's stall check, one descent of the log's primary key.
SELECT (l.xid::text || '/' || l.id::text)::text AS row_key
  FROM wake_event_log l ORDER BY l.xid, l.id LIMIT 1;

-- name: OldestWritingTransaction :many
-- The cluster's oldest transaction that holds a transaction id (none when
-- there is none): what holds wake events behind the snapshot fence.
SELECT a.pid::integer AS pid, coalesce(a.datname::text, '')::text AS database,
       coalesce(a.application_name, '')::text AS application_name, coalesce(a.state, '')::text AS state,
       coalesce(extract(epoch FROM now() - a.xact_start), 0)::float8 AS age_seconds,
       left(coalesce(a.query, ''), 200)::text AS query
  FROM pg_catalog.pg_stat_activity a
 WHERE a.backend_xid IS NOT NULL
 ORDER BY age(a.backend_xid) DESC
 LIMIT 1;
