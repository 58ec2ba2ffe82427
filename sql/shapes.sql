-- Shape sync (docs/shapes.md): each table the shape API serves, as the SQL
-- view electric_<table>, in the columns Electric's agents server exposes.
-- The server computes the same rows in Go from the rows its change feed
-- decodes (server/shapes/tables.go, one function per view); a test
-- (server/shapes TestViewsMatchTheFeed) holds each view to its function.
-- Values print as the shape sends them with TimeZone UTC and DateStyle ISO.
-- Views are read by operators in psql; the feed itself reads the base
-- tables (publication pullwake_shapes).

-- electric_entities: an entity in Electric's columns. type is the URL's
-- first segment; a stopped entity is killed when SIGKILL stopped it; the
-- runner it is pinned to is its dispatch policy; created_at and
-- updated_at are milliseconds since the epoch (truncated). pullwake keeps
-- no spawn arguments, sandbox, creator or per-entity schemas: {} or NULL.
CREATE OR REPLACE VIEW electric_entities AS
SELECT e.tenant_id,
       e.url,
       split_part(e.url, '/', 2) AS type,
       CASE WHEN e.status = 'stopped' AND e.stop_signal = 'SIGKILL' THEN 'killed' ELSE e.status END AS status,
       CASE WHEN e.runner_id IS NOT NULL
            THEN jsonb_build_object('targets', jsonb_build_array(jsonb_build_object('type', 'runner', 'runnerId', e.runner_id)))
       END AS dispatch_policy,
       e.tags,
       '{}'::jsonb AS spawn_args,
       NULL::jsonb AS sandbox,
       e.parent,
       NULL::text AS created_by,
       NULL::integer AS type_revision,
       NULL::jsonb AS inbox_schemas,
       NULL::jsonb AS state_schemas,
       floor(extract(epoch FROM e.created_at) * 1000)::bigint AS created_at,
       floor(extract(epoch FROM e.updated_at) * 1000)::bigint AS updated_at
  FROM entities e;

-- electric_entity_types: an entity type; its times are ISO 8601 text in
-- UTC with milliseconds (Electric stores JavaScript's toISOString).
CREATE OR REPLACE VIEW electric_entity_types AS
SELECT t.tenant_id,
       t.name,
       t.description,
       t.creation_schema,
       t.inbox_schemas,
       t.state_schemas,
       NULL::jsonb AS slash_commands,
       NULL::text AS serve_endpoint,
       t.default_dispatch_policy,
       t.revision::integer AS revision,
       to_char(t.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS created_at,
       to_char(t.updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"') AS updated_at
  FROM entity_types t;

-- electric_runners: a runner, owned by the admin (pullwake's only
-- principal); an unset kind is Electric's default, local.
CREATE OR REPLACE VIEW electric_runners AS
SELECT r.tenant_id,
       r.id,
       '/principal/system%3Aadmin'::text AS owner_principal,
       r.label,
       coalesce(nullif(r.kind, ''), 'local') AS kind,
       r.admin_status,
       '/runners/' || r.id || '/wake' AS wake_stream,
       '[]'::jsonb AS sandbox_profiles,
       r.created_at,
       r.updated_at
  FROM runners r;

-- electric_runner_runtime_diagnostics: a runner's liveness and client
-- diagnostics, once it has heartbeated; wake_stream_offset is the offset
-- of its wake stream it last read.
CREATE OR REPLACE VIEW electric_runner_runtime_diagnostics AS
SELECT r.tenant_id,
       r.id AS runner_id,
       '/principal/system%3Aadmin'::text AS owner_principal,
       lpad(r.wake_stream_read_seq::text, 16, '0') AS wake_stream_offset,
       r.last_seen_at,
       r.liveness_lease_expires_at,
       r.diagnostics,
       r.updated_at
  FROM runners r
 WHERE r.last_seen_at IS NOT NULL AND r.liveness_lease_expires_at IS NOT NULL;

-- electric_users: always empty. pullwake has no users: one admin token.
CREATE OR REPLACE VIEW electric_users AS
SELECT NULL::text AS tenant_id,
       NULL::text AS id,
       NULL::text AS display_name,
       NULL::text AS email,
       NULL::text AS avatar_url,
       NULL::timestamptz AS created_at,
       NULL::timestamptz AS updated_at
 WHERE false;

-- electric_entity_effective_permissions: always empty. pullwake has no
-- permission grants: whoever may read shapes reads every row.
CREATE OR REPLACE VIEW electric_entity_effective_permissions AS
SELECT NULL::text AS tenant_id,
       NULL::bigint AS id,
       NULL::text AS entity_url,
       NULL::text AS source_entity_url,
       NULL::bigint AS source_grant_id,
       NULL::text AS permission,
       NULL::text AS subject_kind,
       NULL::text AS subject_value,
       NULL::timestamptz AS expires_at,
       NULL::timestamptz AS created_at
 WHERE false;

-- electric_entity_dispatch_state: an entity's dispatch slot as pullwake
-- keeps it (not an Electric table; the status page reads it): the active
-- claim (consumer, epoch, runner, lease), the outstanding wake, how far the
-- runners acked the main stream and what was last sent to it, and when
-- its claims last ended. One row per entity.
CREATE OR REPLACE VIEW electric_entity_dispatch_state AS
SELECT d.tenant_id,
       d.entity_url,
       d.active_consumer_id,
       d.active_epoch,
       d.active_runner_id,
       d.active_claimed_at,
       d.active_lease_expires_at,
       d.outstanding_wake_id,
       d.acked_offset,
       d.last_sent_offset,
       d.last_released_at,
       d.last_completed_at,
       d.last_error,
       d.updated_at
  FROM entity_dispatch_state d;
