package server

import (
	"net/http"
	"regexp"
	"strconv"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/httpx"
)

var claimStatuses = map[string]bool{"active": true, "released": true, "expired": true, "failed": true}

func (s *Server) listClaims(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	p := db.ListClaimsParams{TenantID: s.cfg.Tenant, MaxRows: 1000}
	if v := q.Get("status"); v != "" {
		if !claimStatuses[v] {
			return httpx.BadRequest("status %q must be one of active, released, expired, failed", v)
		}
		p.Status = &v
	}
	if v := q.Get("runner_id"); v != "" {
		if !httpx.IDRE.MatchString(v) {
			return httpx.BadRequest("runner_id %q must match %s", v, httpx.IDRE)
		}
		p.RunnerID = &v
	}
	if v := q.Get("entity_url"); v != "" {
		p.EntityUrl = &v
	}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > 10000 {
			return httpx.BadRequest("limit %q must be an integer from 1 to 10000", v)
		}
		p.MaxRows = int32(n)
	}
	rows, err := s.q.ListClaims(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	if rows == nil {
		rows = []db.ListClaimsRow{}
	}
	httpx.WriteJSON(w, http.StatusOK, claimsJSON(rows))
	return nil
}

func claimsJSON(rows []db.ListClaimsRow) []map[string]any {
	out := make([]map[string]any, 0, len(rows))
	for _, c := range rows {
		acked := any(nil)
		if len(c.AckedStreams) > 0 {
			acked = c.AckedStreams
		}
		out = append(out, map[string]any{
			"consumer_id": c.ConsumerID, "epoch": c.Epoch, "wake_id": c.WakeID, "entity_url": c.EntityUrl,
			"stream_path": c.StreamPath, "runner_id": c.RunnerID, "status": c.Status, "claimed_at": c.ClaimedAt,
			"last_heartbeat_at": c.LastHeartbeatAt, "lease_expires_at": c.LeaseExpiresAt,
			"released_at": c.ReleasedAt, "acked_streams": acked, "updated_at": c.UpdatedAt,
		})
	}
	return out
}

// forceRelease is an operator's release: the same release_claim as a done.
func (s *Server) forceRelease(w http.ResponseWriter, r *http.Request) error {
	consumer := r.PathValue("consumer_id")
	if !httpx.IDRE.MatchString(consumer) {
		return httpx.BadRequest("consumer id %q must match %s", consumer, httpx.IDRE)
	}
	epoch, err := parseEpoch(r.PathValue("epoch"))
	if err != nil {
		return err
	}
	res, err := s.release(r, consumer, epoch, []byte("[]"), nil)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, releaseJSON(res))
	return nil
}

// epochRE is an epoch as a path spells it: decimal digits only (no sign, no
// spaces), at most 18 so it fits a bigint.
var epochRE = regexp.MustCompile(`^[0-9]{1,18}$`)

// parseEpoch parses an epoch path value. strconv.ParseInt alone accepts a
// sign ("+1"), which names the same claim under another spelling.
func parseEpoch(v string) (int64, error) {
	if !epochRE.MatchString(v) {
		return 0, httpx.BadRequest("epoch %q must be a non-negative decimal integer", v)
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		return 0, httpx.BadRequest("epoch %q must be a non-negative decimal integer", v)
	}
	return n, nil
}
