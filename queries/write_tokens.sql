-- Write tokens that outlive the process: the signing key every instance
-- shares, and the one-row check of a token the memory does not hold.

-- name: TokenKey :one
SELECT pw_token_key(@tenant_id::text)::bytea AS key;

-- name: WriteClaim :one
-- The claim a write token names, by primary key: its stream, whether it is
-- active, and whether the token's secret hashes to the stored hash.
SELECT c.stream_path, c.status = 'active' AS active,
       coalesce(c.write_token_hash = @write_token_hash::bytea, false)::boolean AS matches
  FROM consumer_claims c
 WHERE c.tenant_id = @tenant_id AND c.consumer_id = @consumer_id AND c.epoch = @epoch;
