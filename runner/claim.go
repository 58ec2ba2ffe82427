package runner

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"sync"
	"time"
)

// runClaim runs the handler for one claim: heartbeats while it runs, the
// inbox read before it, the done after it. A claim that arrives while the
// runner is stopping is released without running the handler.
func (r *Runner) runClaim(ctx, hard context.Context, n *notification) {
	log := r.log.With("consumer_id", n.ConsumerID, "epoch", n.Epoch, "entity_url", n.EntityURL)
	hctx, cancel := context.WithCancelCause(hard)
	defer cancel(nil)
	w := newWake(r, n, cancel, log)

	var err error
	if ctx.Err() != nil {
		err = errors.New("runner stopping")
	} else {
		hbCtx, stopHB := context.WithCancel(hctx)
		var hb sync.WaitGroup
		hb.Go(func() { r.heartbeats(hbCtx, w) })
		err = w.read(hctx)
		if err == nil {
			err = r.call(hctx, w, log)
		}
		stopHB()
		hb.Wait()
	}
	if errors.Is(context.Cause(hctx), ErrClaimLost) {
		log.Warn("claim lost while the handler ran; no done sent", "err", err)
		return
	}
	ack := err == nil
	if err != nil {
		log.Warn("releasing the claim without acks: its messages will be offered again", "err", err)
	}
	// The done must go out even when the runner is stopping: it is what
	// makes a stop release in-flight claims instead of leaving them to
	// expire. A claim's lease bounds how long trying makes sense.
	dctx, dcancel := context.WithTimeout(context.WithoutCancel(hard), max(w.LeaseTTL, 30*time.Second))
	defer dcancel()
	res, derr := w.done(dctx, ack)
	if derr != nil {
		log.Error("done failed; the claim will expire at the end of its lease", "err", derr)
		return
	}
	lvl := slog.LevelInfo
	if !res.Released {
		lvl = slog.LevelWarn
	}
	log.Log(dctx, lvl, "claim done", "acked", ack, "ack_offset", w.ReadOffset, "released", res.Released,
		"entity_cleared", res.EntityCleared, "claim_status", res.ClaimStatus, "entity_status", res.EntityStatus)
}

// call runs the handler, turning a panic into an error.
func (r *Runner) call(ctx context.Context, w *Wake, log *slog.Logger) (err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("handler panicked", "panic", fmt.Sprint(p), "stack", string(debug.Stack()))
			err = fmt.Errorf("%w: %v", ErrHandlerPanic, p)
		}
	}()
	return r.handler.HandleWake(ctx, w)
}

// heartbeats extends the claim's lease every HeartbeatInterval (a third of
// the lease by default) until ctx ends or the claim is lost.
func (r *Runner) heartbeats(ctx context.Context, w *Wake) {
	every := r.cfg.HeartbeatInterval
	if every == 0 {
		every = max(w.LeaseTTL/3, 100*time.Millisecond)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := w.heartbeat(ctx); err != nil {
			if errors.Is(err, ErrClaimLost) {
				w.log.Warn("claim lost: cancelling the handler", "err", err)
				return
			}
			if ctx.Err() == nil {
				w.log.Warn("heartbeat failed; trying again at the next beat", "err", err)
			}
		}
	}
}
