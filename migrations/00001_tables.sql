-- +goose Up
-- Tables of pullwake. Every table carries tenant_id first in its key: one
-- database can hold several tenants, a server serves one.

CREATE SEQUENCE wake_seq;

CREATE TABLE entities (
    tenant_id   text        NOT NULL DEFAULT 'default',
    url         text        NOT NULL,
    status      text        NOT NULL DEFAULT 'idle'
                CHECK (status IN ('idle', 'running', 'stopping', 'stopped')),
    main_stream text        NOT NULL,
    runner_id   text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, url)
);
CREATE INDEX entities_status_idx ON entities (tenant_id, status);

-- A stream is an append-only sequence of messages. tail_seq is the seq of the
-- newest message (0 when empty); offsets handed to clients are tail_seq
-- zero-padded to 16 digits, so they sort as text.
CREATE TABLE streams (
    tenant_id      text        NOT NULL DEFAULT 'default',
    path           text        NOT NULL,
    content_type   text        NOT NULL,
    tail_seq       bigint      NOT NULL DEFAULT 0,
    closed         boolean     NOT NULL DEFAULT false,
    ttl_seconds    bigint,
    expires_at     timestamptz,
    last_seq_hdr   text,
    -- Set for an entity's main stream: the entity that owns it.
    entity_url     text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, path)
);

CREATE TABLE stream_messages (
    tenant_id  text        NOT NULL DEFAULT 'default',
    path       text        NOT NULL,
    seq        bigint      NOT NULL,
    data       bytea       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, path, seq),
    FOREIGN KEY (tenant_id, path) REFERENCES streams (tenant_id, path) ON DELETE CASCADE
);

CREATE TABLE runners (
    tenant_id                 text        NOT NULL DEFAULT 'default',
    id                        text        NOT NULL,
    label                     text        NOT NULL DEFAULT '',
    kind                      text        NOT NULL DEFAULT '',
    admin_status              text        NOT NULL DEFAULT 'enabled'
                              CHECK (admin_status IN ('enabled', 'disabled')),
    token_hash                bytea       NOT NULL,
    last_seen_at              timestamptz,
    liveness_lease_expires_at timestamptz,
    diagnostics               jsonb,
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE wakes (
    tenant_id    text        NOT NULL DEFAULT 'default',
    wake_id      text        NOT NULL,
    entity_url   text        NOT NULL,
    runner_id    text,
    status       text        NOT NULL DEFAULT 'queued'
                 CHECK (status IN ('queued', 'claimed', 'completed', 'expired', 'superseded')),
    consumer_id  text,
    epoch        bigint,
    created_at   timestamptz NOT NULL DEFAULT now(),
    claimed_at   timestamptz,
    finished_at  timestamptz,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, wake_id),
    FOREIGN KEY (tenant_id, entity_url) REFERENCES entities (tenant_id, url)
);
-- The claim queue: oldest queued wake first.
CREATE INDEX wakes_queue_idx ON wakes (tenant_id, created_at, wake_id) WHERE status = 'queued';
-- At most one queued wake per entity.
CREATE UNIQUE INDEX wakes_one_queued_idx ON wakes (tenant_id, entity_url) WHERE status = 'queued';
-- Retention scans finished wakes by age.
CREATE INDEX wakes_finished_idx ON wakes (tenant_id, finished_at) WHERE status IN ('completed', 'expired', 'superseded');

CREATE TABLE entity_dispatch_state (
    tenant_id               text        NOT NULL DEFAULT 'default',
    entity_url              text        NOT NULL,
    active_consumer_id      text,
    active_epoch            bigint,
    active_runner_id        text,
    active_claimed_at       timestamptz,
    active_lease_expires_at timestamptz,
    outstanding_wake_id     text,
    epoch                   bigint      NOT NULL DEFAULT 0,
    acked_offset            bigint      NOT NULL DEFAULT 0,
    last_sent_offset        bigint      NOT NULL DEFAULT 0,
    last_released_at        timestamptz,
    last_completed_at       timestamptz,
    last_error              text,
    updated_at              timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, entity_url),
    FOREIGN KEY (tenant_id, entity_url) REFERENCES entities (tenant_id, url),
    -- The slot is all set or all empty, and a filled slot always has a lease.
    CHECK ((active_consumer_id IS NULL) = (active_epoch IS NULL)),
    CHECK (active_consumer_id IS NULL OR active_lease_expires_at IS NOT NULL),
    CHECK (acked_offset >= 0 AND last_sent_offset >= 0)
);

CREATE TABLE consumer_claims (
    tenant_id         text        NOT NULL DEFAULT 'default',
    consumer_id       text        NOT NULL,
    epoch             bigint      NOT NULL,
    wake_id           text        NOT NULL,
    entity_url        text        NOT NULL,
    stream_path       text        NOT NULL,
    runner_id         text        NOT NULL,
    status            text        NOT NULL DEFAULT 'active'
                      CHECK (status IN ('active', 'released', 'expired', 'failed')),
    claim_token_hash  bytea       NOT NULL,
    lease_ttl_ms      integer     NOT NULL,
    claimed_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz,
    lease_expires_at  timestamptz,
    released_at       timestamptz,
    acked_streams     jsonb,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, consumer_id, epoch),
    -- An active claim always has a lease: a NULL lease would never expire.
    CHECK (status <> 'active' OR lease_expires_at IS NOT NULL)
);
-- The sweeper finds active claims by lease; health lists them per runner.
CREATE INDEX consumer_claims_active_lease_idx ON consumer_claims (tenant_id, lease_expires_at) WHERE status = 'active';
CREATE INDEX consumer_claims_active_runner_idx ON consumer_claims (tenant_id, runner_id) WHERE status = 'active';
CREATE INDEX consumer_claims_finished_idx ON consumer_claims (tenant_id, updated_at) WHERE status <> 'active';

-- +goose Down
DROP TABLE consumer_claims;
DROP TABLE entity_dispatch_state;
DROP TABLE wakes;
DROP TABLE runners;
DROP TABLE stream_messages;
DROP TABLE streams;
DROP TABLE entities;
DROP SEQUENCE wake_seq;
