-- name: CreateRunner :one
INSERT INTO runners (tenant_id, id, label, kind, token_hash)
VALUES (@tenant_id, @id, @label, @kind, @token_hash)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: GetRunner :one
SELECT * FROM runners WHERE tenant_id = @tenant_id AND id = @id;

-- name: ListRunners :many
SELECT * FROM runners WHERE tenant_id = @tenant_id ORDER BY id;

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
