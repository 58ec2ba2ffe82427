package server

import (
	"context"
	"time"

	"github.com/pullwake/pullwake/db"
)

// The server is the push delivery worker's Host (server/push): a push
// claim takes the same memory steps as a runner's claim and done.

// PushNotification mints a push claim's write token and returns the wake
// notification to POST, the same document a runner's claim answers.
// Called by the delivery worker right after claim_wake_for_push committed.
func (s *Server) PushNotification(c db.ClaimWakeForPushRow, took time.Duration) any {
	return s.notify(db.ClaimNextWakeRow{
		WakeID: c.WakeID, ConsumerID: c.ConsumerID, Epoch: c.Epoch, EntityUrl: c.EntityUrl,
		StreamPath: c.StreamPath, AckedOffset: c.AckedOffset, ClaimToken: c.ClaimToken,
		LeaseExpiresAt: c.LeaseExpiresAt, LeaseTtlMs: c.LeaseTtlMs,
	}, "", took, false)
}

// PushRelease releases a push claim (release_claim, then the memory step
// every release takes): after a failed delivery (no acks) or an
// endpoint's synchronous {"done": true}.
func (s *Server) PushRelease(ctx context.Context, consumer string, epoch int64, acks []byte) error {
	start := time.Now()
	res, err := s.q.ReleaseClaim(ctx, s.pool, db.ReleaseClaimParams{
		ConsumerID: consumer, Epoch: epoch, Acks: acks, TenantID: s.cfg.Tenant,
		Notify: s.cfg.Publisher == nil})
	if err != nil {
		return err
	}
	s.afterRelease(consumer, epoch, res, time.Since(start), false)
	return nil
}
