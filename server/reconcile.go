package server

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/sweeper"
	"github.com/pullwake/pullwake/server/tokens"
)

// reconciler re-checks the server's in-memory token maps against the
// database every interval, so what a notification would have said arrives
// anyway when the notification is lost (a listener that is down, silent or
// reconnecting; a publisher killed between commit and publish):
//
//   - a write token whose claim is no longer active is dropped (one
//     primary-key query over the consumer ids the store holds);
//   - a cached runner-token hash that changed or whose runner is gone is
//     dropped (one primary-key query over the cached runner ids).
//
// A claim that ends anywhere therefore loses its write token on every
// instance within one interval plus one query (the documented bound: 2 s
// with the 1 s default). It does nothing while both maps are empty.
type reconciler struct {
	s        *Server
	interval time.Duration

	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	started time.Time
	lastOK  time.Time
	lastErr error
}

// Start runs a pass at once, then every interval, until Stop.
func (r *reconciler) Start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	r.mu.Lock()
	r.started = time.Now()
	r.mu.Unlock()
	go func() {
		defer close(r.done)
		sweeper.RunEvery(ctx, r.interval, func() { r.runOnce(ctx) })
	}()
}

// Stop ends the timer and waits for a pass in flight.
func (r *reconciler) Stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
}

// Status is false when no pass has succeeded for three intervals.
func (r *reconciler) Status() (bool, string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started.IsZero() || r.lastErr == nil {
		return true, ""
	}
	since := r.lastOK
	if since.IsZero() {
		since = r.started
	}
	if d := time.Since(since); d > 3*r.interval {
		return false, fmt.Sprintf("token reconcile failing for %s: %v", d.Round(time.Millisecond), r.lastErr)
	}
	return true, ""
}

// runOnce reconciles both maps once; each query gets one interval.
func (r *reconciler) runOnce(parent context.Context) {
	ctx, cancel := context.WithTimeout(parent, r.interval)
	defer cancel()
	err := r.s.reconcileWriteTokens(ctx)
	if err == nil {
		err = r.s.reconcileRunnerHashes(ctx)
	}
	if parent.Err() != nil {
		return // stopping
	}
	r.mu.Lock()
	r.lastErr = err
	if err == nil {
		r.lastOK = time.Now()
	}
	r.mu.Unlock()
	if err != nil {
		r.s.log.Warn("token reconcile failed; retrying next interval", "err", err)
	}
}

// reconcileWriteTokens drops every write token whose claim is no longer
// active. Only tokens held before the query are considered: a token minted
// later belongs to a claim that committed later.
func (s *Server) reconcileWriteTokens(ctx context.Context) error {
	held := s.tokens.Snapshot()
	if len(held) == 0 {
		return nil
	}
	ids := make([]string, 0, len(held))
	seen := make(map[string]bool, len(held))
	for _, h := range held {
		if !seen[h.Owner.ConsumerID] {
			seen[h.Owner.ConsumerID] = true
			ids = append(ids, h.Owner.ConsumerID)
		}
	}
	rows, err := s.q.ActiveClaimsAmong(ctx, s.pool, db.ActiveClaimsAmongParams{TenantID: s.cfg.Tenant, ConsumerIds: ids})
	if err != nil {
		return fmt.Errorf("read active claims: %w", err)
	}
	active := make(map[tokens.Owner]bool, len(rows))
	for _, r := range rows {
		active[tokens.Owner{ConsumerID: r.ConsumerID, Epoch: r.Epoch}] = true
	}
	for _, h := range held {
		if !active[h.Owner] && s.tokens.ClearIfOwner(h.Path, h.Owner) {
			s.log.Info("write token dropped by reconcile: claim no longer active",
				"consumer_id", h.Owner.ConsumerID, "epoch", h.Owner.Epoch, "stream_path", h.Path)
		}
	}
	return nil
}

// reconcileRunnerHashes drops cached runner-token hashes that no longer
// match the database (rotated token, deleted runner).
func (s *Server) reconcileRunnerHashes(ctx context.Context) error {
	cached := map[string]string{}
	s.runnerHashes.Range(func(k, v any) bool {
		cached[k.(string)] = v.(string)
		return true
	})
	if len(cached) == 0 {
		return nil
	}
	ids := make([]string, 0, len(cached))
	for id := range cached {
		ids = append(ids, id)
	}
	rows, err := s.q.RunnerTokenHashes(ctx, s.pool, db.RunnerTokenHashesParams{TenantID: s.cfg.Tenant, Ids: ids})
	if err != nil {
		return fmt.Errorf("read runner token hashes: %w", err)
	}
	current := make(map[string]string, len(rows))
	for _, r := range rows {
		current[r.ID] = string(r.TokenHash)
	}
	for id, h := range cached {
		if cur, ok := current[id]; (!ok || cur != h) && s.runnerHashes.CompareAndDelete(id, h) {
			s.log.Info("runner token cache entry dropped by reconcile: token changed or runner gone", "runner_id", id)
		}
	}
	return nil
}
