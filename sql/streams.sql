-- Durable Streams on PostgreSQL (server/streams; docs/streams.md). Each
-- public function is one statement from Go: one round trip, one
-- transaction. They report protocol outcomes as a status column instead of
-- raising, because the HTTP layer needs the stream's state (tail, closure,
-- producer position) on the refusals too. A refusal changes nothing.
--
-- Offsets are seqs, strictly increasing per stream and never reused,
-- written as 16 digits (pw_offset). A fork reads through its ancestors'
-- segments instead of copying them; a stream that forks still read is
-- soft-deleted, not deleted.
--
-- Lock order: a writer locks the streams row first (FOR UPDATE), which
-- serializes every append, close and producer check of one stream; producer
-- rows are only touched under that lock. Entities are read, never locked, so
-- the lifecycle order (dispatch, claims, entities, wakes, streams) holds.
--
-- This file is the one source of the functions and triggers below. To
-- change one, edit it here, then run make migration name=..., make schema
-- and make generate (sql/README.md).

-- pw_offset writes a seq as a protocol offset: 16 digits, zero-padded, so
-- offsets compare as text as they do as numbers.
CREATE OR REPLACE FUNCTION pw_offset(p_seq bigint)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE STRICT
AS $function$
    SELECT lpad(p_seq::text, 16, '0')
$function$;

-- pw_parse_offset turns a client offset into a seq: '-1' is the start,
-- otherwise exactly 16 digits as pw_offset makes them; anything else is
-- INVALID_REQUEST (PW008).
CREATE OR REPLACE FUNCTION pw_parse_offset(p_offset text)
    RETURNS bigint
    LANGUAGE plpgsql
    IMMUTABLE
AS $function$
BEGIN
    IF p_offset = '-1' THEN
        RETURN 0;
    END IF;
    IF p_offset IS NULL OR p_offset !~ '^[0-9]{16}$' THEN
        RAISE EXCEPTION 'PW008: invalid offset %', coalesce(quote_literal(p_offset), 'NULL')
            USING ERRCODE = 'PW008';
    END IF;
    RETURN p_offset::bigint;
END
$function$;

-- pw_media_type reduces a Content-Type to its comparable media type:
-- lower case, parameters dropped ('Text/Plain; charset=utf-8' -> 'text/plain').
CREATE OR REPLACE FUNCTION pw_media_type(p_ct text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE STRICT
AS $function$
    SELECT lower(btrim(split_part(p_ct, ';', 1)))
$function$;

-- pw_stream_rel is a stream path relative to the stream root, the form
-- subscription patterns and streams[] use: /v1/stream/chat/1/main -> chat/1/main.
CREATE OR REPLACE FUNCTION pw_stream_rel(p_path text)
    RETURNS text
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE
AS $function$
    SELECT regexp_replace(regexp_replace(p_path, '^/+', ''), '^v1/stream/', '')
$function$;

-- pw_notify_stream wakes live readers of a stream on every server
-- (LISTEN pullwake_streams). Delivered at commit; repeats in one
-- transaction collapse into one. Used by the rare operations (create,
-- delete, expiry, tags, a stop's signal). Appends do not notify inside
-- their transaction: a NOTIFY in a writing transaction takes a cluster-wide
-- lock until the commit is flushed, serializing every append. The server
-- publishes appends after commit instead, batched, from a transaction that
-- writes nothing (internal/pgnotify).
CREATE OR REPLACE FUNCTION pw_notify_stream(p_tenant text, p_path text)
    RETURNS void
    LANGUAGE sql
AS $function$
    SELECT pg_notify('pullwake_streams', json_build_object('tenant_id', p_tenant, 'path', p_path)::text)
$function$;

-- pw_stream_expired: an absolute Stream-Expires-At has passed, or the stream
-- has been idle (no read or write) for its sliding Stream-TTL.
CREATE OR REPLACE FUNCTION pw_stream_expired(p_s streams, p_now timestamp with time zone)
    RETURNS boolean
    LANGUAGE sql
    STABLE
AS $function$
    SELECT (p_s.expires_at IS NOT NULL AND p_s.expires_at <= p_now)
        OR (p_s.ttl_seconds IS NOT NULL
            AND coalesce(p_s.accessed_at, p_s.created_at) + p_s.ttl_seconds * interval '1 second' <= p_now)
$function$;

-- pw_stream_referenced: a fork still needs the stream's data. A fork counts
-- unless it is expired and has no forks of its own (then it is garbage
-- itself); a soft-deleted fork counts (its own forks read through it).
CREATE OR REPLACE FUNCTION pw_stream_referenced(
    p_tenant text,
    p_path text,
    p_now timestamp with time zone
)
    RETURNS boolean
    LANGUAGE sql
    STABLE
AS $function$
    SELECT EXISTS (
        SELECT 1 FROM streams c
         WHERE c.tenant_id = p_tenant AND c.forked_from = p_path
           AND (c.deleted_at IS NOT NULL OR NOT pw_stream_expired(c, p_now)
                OR EXISTS (SELECT 1 FROM streams g
                            WHERE g.tenant_id = p_tenant AND g.forked_from = c.path)))
$function$;

-- pw_fork_max_segments: how many ancestor segments a fork may read through.
-- A fork that would need more is refused (its reads would cost more).
CREATE OR REPLACE FUNCTION pw_fork_max_segments()
    RETURNS integer
    LANGUAGE sql
    IMMUTABLE PARALLEL SAFE
AS $function$ SELECT 32 $function$;

-- pw_stream_append appends raw messages to a stream: it locks the stream
-- row (serializing appends per stream), takes the next seqs and inserts the
-- rows. It checks nothing else; callers check content type, closure, owner.
CREATE OR REPLACE FUNCTION pw_stream_append(
    p_tenant text,
    p_path text,
    p_data bytea[],
    p_now timestamp with time zone
)
    RETURNS bigint
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
DECLARE
    v_n    bigint := coalesce(cardinality(p_data), 0);
    v_tail bigint;
BEGIN
    UPDATE streams s
       SET tail_seq = s.tail_seq + v_n, updated_at = p_now
     WHERE s.tenant_id = p_tenant AND s.path = p_path
    RETURNING s.tail_seq INTO v_tail;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'PW009: stream % not found', p_path USING ERRCODE = 'PW009';
    END IF;
    INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
    SELECT p_tenant, p_path, v_tail - v_n + u.i, u.d, p_now
      FROM unnest(p_data) WITH ORDINALITY AS u(d, i);
    RETURN v_tail;
END
$function$;

-- pw_stream_remove removes a stream (DELETE, or an expired stream being
-- collected): forks of it that are expired and have no forks themselves go
-- first (they are gone already); if forks remain, the stream is
-- soft-deleted; otherwise it is deleted with its messages, and its source
-- follows when the source was kept only for its forks (soft-deleted or
-- expired), up the chain. Locks go from the stream to its source, and forks
-- another transaction holds are skipped (they count as remaining), so two
-- removals in one chain cannot deadlock. Returns deleted | soft_deleted |
-- not_found for p_path itself.
CREATE OR REPLACE FUNCTION pw_stream_remove(
    p_tenant text,
    p_path text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS text
    LANGUAGE plpgsql
AS $function$
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_s       streams%ROWTYPE;
    v_path    text := p_path;
    v_result  text;
BEGIN
    LOOP
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = v_path FOR UPDATE;
        IF NOT FOUND THEN
            RETURN coalesce(v_result, 'not_found');
        END IF;
        -- Up the chain, only a source that nobody else keeps is collected.
        IF v_result IS NOT NULL AND v_s.deleted_at IS NULL
           AND (v_s.entity_url IS NOT NULL OR NOT pw_stream_expired(v_s, v_now)) THEN
            RETURN v_result;
        END IF;
        DELETE FROM streams c
         WHERE c.ctid = ANY (ARRAY(
                   SELECT k.ctid FROM streams k
                    WHERE k.tenant_id = p_tenant AND k.forked_from = v_path
                      AND k.deleted_at IS NULL AND k.entity_url IS NULL
                      AND pw_stream_expired(k, v_now)
                      AND NOT EXISTS (SELECT 1 FROM streams g
                                       WHERE g.tenant_id = p_tenant AND g.forked_from = k.path)
                    FOR UPDATE SKIP LOCKED));
        IF EXISTS (SELECT 1 FROM streams c WHERE c.tenant_id = p_tenant AND c.forked_from = v_path) THEN
            UPDATE streams s
               SET deleted_at = coalesce(s.deleted_at, v_now), closed = true, updated_at = v_now
             WHERE s.tenant_id = p_tenant AND s.path = v_path;
            PERFORM pw_notify_stream(p_tenant, v_path);
            RETURN coalesce(v_result, 'soft_deleted');
        END IF;
        DELETE FROM streams s WHERE s.tenant_id = p_tenant AND s.path = v_path;
        PERFORM pw_notify_stream(p_tenant, v_path);
        v_result := coalesce(v_result, 'deleted');
        IF v_s.forked_from IS NULL THEN
            RETURN v_result;
        END IF;
        v_path := v_s.forked_from;
    END LOOP;
END
$function$;

-- pw_stream_create creates a stream (PUT), optionally with initial messages
-- and closed. An existing stream with the same configuration (media type,
-- TTL, expiry, closure) is 'exists'; a different one, or an existing fork
-- (its configuration includes its source), is 'conflict'; an entity's
-- stream is 'forbidden'. A soft-deleted path, or an expired stream that
-- forks still read, is a 'conflict' and stays; an expired or soft-deleted
-- stream that nothing reads any more is collected and the path created
-- afresh. Statuses: created | exists | conflict | forbidden.
CREATE OR REPLACE FUNCTION pw_stream_create(
    p_tenant text,
    p_path text,
    p_content_type text,
    p_ttl_seconds bigint,
    p_expires_at timestamp with time zone,
    p_closed boolean,
    p_data bytea[],
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        status text,
        content_type text,
        tail_seq bigint,
        closed boolean,
        created_at timestamp with time zone
    )
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_now timestamptz := coalesce(p_now, now());
    v_s   streams%ROWTYPE;
BEGIN
    FOR attempt IN 1..2 LOOP
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_path FOR UPDATE;
        IF FOUND AND v_s.entity_url IS NULL
           AND (v_s.deleted_at IS NOT NULL OR pw_stream_expired(v_s, v_now)) THEN
            IF pw_stream_remove(p_tenant, p_path, v_now) = 'soft_deleted' THEN
                RETURN QUERY SELECT 'conflict'::text, v_s.content_type, v_s.tail_seq, true, v_s.created_at;
                RETURN;
            END IF;
        ELSIF FOUND THEN
            IF v_s.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            ELSIF v_s.forked_from IS NULL
                  AND pw_media_type(v_s.content_type) = pw_media_type(p_content_type)
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
    RAISE EXCEPTION '40001: stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$function$;

-- pw_stream_fork creates the fork p_path of p_source (PUT with
-- Stream-Forked-From), or confirms an identical one. No message of the
-- source is copied: the fork row records its ancestry segments and starts
-- its tail at the fork point.
--   p_offset:      the fork offset as a seq; NULL = the source's tail.
--   p_sub_offset:  Stream-Fork-Sub-Offset (0 = none). For application/json
--                  sources it counts messages past p_offset; every JSON
--                  message has its own offset here, so that is the fork
--                  point p_offset + n (refused past the tail). For other
--                  types it counts bytes of the next message (the next
--                  append): all of them inherits that message, fewer store
--                  that prefix as the fork's first own message (the only
--                  bytes a fork ever copies, at most one message), more are
--                  refused.
--   p_content_type: NULL = the source's; else it must match it.
--   p_ttl_seconds, p_expires_at: both NULL = the source's (protocol table).
-- An existing stream at p_path is 'exists' when it is a fork of the same
-- source, offset and sub-offset (an omitted offset meaning the source's
-- tail now) and any given content type, lifetime and closure match; else
-- 'conflict'. Statuses: created | exists | conflict | forbidden |
-- source_not_found | source_gone | content_type | bad_offset |
-- bad_sub_offset | too_deep.
CREATE OR REPLACE FUNCTION pw_stream_fork(
    p_tenant text,
    p_path text,
    p_source text,
    p_offset bigint,
    p_sub_offset bigint,
    p_content_type text,
    p_ttl_seconds bigint,
    p_expires_at timestamp with time zone,
    p_closed boolean,
    p_data bytea[],
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        status text,
        content_type text,
        tail_seq bigint,
        closed boolean,
        created_at timestamp with time zone
    )
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_now     timestamptz := coalesce(p_now, now());
    v_sub     bigint := coalesce(p_sub_offset, 0);
    v_t       streams%ROWTYPE;
    v_s       streams%ROWTYPE;
    v_own     bigint;
    v_at      bigint;
    v_point   bigint;
    v_msg     bytea;
    v_partial bytea;
    v_src     text;
    v_paths   text[];
    v_upto    bigint[];
BEGIN
    FOR attempt IN 1..2 LOOP
        -- The target path.
        SELECT t.* INTO v_t FROM streams t
         WHERE t.tenant_id = p_tenant AND t.path = p_path FOR UPDATE;
        IF FOUND AND v_t.entity_url IS NULL
           AND (v_t.deleted_at IS NOT NULL OR pw_stream_expired(v_t, v_now)) THEN
            IF pw_stream_remove(p_tenant, p_path, v_now) = 'soft_deleted' THEN
                RETURN QUERY SELECT 'conflict'::text, v_t.content_type, v_t.tail_seq, true, v_t.created_at;
                RETURN;
            END IF;
        ELSIF FOUND THEN
            IF v_t.entity_url IS NOT NULL THEN
                RETURN QUERY SELECT 'forbidden'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            ELSIF v_t.forked_from = p_source AND v_t.fork_sub_offset = v_sub
                  AND v_t.fork_offset = coalesce(p_offset,
                          (SELECT s.tail_seq FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_source))
                  AND (p_content_type IS NULL OR pw_media_type(p_content_type) = pw_media_type(v_t.content_type))
                  AND ((p_ttl_seconds IS NULL AND p_expires_at IS NULL)
                       OR (v_t.ttl_seconds IS NOT DISTINCT FROM p_ttl_seconds
                           AND v_t.expires_at IS NOT DISTINCT FROM p_expires_at))
                  AND v_t.closed = p_closed THEN
                RETURN QUERY SELECT 'exists'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            ELSE
                RETURN QUERY SELECT 'conflict'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            END IF;
            RETURN;
        END IF;

        -- The source: KEY SHARE keeps it from being deleted until commit
        -- (the fork's foreign key would take the same lock) and lets its
        -- appends go on: they only add seqs past the fork point.
        SELECT s.* INTO v_s FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_source FOR KEY SHARE;
        IF NOT FOUND THEN
            RETURN QUERY SELECT 'source_not_found'::text, ''::text, 0::bigint, false, v_now;
            RETURN;
        END IF;
        IF v_s.deleted_at IS NOT NULL OR (v_s.entity_url IS NULL AND pw_stream_expired(v_s, v_now)) THEN
            RETURN QUERY SELECT CASE WHEN pw_stream_referenced(p_tenant, p_source, v_now)
                                     THEN 'source_gone' ELSE 'source_not_found' END::text,
                                v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        IF p_content_type IS NOT NULL AND pw_media_type(p_content_type) <> pw_media_type(v_s.content_type) THEN
            RETURN QUERY SELECT 'content_type'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        v_at := coalesce(p_offset, v_s.tail_seq);
        IF v_at < 0 OR v_at > v_s.tail_seq THEN
            RETURN QUERY SELECT 'bad_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;
        v_own := coalesce(v_s.fork_upto[cardinality(v_s.fork_upto)], 0);
        v_point := v_at;
        IF v_sub > 0 AND pw_media_type(v_s.content_type) = 'application/json' THEN
            IF v_at + v_sub > v_s.tail_seq THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            v_point := v_at + v_sub;
        ELSIF v_sub > 0 THEN
            IF v_at + 1 > v_s.tail_seq THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            -- The next message as the source reads it: its own, or an ancestor's.
            v_src := p_source;
            IF v_at + 1 <= v_own THEN
                SELECT g.p INTO v_src
                  FROM unnest(v_s.fork_paths, v_s.fork_upto) WITH ORDINALITY AS g(p, u, i)
                 WHERE g.u >= v_at + 1 ORDER BY g.i LIMIT 1;
            END IF;
            SELECT m.data INTO v_msg FROM stream_messages m
             WHERE m.tenant_id = p_tenant AND m.path = v_src AND m.seq = v_at + 1;
            IF v_msg IS NULL OR v_sub > octet_length(v_msg) THEN
                RETURN QUERY SELECT 'bad_sub_offset'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
                RETURN;
            END IF;
            IF v_sub = octet_length(v_msg) THEN
                v_point := v_at + 1;
            ELSE
                v_partial := substring(v_msg FROM 1 FOR v_sub::integer);
            END IF;
        END IF;

        -- Ancestry: the source's segments that reach below the fork point
        -- (the last one cut at it), then the source's own part if the fork
        -- point lies in it.
        SELECT coalesce(array_agg(g.p ORDER BY g.i), '{}'), coalesce(array_agg(least(g.u, v_point) ORDER BY g.i), '{}')
          INTO v_paths, v_upto
          FROM unnest(v_s.fork_paths, v_s.fork_upto) WITH ORDINALITY AS g(p, u, i)
         WHERE coalesce(v_s.fork_upto[g.i - 1], 0) < v_point;
        IF v_point > v_own THEN
            v_paths := v_paths || p_source;
            v_upto := v_upto || v_point;
        END IF;
        IF cardinality(v_paths) > pw_fork_max_segments() THEN
            RETURN QUERY SELECT 'too_deep'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.created_at;
            RETURN;
        END IF;

        INSERT INTO streams AS s (tenant_id, path, content_type, tail_seq, ttl_seconds, expires_at,
                                  accessed_at, created_at, updated_at, forked_from, fork_offset,
                                  fork_sub_offset, fork_paths, fork_upto)
        SELECT p_tenant, p_path, v_s.content_type,
               v_point + CASE WHEN v_partial IS NULL THEN 0 ELSE 1 END,
               CASE WHEN p_ttl_seconds IS NULL AND p_expires_at IS NULL THEN v_s.ttl_seconds ELSE p_ttl_seconds END,
               CASE WHEN p_ttl_seconds IS NULL AND p_expires_at IS NULL THEN v_s.expires_at ELSE p_expires_at END,
               v_now, v_now, v_now, p_source, v_at, v_sub, v_paths, v_upto
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            IF v_partial IS NOT NULL THEN
                INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
                VALUES (p_tenant, p_path, v_point + 1, v_partial, v_now);
            END IF;
            IF coalesce(cardinality(p_data), 0) > 0 THEN
                PERFORM pw_stream_append(p_tenant, p_path, p_data, v_now);
            END IF;
            UPDATE streams s SET closed = p_closed
             WHERE s.tenant_id = p_tenant AND s.path = p_path
            RETURNING s.* INTO v_t;
            RETURN QUERY SELECT 'created'::text, v_t.content_type, v_t.tail_seq, v_t.closed, v_t.created_at;
            RETURN;
        END IF;
        -- A concurrent PUT created the path first: compare against it.
    END LOOP;
    RAISE EXCEPTION '40001: stream % changed concurrently', p_path USING ERRCODE = '40001';
END
$function$;

-- pw_stream_delete removes a stream and its messages (DELETE), through
-- pw_stream_remove: a stream with forks is soft-deleted (still 'deleted' to
-- the caller). A soft-deleted or expired stream answers 'gone' while forks
-- read it (and stays), else 'not_found' (and is collected). Statuses:
-- deleted | not_found | gone | forbidden (an entity's stream).
CREATE OR REPLACE FUNCTION pw_stream_delete(
    p_tenant text,
    p_path text,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS text
    LANGUAGE plpgsql
AS $function$
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
    IF v_s.deleted_at IS NOT NULL OR pw_stream_expired(v_s, v_now) THEN
        RETURN CASE pw_stream_remove(p_tenant, p_path, v_now) WHEN 'soft_deleted' THEN 'gone' ELSE 'not_found' END;
    END IF;
    PERFORM pw_stream_remove(p_tenant, p_path, v_now);
    RETURN 'deleted';
END
$function$;

-- pw_stream_read reads one chunk after seq p_after (NULL = from the tail):
-- at most p_max_rows messages and about p_max_bytes (always at least one
-- message when any lies past p_after, then rows while fewer than
-- p_max_bytes came before them). With p_touch it restarts the sliding TTL.
-- The rows are bounded by the tail read in the same call, so a chunk never
-- reports data beyond the tail it returns. A fork's chunk walks the
-- segments the range crosses (ancestors' segments, then its own messages),
-- one indexed range scan each. A stream that is soft-deleted, or expired,
-- answers 'gone' while forks still read it and 'not_found' otherwise.
-- Statuses: ok | not_found | gone | bad_offset (p_after past the tail).
CREATE OR REPLACE FUNCTION pw_stream_read(
    p_tenant text,
    p_path text,
    p_after bigint,
    p_max_rows integer,
    p_max_bytes bigint,
    p_touch boolean,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        status text,
        content_type text,
        tail_seq bigint,
        closed boolean,
        ttl_seconds bigint,
        expires_at timestamp with time zone,
        created_at timestamp with time zone,
        is_entity boolean,
        last_seq bigint,
        data bytea[]
    )
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_now   timestamptz := coalesce(p_now, now());
    v_s     streams%ROWTYPE;
    v_after bigint;
    v_last  bigint;
    v_data  bytea[];
    v_n     bigint := 0;
    v_bytes bigint := 0;
    v_segs  integer;
    v_src   text;
    v_lo    bigint;
    v_hi    bigint;
    v_part  bytea[];
    v_plast bigint;
    v_pn    bigint;
    v_pb    bigint;
BEGIN
    SELECT s.* INTO v_s FROM streams s WHERE s.tenant_id = p_tenant AND s.path = p_path;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'not_found'::text, ''::text, 0::bigint, false, NULL::bigint,
                            NULL::timestamptz, NULL::timestamptz, false, 0::bigint, NULL::bytea[];
        RETURN;
    END IF;
    IF v_s.entity_url IS NULL AND (v_s.deleted_at IS NOT NULL OR pw_stream_expired(v_s, v_now)) THEN
        RETURN QUERY SELECT CASE WHEN pw_stream_referenced(p_tenant, p_path, v_now)
                                 THEN 'gone' ELSE 'not_found' END::text,
                            ''::text, 0::bigint, false, NULL::bigint,
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
        v_segs := coalesce(cardinality(v_s.fork_paths), 0);
        FOR i IN 1..v_segs + 1 LOOP
            IF i <= v_segs THEN
                v_src := v_s.fork_paths[i];
                v_hi := v_s.fork_upto[i];
            ELSE
                v_src := p_path;
                v_hi := v_s.tail_seq;
            END IF;
            v_lo := coalesce(v_s.fork_upto[i - 1], 0);
            CONTINUE WHEN v_hi <= v_after;
            EXIT WHEN v_n >= p_max_rows OR v_bytes >= p_max_bytes;
            SELECT array_agg(y.data ORDER BY y.seq), max(y.seq), count(*), sum(octet_length(y.data))
              INTO v_part, v_plast, v_pn, v_pb
              FROM (SELECT x.seq, x.data,
                           sum(octet_length(x.data)) OVER (ORDER BY x.seq) - octet_length(x.data) AS before
                      FROM (SELECT m.seq, m.data FROM stream_messages m
                             WHERE m.tenant_id = p_tenant AND m.path = v_src
                               AND m.seq > greatest(v_after, v_lo) AND m.seq <= v_hi
                             ORDER BY m.seq LIMIT p_max_rows - v_n) x) y
             WHERE v_bytes + y.before < p_max_bytes;
            IF v_pn > 0 THEN
                v_data := v_data || v_part;
                v_last := v_plast;
                v_n := v_n + v_pn;
                v_bytes := v_bytes + v_pb;
            END IF;
        END LOOP;
    END IF;
    RETURN QUERY SELECT 'ok'::text, v_s.content_type, v_s.tail_seq, v_s.closed, v_s.ttl_seconds,
                        v_s.expires_at, v_s.created_at, v_s.entity_url IS NOT NULL,
                        coalesce(v_last, v_after), v_data;
END
$function$;

-- pw_stream_write_checked appends messages (POST), optionally closing the
-- stream, with the protocol's checks in its order of precedence, all under
-- the stream's row lock: entity stopped, closed, content type, idempotent
-- producer (epoch fencing, duplicate, gap), Stream-Seq. Producer state is
-- written in the same transaction as the messages it admits. An expired
-- stream is removed through pw_stream_remove (soft-deleted, 'gone', while
-- forks read it).
--   p_content_type: the request's media type (pw_media_type), NULL when the
--                   body is empty (a close-only request).
--   p_producer_*:   all NULL or all set.
-- Statuses (with what the producer_* columns then carry):
--   appended        messages appended and/or stream closed
--   duplicate       a producer retry of an admitted request (nothing written)
--   closed_noop     close-only request on a closed stream (idempotent)
--   not_found | gone | entity_stopped | closed | content_type | stream_seq
--   stale_epoch     producer_epoch = the current epoch
--   bad_epoch_seq   a new epoch must start at seq 0
--   seq_gap         producer_seq = the expected seq
CREATE OR REPLACE FUNCTION pw_stream_write_checked(
    p_tenant text,
    p_path text,
    p_content_type text,
    p_data bytea[],
    p_close boolean,
    p_stream_seq text,
    p_producer_id text,
    p_producer_epoch bigint,
    p_producer_seq bigint,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        status text,
        tail_seq bigint,
        closed boolean,
        producer_epoch bigint,
        producer_seq bigint
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
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
    IF v_s.entity_url IS NULL AND (v_s.deleted_at IS NOT NULL OR pw_stream_expired(v_s, v_now)) THEN
        RETURN QUERY SELECT CASE pw_stream_remove(p_tenant, p_path, v_now)
                                 WHEN 'soft_deleted' THEN 'gone' ELSE 'not_found' END::text,
                            0::bigint, false, NULL::bigint, NULL::bigint;
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
$function$;

-- pw_stream_write appends (and closes) as pw_stream_write_checked does, with
-- the same statuses. A plain append that passes every check takes the fast
-- path; every other request is pw_stream_write_checked's.
CREATE OR REPLACE FUNCTION pw_stream_write(
    p_tenant text,
    p_path text,
    p_content_type text,
    p_data bytea[],
    p_close boolean,
    p_stream_seq text,
    p_producer_id text,
    p_producer_epoch bigint,
    p_producer_seq bigint,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        status text,
        tail_seq bigint,
        closed boolean,
        producer_epoch bigint,
        producer_seq bigint
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    v_now  timestamptz := coalesce(p_now, now());
    v_n    integer := coalesce(cardinality(p_data), 0);
    v_tail bigint;
BEGIN
    IF v_n > 0 AND p_producer_id IS NULL AND p_stream_seq IS NULL AND p_close IS NOT TRUE THEN
        -- The UPDATE locks the stream row, as the checked path's SELECT
        -- ... FOR UPDATE does, and matches only a stream that takes the
        -- append: open, same media type, not expired, entity not stopped.
        UPDATE streams s
           SET tail_seq = s.tail_seq + v_n, accessed_at = v_now, updated_at = v_now
         WHERE s.tenant_id = p_tenant AND s.path = p_path
           AND NOT s.closed
           AND pw_media_type(s.content_type) = p_content_type
           AND (s.entity_url IS NOT NULL OR NOT pw_stream_expired(s, v_now))
           -- A scalar subquery, not EXISTS: the planner may answer an
           -- EXISTS with a hash of every stopped entity of the tenant.
           AND (s.entity_url IS NULL
                OR (SELECT e.status FROM entities e
                     WHERE e.tenant_id = p_tenant AND e.url = s.entity_url) IS DISTINCT FROM 'stopped')
        RETURNING s.tail_seq INTO v_tail;
        IF FOUND THEN
            INSERT INTO stream_messages (tenant_id, path, seq, data, created_at)
            SELECT p_tenant, p_path, v_tail - v_n + u.i, u.d, v_now
              FROM unnest(p_data) WITH ORDINALITY AS u(d, i);
            status := 'appended';
            tail_seq := v_tail;
            closed := false;
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM pw_stream_write_checked(p_tenant, p_path, p_content_type, p_data, p_close,
                                                       p_stream_seq, p_producer_id, p_producer_epoch,
                                                       p_producer_seq, v_now);
END
$function$;

-- pw_stream_write_as is pw_stream_write for a caller whose right to write
-- entity streams the server decided in memory: p_entity_writer is true when
-- the request carried the live write token of the stream at p_path. Only
-- the stream row knows whether the path is an entity's stream, so:
--   * an entity writer appending without closing goes straight to
--     pw_stream_write: the hot path of a runner costs no extra statement;
--   * anyone else, and every close, first reads the stream's entity_url:
--     closing an entity's stream is 'forbidden' (the entity owns it; a
--     closed main stream would refuse every later claim's appends), and an
--     append without the write token is 'unauthorized'. Both change nothing.
-- An entity's stream is created with its entity and never changes owner, so
-- the unlocked read cannot be overtaken by a change of entity_url.
-- Statuses: pw_stream_write's, plus forbidden | unauthorized.
CREATE OR REPLACE FUNCTION pw_stream_write_as(
    p_entity_writer boolean,
    p_tenant text,
    p_path text,
    p_content_type text,
    p_data bytea[],
    p_close boolean,
    p_stream_seq text,
    p_producer_id text,
    p_producer_epoch bigint,
    p_producer_seq bigint,
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        status text,
        tail_seq bigint,
        closed boolean,
        producer_epoch bigint,
        producer_seq bigint
    )
    LANGUAGE plpgsql
    SET enable_seqscan TO 'off'
AS $function$
#variable_conflict use_column
DECLARE
    v_entity text;
BEGIN
    IF p_close OR NOT p_entity_writer THEN
        SELECT s.entity_url INTO v_entity FROM streams s
         WHERE s.tenant_id = p_tenant AND s.path = p_path;
        IF v_entity IS NOT NULL THEN
            RETURN QUERY SELECT CASE WHEN p_close THEN 'forbidden' ELSE 'unauthorized' END::text,
                                0::bigint, false, NULL::bigint, NULL::bigint;
            RETURN;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM pw_stream_write(p_tenant, p_path, p_content_type, p_data, p_close,
                                               p_stream_seq, p_producer_id, p_producer_epoch,
                                               p_producer_seq, p_now);
END
$function$;

-- pw_stream_writes appends each item's messages to its stream as a plain
-- pw_stream_write_as does (no producer headers, no Stream-Seq, not
-- closing: those keep the single-item call), for group commit;
-- p_entity_writers[i] says whether item i carried the stream's live write
-- token. Item i's messages are the next p_counts[i] elements of p_data, in
-- input order. Items run by (path, ord): the stream row is the one row an
-- append locks, and appends to one stream keep their order. See
-- release_claims (lifecycle.sql) for the batch rules.
CREATE OR REPLACE FUNCTION pw_stream_writes(
    p_tenant text,
    p_paths text[],
    p_content_types text[],
    p_entity_writers boolean[],
    p_counts integer[],
    p_data bytea[],
    p_now timestamp with time zone DEFAULT NULL::timestamp with time zone
)
    RETURNS TABLE(
        ord integer,
        err_code text,
        err_message text,
        status text,
        tail_seq bigint,
        closed boolean,
        producer_epoch bigint,
        producer_seq bigint
    )
    LANGUAGE plpgsql
AS $function$
#variable_conflict use_column
DECLARE
    v_n      integer := coalesce(cardinality(p_paths), 0);
    v_first  integer[] := '{}';
    v_acc    integer := 0;
    v_it     record;
    v_r      record;
    o_code   text[] := '{}';
    o_msg    text[] := '{}';
    o_status text[] := '{}';
    o_tail   bigint[] := '{}';
    o_closed boolean[] := '{}';
    o_pep    bigint[] := '{}';
    o_pseq   bigint[] := '{}';
BEGIN
    IF coalesce(cardinality(p_content_types), 0) <> v_n OR coalesce(cardinality(p_counts), 0) <> v_n
       OR coalesce(cardinality(p_entity_writers), 0) <> v_n THEN
        RAISE EXCEPTION 'PW008: pw_stream_writes: the arrays differ in length' USING ERRCODE = 'PW008';
    END IF;
    FOR i IN 1..v_n LOOP
        IF p_counts[i] IS NULL OR p_counts[i] < 0 THEN
            RAISE EXCEPTION 'PW008: pw_stream_writes: item % has no message count', i USING ERRCODE = 'PW008';
        END IF;
        v_first[i] := v_acc + 1;
        v_acc := v_acc + p_counts[i];
    END LOOP;
    IF v_acc <> coalesce(cardinality(p_data), 0) THEN
        RAISE EXCEPTION 'PW008: pw_stream_writes: the counts add up to %, the data has % messages',
            v_acc, coalesce(cardinality(p_data), 0) USING ERRCODE = 'PW008';
    END IF;
    FOR v_it IN
        SELECT u.i::integer AS i, u.p, u.ct, coalesce(u.ew, false) AS ew
          FROM unnest(p_paths, p_content_types, p_entity_writers) WITH ORDINALITY AS u(p, ct, ew, i)
         ORDER BY u.p, u.i
    LOOP
        BEGIN
            SELECT * INTO STRICT v_r
              FROM pw_stream_write_as(v_it.ew, p_tenant, v_it.p, v_it.ct,
                                      coalesce(p_data[v_first[v_it.i]:v_first[v_it.i] + p_counts[v_it.i] - 1], '{}'),
                                      false, NULL, NULL, NULL, NULL, p_now);
            o_status[v_it.i] := v_r.status;
            o_tail[v_it.i] := v_r.tail_seq;
            o_closed[v_it.i] := v_r.closed;
            o_pep[v_it.i] := v_r.producer_epoch;
            o_pseq[v_it.i] := v_r.producer_seq;
        EXCEPTION WHEN OTHERS THEN
            o_code[v_it.i] := SQLSTATE;
            o_msg[v_it.i] := SQLERRM;
        END;
    END LOOP;
    RETURN QUERY
    SELECT g.i, o_code[g.i], o_msg[g.i], o_status[g.i], o_tail[g.i], o_closed[g.i], o_pep[g.i], o_pseq[g.i]
      FROM generate_series(1, v_n) AS g(i)
     ORDER BY g.i;
END
$function$;
