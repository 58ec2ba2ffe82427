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
package wakepublish

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
)

// DefaultInterval is how often the timer publishes when nothing kicks.
const DefaultInterval = 50 * time.Millisecond

// DefaultBatch is how many log rows one call takes at most.
const DefaultBatch = 1000

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
}

// Publisher publishes the wake-event log until Stop.
type Publisher struct {
	cfg    Config
	q      *db.Queries
	kickCh chan struct{}
	cancel context.CancelFunc
	done   chan struct{}
}

// New returns a publisher; Start runs it.
func New(cfg Config) *Publisher {
	cfg.Interval = cmp.Or(cfg.Interval, DefaultInterval)
	cfg.Batch = cmp.Or(cfg.Batch, DefaultBatch)
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

func (p *Publisher) published(n int) {
	if n > 0 && p.cfg.Published != nil {
		p.cfg.Published(n)
	}
}
