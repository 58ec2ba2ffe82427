package entitytypes

import (
	"encoding/json"
	"errors"
	"net/http"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/schemas"
	"github.com/pullwake/pullwake/server/httpx"
)

// Entity types: Electric's runtime registers the types it handles at
// start (POST /_electric/entity-types, an upsert by name). pullwake stores
// the body and returns it; its default_dispatch_policy's first runner
// target is the runner a spawn of that type without runner_id targets
// (spawn_entity). Every schema must compile (internal/schemas) and a
// registered inbox or state schema key never changes: a re-registration
// and PATCH .../schemas may add keys, never change or drop one (409
// SCHEMA_KEY_EXISTS). Each change bumps the type's revision.

type entityTypeJSON struct {
	Name                  string          `json:"name"`
	Description           string          `json:"description"`
	CreationSchema        json.RawMessage `json:"creation_schema"`
	InboxSchemas          json.RawMessage `json:"inbox_schemas"`
	StateSchemas          json.RawMessage `json:"state_schemas"`
	DefaultDispatchPolicy json.RawMessage `json:"default_dispatch_policy"`
	Revision              int64           `json:"revision"`
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
		DefaultDispatchPolicy: orNull(t.DefaultDispatchPolicy), Revision: t.Revision,
		CreatedAt: t.CreatedAt, UpdatedAt: t.UpdatedAt,
	}
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
		return httpx.BadRequest("field default_dispatch_policy: targets must be an array of objects")
	}
	for i, t := range policy.Targets {
		if t == nil {
			return httpx.BadRequest("default_dispatch_policy.targets[%d] must be an object", i)
		}
		typ, _ := t["type"].(string)
		if typ == "" {
			return httpx.BadRequest("default_dispatch_policy.targets[%d].type must be a string", i)
		}
		if typ != "runner" {
			continue
		}
		id, ok := t["runnerId"]
		if !ok {
			id, ok = t["runner_id"]
		}
		s, isString := id.(string)
		if !ok || !isString || !httpx.IDRE.MatchString(s) {
			return httpx.BadRequest("default_dispatch_policy.targets[%d]: a runner target needs runnerId matching %s", i, httpx.IDRE)
		}
	}
	return nil
}

// entityTypeBody is a registration: POST /_electric/entity-types, or the
// manifest a serve endpoint answers. input_schemas and output_schemas are
// Electric's other names of inbox_schemas and state_schemas.
type entityTypeBody struct {
	Name                  *string         `json:"name"`
	Description           *string         `json:"description"`
	CreationSchema        json.RawMessage `json:"creation_schema"`
	InboxSchemas          json.RawMessage `json:"inbox_schemas"`
	StateSchemas          json.RawMessage `json:"state_schemas"`
	InputSchemas          json.RawMessage `json:"input_schemas"`
	OutputSchemas         json.RawMessage `json:"output_schemas"`
	DefaultDispatchPolicy json.RawMessage `json:"default_dispatch_policy"`
	ServeEndpoint         *string         `json:"serve_endpoint"`
}

func (s *Service) upsertEntityType(w http.ResponseWriter, r *http.Request) error {
	var body entityTypeBody
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	if body.Name == nil {
		return httpx.BadRequest("name is required")
	}
	if !httpx.EntityTypeRE.MatchString(*body.Name) {
		return httpx.BadRequest("name %q must match %s", *body.Name, httpx.EntityTypeRE)
	}
	// A serve endpoint alone (no description, no creation_schema) names
	// where the type's manifest is: it is fetched and registered instead,
	// as Electric's server does.
	if body.ServeEndpoint != nil && body.Description == nil && isAbsent(body.CreationSchema) {
		manifest, err := s.fetchServeManifest(r.Context(), *body.Name, *body.ServeEndpoint)
		if err != nil {
			return err
		}
		body = manifest
	}
	if isAbsent(body.InboxSchemas) {
		body.InboxSchemas = body.InputSchemas
	}
	if isAbsent(body.StateSchemas) {
		body.StateSchemas = body.OutputSchemas
	}
	desc := ""
	if body.Description != nil {
		desc = *body.Description
	}
	if len(desc) > 4096 {
		return httpx.BadRequest("description must be at most 4096 bytes")
	}
	p := db.UpsertEntityTypeParams{TenantID: s.cfg.Tenant, Name: *body.Name, Description: desc}
	var err error
	if p.CreationSchema, err = httpx.JSONObject(body.CreationSchema, "creation_schema"); err != nil {
		return err
	}
	if p.InboxSchemas, err = httpx.JSONObject(body.InboxSchemas, "inbox_schemas"); err != nil {
		return err
	}
	if p.StateSchemas, err = httpx.JSONObject(body.StateSchemas, "state_schemas"); err != nil {
		return err
	}
	if p.DefaultDispatchPolicy, err = httpx.JSONObject(body.DefaultDispatchPolicy, "default_dispatch_policy"); err != nil {
		return err
	}
	if err := checkDispatchPolicy(p.DefaultDispatchPolicy); err != nil {
		return err
	}
	if err := schemaError(schemas.CheckSchemas(p.CreationSchema, p.InboxSchemas, p.StateSchemas)); err != nil {
		return err
	}
	// The amend rule is checked against the revision read; the upsert
	// applies only at that revision, else the type is read again.
	inbox, state := p.InboxSchemas, p.StateSchemas // as given
	for attempt := 0; ; attempt++ {
		p.InboxSchemas, p.StateSchemas = inbox, state
		old, err := s.q.GetEntityType(r.Context(), s.pool, db.GetEntityTypeParams{TenantID: s.cfg.Tenant, Name: *body.Name})
		switch {
		case errors.Is(err, db.ErrNotFound):
			p.ExpectedRevision = nil
		case err != nil:
			return err
		default:
			// An absent map keeps the registered one: a registration
			// never drops a schema key.
			if p.InboxSchemas == nil {
				p.InboxSchemas = old.InboxSchemas
			}
			if p.StateSchemas == nil {
				p.StateSchemas = old.StateSchemas
			}
			if err := schemaError(schemas.CheckReplace("inbox_schemas", old.InboxSchemas, p.InboxSchemas)); err != nil {
				return err
			}
			if err := schemaError(schemas.CheckReplace("state_schemas", old.StateSchemas, p.StateSchemas)); err != nil {
				return err
			}
			p.ExpectedRevision = &old.Revision
		}
		if err := schemaError(schemas.CheckSize(*body.Name, p.CreationSchema, p.InboxSchemas, p.StateSchemas)); err != nil {
			return err
		}
		row, err := s.q.UpsertEntityType(r.Context(), s.pool, p)
		if errors.Is(err, db.ErrNotFound) && attempt < maxTypeWriteAttempts {
			continue // changed since read: check again
		}
		if errors.Is(err, db.ErrNotFound) {
			return httpx.Errorf(http.StatusConflict, "CONFLICT", "entity type %s keeps changing; retry", *body.Name)
		}
		if err != nil {
			return err
		}
		// 201 for a new type and a new revision alike, as Electric's
		// server answers; revision tells them apart.
		status := http.StatusCreated
		s.log.Info("entity type registered", "entity_type", row.Name, "created", row.Created, "revision", row.Revision)
		httpx.WriteJSON(w, status, entityTypeFromRow(db.EntityType{
			TenantID: row.TenantID, Name: row.Name, Description: row.Description, CreationSchema: row.CreationSchema,
			InboxSchemas: row.InboxSchemas, StateSchemas: row.StateSchemas, DefaultDispatchPolicy: row.DefaultDispatchPolicy,
			Revision: row.Revision, CreatedAt: row.CreatedAt, UpdatedAt: row.UpdatedAt,
		}))
		return nil
	}
}

// maxTypeWriteAttempts bounds how often a registration or amendment reads
// the type again after a concurrent change won the race (each round lets
// at least one writer through).
const maxTypeWriteAttempts = 32

// schemaError encodes a schema or amend-rule error of internal/schemas.
func schemaError(err error) error {
	var (
		se *schemas.SchemaError
		ce *schemas.ConflictError
		tl *schemas.TooLargeError
	)
	switch {
	case err == nil:
		return nil
	case errors.As(err, &tl):
		return httpx.BadRequest("%s", tl.Error())
	case errors.As(err, &se):
		return httpx.BadRequest("%s", se.Error())
	case errors.As(err, &ce):
		return httpx.Errorf(http.StatusConflict, "SCHEMA_KEY_EXISTS", "%s", ce.Error())
	}
	return err
}

// amendEntityTypeSchemas serves PATCH /_electric/entity-types/{name}/schemas
// {"inbox_schemas"?, "state_schemas"?} (input_schemas / output_schemas are
// Electric's other names for them): the keys are added to the type's maps.
// A key the type holds with another schema is 409 SCHEMA_KEY_EXISTS; with
// the same schema it changes nothing. The revision bumps when a key was
// added.
func (s *Service) amendEntityTypeSchemas(w http.ResponseWriter, r *http.Request) error {
	name, err := entityTypeName(r)
	if err != nil {
		return err
	}
	var body struct {
		InboxSchemas  json.RawMessage `json:"inbox_schemas"`
		StateSchemas  json.RawMessage `json:"state_schemas"`
		InputSchemas  json.RawMessage `json:"input_schemas"`
		OutputSchemas json.RawMessage `json:"output_schemas"`
	}
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	if body.InboxSchemas == nil {
		body.InboxSchemas = body.InputSchemas
	}
	if body.StateSchemas == nil {
		body.StateSchemas = body.OutputSchemas
	}
	inbox, err := httpx.JSONObject(body.InboxSchemas, "inbox_schemas")
	if err != nil {
		return err
	}
	state, err := httpx.JSONObject(body.StateSchemas, "state_schemas")
	if err != nil {
		return err
	}
	if err := schemaError(schemas.CheckSchemas(nil, inbox, state)); err != nil {
		return err
	}
	for attempt := 0; ; attempt++ {
		old, err := s.q.GetEntityType(r.Context(), s.pool, db.GetEntityTypeParams{TenantID: s.cfg.Tenant, Name: name})
		if errors.Is(err, db.ErrNotFound) {
			return httpx.Errorf(http.StatusNotFound, "ENTITY_TYPE_NOT_FOUND", "entity type %s not found", name)
		}
		if err != nil {
			return err
		}
		mergedInbox, addInbox, err := schemas.Merge("inbox_schemas", old.InboxSchemas, inbox)
		if err != nil {
			return schemaError(err)
		}
		mergedState, addState, err := schemas.Merge("state_schemas", old.StateSchemas, state)
		if err != nil {
			return schemaError(err)
		}
		if !addInbox && !addState {
			httpx.WriteJSON(w, http.StatusOK, entityTypeFromRow(old))
			return nil
		}
		if err := schemaError(schemas.CheckSize(name, old.CreationSchema, mergedInbox, mergedState)); err != nil {
			return err
		}
		t, err := s.q.AmendEntityTypeSchemas(r.Context(), s.pool, db.AmendEntityTypeSchemasParams{
			TenantID: s.cfg.Tenant, Name: name, ExpectedRevision: old.Revision,
			InboxSchemas: mergedInbox, StateSchemas: mergedState,
		})
		if errors.Is(err, db.ErrNotFound) && attempt < maxTypeWriteAttempts {
			continue // changed or deleted since read: check again
		}
		if errors.Is(err, db.ErrNotFound) {
			return httpx.Errorf(http.StatusConflict, "CONFLICT", "entity type %s keeps changing; retry", name)
		}
		if err != nil {
			return err
		}
		s.log.Info("entity type schemas amended", "entity_type", name, "revision", t.Revision)
		httpx.WriteJSON(w, http.StatusOK, entityTypeFromRow(t))
		return nil
	}
}

func (s *Service) listEntityTypes(w http.ResponseWriter, r *http.Request) error {
	rows, err := s.q.ListEntityTypes(r.Context(), s.pool, db.ListEntityTypesParams{TenantID: s.cfg.Tenant, MaxRows: 1000})
	if err != nil {
		return err
	}
	out := make([]entityTypeJSON, 0, len(rows))
	for _, t := range rows {
		out = append(out, entityTypeFromRow(t))
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

func entityTypeName(r *http.Request) (string, error) {
	name := r.PathValue("name")
	if !httpx.EntityTypeRE.MatchString(name) {
		return "", httpx.BadRequest("entity type %q must match %s", name, httpx.EntityTypeRE)
	}
	return name, nil
}

func (s *Service) getEntityType(w http.ResponseWriter, r *http.Request) error {
	name, err := entityTypeName(r)
	if err != nil {
		return err
	}
	t, err := s.q.GetEntityType(r.Context(), s.pool, db.GetEntityTypeParams{TenantID: s.cfg.Tenant, Name: name})
	if errors.Is(err, db.ErrNotFound) {
		return httpx.Errorf(http.StatusNotFound, "ENTITY_TYPE_NOT_FOUND", "entity type %s not found", name)
	}
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, entityTypeFromRow(t))
	return nil
}

// deleteEntityType removes a type. Entities of the type stay; spawns of it
// no longer find a default runner.
func (s *Service) deleteEntityType(w http.ResponseWriter, r *http.Request) error {
	name, err := entityTypeName(r)
	if err != nil {
		return err
	}
	n, err := s.q.DeleteEntityType(r.Context(), s.pool, db.DeleteEntityTypeParams{TenantID: s.cfg.Tenant, Name: name})
	if err != nil {
		return err
	}
	if n == 0 {
		return httpx.Errorf(http.StatusNotFound, "ENTITY_TYPE_NOT_FOUND", "entity type %s not found", name)
	}
	s.log.Info("entity type deleted", "entity_type", name)
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "deleted": name})
	return nil
}
