-- The wake queue. A wake is one row of wakes per unit of work for an entity
-- (queued, claimed, completed, expired, superseded); an entity has at most
-- one queued wake. wake_queue mirrors the queued ones, keyed by the runner
-- they are for (runner_key: runner_id, '' for any runner), then in claim
-- order (created_at, wake_id), so the claim's pick walks a small index
-- however long the history of wakes grows, and reads only the wakes its
-- runner may take.
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- pw_queue_wake queues a wake for an entity unless one is queued already,
-- and records it as the entity's outstanding wake. The caller holds the
-- entity's dispatch row lock. Returns the queued wake.
CREATE OR REPLACE FUNCTION pw_queue_wake(
    p_tenant text,
    p_entity_url text,
    p_now timestamp with time zone
)
    RETURNS text
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_wake_id text;
BEGIN
    SELECT w.wake_id INTO v_wake_id FROM wakes w
     WHERE w.tenant_id = p_tenant AND w.entity_url = p_entity_url AND w.status = 'queued';
    IF NOT FOUND THEN
        INSERT INTO wakes (tenant_id, wake_id, entity_url, runner_id, status, created_at, updated_at)
        SELECT p_tenant, 'wake-' || nextval('wake_seq'), e.url, e.runner_id, 'queued', p_now, p_now
          FROM entities e WHERE e.tenant_id = p_tenant AND e.url = p_entity_url
        RETURNING wake_id INTO v_wake_id;
    END IF;
    UPDATE entity_dispatch_state d SET outstanding_wake_id = v_wake_id, updated_at = p_now
     WHERE d.tenant_id = p_tenant AND d.entity_url = p_entity_url;
    RETURN v_wake_id;
END
$function$;

-- pw_wake_queue_sync keeps wake_queue equal to the wakes whose status is
-- 'queued': a wake enters it when it is inserted or set queued, and leaves
-- it when its status changes or it is deleted.
CREATE OR REPLACE FUNCTION pw_wake_queue_sync()
    RETURNS trigger
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status = 'queued' THEN
        DELETE FROM wake_queue q
         WHERE q.tenant_id = OLD.tenant_id AND q.runner_key = coalesce(OLD.runner_id, '')
           AND q.created_at = OLD.created_at AND q.wake_id = OLD.wake_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status = 'queued' THEN
        INSERT INTO wake_queue (tenant_id, wake_id, entity_url, runner_id, created_at)
        VALUES (NEW.tenant_id, NEW.wake_id, NEW.entity_url, NEW.runner_id, NEW.created_at);
    END IF;
    RETURN NULL;
END
$function$;

-- The WHEN clauses keep the function out of every other change of a wake
-- (a claimed wake completing, a finished one purged).
CREATE OR REPLACE TRIGGER wakes_queue_insert AFTER INSERT ON wakes
    FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION pw_wake_queue_sync();

CREATE OR REPLACE TRIGGER wakes_queue_update AFTER UPDATE ON wakes
    FOR EACH ROW WHEN ((OLD.status = 'queued' OR NEW.status = 'queued')
                       AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.wake_id IS DISTINCT FROM NEW.wake_id
                            OR OLD.entity_url IS DISTINCT FROM NEW.entity_url
                            OR OLD.runner_id IS DISTINCT FROM NEW.runner_id
                            OR OLD.created_at IS DISTINCT FROM NEW.created_at))
    EXECUTE FUNCTION pw_wake_queue_sync();

CREATE OR REPLACE TRIGGER wakes_queue_delete AFTER DELETE ON wakes
    FOR EACH ROW WHEN (OLD.status = 'queued') EXECUTE FUNCTION pw_wake_queue_sync();
