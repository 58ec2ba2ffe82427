package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/metrics"
	"github.com/pullwake/pullwake/internal/secret"
	"github.com/pullwake/pullwake/server/tokens"
)

type ackJSON struct {
	Stream string `json:"stream"`
	Path   string `json:"path"`
	Offset string `json:"offset"`
}

type callbackBody struct {
	Epoch      *int64    `json:"epoch"`
	Generation *int64    `json:"generation"`
	WakeID     *string   `json:"wake_id"`
	WakeIDAlt  *string   `json:"wakeId"`
	Done       bool      `json:"done"`
	Acks       []ackJSON `json:"acks"`
	ClaimNext  bool      `json:"claim_next"`
	LeaseTTLMS *int64    `json:"lease_ttl_ms"`
}

// acksJSON normalizes acks to [{"stream", "offset"}] for release_claim.
func acksJSON(acks []ackJSON) ([]byte, error) {
	type ack struct {
		Stream string `json:"stream"`
		Offset string `json:"offset"`
	}
	out := make([]ack, 0, len(acks))
	for i, a := range acks {
		stream := a.Stream
		if stream == "" {
			stream = a.Path
		}
		if stream == "" {
			return nil, badRequest("acks[%d]: stream (or path) is required", i)
		}
		if a.Offset == "" {
			return nil, badRequest("acks[%d]: offset is required", i)
		}
		out = append(out, ack{Stream: stream, Offset: a.Offset})
	}
	return json.Marshal(out)
}

// wakeCallback serves a claim's callback: claim request (re-mint the write
// token), heartbeat, or done. The claim token is checked against the hash in
// the database.
func (s *Server) wakeCallback(w http.ResponseWriter, r *http.Request) error {
	consumer := r.PathValue("consumer_id")
	if !idRE.MatchString(consumer) {
		return badRequest("consumer id %q must match %s", consumer, idRE)
	}
	var body callbackBody
	if err := decode(w, r, &body); err != nil {
		return err
	}
	epochPtr := body.Epoch
	if epochPtr == nil {
		epochPtr = body.Generation
	}
	if epochPtr == nil {
		return badRequest("epoch (or generation) is required")
	}
	epoch := *epochPtr
	if body.WakeID == nil {
		body.WakeID = body.WakeIDAlt
	}
	tok := bearer(r)
	if tok == "" {
		tok = r.Header.Get("electric-claim-token")
	}
	if tok == "" {
		return unauthorized("claim token required (Authorization: Bearer <claim_token>)")
	}
	// Done (with or without claim_next) and heartbeat hand the token's hash
	// to their SQL function, which checks it in the same round trip; a
	// claim request reads the claim.
	hash := secret.Hash(tok)
	switch {
	case body.Done:
		return s.done(w, r, consumer, epoch, hash, body)
	case body.WakeID != nil:
		c, err := s.q.GetClaim(r.Context(), s.pool, db.GetClaimParams{TenantID: s.cfg.Tenant, ConsumerID: consumer, Epoch: epoch})
		if errors.Is(err, db.ErrNotFound) {
			return errf(http.StatusNotFound, "CLAIM_NOT_FOUND", "claim %s/%d not found", consumer, epoch)
		}
		if err != nil {
			return err
		}
		if !secret.MatchesHash(tok, c.ClaimTokenHash) {
			return unauthorized("wrong claim token")
		}
		return s.claimRequest(w, r, c, *body.WakeID)
	default:
		return s.heartbeat(w, r, consumer, epoch, hash, body.LeaseTTLMS)
	}
}

// claimRequest re-mints the write token of a claim that is still the
// entity's active claim (after a server restart, or when another token
// evicted it by mistake).
func (s *Server) claimRequest(w http.ResponseWriter, r *http.Request, c db.GetClaimRow, wakeID string) error {
	notActive := errf(http.StatusConflict, "CLAIM_NOT_ACTIVE", "claim %s/%d is not the entity's active claim", c.ConsumerID, c.Epoch)
	if wakeID != c.WakeID {
		return errf(http.StatusConflict, "CLAIM_NOT_ACTIVE", "wake %s is not the wake of claim %s/%d", wakeID, c.ConsumerID, c.Epoch)
	}
	if c.Status != "active" || !c.HoldsSlot || c.LeaseExpiresAt == nil || !c.LeaseExpiresAt.After(time.Now()) {
		return notActive
	}
	owner := tokens.Owner{ConsumerID: c.ConsumerID, Epoch: c.Epoch}
	wt := s.tokens.Mint(c.StreamPath, owner)
	// The claim may have ended between the read and the mint, and its end's
	// notification may already have been handled: read again, after the mint.
	again, err := s.q.GetClaim(r.Context(), s.pool, db.GetClaimParams{TenantID: s.cfg.Tenant, ConsumerID: c.ConsumerID, Epoch: c.Epoch})
	if err != nil || again.Status != "active" || !again.HoldsSlot {
		s.tokens.ClearIfOwner(c.StreamPath, owner)
		if err != nil {
			return err
		}
		return notActive
	}
	s.log.Info("write token re-minted", "consumer_id", c.ConsumerID, "epoch", c.Epoch, "entity_url", c.EntityUrl, "runner_id", c.RunnerID)
	// writeToken: the spelling Electric's runtime reads.
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "write_token": wt, "writeToken": wt})
	return nil
}

func (s *Server) heartbeat(w http.ResponseWriter, r *http.Request, consumer string, epoch int64, tokenHash []byte, ttl *int64) error {
	var ttlMS *int32
	if ttl != nil {
		v, err := s.leaseMS(ttl, "lease_ttl_ms")
		if err != nil {
			return err
		}
		ttlMS = &v
	}
	hb, err := s.q.HeartbeatClaim(r.Context(), s.pool, db.HeartbeatClaimParams{
		ConsumerID: consumer, Epoch: epoch, LeaseTtlMs: ttlMS, TenantID: s.cfg.Tenant, ClaimTokenHash: tokenHash})
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, map[string]any{"ok": true, "lease_expires_at": hb.LeaseExpiresAt})
	return nil
}

// done releases the claim by its durable identity, whatever the token store
// holds, then drops the write token only if this claim still owns it.
func (s *Server) done(w http.ResponseWriter, r *http.Request, consumer string, epoch int64, tokenHash []byte, body callbackBody) error {
	acks, err := acksJSON(body.Acks)
	if err != nil {
		return err
	}
	if body.ClaimNext {
		return s.doneAndClaimNext(w, r, consumer, epoch, tokenHash, acks, body.LeaseTTLMS)
	}
	res, err := s.release(r, consumer, epoch, acks, tokenHash)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, releaseJSON(res))
	return nil
}

// release runs release_claim and the one memory step after it.
// tokenHash nil means an operator's release (no claim token).
func (s *Server) release(r *http.Request, consumer string, epoch int64, acks []byte, tokenHash []byte) (db.ReleaseClaimRow, error) {
	start := time.Now()
	res, err := s.q.ReleaseClaim(r.Context(), s.pool, db.ReleaseClaimParams{
		ConsumerID: consumer, Epoch: epoch, Acks: acks, TenantID: s.cfg.Tenant, ClaimTokenHash: tokenHash,
		Notify: s.cfg.Publisher == nil})
	if err != nil {
		return res, err
	}
	s.afterRelease(consumer, epoch, res, time.Since(start), false)
	return res, nil
}

// afterRelease is the one memory step after a release, plus its metric
// and log line: it drops the claim's write token if, and only if, the claim
// still holds it (a late done never clears a newer claim's token), and
// announces a release that ended the claim to the other servers.
func (s *Server) afterRelease(consumer string, epoch int64, res db.ReleaseClaimRow, took time.Duration, claimNext bool) {
	s.tokens.ClearIfOwner(res.StreamPath, tokens.Owner{ConsumerID: consumer, Epoch: epoch})
	if res.Released {
		s.publishClaimEnd(consumer, epoch, res.StreamPath, "released")
	}
	outcome := metrics.Outcome(res.Released, res.EntityCleared, res.ClaimStatus)
	s.metrics.Released(outcome, took)
	s.log.Info("claim release", "consumer_id", consumer, "epoch", epoch, "entity_url", res.EntityUrl,
		"outcome", outcome, "released", res.Released, "entity_cleared", res.EntityCleared,
		"claim_status", res.ClaimStatus, "entity_status", res.EntityStatus, "acked_offset", res.AckedOffset,
		"claim_next", claimNext)
}

func releaseJSON(res db.ReleaseClaimRow) map[string]any {
	return map[string]any{
		"ok": true, "released": res.Released, "entity_cleared": res.EntityCleared,
		"claim_status": res.ClaimStatus, "entity_status": res.EntityStatus,
		"entity_url": res.EntityUrl, "acked_offset": res.AckedOffset,
	}
}

// parseEpoch parses an epoch path value.
func parseEpoch(v string) (int64, error) {
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return 0, badRequest("epoch %q must be a non-negative integer", v)
	}
	return n, nil
}
