package server

import (
	"fmt"
	"net/http"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/httpx"
)

type activeClaimJSON struct {
	ConsumerID      string     `json:"consumer_id"`
	Epoch           int64      `json:"epoch"`
	EntityURL       string     `json:"entity_url"`
	StreamPath      string     `json:"stream_path"`
	ClaimedAt       time.Time  `json:"claimed_at"`
	LastHeartbeatAt *time.Time `json:"last_heartbeat_at"`
	LeaseExpiresAt  *time.Time `json:"lease_expires_at"`
}

// runnerHealth reports a runner's liveness, its active claims and any
// leaked claim: an active claim that no dispatch slot names, or whose
// lease has passed. A leak makes the status at least degraded.
func (s *Server) runnerHealth(w http.ResponseWriter, r *http.Request) error {
	run, err := s.loadRunner(r)
	if err != nil {
		return err
	}
	claims, err := s.q.ActiveClaimsForRunner(r.Context(), s.pool, db.ActiveClaimsForRunnerParams{TenantID: s.cfg.Tenant, RunnerID: run.ID})
	if err != nil {
		return err
	}
	counts, err := s.q.DispatchCounts(r.Context(), s.pool, db.DispatchCountsParams{TenantID: s.cfg.Tenant, RunnerID: &run.ID})
	if err != nil {
		return err
	}
	now := time.Now()
	issues := []string{}
	active := make([]activeClaimJSON, 0, len(claims))
	for _, c := range claims {
		active = append(active, activeClaimJSON{
			ConsumerID: c.ConsumerID, Epoch: c.Epoch, EntityURL: c.EntityUrl, StreamPath: c.StreamPath,
			ClaimedAt: c.ClaimedAt, LastHeartbeatAt: c.LastHeartbeatAt, LeaseExpiresAt: c.LeaseExpiresAt})
		switch {
		case !c.HoldsSlot:
			issues = append(issues, fmt.Sprintf("leaked claim %s/%d on %s: active but no dispatch slot names it", c.ConsumerID, c.Epoch, c.EntityUrl))
		case c.LeasePassed:
			issues = append(issues, fmt.Sprintf("leaked claim %s/%d on %s: active but its lease has passed", c.ConsumerID, c.Epoch, c.EntityUrl))
		}
	}
	status := "healthy"
	if len(issues) > 0 {
		status = "degraded"
	}
	live := liveness(run.LivenessLeaseExpiresAt, now)
	if live == "expired" {
		issues = append(issues, "runner liveness lease expired: no heartbeat since "+run.LastSeenAt.UTC().Format(time.RFC3339))
		status = "degraded"
	}
	if run.AdminStatus != "enabled" {
		issues = append(issues, "runner is disabled: it gets no new wakes")
		status = "degraded"
	}
	var remaining *int64
	if run.LivenessLeaseExpiresAt != nil {
		ms := max(run.LivenessLeaseExpiresAt.Sub(now).Milliseconds(), 0)
		remaining = &ms
	}
	var client any
	if len(run.Diagnostics) > 0 {
		client = run.Diagnostics
	}
	httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"runner": map[string]any{
			"id": run.ID, "admin_status": run.AdminStatus, "liveness_status": live,
			"lease_expires_at": run.LivenessLeaseExpiresAt, "lease_remaining_ms": remaining,
			"last_seen_at": run.LastSeenAt, "created_at": run.CreatedAt,
		},
		"client": client,
		"claims": map[string]any{"active_count": len(active), "active": active},
		"dispatch": map[string]any{
			"entities_with_active_claim":     counts.WithActiveClaim,
			"entities_with_outstanding_wake": counts.WithOutstandingWake,
			"entities_with_pending_work":     counts.WithPendingWork,
		},
		"health": map[string]any{"status": status, "issues": issues},
	})
	return nil
}
