// Package pgnotify publishes PostgreSQL notifications after the fact, in
// batches, from statements that write nothing.
//
// Why: a NOTIFY inside a writing transaction takes a cluster-wide lock at
// commit and holds it until the commit record is flushed, so every
// transaction that writes and notifies commits alone (measured: 554 tps
// against 3,986 for the same UPDATE without NOTIFY). The server therefore
// commits its appends and releases without NOTIFY and hands the
// notification here; one goroutine lets them gather for Linger (5 ms) and
// sends them as one `SELECT pg_notify(...)`, which assigns no transaction
// id and flushes no WAL. Gathering matters: each send is a round trip, a
// commit and a wake-up of every listening session, and sending at once
// cost the HTTP cycle about a fifth of its rate (`pullwake bench` mode 1:
// 783 cycles/s, 902 with the linger, 1,008 with no publishing at all).
//
// A notification is a hint that lets other servers act at once. A batch
// whose send fails is put back and retried with backoff (100 ms doubling to
// 2 s; at most MaxPending notifications wait, the oldest dropped beyond),
// so a passing database error delays it rather than losing it. What no
// retry covers is this process dying between a commit and the publish: the
// servers' reconcile timer bounds that (every instance re-checks its tokens
// against the database every second), and live stream readers end at their
// long-poll timeout.
package pgnotify

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

const maxBatch = 512

// MaxPending is how many notifications may wait for a failing database;
// beyond it the oldest are dropped (and logged).
const MaxPending = 1 << 16

// Execer sends the statement; a *pgxpool.Pool is one.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// DefaultLinger is how long the publisher lets notifications gather after
// the first one before it sends them. Each send is a round trip, a commit
// and a wake-up of every listening session; gathering a few milliseconds'
// worth makes them few. It delays what other servers hear by as much.
const DefaultLinger = 5 * time.Millisecond

type note struct{ channel, payload string }

// Publisher batches notifications. Publish before Start or after Stop is
// dropped.
type Publisher struct {
	pool Execer
	log  *slog.Logger
	// Linger: see DefaultLinger. Set it before Start; 0 sends at once.
	Linger time.Duration

	mu      sync.Mutex
	pending []note
	wake    chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
	sends   atomic.Int64
}

// Sends is how many statements the publisher has sent so far.
func (p *Publisher) Sends() int64 { return p.sends.Load() }

// New returns a publisher that sends through pool.
func New(pool Execer, log *slog.Logger) *Publisher {
	return &Publisher{pool: pool, log: log, Linger: DefaultLinger, wake: make(chan struct{}, 1)}
}

// Publish queues a notification; it never waits for the database.
func (p *Publisher) Publish(channel, payload string) {
	p.mu.Lock()
	p.pending = append(p.pending, note{channel, payload})
	p.trim()
	p.mu.Unlock()
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Start sends queued notifications until Stop.
func (p *Publisher) Start(ctx context.Context) {
	ctx, p.cancel = context.WithCancel(ctx)
	p.done = make(chan struct{})
	go func() {
		defer close(p.done)
		// A send in flight is never cut off by Stop (it would lose its
		// batch): every send gets its own bounded context.
		send := func() error {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			defer cancel()
			return p.flush(fctx)
		}
		const firstBackoff = 100 * time.Millisecond
		backoff := firstBackoff
		var retry <-chan time.Time // armed while a failed batch waits
		sent := func(err error) {
			if err == nil {
				backoff, retry = firstBackoff, nil
				return
			}
			p.log.Warn("publish notifications failed; retrying", "err", err, "backoff", backoff)
			retry = time.After(backoff)
			backoff = min(backoff*2, 2*time.Second)
		}
		for {
			select {
			case <-ctx.Done():
				// What is still queued: a few tries within 5 s.
				end := time.Now().Add(5 * time.Second)
				for i := 0; send() != nil && i < 3 && time.Now().Before(end); i++ {
					time.Sleep(200 * time.Millisecond)
				}
				return
			case <-retry:
				sent(send())
			case <-p.wake:
				if retry != nil {
					continue // the retry timer sends it with the failed batch
				}
				if p.Linger > 0 {
					t := time.NewTimer(p.Linger)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
					}
				}
				sent(send())
			}
		}
	}()
}

// Stop sends what is queued (for at most 5 s) and ends the publisher.
func (p *Publisher) Stop() {
	if p.cancel == nil {
		return
	}
	p.cancel()
	<-p.done
}

// Flush sends everything queued now; tests use it to wait for delivery.
func (p *Publisher) Flush(ctx context.Context) error { return p.flush(ctx) }

// Pending is how many notifications wait to be sent.
func (p *Publisher) Pending() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.pending)
}

// trim drops the oldest notifications beyond MaxPending; p.mu held.
func (p *Publisher) trim() {
	if over := len(p.pending) - MaxPending; over > 0 {
		p.pending = p.pending[over:]
		p.log.Warn("publish queue full; oldest notifications dropped", "dropped", over)
	}
}

// flush sends the queue in batches; a batch that fails goes back to the
// front of the queue and flush returns the error.
func (p *Publisher) flush(ctx context.Context) error {
	for {
		p.mu.Lock()
		batch := p.pending
		if len(batch) > maxBatch {
			batch = batch[:maxBatch:maxBatch]
			p.pending = p.pending[maxBatch:]
		} else {
			p.pending = nil
		}
		p.mu.Unlock()
		if len(batch) == 0 {
			return nil
		}
		channels := make([]string, 0, len(batch))
		payloads := make([]string, 0, len(batch))
		seen := make(map[note]bool, len(batch))
		unique := batch[:0:0]
		for _, n := range batch {
			if !seen[n] {
				seen[n] = true
				unique = append(unique, n)
				channels = append(channels, n.channel)
				payloads = append(payloads, n.payload)
			}
		}
		p.sends.Add(1)
		_, err := p.pool.Exec(ctx, `SELECT pg_notify(c, m) FROM unnest($1::text[], $2::text[]) AS u(c, m)`, channels, payloads)
		if err != nil {
			p.mu.Lock()
			p.pending = append(unique, p.pending...)
			p.trim()
			p.mu.Unlock()
			return fmt.Errorf("send %d notifications: %w", len(unique), err)
		}
	}
}
