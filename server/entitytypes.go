package server

import (
	"bytes"
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/pullwake/pullwake/db"
)

// Entity types: Electric's runtime registers the types it handles at
// start (POST /_electric/entity-types, an upsert by name). pullwake stores
// the body and returns it; its default_dispatch_policy's first runner
// target is the runner a spawn of that type without runner_id targets
// (spawn_entity). The schemas are not enforced.

type entityTypeJSON struct {
	Name                  string          `json:"name"`
	Description           string          `json:"description"`
	CreationSchema        json.RawMessage `json:"creation_schema"`
	InboxSchemas          json.RawMessage `json:"inbox_schemas"`
	StateSchemas          json.RawMessage `json:"state_schemas"`
	DefaultDispatchPolicy json.RawMessage `json:"default_dispatch_policy"`
	CreatedAt             time.Time       `json:"created_at"`
	UpdatedAt             time.Time       `json:"updated_at"`
}

func orNull(v json.RawMessage) json.RawMessage {
	if len(v) == 0 {
		return json.RawMessage("null")
	}
	return v
}

func entityTypeFromRow(t db.EntityType) entityTypeJSON {
	return entityTypeJSON{
		Name: t.Name, Description: t.Description, CreationSchema: orNull(t.CreationSchema),
		InboxSchemas: orNull(t.InboxSchemas), StateSchemas: orNull(t.StateSchemas),
		DefaultDispatchPolicy: orNull(t.DefaultDispatchPolicy), CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
	}
}

// jsonObject returns v when it is a JSON object, nil when absent or null,
// and an error naming field otherwise.
func jsonObject(v json.RawMessage, field string) (json.RawMessage, error) {
	t := bytes.TrimSpace(v)
	switch {
	case len(t) == 0 || string(t) == "null":
		return nil, nil
	case t[0] != '{':
		return nil, badRequest("field %s: must be an object", field)
	}
	return t, nil
}

// checkDispatchPolicy validates {"targets": [{"type", "runnerId"|"runner_id"?, ...}]}.
func checkDispatchPolicy(p json.RawMessage) error {
	if p == nil {
		return nil
	}
	var policy struct {
		Targets []map[string]any `json:"targets"`
	}
	if err := json.Unmarshal(p, &policy); err != nil {
		return badRequest("field default_dispatch_policy: targets must be an array of objects")
	}
	for i, t := range policy.Targets {
		if t == nil {
			return badRequest("default_dispatch_policy.targets[%d] must be an object", i)
		}
		typ, _ := t["type"].(string)
		if typ == "" {
			return badRequest("default_dispatch_policy.targets[%d].type must be a string", i)
		}
		if typ != "runner" {
			continue
		}
		id, ok := t["runnerId"]
		if !ok {
			id, ok = t["runner_id"]
		}
		s, isString := id.(string)
		if !ok || !isString || !idRE.MatchString(s) {
			return badRequest("default_dispatch_policy.targets[%d]: a runner target needs runnerId matching %s", i, idRE)
		}
	}
	return nil
}

func (s *Server) upsertEntityType(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		Name                  *string         `json:"name"`
		Description           *string         `json:"description"`
		CreationSchema        json.RawMessage `json:"creation_schema"`
		InboxSchemas          json.RawMessage `json:"inbox_schemas"`
		StateSchemas          json.RawMessage `json:"state_schemas"`
		DefaultDispatchPolicy json.RawMessage `json:"default_dispatch_policy"`
	}
	if err := decode(w, r, &body); err != nil {
		return err
	}
	if body.Name == nil {
		return badRequest("name is required")
	}
	if !entityTypeRE.MatchString(*body.Name) {
		return badRequest("name %q must match %s", *body.Name, entityTypeRE)
	}
	desc := ""
	if body.Description != nil {
		desc = *body.Description
	}
	if len(desc) > 4096 {
		return badRequest("description must be at most 4096 bytes")
	}
	p := db.UpsertEntityTypeParams{TenantID: s.cfg.Tenant, Name: *body.Name, Description: desc}
	var err error
	if p.CreationSchema, err = jsonObject(body.CreationSchema, "creation_schema"); err != nil {
		return err
	}
	if p.InboxSchemas, err = jsonObject(body.InboxSchemas, "inbox_schemas"); err != nil {
		return err
	}
	if p.StateSchemas, err = jsonObject(body.StateSchemas, "state_schemas"); err != nil {
		return err
	}
	if p.DefaultDispatchPolicy, err = jsonObject(body.DefaultDispatchPolicy, "default_dispatch_policy"); err != nil {
		return err
	}
	if err := checkDispatchPolicy(p.DefaultDispatchPolicy); err != nil {
		return err
	}
	row, err := s.q.UpsertEntityType(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	status := http.StatusOK
	if row.Created {
		status = http.StatusCreated
	}
	s.log.Info("entity type registered", "entity_type", row.Name, "created", row.Created)
	writeJSON(w, status, entityTypeFromRow(db.EntityType{
		TenantID: row.TenantID, Name: row.Name, Description: row.Description, CreationSchema: row.CreationSchema,
		InboxSchemas: row.InboxSchemas, StateSchemas: row.StateSchemas, DefaultDispatchPolicy: row.DefaultDispatchPolicy,
		CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt,
	}))
	return nil
}

func (s *Server) listEntityTypes(w http.ResponseWriter, r *http.Request) error {
	rows, err := s.q.ListEntityTypes(r.Context(), s.pool, db.ListEntityTypesParams{TenantID: s.cfg.Tenant, MaxRows: 1000})
	if err != nil {
		return err
	}
	out := make([]entityTypeJSON, 0, len(rows))
	for _, t := range rows {
		out = append(out, entityTypeFromRow(t))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func entityTypeName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if !entityTypeRE.MatchString(name) {
		return "", badRequest("entity type %q must match %s", name, entityTypeRE)
	}
	return name, nil
}

func (s *Server) getEntityType(w http.ResponseWriter, r *http.Request) error {
	name, err := entityTypeName(r)
	if err != nil {
		return err
	}
	t, err := s.q.GetEntityType(r.Context(), s.pool, db.GetEntityTypeParams{TenantID: s.cfg.Tenant, Name: name})
	if errors.Is(err, db.ErrNotFound) {
		return errf(http.StatusNotFound, "ENTITY_TYPE_NOT_FOUND", "entity type %s not found", name)
	}
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, entityTypeFromRow(t))
	return nil
}

// deleteEntityType removes a type. Entities of the type stay; spawns of it
// no longer find a default runner.
func (s *Server) deleteEntityType(w http.ResponseWriter, r *http.Request) error {
	name, err := entityTypeName(r)
	if err != nil {
		return err
	}
	n, err := s.q.DeleteEntityType(r.Context(), s.pool, db.DeleteEntityTypeParams{TenantID: s.cfg.Tenant, Name: name})
	if err != nil {
		return err
	}
	if n == 0 {
		return errf(http.StatusNotFound, "ENTITY_TYPE_NOT_FOUND", "entity type %s not found", name)
	}
	s.log.Info("entity type deleted", "entity_type", name)
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "deleted": name})
	return nil
}
