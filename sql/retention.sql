-- Retention: finished history is deleted in small batches by the
-- housekeeping loop of the sweeper (one instance at a time, under its
-- advisory lock), never anything live.
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

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
CREATE OR REPLACE FUNCTION purge_history(
    p_older_than interval,
    p_batch integer DEFAULT 1000,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(claims_deleted integer, wakes_deleted integer)
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_claims integer;
    v_wakes  integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'PW008: retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'PW008: batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
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
$function$;

-- purge_wake_events deletes the events of finished wakes (completed,
-- expired, superseded, or already purged) older than p_older_than, with
-- their wake-stream messages; at most p_batch a call. The newest message of
-- a wake stream is kept, so a reader behind never finds its whole remaining
-- range gone. Offsets are never reused: the stream's tail is untouched.
CREATE OR REPLACE FUNCTION purge_wake_events(
    p_older_than interval,
    p_batch integer DEFAULT 1000,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS integer
    LANGUAGE plpgsql
AS $function$
DECLARE
    v_cutoff timestamptz := coalesce(p_now, now()) - p_older_than;
    v_n      integer;
BEGIN
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'PW008: retention age must be zero or more, got %', p_older_than USING ERRCODE = 'PW008';
    END IF;
    IF p_batch IS NULL OR p_batch <= 0 THEN
        RAISE EXCEPTION 'PW008: batch must be positive, got %', p_batch USING ERRCODE = 'PW008';
    END IF;
    WITH gone AS (
        DELETE FROM wake_events v
         WHERE v.ctid = ANY (ARRAY(
                   SELECT k.ctid FROM wake_events k
                     LEFT JOIN wakes w ON w.tenant_id = k.tenant_id AND w.wake_id = k.wake_id
                     JOIN streams s ON s.tenant_id = k.tenant_id AND s.path = pw_wake_stream(k.runner_id)
                    WHERE k.tenant_id = p_tenant AND k.created_at < v_cutoff
                      AND (w.wake_id IS NULL OR w.status IN ('completed', 'expired', 'superseded')
                                                AND w.finished_at < v_cutoff)
                      AND k.seq < s.tail_seq
                    ORDER BY k.created_at
                    LIMIT p_batch
                    FOR UPDATE OF k SKIP LOCKED))
        RETURNING v.tenant_id, v.runner_id, v.seq
    )
    DELETE FROM stream_messages m
     USING gone g
     WHERE m.tenant_id = g.tenant_id AND m.path = pw_wake_stream(g.runner_id) AND m.seq = g.seq;
    GET DIAGNOSTICS v_n = ROW_COUNT;
    RETURN v_n;
END
$function$;
