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
       updated_at = now()
 WHERE tenant_id = sqlc.arg('tenant_id') AND id = sqlc.arg('id')
RETURNING *;

-- name: SetRunnerAdminStatus :one
UPDATE runners SET admin_status = @admin_status, updated_at = now()
 WHERE tenant_id = @tenant_id AND id = @id
RETURNING *;
