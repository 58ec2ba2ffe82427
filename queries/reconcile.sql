-- name: ActiveClaimsAmong :many
-- Which of these consumers hold an active claim (primary-key lookups): the
-- write tokens of the others are dropped.
SELECT consumer_id, epoch FROM consumer_claims
 WHERE tenant_id = @tenant_id AND consumer_id = ANY(@consumer_ids::text[]) AND status = 'active';

-- name: RunnerTokenHashes :many
-- The current token hashes of the cached runners: a changed or missing one
-- drops the cache entry.
SELECT id, token_hash FROM runners
 WHERE tenant_id = @tenant_id AND id = ANY(@ids::text[]);
