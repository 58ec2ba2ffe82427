-- The lean cycle (bench mode 11): the claim rules of pullwake on the
-- smallest schema that keeps them, as the yardstick the real cycle is
-- compared with. Not part of pullwake: the bench creates this schema for
-- the mode and drops it after.
--
-- Rules kept: a runner must exist and be enabled; the oldest queued wake
-- for the runner or for any runner is picked (SKIP LOCKED); an entity has
-- at most one active claim (its row is the dispatch slot: the claim takes
-- it only when it is free or its lease lapsed) and each claim gets the next
-- epoch; the claim token's hash is kept and checked at the release; an ack
-- must name the claim's stream and lie within its tail; the release ends
-- only an active claim and clears the entity's slot only if the slot names
-- this claim; a message sent past the acked offset is queued a new wake.
-- What is left out: wake events, tags, stop, push, notifications, the
-- write-token hash, history columns.
CREATE SCHEMA pw_lean;

CREATE TABLE pw_lean.runners (
    id      text PRIMARY KEY,
    enabled boolean NOT NULL DEFAULT true
);

CREATE TABLE pw_lean.entities (
    url          text PRIMARY KEY,
    stream       text NOT NULL,
    status       text NOT NULL DEFAULT 'idle',
    epoch        bigint NOT NULL DEFAULT 0,
    active_epoch bigint,
    lease_until  timestamptz,
    acked        bigint NOT NULL DEFAULT 0,
    sent         bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

CREATE TABLE pw_lean.streams (
    path text PRIMARY KEY,
    tail bigint NOT NULL DEFAULT 0
) WITH (fillfactor = 80);

CREATE TABLE pw_lean.messages (
    path text NOT NULL,
    seq  bigint NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (path, seq)
);

-- The queue is a partial index of wakes.
CREATE TABLE pw_lean.wakes (
    id         bigint PRIMARY KEY,
    url        text NOT NULL,
    runner_key text NOT NULL DEFAULT '',
    status     text NOT NULL DEFAULT 'queued',
    created_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 90);
CREATE INDEX wakes_queue ON pw_lean.wakes (runner_key, created_at, id) WHERE status = 'queued';
CREATE SEQUENCE pw_lean.wake_seq;

CREATE TABLE pw_lean.claims (
    url         text NOT NULL,
    epoch       bigint NOT NULL,
    wake_id     bigint NOT NULL,
    runner      text NOT NULL,
    token_hash  bytea NOT NULL,
    status      text NOT NULL DEFAULT 'active',
    lease_until timestamptz NOT NULL,
    acked       bigint,
    PRIMARY KEY (url, epoch)
) WITH (fillfactor = 90);

CREATE FUNCTION pw_lean.claim(p_runner text, p_ttl_ms integer,
    OUT url text, OUT epoch bigint, OUT stream text, OUT token text)
    LANGUAGE plpgsql
AS $$
DECLARE
    v_now  timestamptz := now();
    v_wake bigint;
    a_wake bigint;
    a_url  text;
    a_at   timestamptz;
    o_wake bigint;
    o_url  text;
    o_at   timestamptz;
BEGIN
    IF NOT (SELECT r.enabled FROM pw_lean.runners r WHERE r.id = p_runner) THEN
        RAISE EXCEPTION 'runner % not enabled', p_runner;
    END IF;
    -- Two probes, the wakes for any runner and this runner's, each one
    -- descent of the queue index; the older head is tried. (The real pick
    -- moves on when the head's entity is held; the bench's entities are
    -- never held by another claim.)
    SELECT w.id, w.url, w.created_at INTO a_wake, a_url, a_at FROM pw_lean.wakes w
         WHERE w.runner_key = '' AND w.status = 'queued'
         ORDER BY w.created_at, w.id
         LIMIT 1 FOR UPDATE SKIP LOCKED;
    SELECT w.id, w.url, w.created_at INTO o_wake, o_url, o_at FROM pw_lean.wakes w
         WHERE w.runner_key = p_runner AND w.status = 'queued'
         ORDER BY w.created_at, w.id
         LIMIT 1 FOR UPDATE SKIP LOCKED;
    IF a_wake IS NULL AND o_wake IS NULL THEN
        RETURN;
    ELSIF o_wake IS NULL OR (a_wake IS NOT NULL AND (a_at, a_wake) < (o_at, o_wake)) THEN
        v_wake := a_wake;
        url := a_url;
    ELSE
        v_wake := o_wake;
        url := o_url;
    END IF;
    token := replace(gen_random_uuid()::text, '-', '') || replace(gen_random_uuid()::text, '-', '');
    UPDATE pw_lean.entities e
           SET epoch = e.epoch + 1, active_epoch = e.epoch + 1, status = 'running',
               lease_until = v_now + p_ttl_ms * interval '1 millisecond'
         WHERE e.url = claim.url AND (e.active_epoch IS NULL OR e.lease_until <= v_now)
        RETURNING e.epoch, e.stream INTO epoch, stream;
    IF NOT FOUND THEN
        url := NULL;
        RETURN;
    END IF;
    INSERT INTO pw_lean.claims (url, epoch, wake_id, runner, token_hash, lease_until)
    VALUES (url, epoch, v_wake, p_runner, sha256(convert_to(token, 'UTF8')),
            v_now + p_ttl_ms * interval '1 millisecond');
    UPDATE pw_lean.wakes w SET status = 'claimed' WHERE w.id = v_wake;
END
$$;

CREATE FUNCTION pw_lean.append(p_path text, p_data bytea) RETURNS bigint
    LANGUAGE plpgsql
AS $$
DECLARE
    v_tail bigint;
BEGIN
    UPDATE pw_lean.streams s SET tail = s.tail + 1 WHERE s.path = p_path RETURNING s.tail INTO v_tail;
    INSERT INTO pw_lean.messages (path, seq, data) VALUES (p_path, v_tail, p_data);
    RETURN v_tail;
END
$$;

CREATE FUNCTION pw_lean.release(p_url text, p_epoch bigint, p_token text, p_stream text, p_ack bigint)
    RETURNS boolean
    LANGUAGE plpgsql
AS $$
DECLARE
    v_wake   bigint;
    v_stream text;
    v_sent   bigint;
    v_acked  bigint;
BEGIN
    IF p_ack > (SELECT s.tail FROM pw_lean.streams s WHERE s.path = p_stream) THEN
        RAISE EXCEPTION 'ack % beyond the tail of %', p_ack, p_stream;
    END IF;
    UPDATE pw_lean.claims c SET status = 'released', acked = p_ack
     WHERE c.url = p_url AND c.epoch = p_epoch AND c.status = 'active'
       AND c.token_hash = sha256(convert_to(p_token, 'UTF8'))
    RETURNING c.wake_id INTO v_wake;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE pw_lean.entities e
       SET status = 'idle', active_epoch = NULL, lease_until = NULL,
           acked = CASE WHEN p_stream = e.stream THEN greatest(e.acked, p_ack) ELSE e.acked END
     WHERE e.url = p_url AND e.active_epoch = p_epoch
    RETURNING e.sent, e.acked INTO v_sent, v_acked;
    UPDATE pw_lean.wakes w SET status = 'completed' WHERE w.id = v_wake;
    IF v_sent > v_acked THEN
        INSERT INTO pw_lean.wakes (id, url) VALUES (nextval('pw_lean.wake_seq'), p_url);
    END IF;
    RETURN true;
END
$$;
