package reconcile

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/sweeper"
	"github.com/pullwake/pullwake/server/tokens"
)

// RunnerTokenCache is the server's cache of runner token hashes (runner
// id -> hash, as a string), which the runner routes' auth reads.
type RunnerTokenCache interface {
	// Cached returns a copy of the cache.
	Cached() map[string]string
	// DropIf drops id's entry if it still holds hash, and reports whether
	// it did (an entry cached again meanwhile stays).
	DropIf(id, hash string) bool
	// Forget drops id's entry whatever it holds, so the next request
	// reads the current hash (and a read in flight caches nothing).
	Forget(id string)
}

// Config is what the reconciler needs; zero values get defaults, except
// Pool and Tokens, which are required.
type Config struct {
	Pool     *pgxpool.Pool
	Tenant   string        // "default"
	Interval time.Duration // 1s: a pass at most this often, each query within it
	Tokens   *tokens.Store
	// Runners is the runner-token cache; nil: none to reconcile.
	Runners RunnerTokenCache
	Logger  *slog.Logger
}

// Reconciler re-checks the server's in-memory token maps against the
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
//
// It also takes the notifications that say the same at once
// (OnClaimNotification, OnRunnerTokenNotification).
type Reconciler struct {
	cfg      Config
	q        *db.Queries
	pool     *pgxpool.Pool
	tokens   *tokens.Store
	runners  RunnerTokenCache
	log      *slog.Logger
	interval time.Duration

	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	started time.Time
	lastOK  time.Time
	lastErr error
}

// New returns a reconciler over cfg; Start runs its timer.
func New(cfg Config) *Reconciler {
	if cfg.Pool == nil || cfg.Tokens == nil {
		panic("reconcile: Config.Pool and Config.Tokens are required")
	}
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.Interval = cmp.Or(cfg.Interval, time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Reconciler{cfg: cfg, q: db.New(), pool: cfg.Pool, tokens: cfg.Tokens, runners: cfg.Runners,
		log: cfg.Logger, interval: cfg.Interval}
}

// Start runs a pass at once, then every interval, until Stop.
func (r *Reconciler) Start(ctx context.Context) {
	ctx, r.cancel = context.WithCancel(ctx)
	r.done = make(chan struct{})
	r.mu.Lock()
	r.started = time.Now()
	r.mu.Unlock()
	go func() {
		defer close(r.done)
		sweeper.RunEvery(ctx, r.interval, func() { r.RunOnce(ctx) })
	}()
}

// Stop ends the timer and waits for a pass in flight.
func (r *Reconciler) Stop() {
	if r.cancel == nil {
		return
	}
	r.cancel()
	<-r.done
}

// Status is false when no pass has succeeded for three intervals.
func (r *Reconciler) Status() (bool, string) {
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

// RunOnce reconciles both maps once; each query gets one interval. The
// server also runs it whenever its LISTEN connection (re)connects.
func (r *Reconciler) RunOnce(parent context.Context) {
	ctx, cancel := context.WithTimeout(parent, r.interval)
	defer cancel()
	err := r.reconcileWriteTokens(ctx)
	if err == nil {
		err = r.reconcileRunnerHashes(ctx)
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
		r.log.Warn("token reconcile failed; retrying next interval", "err", err)
	}
}

// reconcileWriteTokens drops every write token whose claim is no longer
// active. Only tokens held before the query are considered: a token minted
// later belongs to a claim that committed later.
func (r *Reconciler) reconcileWriteTokens(ctx context.Context) error {
	held := r.tokens.Snapshot()
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
	rows, err := r.q.ActiveClaimsAmong(ctx, r.pool, db.ActiveClaimsAmongParams{TenantID: r.cfg.Tenant, ConsumerIds: ids})
	if err != nil {
		return fmt.Errorf("read active claims: %w", err)
	}
	active := make(map[tokens.Owner]bool, len(rows))
	for _, row := range rows {
		active[tokens.Owner{ConsumerID: row.ConsumerID, Epoch: row.Epoch}] = true
	}
	for _, h := range held {
		if !active[h.Owner] && r.tokens.ClearIfOwner(h.Path, h.Owner) {
			r.log.Info("write token dropped by reconcile: claim no longer active",
				"consumer_id", h.Owner.ConsumerID, "epoch", h.Owner.Epoch, "stream_path", h.Path)
		}
	}
	return nil
}

// reconcileRunnerHashes drops cached runner-token hashes that no longer
// match the database (rotated token, deleted runner).
func (r *Reconciler) reconcileRunnerHashes(ctx context.Context) error {
	if r.runners == nil {
		return nil
	}
	cached := r.runners.Cached()
	if len(cached) == 0 {
		return nil
	}
	ids := make([]string, 0, len(cached))
	for id := range cached {
		ids = append(ids, id)
	}
	rows, err := r.q.RunnerTokenHashes(ctx, r.pool, db.RunnerTokenHashesParams{TenantID: r.cfg.Tenant, Ids: ids})
	if err != nil {
		return fmt.Errorf("read runner token hashes: %w", err)
	}
	current := make(map[string]string, len(rows))
	for _, row := range rows {
		current[row.ID] = string(row.TokenHash)
	}
	for id, h := range cached {
		if cur, ok := current[id]; (!ok || cur != h) && r.runners.DropIf(id, h) {
			r.log.Info("runner token cache entry dropped by reconcile: token changed or runner gone", "runner_id", id)
		}
	}
	return nil
}
