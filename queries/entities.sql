-- name: GetEntity :one
SELECT e.url, e.status, e.main_stream, e.runner_id, e.created_at, e.updated_at,
       d.active_consumer_id, d.active_epoch, d.active_runner_id, d.active_lease_expires_at,
       d.outstanding_wake_id, pw_offset(d.acked_offset)::text AS acked_offset,
       pw_offset(d.last_sent_offset)::text AS last_sent_offset, d.last_released_at,
       e.tags, e.parent, e.stop_signal
  FROM entities e
  JOIN entity_dispatch_state d ON d.tenant_id = e.tenant_id AND d.entity_url = e.url
 WHERE e.tenant_id = @tenant_id AND e.url = @url;

-- name: ListEntities :many
SELECT e.url, e.status, e.main_stream, e.runner_id, e.created_at, e.updated_at,
       d.active_consumer_id, d.active_epoch, d.active_runner_id, d.active_lease_expires_at,
       d.outstanding_wake_id, pw_offset(d.acked_offset)::text AS acked_offset,
       pw_offset(d.last_sent_offset)::text AS last_sent_offset, d.last_released_at,
       e.tags, e.parent, e.stop_signal
  FROM entities e
  JOIN entity_dispatch_state d ON d.tenant_id = e.tenant_id AND d.entity_url = e.url
 WHERE e.tenant_id = @tenant_id
   AND (sqlc.narg('status')::text IS NULL OR e.status = sqlc.narg('status')::text)
   AND (sqlc.narg('runner_id')::text IS NULL OR e.runner_id = sqlc.narg('runner_id')::text)
   AND (sqlc.narg('type')::text IS NULL OR e.url LIKE '/' || sqlc.narg('type')::text || '/%')
   AND (sqlc.narg('parent')::text IS NULL OR e.parent = sqlc.narg('parent')::text)
 ORDER BY e.url
 LIMIT @max_rows;
