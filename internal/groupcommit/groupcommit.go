// Package groupcommit runs many callers' requests of one kind as shared
// database transactions: leader/follower group commit, in the shape of
// River's BatchCompleter but without a timer.
//
// A Batcher serves one transition (release, claim, append). It guarantees:
//
//   - No added latency when idle: a request that finds no batch in flight
//     goes to the database at once. Requests that arrive while a batch is in
//     flight queue up and form the next batch, up to MaxBatch items; nothing
//     waits for a timer.
//   - Each caller waits for its own item's outcome and gets its own value or
//     error. Do returns only after the batch's transaction has committed (or
//     failed), so nothing is acknowledged before it is durable; callers do
//     their memory steps (the write-token map) after Do returns, per item.
//   - A batch is never half-answered. Exec returns one outcome per item, or
//     an error for the whole batch. A whole-batch error is classified
//     (Config.Classify): a transient failure the database rolled back
//     (deadlock, serialization failure) is retried; any other failure
//     known to have rolled back is split, each item run as a batch of its
//     own, so one poisoned item fails alone; a failure that may have
//     committed (a connection lost mid-statement) answers every item with
//     that error and is never re-run, since re-running could apply an item
//     twice. An item whose own outcome is transient (Config.Retryable) is
//     queued again, up to MaxAttempts runs in all.
//   - Stop drains: it refuses new requests and returns once every queued
//     and in-flight batch has been answered.
//
// It must not decide anything about the lifecycle: Exec calls the
// set-based SQL functions, which call the single-item ones.
package groupcommit

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"sync"
	"time"
)

// ErrStopped is returned by Do after Stop.
var ErrStopped = errors.New("groupcommit: batcher stopped")

// Outcome is one item's answer from Exec.
type Outcome[Out any] struct {
	Value Out
	Err   error
}

// Failure classifies a whole-batch error from Exec.
type Failure int

const (
	// MayHaveCommitted: the transaction's fate is unknown (e.g. the
	// connection was lost after the statement was sent). Every item gets
	// the error; nothing is re-run.
	MayHaveCommitted Failure = iota
	// RolledBack: the database refused the statement; nothing committed.
	// The batch is split into batches of one.
	RolledBack
	// Transient: rolled back for a reason that a second run may not meet
	// (deadlock, serialization failure). The batch is run again.
	Transient
)

// Config configures a Batcher. Exec is required.
type Config[In, Out any] struct {
	// Name names the transition in logs and metrics ("release", "claim").
	Name string
	// Exec runs items as one transaction and returns one outcome per item,
	// in input order, or an error for the whole batch.
	Exec func(ctx context.Context, items []In) ([]Outcome[Out], error)
	// ExecOne, when set, runs a batch of one item (the single-item call):
	// an idle batcher then costs what a direct call costs. Its error is
	// the item's answer; a Transient one is retried like a batch's.
	ExecOne func(ctx context.Context, item In) (Out, error)
	// InFlight is how many batches may run at once (default 1). A request
	// that finds a free slot goes at once; requests queue only while every
	// slot runs a batch.
	InFlight int
	// MaxBatch caps the items of one batch (default 64: more
	// subtransactions than that in one transaction slow every session's
	// snapshots in PostgreSQL).
	MaxBatch int
	// MaxAttempts bounds the runs of one item through retries (default 3).
	MaxAttempts int
	// Timeout bounds one batch's Exec (default 15s).
	Timeout time.Duration
	// Classify sorts a whole-batch error (default: MayHaveCommitted).
	Classify func(error) Failure
	// Retryable reports whether an item's own error is transient, so the
	// item is run again (default: never).
	Retryable func(error) bool
	// ObserveBatch, when set, is told the size of every batch run.
	ObserveBatch func(size int)
}

type request[In, Out any] struct {
	in       In
	attempts int
	reply    chan Outcome[Out]
}

// Batcher gathers requests into batches; see the package doc.
type Batcher[In, Out any] struct {
	cfg Config[In, Out]
	in  chan *request[In, Out]

	mu      sync.RWMutex
	stopped bool
	started bool
	done    chan struct{}
	baseCtx context.Context
}

// New builds a Batcher; call Start before Do.
func New[In, Out any](cfg Config[In, Out]) *Batcher[In, Out] {
	cfg.MaxBatch = cmp.Or(cfg.MaxBatch, 64)
	cfg.InFlight = max(cmp.Or(cfg.InFlight, 1), 1)
	cfg.MaxAttempts = cmp.Or(cfg.MaxAttempts, 3)
	cfg.Timeout = cmp.Or(cfg.Timeout, 15*time.Second)
	if cfg.Classify == nil {
		cfg.Classify = func(error) Failure { return MayHaveCommitted }
	}
	if cfg.Retryable == nil {
		cfg.Retryable = func(error) bool { return false }
	}
	return &Batcher[In, Out]{
		cfg:  cfg,
		in:   make(chan *request[In, Out], 4*cfg.MaxBatch),
		done: make(chan struct{}),
	}
}

// Start runs the batcher until Stop. Batches run on a context detached
// from ctx's cancellation (a batch in flight finishes and is answered);
// ctx's values are kept.
func (b *Batcher[In, Out]) Start(ctx context.Context) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.stopped {
		return
	}
	b.started = true
	b.baseCtx = context.WithoutCancel(ctx)
	var wg sync.WaitGroup
	for range b.cfg.InFlight {
		wg.Add(1)
		go func() { defer wg.Done(); b.loop() }()
	}
	go func() { wg.Wait(); close(b.done) }()
}

// Stop refuses new requests, answers every queued one and waits for the
// batch in flight. Safe to call more than once.
func (b *Batcher[In, Out]) Stop() {
	b.mu.Lock()
	if b.stopped {
		b.mu.Unlock()
		<-b.done
		return
	}
	b.stopped = true
	started := b.started
	close(b.in) // no sender holds the read lock now
	b.mu.Unlock()
	if !started {
		close(b.done)
		return
	}
	<-b.done
}

// Queued is how many requests wait for the next batch.
func (b *Batcher[In, Out]) Queued() int { return len(b.in) }

// Do queues in, waits for the batch that carries it and returns its
// outcome. ctx bounds the wait for room in the queue only: once queued,
// the item is run and Do waits for its answer (the batch's own timeout
// bounds that), so the caller never leaves a committed item unanswered.
func (b *Batcher[In, Out]) Do(ctx context.Context, in In) (Out, error) {
	req := &request[In, Out]{in: in, reply: make(chan Outcome[Out], 1)}
	if err := b.enqueue(ctx, req); err != nil {
		var zero Out
		return zero, err
	}
	o := <-req.reply
	return o.Value, o.Err
}

func (b *Batcher[In, Out]) enqueue(ctx context.Context, req *request[In, Out]) error {
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.stopped || !b.started {
		return ErrStopped
	}
	select {
	case b.in <- req:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// loop is one of the InFlight goroutines that run batches: it blocks for a
// first request, takes what else is queued at that moment (up to MaxBatch),
// runs the batch, and starts over. Requests that arrive while every loop
// runs a batch wait in the channel and make up the next batch.
func (b *Batcher[In, Out]) loop() {
	var retry []*request[In, Out]
	for {
		batch := retry
		retry = nil
		if len(batch) == 0 {
			first, ok := <-b.in
			if !ok {
				return
			}
			batch = append(batch, first)
		}
	gather:
		for len(batch) < b.cfg.MaxBatch {
			select {
			case r, ok := <-b.in:
				if !ok {
					break gather
				}
				batch = append(batch, r)
			default:
				break gather
			}
		}
		retry = b.run(batch)
	}
}

// run executes one batch and answers its items; it returns the items to
// run again (transient failures with attempts left).
func (b *Batcher[In, Out]) run(batch []*request[In, Out]) (again []*request[In, Out]) {
	for _, r := range batch {
		r.attempts++
	}
	if len(batch) == 1 && b.cfg.ExecOne != nil {
		r := batch[0]
		v, err := b.execOne(r.in)
		if err != nil && b.cfg.Classify(err) == Transient && r.attempts < b.cfg.MaxAttempts {
			return batch
		}
		r.reply <- Outcome[Out]{Value: v, Err: err}
		return nil
	}
	outs, err := b.exec(batch)
	if err != nil {
		switch b.cfg.Classify(err) {
		case Transient:
			for _, r := range batch {
				if r.attempts < b.cfg.MaxAttempts {
					again = append(again, r)
				} else {
					r.reply <- Outcome[Out]{Err: err}
				}
			}
			return again
		case RolledBack:
			if len(batch) > 1 {
				for _, r := range batch {
					r.attempts-- // the split run is this item's own first try
					again = append(again, b.run([]*request[In, Out]{r})...)
				}
				return again
			}
		}
		for _, r := range batch {
			r.reply <- Outcome[Out]{Err: err}
		}
		return nil
	}
	for i, r := range batch {
		o := outs[i]
		if o.Err != nil && b.cfg.Retryable(o.Err) && r.attempts < b.cfg.MaxAttempts {
			again = append(again, r)
			continue
		}
		r.reply <- o
	}
	return again
}

// execOne runs ExecOne under the batch timeout.
func (b *Batcher[In, Out]) execOne(in In) (Out, error) {
	if b.cfg.ObserveBatch != nil {
		b.cfg.ObserveBatch(1)
	}
	ctx, cancel := context.WithTimeout(b.baseCtx, b.cfg.Timeout)
	defer cancel()
	return b.cfg.ExecOne(ctx, in)
}

// exec runs Exec under the batch timeout and checks it kept its contract.
func (b *Batcher[In, Out]) exec(batch []*request[In, Out]) ([]Outcome[Out], error) {
	if b.cfg.ObserveBatch != nil {
		b.cfg.ObserveBatch(len(batch))
	}
	items := make([]In, len(batch))
	for i, r := range batch {
		items[i] = r.in
	}
	ctx, cancel := context.WithTimeout(b.baseCtx, b.cfg.Timeout)
	defer cancel()
	outs, err := b.cfg.Exec(ctx, items)
	if err != nil {
		return nil, fmt.Errorf("%s batch of %d: %w", b.cfg.Name, len(batch), err)
	}
	if len(outs) != len(batch) {
		// The statement ran and committed, but its answer cannot be matched
		// to the items: every caller gets the error, nothing is re-run.
		return nil, fmt.Errorf("%s batch of %d: %d outcomes", b.cfg.Name, len(batch), len(outs))
	}
	return outs, nil
}
