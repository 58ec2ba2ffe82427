// Package wakepublish runs the wake-event publisher of a server: it calls
// pw_publish_wake_events, which turns the wake-event log (one row per wake
// queued, written by the queueing transaction) into events in the
// runners' wake streams, behind a snapshot fence (sql/wake_events.sql).
//
// It publishes when kicked (the server kicks it after each of its own
// commits that may have queued a wake) and on a short timer, so the events
// of wakes queued elsewhere (psql, another server, the sweeper) are
// published too. An idle call is a read of two index entries and writes
// nothing. Every instance may publish, and publishes every tenant's log
// (the log is one, in transaction order): publishers take turns on the
// publisher's position row, so no row is published twice.
//
// A transaction that holds a transaction id anywhere on the cluster holds
// back every log row written after it began (the snapshot fence): the
// events arrive once it ends, never lost, but late. The publisher watches
// the oldest log row: HeldFor is how long one row has stayed the oldest,
// and past HeldWarnAfter it logs a warning naming the cluster's oldest
// writing transaction, once per stall.
package wakepublish

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
)

// DefaultInterval is how often the timer publishes when nothing kicks.
const DefaultInterval = 50 * time.Millisecond

// DefaultBatch is how many log rows one call takes at most.
const DefaultBatch = 1000

// DefaultHeldCheck is how often the publisher looks at the oldest log row.
const DefaultHeldCheck = time.Second

// DefaultHeldWarnAfter is how long one row may stay the oldest before the
// publisher warns.
const DefaultHeldWarnAfter = 10 * time.Second

// maxCallsPerPass bounds one pass: a backlog (a long transaction held the
// fence) is published over several passes, never in one unbounded loop.
const maxCallsPerPass = 50

// Config is a publisher's setup.
type Config struct {
	Pool     *pgxpool.Pool
	Interval time.Duration // timer period (default DefaultInterval)
	Batch    int           // log rows per call (default DefaultBatch)
	Logger   *slog.Logger
	// Published is called after a pass that wrote events (with their
	// count), on the publisher's goroutine: the server wakes its live
	// readers of wake streams there.
	Published func(events int)
	// HeldCheck is how often a pass is followed by a look at the oldest
	// log row (default DefaultHeldCheck); HeldWarnAfter how long one row
	// may stay the oldest before a warning (default DefaultHeldWarnAfter).
	HeldCheck     time.Duration
	HeldWarnAfter time.Duration
}

// Publisher publishes the wake-event log until Stop.
type Publisher struct {
	cfg    Config
	q      *db.Queries
	kickCh chan struct{}
	cancel context.CancelFunc
	done   chan struct{}

	lastCheck time.Time // the publisher's goroutine only
	warned    bool      // this stall was logged; the goroutine only

	mu        sync.Mutex
	heldKey   string    // the oldest log row at the last look ("" none)
	heldSince time.Time // when it was first seen the oldest
}

// New returns a publisher; Start runs it.
func New(cfg Config) *Publisher {
	cfg.Interval = cmp.Or(cfg.Interval, DefaultInterval)
	cfg.Batch = cmp.Or(cfg.Batch, DefaultBatch)
	cfg.HeldCheck = cmp.Or(cfg.HeldCheck, DefaultHeldCheck)
	cfg.HeldWarnAfter = cmp.Or(cfg.HeldWarnAfter, DefaultHeldWarnAfter)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Publisher{cfg: cfg, q: db.New(), kickCh: make(chan struct{}, 1)}
}

// Kick asks for a pass now (a wake was just queued and committed). Kicks
// while a pass runs make one more pass after it. A pass publishes what is
// behind the snapshot fence when it runs; rows of a commit still behind
// it (an older transaction is open) wait for the next kick or the timer.
func (p *Publisher) Kick() {
	select {
	case p.kickCh <- struct{}{}:
	default:
	}
}

// Start runs passes on kicks and on the timer until Stop or ctx ends.
func (p *Publisher) Start(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		t := time.NewTicker(p.cfg.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-p.kickCh:
			}
			if _, err := p.PublishOnce(ctx); err != nil && ctx.Err() == nil {
				p.cfg.Logger.Warn("wake event publish failed", "err", err)
			}
			if time.Since(p.lastCheck) >= p.cfg.HeldCheck {
				p.lastCheck = time.Now()
				if err := p.checkHeld(ctx); err != nil && ctx.Err() == nil {
					p.cfg.Logger.Warn("wake event log check failed", "err", err)
				}
			}
		}
	}()
}

// Stop ends the publisher and waits for its pass in progress.
func (p *Publisher) Stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
}

// PublishOnce publishes what the fence lets through now, batch after
// batch (at most maxCallsPerPass), and returns the events written.
func (p *Publisher) PublishOnce(ctx context.Context) (int, error) {
	total := 0
	for range maxCallsPerPass {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := p.q.PublishWakeEvents(qctx, p.cfg.Pool, int32(p.cfg.Batch))
		cancel()
		if err != nil {
			p.published(total)
			return total, fmt.Errorf("publish wake events: %w", err)
		}
		total += int(n)
		// Fewer events than the batch: the batch was very likely not full,
		// so no second call (a round trip) to find nothing. When it was
		// (wakes claimed before their rows were published write no event),
		// the rest waits for the next kick or the timer.
		if int(n) < p.cfg.Batch {
			break
		}
	}
	p.published(total)
	return total, nil
}

// HeldFor is how long the oldest row of the wake-event log has stayed the
// oldest, as of the publisher's last look (every HeldCheck): about zero
// while events flow, growing while a transaction holds the fence. Zero
// when the log was empty.
func (p *Publisher) HeldFor() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.heldKey == "" {
		return 0
	}
	return time.Since(p.heldSince)
}

// checkHeld looks at the oldest log row after a pass, and warns once per
// stall when one row has stayed the oldest past HeldWarnAfter.
func (p *Publisher) checkHeld(ctx context.Context) error {
	qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := p.q.OldestWakeEventLogRow(qctx, p.cfg.Pool)
	if err != nil {
		return fmt.Errorf("oldest wake event log row: %w", err)
	}
	key := ""
	if len(rows) > 0 {
		key = rows[0]
	}
	p.mu.Lock()
	if key != p.heldKey {
		p.heldKey, p.heldSince = key, time.Now()
		p.warned = false
	}
	held := time.Duration(0)
	if key != "" {
		held = time.Since(p.heldSince)
	}
	p.mu.Unlock()
	if held < p.cfg.HeldWarnAfter || p.warned {
		return nil
	}
	p.warned = true
	attrs := []any{"held_for", held.Round(time.Millisecond), "oldest_log_row", key}
	tx, err := p.q.OldestWritingTransaction(qctx, p.cfg.Pool)
	if err != nil {
		attrs = append(attrs, "oldest_tx_err", err)
	} else if len(tx) > 0 {
		attrs = append(attrs, "oldest_tx_pid", tx[0].Pid, "oldest_tx_database", tx[0].Database,
			"oldest_tx_application", tx[0].ApplicationName, "oldest_tx_state", tx[0].State,
			"oldest_tx_age", time.Duration(tx[0].AgeSeconds*float64(time.Second)).Round(time.Millisecond),
			"oldest_tx_query", tx[0].Query)
	}
	p.cfg.Logger.Warn("wake events held back: a transaction open on the cluster holds the snapshot fence; "+
		"they are published when it ends (pg_terminate_backend(oldest_tx_pid) ends it), or publishing fails (see its errors)", attrs...)
	return nil
}

func (p *Publisher) published(n int) {
	if n > 0 && p.cfg.Published != nil {
		p.cfg.Published(n)
	}
}
