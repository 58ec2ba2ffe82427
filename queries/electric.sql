-- Electric's dialect: spawn with tags, parent and an initial message; tags;
-- kill with a signal (migrations/00014_electric_dialect.sql).

-- name: SpawnEntityAs :one
SELECT * FROM spawn_entity_as(@url::text, sqlc.narg('runner_id')::text, sqlc.narg('tags')::jsonb,
                              sqlc.narg('parent')::text, sqlc.narg('initial_message')::jsonb,
                              sqlc.narg('from_name')::text, sqlc.narg('now')::timestamptz, @tenant_id::text);

-- name: SetEntityTag :one
SELECT * FROM set_entity_tag(@url::text, @key::text, sqlc.narg('value')::text,
                             sqlc.narg('now')::timestamptz, @tenant_id::text);

-- name: KillEntity :one
-- txid: the transaction's 32-bit id, as shape changes carry it in
-- headers.txids (Electric's UI waits for it).
SELECT r.previous_status::text AS previous_status, r.status::text AS status,
       pg_current_xact_id()::xid::text::bigint AS txid
  FROM kill_entity(@url::text, @signal::text, sqlc.narg('reason')::text,
                   sqlc.narg('now')::timestamptz, @tenant_id::text) AS r;

-- name: CurrentTxID :one
-- The current transaction's 32-bit id (assigning one), as shape changes
-- carry it in headers.txids: run in the transaction of a change, after it.
SELECT pg_current_xact_id()::xid::text::bigint AS txid;
