package server

import (
	"encoding/json"

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

// RunnerTokensChannel is the NOTIFY channel on which the runners table
// announces a changed token or a deleted runner (migration 00011's trigger),
// payload {"tenant_id", "runner_id"}.
const RunnerTokensChannel = "pullwake_runner_tokens"

type runnerTokenNotification struct {
	TenantID string `json:"tenant_id"`
	RunnerID string `json:"runner_id"`
}

// onRunnerTokenNotification drops the cached token hash of a runner whose
// token changed or that was deleted, wherever that happened.
func (s *Server) onRunnerTokenNotification(payload string) {
	var n runnerTokenNotification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		s.log.Warn("bad runner token notification", "payload", payload, "err", err)
		return
	}
	if n.TenantID == s.cfg.Tenant {
		s.forgetRunnerToken(n.RunnerID)
	}
}

// forgetRunnerToken drops runner id's cached token hash, so the next request
// reads the current one from the database. Registration calls it after
// rotating a token, for this instance not to wait for the notification.
func (s *Server) forgetRunnerToken(id string) {
	s.runnerGen.Add(1)
	s.runnerHashes.Delete(id)
}
