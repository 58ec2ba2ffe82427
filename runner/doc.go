// Package runner is a Go client for writing pullwake runners: programs that
// take the wakes of entities from a pullwake server, read each entity's
// inbox, and write their output to the entity's main stream.
//
//	r, err := runner.New(runner.Config{
//		ServerURL: "http://127.0.0.1:8080", RunnerID: "echo-1", AdminToken: adminToken,
//	}, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
//		for _, m := range w.Inbox {
//			if _, err := w.Append(ctx, map[string]any{"type": "echo", "value": m.Payload}); err != nil {
//				return err
//			}
//		}
//		return nil
//	}))
//	...
//	err = r.Run(ctx) // until ctx ends, then a graceful stop
//
// # What Run does
//
//   - Registers the runner (POST /_electric/runners with the admin token).
//     An id that exists is a restart of that runner: the server answers 200
//     and a new runner token, and the previous token stops working. With
//     Config.RunnerToken set, Run skips registration.
//   - Waits for wakes on the runner's wake stream (GET
//     /runners/{id}/wake?live=long-poll, runner token), reconnecting with
//     exponential back-off and jitter after a failed read. It starts from
//     the stream's tail and first claims until the server has no work, so
//     wakes queued before the start are not missed.
//   - Claims (POST /_electric/runners/{id}/claim) once per wake event, with
//     the event as the body, while fewer than Config.Concurrency handlers
//     run; 204 means nothing to do. It also claims once after each finished
//     claim and after each long-poll that ended without events: a wake
//     queued for an entity this runner was holding becomes claimable only
//     when that claim ends, and a missed event costs at most one long-poll
//     timeout.
//   - For each claim: reads the entity's main stream from the acked offset
//     (the notification's streams[0].offset) to its tail and hands the
//     Handler a Wake with those events and the decoded inbox messages;
//     heartbeats the claim's wake-callback ({"epoch"}) every third of the
//     lease while the Handler runs; then sends done.
//   - Heartbeats the runner's own liveness (POST
//     /_electric/runners/{id}/heartbeat) every Config.LivenessInterval.
//
// A server without a wake stream (GET /runners/{id}/wake answers 404) is
// polled instead: one claim attempt every Config.PollInterval.
//
// # Guarantees
//
//   - At most Config.Concurrency handlers run at once.
//   - A Handler's return decides the done: nil acks the main stream up to
//     Wake.ReadOffset (what was read, never more); an error, a panic, or a
//     context cancelled by a stop releases the claim with no acks, so the
//     server queues the same messages again at once instead of waiting for
//     the lease to end. A panic is recovered, logged with its stack, and
//     does not stop the runner. A handler that always fails on a message
//     therefore sees it again and again: acknowledge poison messages by
//     returning nil.
//   - Every claim the library received ends with one done (retried while
//     the lease lasts), except a claim that is lost: when a heartbeat or a
//     re-mint says the claim is no longer active (its lease passed, an
//     operator released it), the Handler's context is cancelled with cause
//     ErrClaimLost and no done is sent; the server already ended the claim.
//   - Wake.Append carries the claim's write token and the idempotent
//     producer headers (Producer-Id: "entity-" + entity URL, Producer-Epoch:
//     the claim epoch, Producer-Seq: 0, 1, ... within the claim). A request
//     whose answer was lost is retried with the same Producer-Seq, and the
//     server stores it once; an append given up with its outcome unknown
//     (its context ended) makes the Wake refuse further appends rather than
//     reuse that Producer-Seq. A 401 (the server could not vouch for the
//     token: a server restart alone does not cause it, the token outlives
//     the process) re-mints the write token with a claim request to the
//     wake-callback ({"epoch", "wake_id"}) and retries once.
//   - Graceful stop: when Run's context ends, Run claims nothing more,
//     waits up to Config.StopTimeout for running handlers, then cancels
//     their context; every claim still held gets its done (acks when its
//     Handler returned nil). A claim that arrives during the stop is
//     released unread. Run returns nil after the last done; no goroutine of
//     the runner outlives it. A Handler must return once its context is
//     cancelled: Run waits for it.
//
// Delivery is at least once: a message can reach a Handler again after a
// failed or lost claim, or after the runner process died (its claim then
// expires at the end of its lease plus one sweep interval of the server).
// The producer headers make retries within one claim exactly once; output
// written by a claim that later failed stays in the stream.
//
// The package decides nothing about the claim lifecycle: the server does.
// It never acks what it did not read and never holds a claim without
// heartbeating it.
package runner
