// Package push delivers wakes to webhook endpoints: the delivery worker of
// pullwake's push mode (webhook subscriptions and entity types with a
// webhook target).
//
// Each pass asks PostgreSQL which queued wakes a push target may take now
// (push_pending), one per free delivery slot, claims each on the target's
// behalf (claim_wake_for_push, the same claim rule as a runner's claim)
// and POSTs the wake notification to the target's URL, signed
// (Webhook-Signature, Ed25519, see package internal/webhooksig), with a
// per-request timeout. A pass does not wait for its deliveries: an
// endpoint that hangs holds one slot until its timeout, not the others.
//
// What it guarantees:
//   - One delivery at a time per wake, across every server: the claim is
//     the lock. A wake that another server is claiming is skipped (SKIP
//     LOCKED), and a claimed wake is no longer queued.
//   - Only URLs an admin registered are called: the URL comes from the
//     claim's answer, read in the claiming transaction from the
//     subscription (or entity type) row. Redirects are not followed.
//   - No claim leaks. A delivery that fails (connection error, timeout,
//     non-2xx answer) releases its claim at once through release_claim,
//     which queues the wake again because its messages are unacked, and the
//     target backs off exponentially (push_subscriptions.next_attempt_at,
//     shared by every server) before its next attempt. If the release
//     itself fails, or the server dies mid-delivery, the claim is an
//     ordinary claim: its lease expires and the sweeper ends it.
//   - No message lost: a release or an expiry re-queues a wake while sent
//     messages lie past the acked offset (pw_end_claim).
//
// A 2xx answer means delivered: the endpoint then heartbeats and finishes
// through the claim's callback with the claim token it received, as a
// pull runner does. An answer {"done": true} finishes at once: the claim is
// released acknowledging the main stream up to its tail at the claim
// (messages sent after the claim get a new wake).
//
// It must not decide anything about the claim lifecycle itself: every
// transition is one SQL function call.
package push
