package server

import (
	"errors"
	"net/http"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/secret"
	"github.com/pullwake/pullwake/server/httpx"
)

func bearer(r *http.Request) string { return secret.Bearer(r.Header.Get("Authorization")) }

// isAdmin reports whether the request carries the configured admin token.
// It compares SHA-256 hashes, so the time taken does not depend on how long
// the presented token is or on how much of it matches.
func (s *Server) isAdmin(r *http.Request) bool {
	return s.adminHash != nil && secret.MatchesHash(bearer(r), s.adminHash)
}

// requireAdmin guards management routes; with no admin token configured
// (dev mode) they are open.
func (s *Server) requireAdmin(r *http.Request) error {
	if s.cfg.AdminToken == "" || s.isAdmin(r) {
		return nil
	}
	if bearer(r) == "" {
		return httpx.Unauthorized("admin token required (Authorization: Bearer <token>)")
	}
	return httpx.Unauthorized("wrong admin token")
}

// requireRunner guards a runner's routes: its runner token, or the admin
// token. A missing or wrong token is 401 whether or not the runner exists:
// only a caller with a valid credential learns that (404 RUNNER_NOT_FOUND
// comes from the handler, for the admin).
func (s *Server) requireRunner(r *http.Request) error {
	id := r.PathValue("id")
	if !httpx.IDRE.MatchString(id) {
		return httpx.BadRequest("runner id %q must match %s", id, httpx.IDRE)
	}
	if s.isAdmin(r) {
		return nil
	}
	tok := bearer(r)
	if tok == "" {
		return httpx.Unauthorized("runner token required (Authorization: Bearer <token>)")
	}
	hash, err := s.runnerHash(r, id)
	if err != nil {
		return err
	}
	if hash == nil {
		hash = noRunnerHash // same work as a wrong token for a runner that exists
	}
	if !secret.MatchesHash(tok, hash) {
		return httpx.Unauthorized("wrong runner token for runner " + id + ": a later registration of this id replaced it, or the token is not this runner's")
	}
	return nil
}

// noRunnerHash matches no token (no token hashes to all zero bytes).
var noRunnerHash = make([]byte, 32)

// runnerHash returns the runner's token hash (nil when no such runner),
// cached; a rotation or deletion drops the cache entry (see runnerHashes).
func (s *Server) runnerHash(r *http.Request, id string) ([]byte, error) {
	if h, ok := s.runnerHashes.Load(id); ok {
		return []byte(h.(string)), nil
	}
	// A rotation notified while this read is in flight must not be undone
	// by caching what the read returns: cache only if no entry was
	// forgotten meanwhile.
	gen := s.runnerGen.Load()
	run, err := s.q.GetRunner(r.Context(), s.pool, db.GetRunnerParams{TenantID: s.cfg.Tenant, ID: id})
	if errors.Is(err, db.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if s.runnerGen.Load() == gen {
		s.runnerHashes.Store(id, string(run.TokenHash))
	}
	return run.TokenHash, nil
}
