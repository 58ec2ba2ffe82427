package reconcile

import (
	"encoding/json"

	"github.com/pullwake/pullwake/server/tokens"
)

// ClaimsChannel is the NOTIFY channel on which release_claim, expire_claims
// and takeovers announce a claim's end (pw_notify_claim in SQL), and the
// server's publisher a release it made (ClaimEndPayload).
const ClaimsChannel = "pullwake_claims"

type claimNotification struct {
	TenantID   string `json:"tenant_id"`
	ConsumerID string `json:"consumer_id"`
	Epoch      int64  `json:"epoch"`
	StreamPath string `json:"stream_path"`
	Status     string `json:"status"`
}

// ClaimEndPayload is the ClaimsChannel payload that says a claim ended
// (what pw_notify_claim sends from SQL), for a server that publishes it
// after the release committed.
func ClaimEndPayload(tenant, consumer string, epoch int64, streamPath, status string) string {
	b, _ := json.Marshal(claimNotification{TenantID: tenant, ConsumerID: consumer, Epoch: epoch, StreamPath: streamPath, Status: status})
	return string(b)
}

// OnClaimNotification drops the write token of a claim that ended anywhere
// (psql, another server, this one), if that claim still holds it.
func (r *Reconciler) OnClaimNotification(payload string) {
	var n claimNotification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		r.log.Warn("bad claim notification", "payload", payload, "err", err)
		return
	}
	if n.TenantID != r.cfg.Tenant {
		return
	}
	if r.tokens.ClearIfOwner(n.StreamPath, tokens.Owner{ConsumerID: n.ConsumerID, Epoch: n.Epoch}) {
		r.log.Info("write token dropped: claim ended", "consumer_id", n.ConsumerID, "epoch", n.Epoch,
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

// OnRunnerTokenNotification drops the cached token hash of a runner whose
// token changed or that was deleted, wherever that happened.
func (r *Reconciler) OnRunnerTokenNotification(payload string) {
	var n runnerTokenNotification
	if err := json.Unmarshal([]byte(payload), &n); err != nil {
		r.log.Warn("bad runner token notification", "payload", payload, "err", err)
		return
	}
	if n.TenantID == r.cfg.Tenant && r.runners != nil {
		r.runners.Forget(n.RunnerID)
	}
}
