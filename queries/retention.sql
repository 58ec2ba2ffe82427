-- Retention and the fused done-and-claim-next transition (00004_retention).
-- Columns are cast so sqlc knows their types; NULLs become '' or 0, and
-- has_next says whether the next_* columns hold a wake.

-- name: PurgeHistory :one
-- One bounded batch; the sweeper repeats it while a count equals max_rows.
SELECT r.claims_deleted::integer AS claims_deleted, r.wakes_deleted::integer AS wakes_deleted
  FROM purge_history(@older_than::interval, @max_rows::integer, sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: ReleaseAndClaimNext :one
SELECT r.released::boolean AS released, r.entity_cleared::boolean AS entity_cleared,
       r.claim_status::text AS claim_status, r.entity_url::text AS entity_url,
       r.stream_path::text AS stream_path, coalesce(r.entity_status, '')::text AS entity_status,
       coalesce(r.acked_offset, '')::text AS acked_offset, coalesce(r.queued_wake_id, '')::text AS queued_wake_id,
       (r.next_wake_id IS NOT NULL)::boolean AS has_next,
       coalesce(r.next_wake_id, '')::text AS next_wake_id, coalesce(r.next_consumer_id, '')::text AS next_consumer_id,
       coalesce(r.next_epoch, 0)::bigint AS next_epoch, coalesce(r.next_entity_url, '')::text AS next_entity_url,
       coalesce(r.next_stream_path, '')::text AS next_stream_path,
       coalesce(r.next_acked_offset, '')::text AS next_acked_offset,
       coalesce(r.next_claim_token, '')::text AS next_claim_token,
       coalesce(r.next_lease_expires_at, 'epoch')::timestamptz AS next_lease_expires_at,
       coalesce(r.next_lease_ttl_ms, 0)::integer AS next_lease_ttl_ms,
       coalesce(r.next_error, '')::text AS next_error
  FROM release_and_claim_next(@consumer_id::text, @epoch::bigint, @acks::jsonb, sqlc.narg('runner_id')::text,
                              @lease_ttl_ms::integer, sqlc.narg('now')::timestamptz, @tenant_id::text,
                              sqlc.narg('claim_token_hash')::bytea, @notify::boolean) AS r;

-- name: TryHousekeepingLock :one
-- The housekeeping lock (a session advisory lock, one per tenant): the
-- instance whose sweeper holds it purges history and vacuums the queue; the
-- others skip that pass. Its key differs from the expiry pass's lock, so
-- housekeeping never holds up expiry.
SELECT pg_try_advisory_lock(hashtextextended('pullwake.housekeeping.' || @tenant_id::text, 0))::boolean AS locked;

-- name: HousekeepingUnlock :one
SELECT pg_advisory_unlock(hashtextextended('pullwake.housekeeping.' || @tenant_id::text, 0))::boolean AS unlocked;
