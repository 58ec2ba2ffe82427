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
// A notification is a hint that lets other servers act at once; each
// listener re-checks state after a reconnect, so a batch lost with the
// database is recovered there. What it cannot cover is this process dying
// between a commit and the publish; docs/recovery.md says what that costs.
package pgnotify

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

const maxBatch = 512

// DefaultLinger is how long the publisher lets notifications gather after
// the first one before it sends them. Each send is a round trip, a commit
// and a wake-up of every listening session; gathering a few milliseconds'
// worth makes them few. It delays what other servers hear by as much.
const DefaultLinger = 5 * time.Millisecond

type note struct{ channel, payload string }

// Publisher batches notifications. Publish before Start or after Stop is
// dropped.
type Publisher struct {
	pool *pgxpool.Pool
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
func New(pool *pgxpool.Pool, log *slog.Logger) *Publisher {
	return &Publisher{pool: pool, log: log, Linger: DefaultLinger, wake: make(chan struct{}, 1)}
}

// Publish queues a notification; it never waits for the database.
func (p *Publisher) Publish(channel, payload string) {
	p.mu.Lock()
	p.pending = append(p.pending, note{channel, payload})
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
		send := func() {
			fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
			p.flush(fctx)
			cancel()
		}
		for {
			select {
			case <-ctx.Done():
				send() // what is still queued
				return
			case <-p.wake:
				if p.Linger > 0 {
					t := time.NewTimer(p.Linger)
					select {
					case <-t.C:
					case <-ctx.Done():
						t.Stop()
					}
				}
				send()
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
func (p *Publisher) Flush(ctx context.Context) { p.flush(ctx) }

func (p *Publisher) flush(ctx context.Context) {
	for {
		p.mu.Lock()
		batch := p.pending
		if len(batch) > maxBatch {
			batch = batch[:maxBatch]
			p.pending = p.pending[maxBatch:]
		} else {
			p.pending = nil
		}
		p.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		channels := make([]string, 0, len(batch))
		payloads := make([]string, 0, len(batch))
		seen := make(map[note]bool, len(batch))
		for _, n := range batch {
			if !seen[n] {
				seen[n] = true
				channels = append(channels, n.channel)
				payloads = append(payloads, n.payload)
			}
		}
		p.sends.Add(1)
		_, err := p.pool.Exec(ctx, `SELECT pg_notify(c, m) FROM unnest($1::text[], $2::text[]) AS u(c, m)`, channels, payloads)
		if err != nil {
			// The listeners' reconnect re-check covers a database that is
			// gone; a retry would only pile up behind it.
			p.log.Warn("publish notifications failed; listeners re-check after reconnecting", "count", len(channels), "err", err)
		}
	}
}
