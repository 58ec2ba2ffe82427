package sweeper

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

// Config configures the sweeper; zero values get defaults.
type Config struct {
	Pool     *pgxpool.Pool
	Tenant   string
	Interval time.Duration // expiry pass period (5s)
	Batch    int           // claims expired (rows purged) per statement at most (1000)
	// Retention: ended claims and finished wakes older than this are
	// deleted by housekeeping in bounded batches; 0 keeps all.
	Retention time.Duration
	// HousekeepingInterval is the period of housekeeping: the vacuum of
	// the claim queue and the retention purge (Interval).
	HousekeepingInterval time.Duration
	// HousekeepingBudget bounds the retention purge of one housekeeping
	// pass (2s): the purge stops when it is spent (a batch in flight rolls
	// back) and goes on next pass.
	HousekeepingBudget time.Duration
	// HistoryGaugeInterval is how often the ended-claim gauges (a count
	// of the history) are read (1m); active and leaked claims are read
	// after every expiry pass.
	HistoryGaugeInterval time.Duration
	// WakeEventResend (5s) is how long a claimable wake waits, after its
	// runners read its last event without claiming it, before the
	// backstop writes it a new one (ResendWakeEvents).
	WakeEventResend time.Duration
	Tokens          *tokens.Store
	Metrics         Metrics
	Logger          *slog.Logger
}

// Metrics receives the sweeper's measurements (package metrics implements
// it); when it also reads the database-derived gauges (gaugeRefresher), the
// sweeper has it do so after every expiry pass.
type Metrics interface {
	Expired(n int)
}

type nopMetrics struct{}

func (nopMetrics) Expired(int) {}

// gaugeRefresher is the part of the metrics (package metrics implements it)
// that reads the database-derived gauges; a scrape only serves what it read.
type gaugeRefresher interface {
	RefreshClaimGauges(ctx context.Context, history bool) error
}

// Sweeper runs two loops, each starting at once when started:
//   - expiry, every Interval: sweep_claims expires claims whose lease passed
//     (an advisory lock inside the function keeps it to one instance per
//     tenant at a time), the write tokens of the claims it expired are
//     dropped, and the active-claim gauges are read;
//   - housekeeping, every HousekeepingInterval and within
//     HousekeepingBudget: the claim queue's vacuum and the retention purge,
//     only on the instance that holds the housekeeping lock, then (every
//     HistoryGaugeInterval) the ended-claim gauges.
//
// The loops are independent, so a slow purge over a large history never
// delays expiry: no claim stays active longer than its lease plus one
// Interval (plus the duration of one pass).
type Sweeper struct {
	cfg    Config
	q      *db.Queries
	gauges gaugeRefresher // nil when the metrics read no gauges
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a sweeper; Start runs it.
func New(cfg Config) *Sweeper {
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.Interval = cmp.Or(cfg.Interval, 5*time.Second)
	cfg.Batch = cmp.Or(cfg.Batch, 1000)
	cfg.HousekeepingInterval = cmp.Or(cfg.HousekeepingInterval, cfg.Interval)
	cfg.HousekeepingBudget = cmp.Or(cfg.HousekeepingBudget, 2*time.Second)
	cfg.HistoryGaugeInterval = cmp.Or(cfg.HistoryGaugeInterval, time.Minute)
	cfg.WakeEventResend = cmp.Or(cfg.WakeEventResend, 5*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Metrics == nil {
		cfg.Metrics = nopMetrics{}
	}
	sw := &Sweeper{cfg: cfg, q: db.New()}
	if g, ok := cfg.Metrics.(gaugeRefresher); ok {
		sw.gauges = g
	}
	return sw
}

// Start runs the expiry and housekeeping loops until Stop or ctx ends. The
// first expiry pass runs at once: claims that lapsed while no server was
// sweeping (all were down) end without waiting a whole interval.
func (sw *Sweeper) Start(ctx context.Context) {
	ctx, sw.cancel = context.WithCancel(ctx)
	sw.done = make(chan struct{})
	expiryDone := make(chan struct{})
	go func() {
		defer close(expiryDone)
		RunEvery(ctx, sw.cfg.Interval, func() {
			if _, err := sw.RunOnce(ctx, nil); err != nil && ctx.Err() == nil {
				sw.cfg.Logger.Warn("sweep failed", "err", err)
			}
			if _, err := sw.ResendWakeEvents(ctx, nil); err != nil && ctx.Err() == nil {
				sw.cfg.Logger.Warn("wake event backstop failed", "err", err)
			}
		})
	}()
	go func() {
		defer close(sw.done)
		defer func() { <-expiryDone }()
		var historyAt time.Time
		RunEvery(ctx, sw.cfg.HousekeepingInterval, func() {
			if _, err := sw.Housekeep(ctx, nil); err != nil && ctx.Err() == nil {
				sw.cfg.Logger.Warn("housekeeping failed", "err", err)
			}
			if time.Since(historyAt) >= sw.cfg.HistoryGaugeInterval {
				historyAt = time.Now()
				if err := sw.RefreshGauges(ctx, true); err != nil && ctx.Err() == nil {
					sw.cfg.Logger.Warn("reading the claim gauges failed", "err", err)
				}
				if _, err := sw.PurgeWakeEvents(ctx, nil); err != nil && ctx.Err() == nil {
					sw.cfg.Logger.Warn("retention purge of wake events failed", "err", err)
				}
			}
		})
	}()
}

// RunEvery runs fn at once, then every d, until ctx ends.
func RunEvery(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		fn()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// Stop ends the sweeper and waits for the passes in flight.
func (sw *Sweeper) Stop() {
	if sw.cancel == nil {
		return
	}
	sw.cancel()
	<-sw.done
}

// RunOnce runs one expiry pass at now (nil = the database's now()) and
// returns the claims it expired. Statements repeat while a full batch comes
// back. Then it reads the active-claim gauges (a failure there is logged:
// the expiry happened).
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
			break
		}
	}
	if err := sw.RefreshGauges(ctx, false); err != nil && ctx.Err() == nil {
		sw.cfg.Logger.Warn("reading the claim gauges failed", "err", err)
	}
	return all, nil
}

// RefreshGauges reads the database-derived gauges into the metrics'
// snapshot: active and leaked claims, and the ended claims by status when
// history is true. Without metrics that read gauges it does nothing.
func (sw *Sweeper) RefreshGauges(ctx context.Context, history bool) error {
	if sw.gauges == nil {
		return nil
	}
	return sw.gauges.RefreshClaimGauges(ctx, history)
}

// HousekeepingResult is what one housekeeping pass did.
type HousekeepingResult struct {
	Locked        bool // this instance held the housekeeping lock (else it did nothing)
	Vacuumed      bool
	ClaimsDeleted int
	WakesDeleted  int
	BudgetSpent   bool // the purge stopped at the budget with more to delete
}

// Housekeep runs one housekeeping pass: if this instance gets the
// housekeeping lock (a session advisory lock per tenant, held for the
// pass), it vacuums the claim queue and purges history past the retention
// age (as of now; nil = the database clock), batch by batch until done or
// until HousekeepingBudget is spent. Another instance holding the lock
// makes it a no-op (Locked false).
func (sw *Sweeper) Housekeep(ctx context.Context, now *time.Time) (HousekeepingResult, error) {
	var res HousekeepingResult
	lctx, lcancel := context.WithTimeout(ctx, sw.cfg.Interval)
	defer lcancel()
	conn, err := sw.cfg.Pool.Acquire(lctx)
	if err != nil {
		return res, fmt.Errorf("housekeeping: acquire a connection: %w", err)
	}
	locked, err := sw.q.TryHousekeepingLock(lctx, conn, sw.cfg.Tenant)
	if err != nil || !locked {
		conn.Release()
		if err != nil {
			return res, fmt.Errorf("housekeeping: take the lock: %w", err)
		}
		return res, nil
	}
	res.Locked = true
	defer func() {
		// The lock belongs to this session: unlock it before the
		// connection goes back to the pool, or close the connection.
		uctx, ucancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer ucancel()
		if ok, err := sw.q.HousekeepingUnlock(uctx, conn, sw.cfg.Tenant); err != nil || !ok {
			_ = conn.Conn().Close(uctx)
		}
		conn.Release()
	}()

	if err := sw.VacuumQueue(ctx); err != nil {
		return res, err
	}
	res.Vacuumed = true
	pctx, pcancel := context.WithTimeout(ctx, sw.cfg.HousekeepingBudget)
	defer pcancel()
	res.ClaimsDeleted, res.WakesDeleted, res.BudgetSpent, err = sw.purge(pctx, now)
	if res.ClaimsDeleted+res.WakesDeleted > 0 {
		sw.cfg.Logger.Info("retention purge", "claims_deleted", res.ClaimsDeleted, "wakes_deleted", res.WakesDeleted,
			"budget_spent", res.BudgetSpent)
	}
	return res, err
}

// VacuumQueue vacuums wake_queue, the table of queued wakes. Every claim
// deletes a row of it; the entries those rows leave in its index sit at the
// head of the queue, where every claim's pick starts, until VACUUM removes
// them, so housekeeping does that every pass (the table is small, so it
// costs little). SKIP_LOCKED: a vacuum already running elsewhere is enough.
// wake_event_log, whose rows the wake-event publisher deletes as it
// publishes them, is vacuumed with it (its publisher starts past the
// deleted rows, so this only keeps the table small).
func (sw *Sweeper) VacuumQueue(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, sw.cfg.Interval)
	defer cancel()
	if _, err := sw.cfg.Pool.Exec(qctx, `VACUUM (SKIP_LOCKED) wake_queue, wake_event_log`); err != nil {
		return fmt.Errorf("vacuum wake_queue and wake_event_log: %w", err)
	}
	return nil
}

// purge deletes ended claims and finished wakes older than the retention
// age, batch by batch, until a batch comes back short or ctx (the
// housekeeping budget) ends; spent reports the latter. A purge cut short
// by ctx is not an error: the next pass goes on.
func (sw *Sweeper) purge(ctx context.Context, now *time.Time) (claims, wakes int, spent bool, err error) {
	if sw.cfg.Retention <= 0 {
		return 0, 0, false, nil
	}
	age := pgtype.Interval{Microseconds: sw.cfg.Retention.Microseconds(), Valid: true}
	for {
		if ctx.Err() != nil {
			return claims, wakes, true, nil
		}
		r, err := sw.q.PurgeHistory(ctx, sw.cfg.Pool, db.PurgeHistoryParams{
			OlderThan: age, MaxRows: int32(sw.cfg.Batch), Now: now, TenantID: sw.cfg.Tenant})
		if err != nil {
			if ctx.Err() != nil { // the budget ended inside a batch, which rolled back
				return claims, wakes, true, nil
			}
			return claims, wakes, false, fmt.Errorf("purge history: %w", err)
		}
		claims += int(r.ClaimsDeleted)
		wakes += int(r.WakesDeleted)
		if int(r.ClaimsDeleted) < sw.cfg.Batch && int(r.WakesDeleted) < sw.cfg.Batch {
			return claims, wakes, false, nil
		}
	}
}
