package server

import (
	"context"
	"encoding/json"
	"time"

	"github.com/pullwake/pullwake/server/tokens"
)

// ClaimsChannel is the NOTIFY channel on which release_claim, expire_claims
// and takeovers announce a claim's end (pw_notify_claim in SQL).
const ClaimsChannel = "pullwake_claims"

type claimNotification struct {
	TenantID   string `json:"tenant_id"`
	ConsumerID string `json:"consumer_id"`
	Epoch      int64  `json:"epoch"`
	StreamPath string `json:"stream_path"`
	Status     string `json:"status"`
}

// publishClaimEnd tells every server that a claim ended (what
// pw_notify_claim sends from SQL), after the release committed.
func (s *Server) publishClaimEnd(consumer string, epoch int64, streamPath, status string) {
	if s.cfg.Publisher == nil {
		return
	}
	b, _ := json.Marshal(claimNotification{TenantID: s.cfg.Tenant, ConsumerID: consumer, Epoch: epoch, StreamPath: streamPath, Status: status})
	s.cfg.Publisher.Publish(ClaimsChannel, string(b))
}

// onClaimNotification drops the write token of a claim that ended anywhere
// (psql, another server, this one), if that claim still holds it.
func (s *Server) onClaimNotification(payload string) {
	var n claimNotification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		s.log.Warn("bad claim notification", "payload", payload, "err", err)
		return
	}
	if n.TenantID != s.cfg.Tenant {
		return
	}
	if s.tokens.ClearIfOwner(n.StreamPath, tokens.Owner{ConsumerID: n.ConsumerID, Epoch: n.Epoch}) {
		s.log.Info("write token dropped: claim ended", "consumer_id", n.ConsumerID, "epoch", n.Epoch,
			"stream_path", n.StreamPath, "claim_status", n.Status)
	}
}

// reconcileTokens runs after the listener (re)connects: notifications sent
// while it was away are lost, so every token whose claim is no longer
// active in the database is dropped. Only tokens that existed before the
// query are considered: a token minted later belongs to a claim that
// committed later.
func (s *Server) reconcileTokens(ctx context.Context) {
	held := s.tokens.Snapshot()
	if len(held) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	rows, err := s.q.ListActiveClaimKeys(ctx, s.pool, s.cfg.Tenant)
	if err != nil {
		// The sweeper's expiries and later notifications still clear them;
		// the next reconnect tries again.
		s.log.Warn("token reconcile failed", "err", err)
		return
	}
	active := make(map[tokens.Owner]bool, len(rows))
	for _, r := range rows {
		active[tokens.Owner{ConsumerID: r.ConsumerID, Epoch: r.Epoch}] = true
	}
	dropped := 0
	for _, h := range held {
		if !active[h.Owner] && s.tokens.ClearIfOwner(h.Path, h.Owner) {
			dropped++
		}
	}
	if dropped > 0 {
		s.log.Info("write tokens dropped after reconnect: claims no longer active", "count", dropped)
	}
}
