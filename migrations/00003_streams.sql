-- +goose Up
-- The Durable Streams protocol on PostgreSQL (server/streams). Each public
-- function is one statement from Go: one round trip, one transaction. They
-- report protocol outcomes as a status column instead of raising, because the
-- HTTP layer needs the stream's state (tail, closure, producer position) on
-- the refusals too. A refusal changes nothing.
--
-- Lock order: a writer locks the streams row first (FOR UPDATE), which
-- serializes every append, close and producer check of one stream; producer
-- rows are only touched under that lock. Entities are read, never locked, so
-- the lifecycle order (dispatch, claims, entities, wakes, streams) holds.

-- accessed_at: the last read or write, for the sliding TTL (NULL = created_at).
-- closed_by_*: the idempotent producer request that closed the stream, so its
-- retry is recognized as a duplicate.
ALTER TABLE streams
    ADD COLUMN accessed_at        timestamptz,
    ADD COLUMN closed_by_producer text,
    ADD COLUMN closed_by_epoch    bigint,
    ADD COLUMN closed_by_seq      bigint;

-- Idempotent producer state, committed with the appends it admits. Kept as
-- long as the stream exists (the protocol's "persistent store" guarantee).
CREATE TABLE stream_producers (
    tenant_id   text        NOT NULL DEFAULT 'default',
    path        text        NOT NULL,
    producer_id text        NOT NULL,
    epoch       bigint      NOT NULL CHECK (epoch >= 0),
    last_seq    bigint      NOT NULL CHECK (last_seq >= 0),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, path, producer_id),
    FOREIGN KEY (tenant_id, path) REFERENCES streams (tenant_id, path) ON DELETE CASCADE
);

-- +goose StatementBegin
-- pw_media_type reduces a Content-Type to its comparable media type:
-- lower case, parameters dropped ('Text/Plain; charset=utf-8' -> 'text/plain').
CREATE FUNCTION pw_media_type(p_ct text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT lower(btrim(split_part(p_ct, ';', 1)))
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_expired: an absolute Stream-Expires-At has passed, or the stream
-- has been idle (no read or write) for its sliding Stream-TTL.
CREATE FUNCTION pw_stream_expired(p_s streams, p_now timestamptz) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (p_s.expires_at IS NOT NULL AND p_s.expires_at <= p_now)
        OR (p_s.ttl_seconds IS NOT NULL
            AND coalesce(p_s.accessed_at, p_s.created_at) + p_s.ttl_seconds * interval '1 second' <= p_now)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_notify_stream wakes live readers of a stream on every server
-- (LISTEN pullwake_streams). Delivered at commit; repeats in one
-- transaction collapse into one. Used by the rare operations (create,
-- delete, expiry). Appends do not notify inside their transaction: a
-- NOTIFY in a writing transaction takes a cluster-wide lock until the
-- commit is flushed, serializing every append. The server publishes
-- appends after commit instead, batched, from a transaction that writes
-- nothing (internal/pgnotify).
CREATE FUNCTION pw_notify_stream(p_tenant text, p_path text) RETURNS void
LANGUAGE sql AS $$
    SELECT pg_notify('pullwake_streams', json_build_object('tenant_id', p_tenant, 'path', p_path)::text)
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_create creates a stream (PUT), optionally with initial messages
-- and closed. An existing stream with the same configuration (media type,
-- TTL, expiry, closure) is 'exists'; a different one is 'conflict'; an
-- entity's stream is 'forbidden'. An expired stream is removed and created
-- afresh. Statuses: created | exists | conflict | forbidden.
CREATE FUNCTION pw_stream_create(p_tenant text, p_path text, p_content_type text,
                                 p_ttl_seconds bigint, p_expires_at timestamptz,
                                 p_closed boolean, p_data bytea[], p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, content_type text, tail_seq bigint, closed boolean, created_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_s   streams%ROWTYPE;
BEGIN
    FOR attempt IN 1..2 LOOP
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_path FOR UPDATE;
        IF FOUND AND v_s.entity_url IS NULL AND pw_stream_expired(v_s, v_now) THEN
            DELETE FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_path;
            PERFORM pw_notify_stream(p_tenant, p_path);
        ELSIF FOUND THEN
            IF v_s.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSIF pw_media_type(v_s.content_type) = pw_media_type(p_content_type)
                  AND v_s.ttl_seconds IS NOT DISTINCT FROM p_ttl_seconds
                  AND v_s.expires_at IS NOT DISTINCT FROM p_expires_at
                  AND v_s.closed = p_closed THEN
                RETURN QUERY SELECT 'exists'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSE
                RETURN QUERY SELECT 'conflict'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            END IF;
            RETURN;
        END IF;
        INSERT INTO streams AS s (tenant_id, path, content_type, ttl_seconds, expires_at,
                                  accessed_at, created_at, updated_at)
        VALUES (p_tenant, p_path, p_content_type, p_ttl_seconds, p_expires_at, v_now, v_now, v_now)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF coalesce(cardinality(p_data), 0) > 0 THEN
                PERFORM pw_stream_append(p_tenant, p_path, p_data, v_now);
            END IF;
            UPDATE streams s SET closed = p_closed
             WHERE s.tenant_id = p_tenant AND s.path = p_path
            RETURNING s.* INTO v_s;
            RETURN QUERY SELECT 'created'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        -- A concurrent PUT created it first: compare against that one.
    END LOOP;
    RAISE EXCEPTION 'stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_write appends messages (POST), optionally closing the stream,
-- with the protocol's checks in its order of precedence, all under the
-- stream's row lock: entity stopped, closed, content type, idempotent
-- producer (epoch fencing, duplicate, gap), Stream-Seq. Producer state is
-- written in the same transaction as the messages it admits.
--   p_content_type: the request's media type (pw_media_type), NULL when the
--                   body is empty (a close-only request).
--   p_producer_*:   all NULL or all set.
-- Statuses:
--   appended        messages appended and/or stream closed
--   duplicate       a producer retry of an admitted request (nothing written)
--   closed_noop     close-only request on a closed stream (idempotent)
--   not_found | entity_stopped | closed | content_type | stream_seq
--   stale_epoch     producer_epoch = the current epoch
--   bad_epoch_seq   a new epoch must start at seq 0
--   seq_gap         producer_seq = the expected seq
CREATE FUNCTION pw_stream_write(p_tenant text, p_path text, p_content_type text, p_data bytea[],
                                p_close boolean, p_stream_seq text, p_producer_id text,
                                p_producer_epoch bigint, p_producer_seq bigint,
                                p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, tail_seq bigint, closed boolean, producer_epoch bigint, producer_seq bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now    timestamptz := coalesce(p_now, now());
    v_s      streams%ROWTYPE;
    v_p      stream_producers%ROWTYPE;
    v_has_p  boolean := false;
    v_n      integer := coalesce(cardinality(p_data), 0);
    v_status text;
BEGIN
    SELECT s.* INTO v_s FROM streams s
     WHERE s.tenant_id = p_tenant AND s.path = p_path FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, 0::bigint, false, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF v_s.entity_url IS NULL AND pw_stream_expired(v_s, v_now) THEN
        DELETE FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_path;
        PERFORM pw_notify_stream(p_tenant, p_path);
        RETURN QUERY SELECT 'not_found'::text, 0::bigint, false, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF v_s.entity_url IS NOT NULL THEN
        SELECT e.status INTO v_status FROM entities e
         WHERE e.tenant_id = p_tenant AND e.url = v_s.entity_url;
        IF v_status = 'stopped' THEN
            RETURN QUERY SELECT 'entity_stopped'::text, v_s.tail_seq, v_s.closed, NULL::bigint, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    IF p_producer_id IS NOT NULL THEN
        SELECT p.* INTO v_p FROM stream_producers p
         WHERE p.tenant_id = p_tenant AND p.path = p_path AND p.producer_id = p_producer_id;
        v_has_p := FOUND;
    END IF;

    IF v_s.closed THEN
        IF p_producer_id IS NOT NULL AND v_s.closed_by_producer = p_producer_id
           AND v_s.closed_by_epoch = p_producer_epoch AND v_s.closed_by_seq = p_producer_seq THEN
            RETURN QUERY SELECT 'duplicate'::text, v_s.tail_seq, true, p_producer_epoch, p_producer_seq;
        ELSIF v_n = 0 AND p_close THEN
            RETURN QUERY SELECT 'closed_noop'::text, v_s.tail_seq, true, NULL::bigint, NULL::bigint;
        ELSE
            RETURN QUERY SELECT 'closed'::text, v_s.tail_seq, true, NULL::bigint, NULL::bigint;
        END IF;
        RETURN;
    END IF;

    IF v_n > 0 AND p_content_type IS DISTINCT FROM pw_media_type(v_s.content_type) THEN
        RETURN QUERY SELECT 'content_type'::text, v_s.tail_seq, v_s.closed, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;

    IF p_producer_id IS NOT NULL THEN
        IF v_has_p AND p_producer_epoch < v_p.epoch THEN
            RETURN QUERY SELECT 'stale_epoch'::text, v_s.tail_seq, v_s.closed, v_p.epoch, v_p.last_seq;
            RETURN;
        ELSIF NOT v_has_p OR p_producer_epoch > v_p.epoch THEN
            IF p_producer_seq <> 0 THEN
                RETURN QUERY SELECT CASE WHEN v_has_p THEN 'bad_epoch_seq' ELSE 'seq_gap' END::text,
                                    v_s.tail_seq, v_s.closed, p_producer_epoch, 0::bigint;
                RETURN;
            END IF;
        ELSIF p_producer_seq <= v_p.last_seq THEN
            RETURN QUERY SELECT 'duplicate'::text, v_s.tail_seq, v_s.closed, v_p.epoch, v_p.last_seq;
            RETURN;
        ELSIF p_producer_seq > v_p.last_seq + 1 THEN
            RETURN QUERY SELECT 'seq_gap'::text, v_s.tail_seq, v_s.closed, v_p.epoch, v_p.last_seq + 1;
            RETURN;
        END IF;
    END IF;

    IF p_stream_seq IS NOT NULL AND v_s.last_seq_hdr IS NOT NULL
       AND p_stream_seq COLLATE "C" <= v_s.last_seq_hdr COLLATE "C" THEN
        RETURN QUERY SELECT 'stream_seq'::text, v_s.tail_seq, v_s.closed, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;

    -- One UPDATE of the stream row: new tail, closure, Stream-Seq, TTL clock.
    UPDATE streams s
       SET tail_seq = s.tail_seq + v_n,
           closed = s.closed OR p_close,
           closed_by_producer = CASE WHEN p_close THEN p_producer_id ELSE NULL END,
           closed_by_epoch = CASE WHEN p_close THEN p_producer_epoch ELSE NULL END,
           closed_by_seq = CASE WHEN p_close THEN p_producer_seq ELSE NULL END,
           last_seq_hdr = coalesce(p_stream_seq, s.last_seq_hdr),
           accessed_at = v_now, updated_at = v_now
     WHERE s.tenant_id = p_tenant AND s.path = p_path
    RETURNING s.* INTO v_s;
    INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
    SELECT p_tenant, p_path, v_s.tail_seq - v_n + u.i, u.d, v_now
      FROM unnest(p_data) WITH ORDINALITY AS u(d, i);
    IF p_producer_id IS NOT NULL THEN
        INSERT INTO stream_producers AS p (tenant_id, path, producer_id, epoch, last_seq, updated_at)
        VALUES (p_tenant, p_path, p_producer_id, p_producer_epoch, p_producer_seq, v_now)
        ON CONFLICT (tenant_id, path, producer_id)
        DO UPDATE SET epoch = excluded.epoch, last_seq = excluded.last_seq, updated_at = excluded.updated_at;
    END IF;
    RETURN QUERY SELECT 'appended'::text, v_s.tail_seq, v_s.closed, p_producer_epoch, p_producer_seq;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_read reads one chunk after seq p_after (NULL = from the tail):
-- at most p_max_rows messages and about p_max_bytes (always at least one
-- message when any lies past p_after). With p_touch it restarts the sliding
-- TTL. Statuses: ok | not_found | bad_offset (p_after past the tail).
-- The rows are bounded by the tail read in the same call, so a chunk never
-- reports data beyond the tail it returns.
CREATE FUNCTION pw_stream_read(p_tenant text, p_path text, p_after bigint, p_max_rows integer,
                               p_max_bytes bigint, p_touch boolean, p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, content_type text, tail_seq bigint, closed boolean, ttl_seconds bigint,
               expires_at timestamptz, created_at timestamptz, is_entity boolean,
               last_seq bigint, data bytea[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_now   timestamptz := coalesce(p_now, now());
    v_s     streams%ROWTYPE;
    v_after bigint;
    v_last  bigint;
    v_data  bytea[];
BEGIN
    SELECT s.* INTO v_s FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_path;
    IF NOT FOUND OR (v_s.entity_url IS NULL AND pw_stream_expired(v_s, v_now)) THEN
        RETURN QUERY SELECT 'not_found'::text, ''::text, 0::bigint, false, NULL::bigint,
                            NULL::timestamptz, NULL::timestamptz, false, 0::bigint, NULL::bytea[];
        RETURN;
    END IF;
    IF p_touch AND v_s.ttl_seconds IS NOT NULL THEN
        UPDATE streams s SET accessed_at = greatest(s.accessed_at, v_now)
         WHERE s.tenant_id = p_tenant AND s.path = p_path;
    END IF;
    v_after := coalesce(p_after, v_s.tail_seq);
    IF v_after > v_s.tail_seq THEN
        RETURN QUERY SELECT 'bad_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.ttl_seconds,
                            v_s.expires_at, v_s.created_at, v_s.entity_url IS NOT NULL, v_after, NULL::bytea[];
        RETURN;
    END IF;
    IF p_max_rows > 0 AND v_after < v_s.tail_seq THEN
        SELECT array_agg(y.data ORDER BY y.seq), max(y.seq) INTO v_data, v_last
          FROM (SELECT x.seq, x.data,
                       sum(octet_length(x.data)) OVER (ORDER BY x.seq) - octet_length(x.data) AS before
                  FROM (SELECT m.seq, m.data FROM stream_messages m
                         WHERE m.tenant_id = p_tenant AND m.path = p_path
                           AND m.seq > v_after AND m.seq <= v_s.tail_seq
                         ORDER BY m.seq LIMIT p_max_rows) x) y
         WHERE y.before < p_max_bytes;
    END IF;
    RETURN QUERY SELECT 'ok'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.ttl_seconds,
                        v_s.expires_at, v_s.created_at, v_s.entity_url IS NOT NULL,
                        coalesce(v_last, v_after), v_data;
END
$$;
-- +goose StatementEnd

-- +goose StatementBegin
-- pw_stream_delete removes a stream and its messages (DELETE). Statuses:
-- deleted | not_found | forbidden (an entity's stream).
CREATE FUNCTION pw_stream_delete(p_tenant text, p_path text, p_now timestamptz DEFAULT NULL)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_s   streams%ROWTYPE;
BEGIN
    SELECT s.* INTO v_s FROM streams s
     WHERE s.tenant_id = p_tenant AND s.path = p_path FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'not_found';
    END IF;
    IF v_s.entity_url IS NOT NULL THEN
        RETURN 'forbidden';
    END IF;
    DELETE FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_path;
    PERFORM pw_notify_stream(p_tenant, p_path);
    IF pw_stream_expired(v_s, v_now) THEN
        RETURN 'not_found';
    END IF;
    RETURN 'deleted';
END
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION pw_stream_delete(text, text, timestamptz);
DROP FUNCTION pw_stream_read(text, text, bigint, integer, bigint, boolean, timestamptz);
DROP FUNCTION pw_stream_write(text, text, text, bytea[], boolean, text, text, bigint, bigint, timestamptz);
DROP FUNCTION pw_stream_create(text, text, text, bigint, timestamptz, boolean, bytea[], timestamptz);
DROP FUNCTION pw_notify_stream(text, text);
DROP FUNCTION pw_stream_expired(streams, timestamptz);
DROP FUNCTION pw_media_type(text);
DROP TABLE stream_producers;
ALTER TABLE streams
    DROP COLUMN accessed_at,
    DROP COLUMN closed_by_producer,
    DROP COLUMN closed_by_epoch,
    DROP COLUMN closed_by_seq;
