package entitytypes

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/schemas"
	"github.com/pullwake/pullwake/server/httpx"
)

// Typed entities: a registered type's creation_schema checks spawn
// arguments and its inbox_schemas check typed sends (internal/schemas,
// compiled once per type revision), through the entity handlers'
// validator hook (the Service is the server's validator). Under
// /_electric/entities a spawn of an unregistered type is always refused,
// as Electric's server does; under /entities only with the server's
// RequireEntityTypes. Refusals are encoded per prefix by Refusal:
// Electric's codes and 404/422 under /_electric/, the SPEC's 400
// INVALID_REQUEST under /entities.

// schemaSource reads a type for the validator.
func (s *Service) schemaSource(ctx context.Context, name string) (schemas.Type, bool, error) {
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

// ValidateSpawn checks a spawn's args (nil when absent) against the type's
// creation_schema (internal/schemas over the entity_types table); an
// unregistered type passes unless requireType.
func (s *Service) ValidateSpawn(ctx context.Context, typ string, args json.RawMessage, requireType bool) error {
	err := s.validator.ValidateSpawn(ctx, typ, args)
	var ut *schemas.UnknownTypeError
	if errors.As(err, &ut) && !requireType {
		return nil
	}
	return err
}

// ValidateSend checks a typed send's payload against its inbox schema
// (msgType "" when the send names none).
func (s *Service) ValidateSend(ctx context.Context, typ, msgType string, payload json.RawMessage) error {
	return s.validator.ValidateSend(ctx, typ, msgType, payload)
}

// Refusal encodes a validation error of ValidateSpawn or ValidateSend in
// Electric's dialect or pullwake's (SPEC §4: 400 INVALID_REQUEST); any
// other error is returned as it is.
func Refusal(electric bool, err error) error {
	if err == nil {
		return nil
	}
	var (
		ut *schemas.UnknownTypeError
		um *schemas.UnknownMessageTypeError
		ie *schemas.InvalidError
		se *schemas.SchemaError
		cb *schemas.CompileBudgetError
	)
	switch {
	case errors.As(err, &cb):
		// The type's own cost, not the database's: a 4xx naming it.
		return httpx.Errorf(http.StatusUnprocessableEntity, "ENTITY_TYPE_TOO_COMPLEX", "%s", cb.Error())
	case errors.As(err, &se):
		// A stored schema that does not compile: the row was written
		// before schemas were checked, or by hand.
		return httpx.Errorf(http.StatusConflict, "ENTITY_TYPE_INVALID",
			"%s; delete the entity type and register it again", err.Error())
	case errors.As(err, &ut) && electric:
		return httpx.Errorf(http.StatusNotFound, "UNKNOWN_ENTITY_TYPE", "%s", ut.Error())
	case errors.As(err, &um) && electric:
		return httpx.Errorf(http.StatusUnprocessableEntity, "UNKNOWN_MESSAGE_TYPE", "%s", um.Error())
	case errors.As(err, &ie) && electric:
		e := httpx.Errorf(http.StatusUnprocessableEntity, "SCHEMA_VALIDATION_FAILED", "%s", ie.Error())
		e.Details = ie.Details
		return e
	case errors.As(err, &ie):
		e := httpx.BadRequest("%s", ie.Error())
		e.Details = ie.Details
		return e
	case errors.As(err, &ut), errors.As(err, &um):
		return httpx.BadRequest("%s", err.Error())
	}
	return err
}
