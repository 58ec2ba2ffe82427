-- Durable Streams (server/streams): one plpgsql function per request, one
-- round trip. Columns are cast so sqlc knows their types.

-- name: StreamCreate :one
SELECT r.status::text AS status, r.content_type::text AS content_type, r.tail_seq::bigint AS tail_seq,
       r.closed::boolean AS closed, r.created_at::timestamptz AS created_at
  FROM pw_stream_create(@tenant_id::text, @path::text, @content_type::text,
                        sqlc.narg('ttl_seconds')::bigint, sqlc.narg('expires_at')::timestamptz,
                        @closed::boolean, @data::bytea[], sqlc.narg('now')::timestamptz) AS r;

-- name: StreamWrite :one
SELECT r.status::text AS status, r.tail_seq::bigint AS tail_seq, r.closed::boolean AS closed,
       coalesce(r.producer_epoch, -1)::bigint AS producer_epoch,
       coalesce(r.producer_seq, -1)::bigint AS producer_seq
  FROM pw_stream_write(@tenant_id::text, @path::text, sqlc.narg('content_type')::text, @data::bytea[],
                       @close::boolean, sqlc.narg('stream_seq')::text, sqlc.narg('producer_id')::text,
                       sqlc.narg('producer_epoch')::bigint, sqlc.narg('producer_seq')::bigint,
                       sqlc.narg('now')::timestamptz) AS r;

-- name: StreamRead :one
SELECT r.status::text AS status, r.content_type::text AS content_type, r.tail_seq::bigint AS tail_seq,
       r.closed::boolean AS closed, coalesce(r.ttl_seconds, -1)::bigint AS ttl_seconds,
       coalesce((extract(epoch FROM r.expires_at) * 1000000)::bigint, -1)::bigint AS expires_at_us,
       coalesce((extract(epoch FROM r.created_at) * 1000000)::bigint, 0)::bigint AS created_at_us,
       r.is_entity::boolean AS is_entity, r.last_seq::bigint AS last_seq,
       coalesce(r.data, '{}'::bytea[])::bytea[] AS data
  FROM pw_stream_read(@tenant_id::text, @path::text, sqlc.narg('after')::bigint, @max_rows::integer,
                      @max_bytes::bigint, @touch::boolean, sqlc.narg('now')::timestamptz) AS r;

-- name: StreamDelete :one
SELECT pw_stream_delete(@tenant_id::text, @path::text, sqlc.narg('now')::timestamptz)::text AS status;

-- name: StreamWriteAs :one
SELECT r.status::text AS status, r.tail_seq::bigint AS tail_seq, r.closed::boolean AS closed,
       coalesce(r.producer_epoch, -1)::bigint AS producer_epoch,
       coalesce(r.producer_seq, -1)::bigint AS producer_seq
  FROM pw_stream_write_as(@entity_writer::boolean, @tenant_id::text, @path::text,
                          sqlc.narg('content_type')::text, @data::bytea[], @close::boolean,
                          sqlc.narg('stream_seq')::text, sqlc.narg('producer_id')::text,
                          sqlc.narg('producer_epoch')::bigint, sqlc.narg('producer_seq')::bigint,
                          sqlc.narg('now')::timestamptz) AS r;

-- name: StreamFork :one
SELECT r.status::text AS status, r.content_type::text AS content_type, r.tail_seq::bigint AS tail_seq,
       r.closed::boolean AS closed, r.created_at::timestamptz AS created_at
  FROM pw_stream_fork(@tenant_id::text, @path::text, @source::text, sqlc.narg('fork_offset')::bigint,
                      @sub_offset::bigint, sqlc.narg('content_type')::text, sqlc.narg('ttl_seconds')::bigint,
                      sqlc.narg('expires_at')::timestamptz, @closed::boolean, @data::bytea[],
                      sqlc.narg('now')::timestamptz) AS r;
