-- name: CreateRunner :one
INSERT INTO runners (tenant_id, id, label, kind, token_hash)
VALUES (@tenant_id, @id, @label, @kind, @token_hash)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: GetRunner :one
SELECT * FROM runners WHERE tenant_id = @tenant_id AND id = @id;

-- name: ListRunners :many
SELECT * FROM runners WHERE tenant_id = @tenant_id ORDER BY id;

-- name: ListRunnersPage :many
-- One page of runners by id: those after sqlc.narg('after') (NULL = from
-- the first), at most max_rows (the API caps it at 1000).
SELECT * FROM runners
 WHERE tenant_id = @tenant_id AND (sqlc.narg('after')::text IS NULL OR id > sqlc.narg('after')::text)
 ORDER BY id
 LIMIT @max_rows::integer;

-- name: HeartbeatRunner :one
UPDATE runners
   SET last_seen_at = now(),
       liveness_lease_expires_at = now() + make_interval(secs => sqlc.arg('lease_ms')::integer / 1000.0),
       diagnostics = coalesce(sqlc.narg('diagnostics')::jsonb, diagnostics),
       wake_stream_read_seq = coalesce(sqlc.narg('wake_stream_read_seq')::bigint, wake_stream_read_seq),
       updated_at = now()
 WHERE tenant_id = sqlc.arg('tenant_id') AND id = sqlc.arg('id')
RETURNING *;

-- name: SetRunnerAdminStatus :one
UPDATE runners SET admin_status = @admin_status, updated_at = now()
 WHERE tenant_id = @tenant_id AND id = @id
RETURNING *;

-- name: RegisterRunner :one
-- Registers a runner or restarts a registered one (new token hash), and
-- creates its wake stream (00008_electric_runtime). The runner's row is
-- read afterwards with GetRunner.
SELECT r.created::boolean AS created, r.wake_stream::text AS wake_stream,
       r.wake_stream_offset::text AS wake_stream_offset
  FROM register_runner(@id::text, sqlc.narg('label')::text, sqlc.narg('kind')::text, @token_hash::bytea,
                       sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: SetRunnerStatus :one
-- Enables or disables a runner; an enabled one gets the events of the
-- queued wakes its wake stream lacks.
SELECT * FROM set_runner_admin_status(@id::text, @admin_status::text, sqlc.narg('now')::timestamptz, @tenant_id::text);

-- name: RunnerWakeStream :one
-- The runner's wake stream and the offset from which a reader sees the
-- event of every wake still queued for it.
SELECT pw_wake_stream(@id::text)::text AS wake_stream,
       pw_wake_stream_offset(@tenant_id::text, @id::text)::text AS wake_stream_offset;
