package server

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/tokens"
)

// SweeperConfig configures the lease sweeper; zero values get defaults.
type SweeperConfig struct {
	Pool     *pgxpool.Pool
	Tenant   string
	Interval time.Duration // 5s
	Batch    int           // claims expired (rows purged) per statement at most (1000)
	// Retention: ended claims and finished wakes older than this are
	// deleted in bounded batches after each expiry pass; 0 keeps all.
	Retention time.Duration
	Tokens    *tokens.Store
	Metrics   Metrics
	Logger    *slog.Logger
}

// Sweeper expires claims whose lease passed, every Interval, through the
// sweep_claims SQL function (an advisory lock keeps it to one instance per
// tenant at a time), and drops the write tokens of the claims it expired.
type Sweeper struct {
	cfg    SweeperConfig
	q      *db.Queries
	cancel context.CancelFunc
	done   chan struct{}
}

// NewSweeper returns a sweeper; Start runs it.
func NewSweeper(cfg SweeperConfig) *Sweeper {
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.Interval = cmp.Or(cfg.Interval, 5*time.Second)
	cfg.Batch = cmp.Or(cfg.Batch, 1000)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	return &Sweeper{cfg: cfg, q: db.New()}
}

// Start sweeps every interval until Stop or ctx ends.
func (sw *Sweeper) Start(ctx context.Context) {
	ctx, sw.cancel = context.WithCancel(ctx)
	sw.done = make(chan struct{})
	go func() {
		defer close(sw.done)
		t := time.NewTicker(sw.cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if _, err := sw.RunOnce(ctx, nil); err != nil && ctx.Err() == nil {
					sw.cfg.Logger.Warn("sweep failed", "err", err)
				}
				if err := sw.VacuumQueue(ctx); err != nil && ctx.Err() == nil {
					sw.cfg.Logger.Warn("vacuum of the claim queue failed", "err", err)
				}
				if _, _, err := sw.Purge(ctx, nil); err != nil && ctx.Err() == nil {
					sw.cfg.Logger.Warn("retention purge failed", "err", err)
				}
				if _, err := sw.PurgeWakeEvents(ctx, nil); err != nil && ctx.Err() == nil {
					sw.cfg.Logger.Warn("retention purge of wake events failed", "err", err)
				}
			}
		}
	}()
}

// Stop ends the sweeper and waits for a pass in flight.
func (sw *Sweeper) Stop() {
	if sw.cancel == nil {
		return
	}
	sw.cancel()
	<-sw.done
}

// RunOnce runs one pass at now (nil = the database's now()) and returns the
// claims it expired. Passes repeat while a full batch comes back.
func (sw *Sweeper) RunOnce(ctx context.Context, now *time.Time) ([]db.SweepClaimsRow, error) {
	var all []db.SweepClaimsRow
	for {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		rows, err := sw.q.SweepClaims(qctx, sw.cfg.Pool, db.SweepClaimsParams{
			Now: now, TenantID: sw.cfg.Tenant, MaxClaims: int32(sw.cfg.Batch)})
		cancel()
		if err != nil {
			return all, fmt.Errorf("sweep claims: %w", err)
		}
		for _, r := range rows {
			if sw.cfg.Tokens != nil {
				sw.cfg.Tokens.ClearIfOwner(r.StreamPath, tokens.Owner{ConsumerID: r.ConsumerID, Epoch: r.Epoch})
			}
			sw.cfg.Logger.Info("claim expired", "consumer_id", r.ConsumerID, "epoch", r.Epoch,
				"entity_url", r.EntityUrl, "entity_cleared", r.EntityCleared, "entity_status", r.EntityStatus,
				"requeued_wake_id", r.QueuedWakeID)
		}
		if len(rows) > 0 {
			sw.cfg.Metrics.Expired(len(rows))
		}
		all = append(all, rows...)
		if len(rows) < sw.cfg.Batch {
			return all, nil
		}
	}
}

// VacuumQueue vacuums wake_queue, the table of queued wakes. Every claim
// deletes a row of it; the entries those rows leave in its index sit at the
// head of the queue, where every claim's pick starts, until VACUUM removes
// them, so the sweeper does that every pass (the table is small, so it costs
// little). SKIP_LOCKED: a vacuum already running elsewhere is enough.
func (sw *Sweeper) VacuumQueue(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, sw.cfg.Interval)
	defer cancel()
	if _, err := sw.cfg.Pool.Exec(qctx, `VACUUM (SKIP_LOCKED) wake_queue`); err != nil {
		return fmt.Errorf("vacuum wake_queue: %w", err)
	}
	return nil
}

// Purge deletes ended claims and finished wakes older than the retention
// age, batch by batch (at most 20 batches a pass, so a pass stays short).
func (sw *Sweeper) Purge(ctx context.Context, now *time.Time) (claims, wakes int, err error) {
	if sw.cfg.Retention <= 0 {
		return 0, 0, nil
	}
	age := pgtype.Interval{Microseconds: sw.cfg.Retention.Microseconds(), Valid: true}
	for range 20 {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		r, err := sw.q.PurgeHistory(qctx, sw.cfg.Pool, db.PurgeHistoryParams{
			OlderThan: age, MaxRows: int32(sw.cfg.Batch), Now: now, TenantID: sw.cfg.Tenant})
		cancel()
		if err != nil {
			return claims, wakes, fmt.Errorf("purge history: %w", err)
		}
		claims += int(r.ClaimsDeleted)
		wakes += int(r.WakesDeleted)
		if int(r.ClaimsDeleted) < sw.cfg.Batch && int(r.WakesDeleted) < sw.cfg.Batch {
			break
		}
	}
	if claims+wakes > 0 {
		sw.cfg.Logger.Info("retention purge", "claims_deleted", claims, "wakes_deleted", wakes)
	}
	return claims, wakes, nil
}
