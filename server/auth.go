package server

import (
	"errors"
	"net/http"
	"sync"
	"sync/atomic"

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
// cached; a rotation or deletion drops the cache entry (see runnerTokens).
func (s *Server) runnerHash(r *http.Request, id string) ([]byte, error) {
	c := &s.runnerTokens
	if h, ok := c.hashes.Load(id); ok {
		return []byte(h.(string)), nil
	}
	// A rotation notified while this read is in flight must not be undone
	// by caching what the read returns: cache only if no entry was
	// forgotten meanwhile.
	gen := c.gen.Load()
	run, err := s.q.GetRunner(r.Context(), s.pool, db.GetRunnerParams{TenantID: s.cfg.Tenant, ID: id})
	if errors.Is(err, db.ErrNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if c.gen.Load() == gen {
		c.hashes.Store(id, string(run.TokenHash))
	}
	return run.TokenHash, nil
}

// runnerTokenCache caches runner id -> token hash (a string) for
// requireRunner; the reconciler (server/reconcile) keeps it in line with
// the database.
type runnerTokenCache struct {
	hashes sync.Map
	gen    atomic.Uint64 // bumped by Forget (see runnerHash)
}

// Cached returns a copy of the cache.
func (c *runnerTokenCache) Cached() map[string]string {
	cached := map[string]string{}
	c.hashes.Range(func(k, v any) bool {
		cached[k.(string)] = v.(string)
		return true
	})
	return cached
}

// DropIf drops id's entry if it still holds hash.
func (c *runnerTokenCache) DropIf(id, hash string) bool { return c.hashes.CompareAndDelete(id, hash) }

// Forget drops runner id's cached token hash, so the next request reads
// the current one from the database. Registration calls it after rotating
// a token, for this instance not to wait for the notification.
func (c *runnerTokenCache) Forget(id string) {
	c.gen.Add(1)
	c.hashes.Delete(id)
}
