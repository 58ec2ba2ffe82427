-- +goose Up
-- Typed entities:
--   * entity_types.revision, bumped by every change of the row: the
--     server compiles a type's JSON Schemas once per revision (and tells a
--     type deleted and registered again by its created_at);
--   * entities.parent (00014) must name an entity of the tenant for any
--     writer, not only spawn_entity_as: a foreign key.

ALTER TABLE entity_types ADD COLUMN revision bigint NOT NULL DEFAULT 1;

ALTER TABLE entities ADD CONSTRAINT entities_parent_fk
    FOREIGN KEY (tenant_id, parent) REFERENCES entities (tenant_id, url);
-- Children of an entity; also what the foreign key's check uses when a
-- parent row's key is touched.
CREATE INDEX entities_parent_idx ON entities (tenant_id, parent) WHERE parent IS NOT NULL;

-- +goose Down
DROP INDEX entities_parent_idx;
ALTER TABLE entities DROP CONSTRAINT entities_parent_fk;
ALTER TABLE entity_types DROP COLUMN revision;
