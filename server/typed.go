package server

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/schemas"
)

// Typed entities: a registered type's creation_schema checks spawn
// arguments and its inbox_schemas check typed sends (internal/schemas,
// compiled once per type revision). Under /_electric/entities a spawn of
// an unregistered type is always refused, as Electric's server does; under
// /entities only with Config.RequireEntityTypes. Refusals are encoded per
// prefix: Electric's codes and 404/422 under /_electric/, the SPEC's
// 400 INVALID_REQUEST under /entities.

// schemaSource reads a type for the validator.
func (s *Server) schemaSource(ctx context.Context, name string) (schemas.Type, bool, error) {
	t, err := s.q.GetEntityType(ctx, s.pool, db.GetEntityTypeParams{TenantID: s.cfg.Tenant, Name: name})
	if errors.Is(err, db.ErrNotFound) {
		return schemas.Type{}, false, nil
	}
	if err != nil {
		return schemas.Type{}, false, err
	}
	return schemas.Type{Name: t.Name, Revision: t.Revision, CreatedAt: t.CreatedAt,
		CreationSchema: t.CreationSchema, InboxSchemas: t.InboxSchemas}, true, nil
}

// electricRoute reports whether r came in under Electric's prefix.
func electricRoute(r *http.Request) bool {
	return strings.HasPrefix(r.URL.Path, "/_electric/")
}

// checkSpawn validates a spawn's arguments against its type. An
// unregistered type passes unless types are required on this route.
func (s *Server) checkSpawn(r *http.Request, url string, args json.RawMessage) error {
	err := s.schemas.ValidateSpawn(r.Context(), entityType(url), args)
	var ut *schemas.UnknownTypeError
	if errors.As(err, &ut) && !electricRoute(r) && !s.cfg.RequireEntityTypes {
		return nil
	}
	return s.schemaRefusal(r, err)
}

// checkSend validates a typed send's payload against its inbox schema.
func (s *Server) checkSend(r *http.Request, url, msgType string, payload json.RawMessage) error {
	return s.schemaRefusal(r, s.schemas.ValidateSend(r.Context(), entityType(url), msgType, payload))
}

// schemaRefusal encodes a validation error for r's prefix; other errors
// pass as they are.
func (s *Server) schemaRefusal(r *http.Request, err error) error {
	if err == nil {
		return nil
	}
	electric := electricRoute(r)
	var (
		ut *schemas.UnknownTypeError
		um *schemas.UnknownMessageTypeError
		ie *schemas.InvalidError
	)
	switch {
	case errors.As(err, &ut) && electric:
		return errf(http.StatusNotFound, "UNKNOWN_ENTITY_TYPE", "%s", ut.Error())
	case errors.As(err, &um) && electric:
		return errf(http.StatusUnprocessableEntity, "UNKNOWN_MESSAGE_TYPE", "%s", um.Error())
	case errors.As(err, &ie) && electric:
		e := errf(http.StatusUnprocessableEntity, "SCHEMA_VALIDATION_FAILED", "%s", ie.Error())
		e.details = ie.Details
		return e
	case errors.As(err, &ie):
		e := badRequest("%s", ie.Error())
		e.details = ie.Details
		return e
	case errors.As(err, &ut), errors.As(err, &um):
		return badRequest("%s", err.Error())
	}
	return err
}

// isEntityURL reports whether u is /{type}/{id} under the identifier rules.
func isEntityURL(u string) bool {
	typ, id, ok := strings.Cut(strings.TrimPrefix(u, "/"), "/")
	return ok && strings.HasPrefix(u, "/") && entityTypeRE.MatchString(typ) && idRE.MatchString(id)
}
