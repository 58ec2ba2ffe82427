-- +goose Up
-- Retention, and the fused done-and-claim-next transition.

-- +goose StatementBegin
-- purge_history deletes finished history older than p_older_than (measured
-- back from p_now): claims that are no longer active (released, expired,
-- failed) and wakes that are completed, expired or superseded. One call
-- deletes at most p_batch rows of each table, oldest first, walking the
-- partial indexes consumer_claims_finished_idx and wakes_finished_idx, and
-- skipping rows another transaction holds locked. It is one short
-- transaction; a caller (the sweeper) repeats it while a count equals
-- p_batch. Active claims, queued and claimed wakes are never touched.
-- A done for a claim purged here gets CLAIM_NOT_FOUND instead of the
-- idempotent released = false: keep the age well above any retry window.
CREATE FUNCTION purge_history(p_older_than interval, p_batch integer DEFAULT 1000,
                              p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default')
RETURNS TABLE (claims_deleted integer, wakes_deleted integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_claims integer;
    v_wakes  integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
    END IF;

    -- The batch is picked through the partial index and locked, then
    -- deleted by ctid (a Tid Scan: a join back to the table by key can be
    -- planned as a hash join over the whole table). The locks pin the
    -- ctids; the DELETE re-checks the guard all the same.
    DELETE FROM consumer_claims c
     WHERE c.ctid = ANY (ARRAY(
               SELECT k.ctid FROM consumer_claims k
                WHERE k.tenant_id = p_tenant AND k.status <> 'active' AND k.updated_at < v_cutoff
                ORDER BY k.updated_at
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
       AND c.tenant_id = p_tenant AND c.status <> 'active' AND c.updated_at < v_cutoff;
    GET DIAGNOSTICS v_claims = ROW_COUNT;

    DELETE FROM wakes w
     WHERE w.ctid = ANY (ARRAY(
               SELECT k.ctid FROM wakes k
                WHERE k.tenant_id = p_tenant AND k.status IN ('completed', 'expired', 'superseded')
                  AND k.finished_at < v_cutoff
                ORDER BY k.finished_at
                LIMIT p_batch
                FOR UPDATE SKIP LOCKED))
       AND w.tenant_id = p_tenant AND w.status IN ('completed', 'expired', 'superseded')
       AND w.finished_at < v_cutoff;
    GET DIAGNOSTICS v_wakes = ROW_COUNT;

    RETURN QUERY SELECT v_claims, v_wakes;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- release_and_claim_next is a done that also claims the runner's next wake,
-- in one transaction: release_claim, then, only if that call released the
-- claim, claim_next_wake for p_runner_id (NULL = the claim's own runner).
-- A steady-state runner cycle is then two commits (append, done) instead of
-- three. The release columns are release_claim's; the next_* columns are
-- claim_next_wake's, all NULL when there is no next wake. A repeated done
-- (released = false) claims nothing: the first call's next claim, if its
-- answer was lost, ends by lease expiry like any unanswered claim.
-- A runner that is unknown or disabled gets no next wake (next_error says
-- why) and its release still commits: the claim runs in a subtransaction.
-- p_claim_token_hash and p_notify are release_claim's.
CREATE FUNCTION release_and_claim_next(p_consumer_id text, p_epoch bigint, p_acks jsonb DEFAULT '[]',
                                       p_runner_id text DEFAULT NULL, p_lease_ttl_ms integer DEFAULT 30000,
                                       p_now timestamptz DEFAULT NULL, p_tenant text DEFAULT 'default',
                                       p_claim_token_hash bytea DEFAULT NULL, p_notify boolean DEFAULT true)
RETURNS TABLE (released boolean, entity_cleared boolean, claim_status text, entity_url text,
               stream_path text, entity_status text, acked_offset text, queued_wake_id text,
               next_wake_id text, next_consumer_id text, next_epoch bigint, next_entity_url text,
               next_stream_path text, next_acked_offset text, next_claim_token text,
               next_lease_expires_at timestamptz, next_lease_ttl_ms integer, next_error text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_r      record;
    v_runner text := p_runner_id;
    v_err    text;
    n_wake   text;
    n_cons   text;
    n_epoch  bigint;
    n_url    text;
    n_path   text;
    n_acked  text;
    n_token  text;
    n_lease  timestamptz;
    n_ttl    integer;
BEGIN
    IF p_lease_ttl_ms IS NULL OR p_lease_ttl_ms <= 0 THEN
        RAISE EXCEPTION 'lease ttl must be positive, got %', p_lease_ttl_ms USING ERRCODE = 'PW008';
    END IF;
    SELECT * INTO v_r FROM release_claim(p_consumer_id, p_epoch, p_acks, v_now, p_tenant,
                                          p_claim_token_hash, p_notify);
    IF v_r.released THEN
        IF v_runner IS NULL THEN
            SELECT c.runner_id INTO v_runner FROM consumer_claims c
             WHERE c.tenant_id = p_tenant AND c.consumer_id = p_consumer_id AND c.epoch = p_epoch;
        END IF;
        BEGIN
            SELECT n.wake_id, n.consumer_id, n.epoch, n.entity_url, n.stream_path, n.acked_offset,
                   n.claim_token, n.lease_expires_at, n.lease_ttl_ms
              INTO n_wake, n_cons, n_epoch, n_url, n_path, n_acked, n_token, n_lease, n_ttl
              FROM claim_next_wake(v_runner, p_lease_ttl_ms, v_now, p_tenant) n;
        EXCEPTION
            WHEN SQLSTATE 'PW004' THEN v_err := 'RUNNER_NOT_FOUND';
            WHEN SQLSTATE 'PW005' THEN v_err := 'RUNNER_DISABLED';
        END;
    END IF;
    RETURN QUERY SELECT v_r.released, v_r.entity_cleared, v_r.claim_status, v_r.entity_url,
                        v_r.stream_path, v_r.entity_status, v_r.acked_offset, v_r.queued_wake_id,
                        n_wake, n_cons, n_epoch, n_url, n_path, n_acked, n_token, n_lease, n_ttl, v_err;
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION release_and_claim_next(text, bigint, jsonb, text, integer, timestamptz, text, bytea, boolean);
DROP FUNCTION purge_history(interval, integer, timestamptz, text);
