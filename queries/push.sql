-- Push delivery: webhook subscriptions and the delivery worker's steps.

-- name: UpsertPushSubscription :one
SELECT r.outcome::text AS outcome
  FROM upsert_push_subscription(@id::text, sqlc.narg('pattern')::text, @streams::text[], @webhook_url::text,
                                @lease_ttl_ms::integer, @description::text, sqlc.narg('now')::timestamptz,
                                @tenant_id::text) AS r;

-- name: GetPushSubscription :one
SELECT * FROM push_subscriptions WHERE tenant_id = @tenant_id AND id = @id;

-- name: DeletePushSubscription :execrows
DELETE FROM push_subscriptions WHERE tenant_id = @tenant_id AND id = @id AND kind = 'subscription';

-- name: PushPending :many
-- queued_at is when the wake was queued (push_queue's copy of its
-- created_at), from which the worker measures the delivery's lag: one
-- primary-key probe a row, in the snapshot push_pending read the row in.
SELECT r.target_id::text AS target_id, r.wake_id::text AS wake_id,
       (SELECT p.created_at FROM push_queue p
         WHERE p.tenant_id = @tenant_id::text AND p.wake_id = r.wake_id) AS queued_at
  FROM push_pending(@max_wakes::integer, sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: ClaimWakeForPush :one
SELECT r.wake_id::text AS wake_id, r.consumer_id::text AS consumer_id, r.epoch::bigint AS epoch,
       r.entity_url::text AS entity_url, r.stream_path::text AS stream_path,
       r.acked_offset::text AS acked_offset, r.claim_token::text AS claim_token,
       r.lease_expires_at::timestamptz AS lease_expires_at, r.lease_ttl_ms::integer AS lease_ttl_ms,
       r.webhook_url::text AS webhook_url, r.tail_offset::text AS tail_offset
  FROM claim_wake_for_push(@target_id::text, @wake_id::text, sqlc.narg('lease_ttl_ms')::integer,
                           sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: PushDelivered :exec
-- A delivery answered 2xx: the target's back-off starts over. The row is
-- written only when that changes something or last_delivered_at is a
-- second old, so busy targets' deliveries do not queue on its lock.
UPDATE push_subscriptions
   SET failures = 0, next_attempt_at = '1970-01-01 00:00:00+00', last_error = NULL, last_delivered_at = now()
 WHERE tenant_id = @tenant_id AND id = @id
   AND (failures > 0 OR last_delivered_at IS NULL OR last_delivered_at < now() - interval '1 second');

-- name: PushFailed :one
-- A delivery failed: the target waits base * 2^failures (at most max_ms),
-- +-20% jitter, before its next attempt, on every server.
UPDATE push_subscriptions
   SET failures = failures + 1, last_error = left(sqlc.arg('last_error')::text, 1000),
       next_attempt_at = now() + least(sqlc.arg('max_ms')::float8, sqlc.arg('base_ms')::float8 * power(2, least(failures, 30)))
                                 * (0.8 + random() * 0.4) * interval '1 millisecond'
 WHERE tenant_id = @tenant_id AND id = @id
RETURNING failures, next_attempt_at;
