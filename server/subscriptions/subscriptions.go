package subscriptions

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/httpx"
)

// subscriptionBody is a PUT /__ds/subscriptions/{id}.
type subscriptionBody struct {
	Type    *string  `json:"type"`
	Pattern *string  `json:"pattern"`
	Streams []string `json:"streams"`
	Webhook *struct {
		URL *string `json:"url"`
	} `json:"webhook"`
	WakeStream  *string `json:"wake_stream"`
	LeaseTTLMS  *int64  `json:"lease_ttl_ms"`
	Description *string `json:"description"`
}

const (
	maxSubscriptionStreams = 100
	maxSubscriptionPath    = 1024
)

// relStreamPath is a stream path relative to the stream root, the form
// subscription patterns and streams[] use ("chat/1/main"); a leading "/"
// and "v1/stream/" are taken off.
func relStreamPath(p string) string {
	p = strings.TrimLeft(p, "/")
	return strings.TrimPrefix(p, streamRoot)
}

// streamRoot is where the streams are served (/v1/stream/), without its
// leading "/".
const streamRoot = "v1/stream/"

// checkStreamPattern accepts '/'-separated segments without empty ones,
// where '*' matches within a segment and '**' (a whole segment) any number
// of segments.
func checkStreamPattern(field, p string) error {
	if p == "" || len(p) > maxSubscriptionPath {
		return httpx.BadRequest("field %s: must be 1 to %d characters", field, maxSubscriptionPath)
	}
	for _, seg := range strings.Split(strings.TrimRight(p, "/"), "/") {
		if seg == "" {
			return httpx.BadRequest("field %s: %q has an empty segment", field, p)
		}
		if strings.Contains(seg, "**") && seg != "**" {
			return httpx.BadRequest("field %s: ** must be a whole segment in %q", field, p)
		}
		for _, c := range seg {
			if c < 0x20 || c == 0x7f {
				return httpx.BadRequest("field %s: control characters are not allowed", field)
			}
		}
	}
	return nil
}

// checkWebhookURL accepts absolute http(s) URLs with a host. Nothing
// else is ever called: no other scheme, no relative URL.
func checkWebhookURL(raw string) error { return httpx.CheckOutboundURL("webhook.url", raw) }

func (s *Service) subscriptionID(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if !httpx.IDRE.MatchString(id) {
		return "", httpx.BadRequest("subscription id %q must match [A-Za-z0-9._~-]{1,128}", id)
	}
	return id, nil
}

func (s *Service) putSubscription(w http.ResponseWriter, r *http.Request) error {
	id, err := s.subscriptionID(r)
	if err != nil {
		return err
	}
	var b subscriptionBody
	if err := httpx.Decode(w, r, &b); err != nil {
		return err
	}
	if b.Type == nil {
		return httpx.BadRequest("field type: required (\"webhook\")")
	}
	if *b.Type != "webhook" {
		return httpx.BadRequest("field type: only \"webhook\" subscriptions are served (pull-wake workers register as runners), got %q", *b.Type)
	}
	if b.WakeStream != nil {
		return httpx.BadRequest("field wake_stream: only for pull-wake subscriptions")
	}
	var pattern *string
	if b.Pattern != nil {
		p := relStreamPath(*b.Pattern)
		if err := checkStreamPattern("pattern", p); err != nil {
			return err
		}
		pattern = &p
	}
	if len(b.Streams) > maxSubscriptionStreams {
		return httpx.BadRequest("field streams: at most %d streams", maxSubscriptionStreams)
	}
	streams := make([]string, 0, len(b.Streams))
	for i, st := range b.Streams {
		p := relStreamPath(st)
		if err := checkStreamPattern("streams", p); err != nil {
			return err
		}
		if strings.Contains(p, "*") {
			return httpx.BadRequest("field streams[%d]: a stream path, not a pattern: %q", i, st)
		}
		streams = append(streams, strings.TrimRight(p, "/"))
	}
	if pattern == nil && len(streams) == 0 {
		return httpx.BadRequest("field pattern or streams: at least one is required")
	}
	if b.Webhook == nil || b.Webhook.URL == nil {
		return httpx.BadRequest("field webhook.url: required")
	}
	if err := checkWebhookURL(*b.Webhook.URL); err != nil {
		return err
	}
	lease := int64(30000)
	if b.LeaseTTLMS != nil {
		lease = *b.LeaseTTLMS
		if lease < 1000 || lease > 600000 {
			return httpx.BadRequest("field lease_ttl_ms: must be 1000 to 600000, got %d", lease)
		}
	}
	desc := ""
	if b.Description != nil {
		if len(*b.Description) > 1024 {
			return httpx.BadRequest("field description: at most 1024 characters")
		}
		desc = *b.Description
	}
	outcome, err := s.q.UpsertPushSubscription(r.Context(), s.pool, db.UpsertPushSubscriptionParams{
		ID: id, Pattern: pattern, Streams: streams, WebhookUrl: *b.Webhook.URL,
		LeaseTtlMs: int32(lease), Description: desc, TenantID: s.cfg.Tenant})
	if err != nil {
		return err
	}
	sub, err := s.q.GetPushSubscription(r.Context(), s.pool, db.GetPushSubscriptionParams{TenantID: s.cfg.Tenant, ID: id})
	if err != nil {
		return err
	}
	switch outcome {
	case "created":
		s.log.Info("subscription created", "subscription_id", id, "webhook_url", *b.Webhook.URL)
		httpx.WriteJSON(w, http.StatusCreated, s.subscriptionJSON(sub))
	case "unchanged":
		httpx.WriteJSON(w, http.StatusOK, s.subscriptionJSON(sub))
	default:
		return httpx.Errorf(http.StatusConflict, "SUBSCRIPTION_EXISTS",
			"subscription %s exists with another configuration: delete it first", id)
	}
	return nil
}

func (s *Service) loadSubscription(ctx context.Context, id string) (db.PushSubscription, error) {
	sub, err := s.q.GetPushSubscription(ctx, s.pool, db.GetPushSubscriptionParams{TenantID: s.cfg.Tenant, ID: id})
	if errors.Is(err, db.ErrNotFound) {
		return sub, httpx.Errorf(http.StatusNotFound, "SUBSCRIPTION_NOT_FOUND", "subscription %s not found", id)
	}
	return sub, err
}

func (s *Service) getSubscription(w http.ResponseWriter, r *http.Request) error {
	id, err := s.subscriptionID(r)
	if err != nil {
		return err
	}
	sub, err := s.loadSubscription(r.Context(), id)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, s.subscriptionJSON(sub))
	return nil
}

// deleteSubscription stops deliveries: no wake is claimed for the
// subscription after this answers. A claim already made ends as any claim
// does (the endpoint's done, or its lease).
func (s *Service) deleteSubscription(w http.ResponseWriter, r *http.Request) error {
	id, err := s.subscriptionID(r)
	if err != nil {
		return err
	}
	n, err := s.q.DeletePushSubscription(r.Context(), s.pool, db.DeletePushSubscriptionParams{TenantID: s.cfg.Tenant, ID: id})
	if err != nil {
		return err
	}
	if n == 0 {
		return httpx.Errorf(http.StatusNotFound, "SUBSCRIPTION_NOT_FOUND", "subscription %s not found", id)
	}
	s.log.Info("subscription deleted", "subscription_id", id)
	w.WriteHeader(http.StatusNoContent)
	return nil
}

func (s *Service) jwksURL() string { return s.cfg.PublicURL + "/__ds/jwks.json" }

func (s *Service) subscriptionJSON(sub db.PushSubscription) map[string]any {
	status := "active"
	if sub.Failures > 0 {
		status = "failed"
	}
	out := map[string]any{
		"id": sub.ID, "subscription_id": sub.ID, "type": "webhook", "kind": sub.Kind,
		"pattern": sub.Pattern, "streams": sub.Streams,
		"webhook": map[string]any{"url": sub.WebhookUrl, "signing": map[string]any{
			"alg": "ed25519", "kid": s.cfg.WebhookSigner.KeyID(), "jwks_url": s.jwksURL()}},
		"wake_stream": nil, "lease_ttl_ms": sub.LeaseTtlMs, "description": sub.Description,
		"status": status, "failures": sub.Failures, "last_error": sub.LastError,
		"last_delivered_at": sub.LastDeliveredAt, "created_at": sub.CreatedAt,
	}
	if sub.Failures > 0 {
		out["next_attempt_at"] = sub.NextAttemptAt
	}
	if sub.Streams == nil {
		out["streams"] = []string{}
	}
	return out
}

// jwks publishes the public key push deliveries are signed with.
func (s *Service) jwks(w http.ResponseWriter, r *http.Request) error {
	b, err := json.Marshal(s.cfg.WebhookSigner.JWKS())
	if err != nil {
		return err
	}
	w.Header().Set("Content-Type", "application/jwk-set+json")
	w.Header().Set("Cache-Control", "public, max-age=300")
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(b)
	return nil
}
