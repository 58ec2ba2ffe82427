-- Runners: registration, admin status, and what the servers cache about
-- them. A runner has a hashed token, an admin status (enabled, disabled), a
-- liveness lease and a wake stream (wake_events.sql).
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- register_runner registers a runner, or restarts a registered one: the
-- token hash is replaced (the old token stops working), label and kind are
-- updated, admin status, claims and wake stream are kept. The runner's wake
-- stream is created when missing and given a new event for each queued wake
-- it may claim (pw_backfill_wake_events). created says which of the two
-- happened.
CREATE OR REPLACE FUNCTION register_runner(
    p_id text,
    p_label text,
    p_kind text,
    p_token_hash bytea,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS TABLE(
        created boolean,
        id text,
        label text,
        kind text,
        admin_status text,
        last_seen_at timestamp with time zone,
        liveness_lease_expires_at timestamp with time zone,
        diagnostics jsonb,
        created_at timestamp with time zone,
        updated_at timestamp with time zone,
        wake_stream text,
        wake_stream_offset text
    )
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_path    text := pw_wake_stream(p_id);
    v_created boolean;
    v_ct      text;
    v_r       runners%ROWTYPE;
BEGIN
    IF p_id IS NULL OR p_id !~ '^[A-Za-z0-9._~-]{1,128}$' THEN
        RAISE EXCEPTION 'PW008: runner id % must match [A-Za-z0-9._~-]{1,128}', coalesce(quote_literal(p_id), 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    IF p_token_hash IS NULL THEN
        RAISE EXCEPTION 'PW008: token hash is required' USING ERRCODE = 'PW008';
    END IF;
    INSERT INTO runners AS r (tenant_id, id, label, kind, token_hash, created_at, updated_at)
    VALUES (p_tenant, p_id, coalesce(p_label, ''), coalesce(p_kind, ''), p_token_hash, v_now, v_now)
    ON CONFLICT (tenant_id, id) DO UPDATE
       SET token_hash = EXCLUDED.token_hash,
           label = coalesce(p_label, r.label), kind = coalesce(p_kind, r.kind),
           updated_at = v_now
    RETURNING (r.xmax = 0) INTO v_created;
    SELECT r.* INTO v_r FROM runners r WHERE r.tenant_id = p_tenant AND r.id = p_id;

    SELECT s.content_type INTO v_ct FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_path;
    IF NOT FOUND THEN
        INSERT INTO streams (tenant_id, path, content_type, accessed_at, created_at, updated_at)
        VALUES (p_tenant, v_path, 'application/json', v_now, v_now, v_now);
    ELSIF pw_media_type(v_ct) <> 'application/json' THEN
        RAISE EXCEPTION 'PW011: stream % exists with content type %, not a wake stream', v_path, v_ct
            USING ERRCODE = 'PW011';
    END IF;
    PERFORM pw_backfill_wake_events(p_tenant, p_id, v_now);

    RETURN QUERY SELECT v_created, v_r.id, v_r.label, v_r.kind, v_r.admin_status, v_r.last_seen_at,
                        v_r.liveness_lease_expires_at, v_r.diagnostics, v_r.created_at, v_r.updated_at,
                        v_path, pw_wake_stream_offset(p_tenant, p_id);
END
$function$;

-- set_runner_admin_status enables or disables a runner. An enabled runner
-- gets a new event for each queued wake it may claim
-- (pw_backfill_wake_events): wakes for any runner queued while it was
-- disabled, and those whose events it read while it could not claim.
CREATE OR REPLACE FUNCTION set_runner_admin_status(
    p_id text,
    p_admin_status text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone,
    p_tenant text DEFAULT 'default'::text
)
    RETURNS SETOF runners
    LANGUAGE plpgsql
AS $function$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
BEGIN
    IF p_admin_status IS NULL OR p_admin_status NOT IN ('enabled', 'disabled') THEN
        RAISE EXCEPTION 'PW008: admin status must be enabled or disabled, got %', coalesce(p_admin_status, 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    UPDATE runners r SET admin_status = p_admin_status, updated_at = v_now
     WHERE r.tenant_id = p_tenant AND r.id = p_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW004: runner % not found', p_id USING ERRCODE = 'PW004';
    END IF;
    IF p_admin_status = 'enabled' THEN
        PERFORM pw_backfill_wake_events(p_tenant, p_id, v_now);
    END IF;
    RETURN QUERY SELECT * FROM runners r WHERE r.tenant_id = p_tenant AND r.id = p_id;
END
$function$;

-- pw_notify_runner_token: every server caches runner token hashes in
-- memory. When a runner's token changes (re-registration rotates it) or the
-- runner is deleted, the triggers below announce it on
-- pullwake_runner_tokens so every server drops its cached hash at once,
-- whoever wrote the row (a server, psql). Payload: {"tenant_id": ...,
-- "runner_id": ...}. The servers' reconcile timer re-reads cached hashes
-- too, so a lost notification is bounded as well.
CREATE OR REPLACE FUNCTION pw_notify_runner_token()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
BEGIN
    PERFORM pg_notify('pullwake_runner_tokens',
                      json_build_object('tenant_id', OLD.tenant_id, 'runner_id', OLD.id)::text);
    RETURN NULL;
END;
$function$;

CREATE OR REPLACE TRIGGER runners_token_changed
    AFTER UPDATE OF token_hash ON runners
    FOR EACH ROW WHEN (OLD.token_hash IS DISTINCT FROM NEW.token_hash)
    EXECUTE FUNCTION pw_notify_runner_token();

CREATE OR REPLACE TRIGGER runners_deleted
    AFTER DELETE ON runners
    FOR EACH ROW EXECUTE FUNCTION pw_notify_runner_token();

-- pw_runner_deleted removes a deleted runner's wake stream (its messages go
-- with it) and its event rows: they belong to the runner.
CREATE OR REPLACE FUNCTION pw_runner_deleted()
    RETURNS trigger
    LANGUAGE plpgsql
AS $function$
BEGIN
    DELETE FROM wake_events v WHERE v.tenant_id = OLD.tenant_id AND v.runner_id = OLD.id;
    DELETE FROM streams s WHERE s.tenant_id = OLD.tenant_id AND s.path = pw_wake_stream(OLD.id)
       AND s.entity_url IS NULL;
    RETURN NULL;
END
$function$;

CREATE OR REPLACE TRIGGER runners_wake_stream_delete AFTER DELETE ON runners
    FOR EACH ROW EXECUTE FUNCTION pw_runner_deleted();
