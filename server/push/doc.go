// Package push delivers wakes to webhook endpoints: the delivery worker of
// pullwake's push mode (webhook subscriptions and entity types with a
// webhook target).
//
// Each pass asks PostgreSQL which queued wakes a push target may take now
// (push_pending, oldest first), claims each on the target's behalf
// (claim_wake_for_push, the same claim rule as a runner's claim) and POSTs
// the wake notification to the target's URL, signed (Webhook-Signature,
// Ed25519, see package internal/webhooksig). A pass does not wait for its
// deliveries.
//
// Slow or dead endpoints hold only their own share. Deliveries in flight
// are capped twice: Concurrency (256) for the worker and PerTarget (2) for
// one target, and a pass skips the wakes of a target at its share (it
// reads further down the queue to fill the other slots). Each POST gets
// ConnectTimeout (3s) to be connected, TLS handshake included, and
// Timeout (10s) in all: an endpoint that never accepts frees its slot
// after the first, one that accepts and never answers after the second.
// So endpoints that hang delay no other target's deliveries while they
// number fewer than Concurrency/PerTarget.
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
