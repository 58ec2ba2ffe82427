package server

import (
	"net/http"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/httpx"
)

// doneAndClaimNext releases the claim and claims its runner's next wake in
// one transaction (release_and_claim_next): a steady-state cycle is then
// two commits instead of three. The answer is a done's, plus "next": a wake
// notification, or null when there is no work.
func (s *Server) doneAndClaimNext(w http.ResponseWriter, r *http.Request, consumer string, epoch int64, tokenHash []byte, acks []byte, ttl *int64) error {
	ttlMS, err := s.leaseMS(ttl, "lease_ttl_ms")
	if err != nil {
		return err
	}
	start := time.Now()
	res, err := s.q.ReleaseAndClaimNext(r.Context(), s.pool, db.ReleaseAndClaimNextParams{
		ConsumerID: consumer, Epoch: epoch, Acks: acks, LeaseTtlMs: ttlMS, TenantID: s.cfg.Tenant,
		ClaimTokenHash: tokenHash, Notify: s.cfg.Publisher == nil})
	if err != nil {
		return err
	}
	rel := db.ReleaseClaimRow{
		Released: res.Released, EntityCleared: res.EntityCleared, ClaimStatus: res.ClaimStatus,
		EntityUrl: res.EntityUrl, StreamPath: res.StreamPath, EntityStatus: res.EntityStatus,
		AckedOffset: res.AckedOffset, QueuedWakeID: res.QueuedWakeID,
	}
	s.afterRelease(consumer, epoch, rel, time.Since(start), true)
	out := doneNextAnswer{releaseAnswer: releaseJSON(rel)}
	if res.HasNext {
		next := db.ClaimNextWakeRow{
			WakeID: res.NextWakeID, ConsumerID: res.NextConsumerID, Epoch: res.NextEpoch,
			EntityUrl: res.NextEntityUrl, StreamPath: res.NextStreamPath, AckedOffset: res.NextAckedOffset,
			ClaimToken: res.NextClaimToken, LeaseExpiresAt: res.NextLeaseExpiresAt, LeaseTtlMs: res.NextLeaseTtlMs,
		}
		n := s.notify(next, "", time.Since(start), true)
		out.Next = &n
	} else if res.NextError != "" {
		out.NextError = res.NextError
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

// doneNextAnswer is a done's answer plus "next": the next claim's wake
// notification, or null.
type doneNextAnswer struct {
	releaseAnswer
	Next      *wakeNotification `json:"next"`
	NextError string            `json:"next_error,omitempty"`
}
