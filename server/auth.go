package server

import (
	"errors"
	"net/http"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/secret"
)

func bearer(r *http.Request) string { return secret.Bearer(r.Header.Get("Authorization")) }

func unauthorized(msg string) *apiError {
	return errf(http.StatusUnauthorized, "UNAUTHORIZED", "%s", msg)
}

// isAdmin reports whether the request carries the configured admin token.
func (s *Server) isAdmin(r *http.Request) bool {
	return s.cfg.AdminToken != "" && secret.Equal(bearer(r), s.cfg.AdminToken)
}

// requireAdmin guards management routes; with no admin token configured
// (dev mode) they are open.
func (s *Server) requireAdmin(r *http.Request) error {
	if s.cfg.AdminToken == "" || s.isAdmin(r) {
		return nil
	}
	if bearer(r) == "" {
		return unauthorized("admin token required (Authorization: Bearer <token>)")
	}
	return unauthorized("wrong admin token")
}

// requireRunner guards a runner's routes: its runner token, or the admin token.
func (s *Server) requireRunner(r *http.Request) error {
	id := r.PathValue("id")
	if !idRE.MatchString(id) {
		return badRequest("runner id %q must match %s", id, idRE)
	}
	if s.isAdmin(r) {
		return nil
	}
	tok := bearer(r)
	if tok == "" {
		return unauthorized("runner token required (Authorization: Bearer <token>)")
	}
	hash, err := s.runnerHash(r, id)
	if err != nil {
		return err
	}
	if !secret.MatchesHash(tok, hash) {
		return unauthorized("wrong runner token")
	}
	return nil
}

// runnerHash returns the runner's token hash, cached: a runner's token never changes.
func (s *Server) runnerHash(r *http.Request, id string) ([]byte, error) {
	if h, ok := s.runnerHashes.Load(id); ok {
		return h.([]byte), nil
	}
	run, err := s.q.GetRunner(r.Context(), s.pool, db.GetRunnerParams{TenantID: s.cfg.Tenant, ID: id})
	if errors.Is(err, db.ErrNotFound) {
		return nil, errf(http.StatusNotFound, "RUNNER_NOT_FOUND", "runner %s not found", id)
	}
	if err != nil {
		return nil, err
	}
	s.runnerHashes.Store(id, run.TokenHash)
	return run.TokenHash, nil
}
