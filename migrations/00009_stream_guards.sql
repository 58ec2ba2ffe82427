-- +goose Up
-- Stream guards: who may write an entity's stream is asked of the stream
-- row (streams.entity_url), and a stream's TTL and expiry stay in ranges
-- that PostgreSQL's timestamp arithmetic can take.
--
-- Before this, a Stream-TTL of 99999999999999 seconds was stored, and
-- pw_stream_expired's accessed_at + ttl overflowed ("timestamp out of
-- range") on every later request of that stream: a 500 forever. The HTTP
-- layer now refuses such values with 400 (docs/streams.md); the CHECKs are
-- the database's own guard against any other writer. Rows stored before
-- are clamped into the ranges first, so their streams answer again.

UPDATE streams SET ttl_seconds = 315360000 WHERE ttl_seconds > 315360000;
UPDATE streams SET ttl_seconds = 1 WHERE ttl_seconds < 1;
UPDATE streams SET expires_at = '1970-01-01 00:00:00+00' WHERE expires_at < '1970-01-01 00:00:00+00';
UPDATE streams SET expires_at = '9999-12-31 23:59:59+00' WHERE expires_at > '9999-12-31 23:59:59+00';

-- TTL: 1 second to 10 years (365-day years). Expiry: within 1970..9999.
ALTER TABLE streams
    ADD CONSTRAINT streams_ttl_range CHECK (ttl_seconds BETWEEN 1 AND 315360000),
    ADD CONSTRAINT streams_expires_range
        CHECK (expires_at >= '1970-01-01 00:00:00+00' AND expires_at <= '9999-12-31 23:59:59+00');

-- +goose StatementBegin
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
CREATE FUNCTION pw_stream_write_as(p_entity_writer boolean, p_tenant text, p_path text,
                                   p_content_type text, p_data bytea[], p_close boolean,
                                   p_stream_seq text, p_producer_id text, p_producer_epoch bigint,
                                   p_producer_seq bigint, p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, tail_seq bigint, closed boolean, producer_epoch bigint, producer_seq bigint)
LANGUAGE plpgsql AS $$
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
$$;
-- +goose StatementEnd

-- +goose Down
DROP FUNCTION pw_stream_write_as(boolean, text, text, text, bytea[], boolean, text, text, bigint, bigint, timestamptz);
ALTER TABLE streams DROP CONSTRAINT streams_expires_range, DROP CONSTRAINT streams_ttl_range;
