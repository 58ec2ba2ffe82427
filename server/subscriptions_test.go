package server_test

import (
	"encoding/json"
	"testing"

	"github.com/pullwake/pullwake/internal/webhooksig"
)

// PUT /__ds/subscriptions/{id}: 201 created, 200 re-confirmed with the
// same configuration, 409 with another; GET and DELETE; refusals change
// nothing; admin only; the signing key is published at /__ds/jwks.json.
func TestSubscriptionRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	body := map[string]any{"type": "webhook", "pattern": "/chat/**", "webhook": map[string]any{"url": "https://hooks.example/a"},
		"lease_ttl_ms": 5000, "description": "chat handler"}
	created := b.must(201, b.do("PUT", "/__ds/subscriptions/chat-sub", b.admin, body)).json(t)
	if created["pattern"] != "chat/**" || created["lease_ttl_ms"] != float64(5000) || created["status"] != "active" ||
		created["subscription_id"] != "chat-sub" {
		t.Fatalf("created %v", created)
	}
	signing := created["webhook"].(map[string]any)["signing"].(map[string]any)
	b.must(200, b.do("PUT", "/__ds/subscriptions/chat-sub", b.admin, body))
	other := map[string]any{"type": "webhook", "pattern": "chat/**", "webhook": map[string]any{"url": "https://hooks.example/b"}}
	if code := b.must(409, b.do("PUT", "/__ds/subscriptions/chat-sub", b.admin, other)).errorCode(t); code != "SUBSCRIPTION_EXISTS" {
		t.Fatalf("conflict code %s", code)
	}
	got := b.must(200, b.do("GET", "/__ds/subscriptions/chat-sub", b.admin, nil)).json(t)
	if got["webhook"].(map[string]any)["url"] != "https://hooks.example/a" {
		t.Fatalf("conflicting PUT changed the subscription: %v", got)
	}

	bad := []any{
		map[string]any{"type": "pull-wake", "pattern": "x/**", "wake_stream": "w"},
		map[string]any{"pattern": "x/**", "webhook": map[string]any{"url": "https://h.example"}},
		map[string]any{"type": "webhook", "webhook": map[string]any{"url": "https://h.example"}},
		map[string]any{"type": "webhook", "pattern": "a//b", "webhook": map[string]any{"url": "https://h.example"}},
		map[string]any{"type": "webhook", "pattern": "a/b**", "webhook": map[string]any{"url": "https://h.example"}},
		map[string]any{"type": "webhook", "streams": []string{"a/*"}, "webhook": map[string]any{"url": "https://h.example"}},
		map[string]any{"type": "webhook", "pattern": "x", "webhook": map[string]any{"url": "ftp://h.example"}},
		map[string]any{"type": "webhook", "pattern": "x", "webhook": map[string]any{"url": "https:///nohost"}},
		map[string]any{"type": "webhook", "pattern": "x", "webhook": map[string]any{"url": "https://h.example"}, "lease_ttl_ms": 999},
		map[string]any{"type": "webhook", "pattern": "x", "webhook": map[string]any{"url": 7}},
		"{\"type\": \"webhook\", \"pattern\": \"a\\u0000\", \"webhook\": {\"url\": \"https://h.example\"}}",
		"{\"type\": \"webhook\", \"pattern\": \"a\", \"description\": \"\\ud800\", \"webhook\": {\"url\": \"https://h.example\"}}",
	}
	for i, body := range bad {
		if r := b.do("PUT", "/__ds/subscriptions/bad", b.admin, body); r.status != 400 {
			t.Fatalf("bad body %d: %d %s", i, r.status, r.body)
		}
	}
	b.must(400, b.do("PUT", "/__ds/subscriptions/bad:id", b.admin, body))
	b.must(404, b.do("GET", "/__ds/subscriptions/bad", b.admin, nil))
	b.must(401, b.do("PUT", "/__ds/subscriptions/anon", "", body))
	b.must(401, b.do("DELETE", "/__ds/subscriptions/chat-sub", "", nil))

	// The key set is public and holds the key named in the subscription.
	r := b.must(200, b.do("GET", "/__ds/jwks.json", "", nil))
	var set webhooksig.JWKS
	if err := json.Unmarshal(r.body, &set); err != nil || len(set.Keys) != 1 || set.Keys[0].Kid != signing["kid"] ||
		signing["jwks_url"] != b.url+"/__ds/jwks.json" || r.header.Get("Content-Type") != "application/jwk-set+json" {
		t.Fatalf("jwks %s (%v), signing %v", r.body, err, signing)
	}

	b.must(204, b.do("DELETE", "/__ds/subscriptions/chat-sub", b.admin, nil))
	b.must(404, b.do("DELETE", "/__ds/subscriptions/chat-sub", b.admin, nil))
	b.must(404, b.do("GET", "/__ds/subscriptions/chat-sub", b.admin, nil))
}
