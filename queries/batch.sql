-- Set-based transitions for group commit (migrations/00012_batch.sql): one
-- statement, one transaction for a whole batch; one row per item in input
-- order, err_code/err_message set for an item its function refused.

-- name: ReleaseClaims :many
SELECT r.ord::integer AS ord, coalesce(r.err_code, '')::text AS err_code,
       coalesce(r.err_message, '')::text AS err_message,
       coalesce(r.released, false)::boolean AS released, coalesce(r.entity_cleared, false)::boolean AS entity_cleared,
       coalesce(r.claim_status, '')::text AS claim_status, coalesce(r.entity_url, '')::text AS entity_url,
       coalesce(r.stream_path, '')::text AS stream_path, coalesce(r.entity_status, '')::text AS entity_status,
       coalesce(r.acked_offset, '')::text AS acked_offset, coalesce(r.queued_wake_id, '')::text AS queued_wake_id
  FROM release_claims(@consumer_ids::text[], @epochs::bigint[], CAST(@acks::text[] AS jsonb[]), sqlc.narg('now')::timestamptz,
                      @tenant_id::text, sqlc.narg('claim_token_hashes')::bytea[], @notify::boolean) AS r;

-- name: ClaimNextWakes :many
SELECT r.ord::integer AS ord, coalesce(r.err_code, '')::text AS err_code,
       coalesce(r.err_message, '')::text AS err_message,
       (r.wake_id IS NOT NULL)::boolean AS has_claim,
       coalesce(r.wake_id, '')::text AS wake_id, coalesce(r.consumer_id, '')::text AS consumer_id,
       coalesce(r.epoch, 0)::bigint AS epoch, coalesce(r.entity_url, '')::text AS entity_url,
       coalesce(r.stream_path, '')::text AS stream_path, coalesce(r.acked_offset, '')::text AS acked_offset,
       coalesce(r.claim_token, '')::text AS claim_token,
       coalesce(r.lease_expires_at, 'epoch')::timestamptz AS lease_expires_at,
       coalesce(r.lease_ttl_ms, 0)::integer AS lease_ttl_ms
  FROM claim_next_wakes(@runner_ids::text[], @lease_ttl_ms::integer[], sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: StreamWrites :many
SELECT r.ord::integer AS ord, coalesce(r.err_code, '')::text AS err_code,
       coalesce(r.err_message, '')::text AS err_message,
       coalesce(r.status, '')::text AS status, coalesce(r.tail_seq, 0)::bigint AS tail_seq,
       coalesce(r.closed, false)::boolean AS closed,
       coalesce(r.producer_epoch, -1)::bigint AS producer_epoch,
       coalesce(r.producer_seq, -1)::bigint AS producer_seq
  FROM pw_stream_writes(@tenant_id::text, @paths::text[], @content_types::text[], @entity_writers::boolean[],
                        @counts::integer[], @data::bytea[], sqlc.narg('now')::timestamptz) AS r;
