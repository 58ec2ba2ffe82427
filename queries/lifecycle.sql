-- Lifecycle transitions: each is one plpgsql function, one round trip.
-- Columns are cast so sqlc knows their types; NULLs become '' or 0.

-- name: SpawnEntity :one
SELECT * FROM spawn_entity(@url::text, sqlc.narg('runner_id')::text, sqlc.narg('now')::timestamptz, @tenant_id::text);

-- name: SendToEntity :one
-- txid: the transaction's 32-bit id, the inbox event's headers.txid.
SELECT r.msg_offset::text AS msg_offset, coalesce(r.wake_id, '')::text AS wake_id,
       pg_current_xact_id()::xid::text AS txid
  FROM send_to_entity(@url::text, @payload::jsonb, sqlc.narg('from_name')::text, sqlc.narg('now')::timestamptz, @tenant_id::text,
                      sqlc.narg('message_type')::text) AS r;

-- name: StopEntity :one
SELECT * FROM stop_entity(@url::text, sqlc.narg('now')::timestamptz, @tenant_id::text);

-- name: ClaimNextWake :one
SELECT r.wake_id::text AS wake_id, r.consumer_id::text AS consumer_id, r.epoch::bigint AS epoch,
       r.entity_url::text AS entity_url, r.stream_path::text AS stream_path,
       r.acked_offset::text AS acked_offset, r.claim_token::text AS claim_token,
       r.lease_expires_at::timestamptz AS lease_expires_at, r.lease_ttl_ms::integer AS lease_ttl_ms
  FROM claim_next_wake(@runner_id::text, @lease_ttl_ms::integer, sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: ClaimWakeForEvent :one
-- The claim of a runner handed a wake event: the wake of the entity whose
-- main stream the event names, or no row (claim_wake_for_event).
SELECT r.wake_id::text AS wake_id, r.consumer_id::text AS consumer_id, r.epoch::bigint AS epoch,
       r.entity_url::text AS entity_url, r.stream_path::text AS stream_path,
       r.acked_offset::text AS acked_offset, r.claim_token::text AS claim_token,
       r.lease_expires_at::timestamptz AS lease_expires_at, r.lease_ttl_ms::integer AS lease_ttl_ms
  FROM claim_wake_for_event(@runner_id::text, @stream::text, @lease_ttl_ms::integer, sqlc.narg('now')::timestamptz,
                            @tenant_id::text) AS r;

-- name: HeartbeatClaim :one
SELECT r.lease_expires_at::timestamptz AS lease_expires_at, r.entity_url::text AS entity_url,
       r.stream_path::text AS stream_path
  FROM heartbeat_claim(@consumer_id::text, @epoch::bigint, sqlc.narg('lease_ttl_ms')::integer, sqlc.narg('now')::timestamptz, @tenant_id::text, sqlc.narg('claim_token_hash')::bytea) AS r;

-- name: ReleaseClaim :one
SELECT r.released::boolean AS released, r.entity_cleared::boolean AS entity_cleared,
       r.claim_status::text AS claim_status, r.entity_url::text AS entity_url,
       r.stream_path::text AS stream_path, coalesce(r.entity_status, '')::text AS entity_status,
       coalesce(r.acked_offset, '')::text AS acked_offset, coalesce(r.queued_wake_id, '')::text AS queued_wake_id
  FROM release_claim(@consumer_id::text, @epoch::bigint, @acks::jsonb, sqlc.narg('now')::timestamptz, @tenant_id::text,
                     sqlc.narg('claim_token_hash')::bytea, @notify::boolean) AS r;

-- name: ExpireClaims :many
SELECT r.consumer_id::text AS consumer_id, r.epoch::bigint AS epoch, r.entity_url::text AS entity_url,
       r.stream_path::text AS stream_path, r.entity_cleared::boolean AS entity_cleared,
       coalesce(r.entity_status, '')::text AS entity_status, coalesce(r.queued_wake_id, '')::text AS queued_wake_id
  FROM expire_claims(sqlc.narg('now')::timestamptz, @tenant_id::text, @max_claims::integer) AS r;

-- name: SweepClaims :many
SELECT r.consumer_id::text AS consumer_id, r.epoch::bigint AS epoch, r.entity_url::text AS entity_url,
       r.stream_path::text AS stream_path, r.entity_cleared::boolean AS entity_cleared,
       coalesce(r.entity_status, '')::text AS entity_status, coalesce(r.queued_wake_id, '')::text AS queued_wake_id
  FROM sweep_claims(sqlc.narg('now')::timestamptz, @tenant_id::text, @max_claims::integer) AS r;

-- name: ClaimRequest :one
SELECT r.active::boolean AS active, coalesce(r.reason, '')::text AS reason, r.entity_url::text AS entity_url,
       r.stream_path::text AS stream_path, r.runner_id::text AS runner_id,
       r.lease_expires_at::timestamptz AS lease_expires_at
  FROM claim_request(@consumer_id::text, @epoch::bigint, sqlc.narg('wake_id')::text,
                     sqlc.narg('claim_token_hash')::bytea, sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;
