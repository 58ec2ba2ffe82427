package server

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/metrics"
	"github.com/pullwake/pullwake/internal/secret"
	"github.com/pullwake/pullwake/server/httpx"
	"github.com/pullwake/pullwake/server/reconcile"
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
			return nil, httpx.BadRequest("acks[%d]: stream (or path) is required", i)
		}
		if a.Offset == "" {
			return nil, httpx.BadRequest("acks[%d]: offset is required", i)
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
	if !httpx.IDRE.MatchString(consumer) {
		return httpx.BadRequest("consumer id %q must match %s", consumer, httpx.IDRE)
	}
	var body callbackBody
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	epochPtr := body.Epoch
	if epochPtr == nil {
		epochPtr = body.Generation
	}
	if epochPtr == nil {
		return httpx.BadRequest("epoch (or generation) is required")
	}
	epoch := *epochPtr
	if epoch < 0 {
		return httpx.BadRequest("epoch %d must not be negative", epoch)
	}
	if body.WakeID == nil {
		body.WakeID = body.WakeIDAlt
	}
	tok := bearer(r)
	if tok == "" {
		tok = r.Header.Get("electric-claim-token")
	}
	if tok == "" {
		return httpx.Unauthorized("claim token required (Authorization: Bearer <claim_token>)")
	}
	// Acks belong to a done: a heartbeat or claim request that carries
	// some is refused rather than silently dropping what the runner
	// thinks it acknowledged.
	if !body.Done && len(body.Acks) > 0 {
		return httpx.BadRequest("acks are accepted only with done: true")
	}
	// Every kind hands the token's hash to its SQL function, which checks
	// it in the same round trip.
	hash := secret.Hash(tok)
	switch {
	case body.Done:
		return s.done(w, r, consumer, epoch, hash, body)
	case body.WakeID != nil:
		return s.claimRequest(w, r, consumer, epoch, *body.WakeID, tok)
	default:
		return s.heartbeat(w, r, consumer, epoch, hash, body.LeaseTTLMS)
	}
}

// claimRequest re-mints the write token of a claim that is still the
// entity's active claim with a live lease (after a server restart, or when
// another token evicted it by mistake). The claim_request SQL function
// decides, on the database clock; it is asked again after the mint, so a
// claim that ended in between (its end's notification possibly handled
// before the mint) leaves no token behind.
func (s *Server) claimRequest(w http.ResponseWriter, r *http.Request, consumer string, epoch int64, wakeID string, claimToken string) error {
	p := db.ClaimRequestParams{ConsumerID: consumer, Epoch: epoch, WakeID: &wakeID, ClaimTokenHash: secret.Hash(claimToken), TenantID: s.cfg.Tenant}
	c, err := s.q.ClaimRequest(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	if !c.Active {
		return claimNotActive(consumer, epoch, wakeID, c.Reason)
	}
	owner := tokens.Owner{ConsumerID: consumer, Epoch: epoch}
	wt := s.tokens.Mint(c.StreamPath, owner, claimToken)
	again, err := s.q.ClaimRequest(r.Context(), s.pool, p)
	if err != nil || !again.Active {
		s.tokens.ClearIfOwner(c.StreamPath, owner)
		if err != nil {
			return err
		}
		return claimNotActive(consumer, epoch, wakeID, again.Reason)
	}
	s.log.Info("write token re-minted", "consumer_id", consumer, "epoch", epoch, "entity_url", c.EntityUrl, "runner_id", c.RunnerID)
	// writeToken: the spelling Electric's runtime reads.
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "write_token": wt, "writeToken": wt})
	return nil
}

// claimNotActive is the 409 of a claim request claim_request refused.
func claimNotActive(consumer string, epoch int64, wakeID, reason string) error {
	why := map[string]string{
		"wrong_wake":   fmt.Sprintf("wake %s is not the wake of claim %s/%d", wakeID, consumer, epoch),
		"not_active":   fmt.Sprintf("claim %s/%d has ended", consumer, epoch),
		"not_in_slot":  fmt.Sprintf("claim %s/%d is not the entity's active claim", consumer, epoch),
		"lease_passed": fmt.Sprintf("the lease of claim %s/%d has passed", consumer, epoch),
	}[reason]
	if why == "" {
		why = fmt.Sprintf("claim %s/%d is not the entity's active claim", consumer, epoch)
	}
	return httpx.Errorf(http.StatusConflict, "CLAIM_NOT_ACTIVE", "%s", why)
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
	httpx.WriteJSON(w, http.StatusOK, map[string]any{"ok": true, "lease_expires_at": hb.LeaseExpiresAt})
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
	httpx.WriteJSON(w, http.StatusOK, releaseJSON(res))
	return nil
}

// release runs release_claim and the one memory step after it.
// tokenHash nil means an operator's release (no claim token).
func (s *Server) release(r *http.Request, consumer string, epoch int64, acks []byte, tokenHash []byte) (db.ReleaseClaimRow, error) {
	start := time.Now()
	res, err := s.releaseClaim(r.Context(), consumer, epoch, acks, tokenHash)
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
	if res.QueuedWakeID != "" {
		// The release queued a wake or logged a forced event for one
		// (release_claim names it): publish it now. A release that logged
		// nothing leaves the publisher alone, so a busy server does not
		// run an idle publish pass per done.
		s.wakePub.Kick()
	}
	outcome := metrics.Outcome(res.Released, res.EntityCleared, res.ClaimStatus)
	s.metrics.Released(outcome, took)
	// A routine release (the claim ended and freed its entity) is logged at
	// debug: at thousands a second the line costs more than the release's
	// own work in this process. Stale and repeated releases, which an
	// operator looks for, stay at info. The claim row keeps the record.
	level := slog.LevelInfo
	if outcome == metrics.OutcomeReleased {
		level = slog.LevelDebug
	}
	if s.log.Enabled(context.Background(), level) {
		s.log.Log(context.Background(), level, "claim release", "consumer_id", consumer, "epoch", epoch, "entity_url", res.EntityUrl,
			"outcome", outcome, "released", res.Released, "entity_cleared", res.EntityCleared,
			"claim_status", res.ClaimStatus, "entity_status", res.EntityStatus, "acked_offset", res.AckedOffset,
			"claim_next", claimNext)
	}
}

// publishClaimEnd tells every server that a claim ended (what
// pw_notify_claim sends from SQL), after the release committed.
func (s *Server) publishClaimEnd(consumer string, epoch int64, streamPath, status string) {
	if s.cfg.Publisher == nil {
		return
	}
	s.cfg.Publisher.Publish(reconcile.ClaimsChannel, reconcile.ClaimEndPayload(s.cfg.Tenant, consumer, epoch, streamPath, status))
}

// releaseAnswer is a done's answer (and a forced release's).
type releaseAnswer struct {
	OK            bool   `json:"ok"`
	Released      bool   `json:"released"`
	EntityCleared bool   `json:"entity_cleared"`
	ClaimStatus   string `json:"claim_status"`
	EntityStatus  string `json:"entity_status"`
	EntityURL     string `json:"entity_url"`
	AckedOffset   string `json:"acked_offset"`
}

func releaseJSON(res db.ReleaseClaimRow) releaseAnswer {
	return releaseAnswer{
		OK: true, Released: res.Released, EntityCleared: res.EntityCleared,
		ClaimStatus: res.ClaimStatus, EntityStatus: res.EntityStatus,
		EntityURL: res.EntityUrl, AckedOffset: res.AckedOffset,
	}
}
