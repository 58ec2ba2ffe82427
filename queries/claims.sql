-- name: ListClaims :many
SELECT c.consumer_id, c.epoch, c.wake_id, c.entity_url, c.stream_path, c.runner_id, c.status,
       c.claimed_at, c.last_heartbeat_at, c.lease_expires_at, c.released_at, c.acked_streams, c.updated_at
  FROM consumer_claims c
 WHERE c.tenant_id = @tenant_id
   AND (sqlc.narg('status')::text IS NULL OR c.status = sqlc.narg('status')::text)
   AND (sqlc.narg('runner_id')::text IS NULL OR c.runner_id = sqlc.narg('runner_id')::text)
   AND (sqlc.narg('entity_url')::text IS NULL OR c.entity_url = sqlc.narg('entity_url')::text)
 ORDER BY c.claimed_at DESC, c.consumer_id, c.epoch
 LIMIT @max_rows;

-- name: ActiveClaimsForRunner :many
SELECT c.consumer_id, c.epoch, c.entity_url, c.stream_path, c.claimed_at, c.last_heartbeat_at,
       c.lease_expires_at,
       (d.active_consumer_id IS NOT DISTINCT FROM c.consumer_id
        AND d.active_epoch IS NOT DISTINCT FROM c.epoch)::boolean AS holds_slot,
       (c.lease_expires_at <= now())::boolean AS lease_passed
  FROM consumer_claims c
  LEFT JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
 WHERE c.tenant_id = @tenant_id AND c.runner_id = @runner_id AND c.status = 'active'
 ORDER BY c.claimed_at, c.consumer_id;

-- name: DispatchCounts :one
-- Entity counts for runner health: with a claim in their slot, with an
-- outstanding wake, and with sent messages past their acked offset.
SELECT count(*) FILTER (WHERE d.active_consumer_id IS NOT NULL)::bigint AS with_active_claim,
       count(*) FILTER (WHERE d.outstanding_wake_id IS NOT NULL)::bigint AS with_outstanding_wake,
       count(*) FILTER (WHERE d.last_sent_offset > d.acked_offset)::bigint AS with_pending_work
  FROM entity_dispatch_state d
 WHERE d.tenant_id = @tenant_id
   AND (sqlc.narg('runner_id')::text IS NULL OR d.active_runner_id = sqlc.narg('runner_id')::text
        OR EXISTS (SELECT 1 FROM entities e WHERE e.tenant_id = d.tenant_id AND e.url = d.entity_url
                   AND e.runner_id = sqlc.narg('runner_id')::text));

-- name: ActiveClaimGauges :one
-- The active claims, and those among them that no dispatch slot names or
-- whose lease has passed (leaked): both read through the partial indexes of
-- active claims, so the cost follows the active claims, not the history.
SELECT count(*)::bigint AS active,
       count(*) FILTER (WHERE c.lease_expires_at <= now()
                          OR d.active_consumer_id IS DISTINCT FROM c.consumer_id
                          OR d.active_epoch IS DISTINCT FROM c.epoch)::bigint AS leaked
  FROM consumer_claims c
  LEFT JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
 WHERE c.tenant_id = @tenant_id AND c.status = 'active';

-- name: EndedClaimCounts :many
-- Ended claims by status: this reads the history (up to the retention
-- age), so the sweeper runs it about once a minute (HistoryGaugeInterval).
SELECT c.status, count(*)::bigint AS n FROM consumer_claims c
 WHERE c.tenant_id = @tenant_id AND c.status <> 'active'
 GROUP BY c.status;
