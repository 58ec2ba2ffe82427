package server_test

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
)

// A known path asked with a method it does not serve is 405 with an Allow
// header and the JSON error form, on every route (the catch-all "/" would
// otherwise answer 404); an unknown path stays 404.
func TestWrongMethodIs405WithAllow(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.spawn("/chat/1")
	cases := []struct {
		method, path string
		allow        []string
	}{
		{"PATCH", "/entities/chat/1", []string{"GET", "HEAD", "POST", "PUT", "DELETE"}},
		{"POST", "/entities", []string{"GET", "HEAD"}},
		{"DELETE", "/_electric/runners", []string{"GET", "HEAD", "POST"}},
		{"PUT", "/_electric/runners/r1", []string{"GET", "HEAD"}},
		{"GET", "/_electric/runners/r1/claim", []string{"POST"}},
		{"GET", "/_electric/runners/r1/heartbeat", []string{"POST"}},
		{"POST", "/_electric/runners/r1/health", []string{"GET", "HEAD"}},
		{"GET", "/_electric/wake-callbacks/wake-1", []string{"POST"}},
		{"DELETE", "/_electric/claims", []string{"GET", "HEAD"}},
		{"GET", "/_electric/claims/wake-1/1/release", []string{"POST"}},
		{"POST", "/healthz", []string{"GET", "HEAD"}},
		{"POST", "/_electric/health", []string{"GET", "HEAD"}},
		{"PUT", "/readyz", []string{"GET", "HEAD"}},
		{"POST", "/metrics", []string{"GET", "HEAD"}},
		{"PATCH", "/v1/stream/chat/1/main", []string{"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS"}},
	}
	for _, c := range cases {
		r := b.do(c.method, c.path, "", nil)
		if r.status != http.StatusMethodNotAllowed {
			t.Errorf("%s %s: status %d, want 405: %s", c.method, c.path, r.status, r.body)
			continue
		}
		if code := r.errorCode(t); code != "METHOD_NOT_ALLOWED" {
			t.Errorf("%s %s: code %s, want METHOD_NOT_ALLOWED", c.method, c.path, code)
		}
		got := strings.Split(r.header.Get("Allow"), ", ")
		for _, m := range c.allow {
			if !slices.Contains(got, m) {
				t.Errorf("%s %s: Allow %q lacks %s", c.method, c.path, r.header.Get("Allow"), m)
			}
		}
		if slices.Contains(got, c.method) {
			t.Errorf("%s %s: Allow %q names the refused method", c.method, c.path, r.header.Get("Allow"))
		}
	}
	for _, p := range []string{"/__ds/nope", "/entities/chat/1/extra", "/_electric/nope"} {
		r := b.do("PATCH", p, "", nil)
		if r.status != http.StatusNotFound || r.errorCode(t) != "NOT_FOUND" || r.header.Get("Allow") != "" {
			t.Errorf("PATCH %s: %d Allow=%q %s, want 404 NOT_FOUND without Allow", p, r.status, r.header.Get("Allow"), r.body)
		}
	}
}

// Every 401 names its scheme (RFC 9110): WWW-Authenticate: Bearer, from the
// JSON API's routes and from the streams alike.
func TestUnauthorizedCarriesWWWAuthenticate(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.adminToken = "admin-secret" })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "hi")
	w := b.mustClaim("r1", rt, 0)
	cases := []struct {
		name, method, path, token string
		body                      any
	}{
		{"admin route, no token", "GET", "/entities", "", nil},
		{"admin route, wrong token", "PUT", "/entities/chat/2", "wrong", map[string]any{}},
		{"runner route, no token", "POST", "/_electric/runners/r1/claim", "", map[string]any{}},
		{"runner route, wrong token", "GET", "/_electric/runners/r1/health", "wrong", nil},
		{"callback, no claim token", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, "", map[string]any{"epoch": w.Epoch}},
		{"callback, wrong claim token", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, rt, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID}},
		{"main stream append, no write token", "POST", w.StreamPath, "", map[string]any{"type": "reply"}},
		{"main stream append, wrong write token", "POST", w.StreamPath, "wrong", map[string]any{"type": "reply"}},
		{"stream create, no admin token", "PUT", "/v1/stream/notes", "", nil},
	}
	for _, c := range cases {
		r := b.do(c.method, c.path, c.token, c.body)
		if r.status != http.StatusUnauthorized {
			t.Errorf("%s: status %d, want 401: %s", c.name, r.status, r.body)
			continue
		}
		if got := r.header.Get("WWW-Authenticate"); got != "Bearer" {
			t.Errorf("%s: WWW-Authenticate %q, want Bearer", c.name, got)
		}
		if code := r.errorCode(t); code != "UNAUTHORIZED" {
			t.Errorf("%s: code %s, want UNAUTHORIZED", c.name, code)
		}
	}
}

// A negative epoch is bad input (400), in a callback body (epoch or its
// alias generation, for every kind of callback) and in the force-release
// path, and changes nothing.
func TestNegativeEpochIs400(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "hi")
	w := b.mustClaim("r1", rt, 0)
	before := b.rowCounts()
	cb := "/_electric/wake-callbacks/" + w.ConsumerID
	cases := []struct {
		name, method, path, token, body string
	}{
		{"done", "POST", cb, w.ClaimToken, `{"epoch": -1, "done": true}`},
		{"done with claim_next", "POST", cb, w.ClaimToken, `{"epoch": -1, "done": true, "claim_next": true}`},
		{"heartbeat", "POST", cb, w.ClaimToken, `{"epoch": -1}`},
		{"claim request", "POST", cb, w.ClaimToken, fmt.Sprintf(`{"epoch": -1, "wake_id": %q}`, w.WakeID)},
		{"generation alias", "POST", cb, w.ClaimToken, `{"generation": -3, "done": true}`},
		{"force release", "POST", fmt.Sprintf("/_electric/claims/%s/-1/release", w.ConsumerID), "", ""},
	}
	for _, c := range cases {
		r := b.do(c.method, c.path, c.token, c.body)
		if r.status != http.StatusBadRequest {
			t.Errorf("%s: status %d, want 400: %s", c.name, r.status, r.body)
			continue
		}
		if code := r.errorCode(t); code != "INVALID_REQUEST" {
			t.Errorf("%s: code %s, want INVALID_REQUEST", c.name, code)
		}
		if !strings.Contains(string(r.body), "epoch") {
			t.Errorf("%s: message does not name the epoch: %s", c.name, r.body)
		}
	}
	if after := b.rowCounts(); after != before {
		t.Fatalf("a negative epoch changed state: %s -> %s", before, after)
	}
	if st := b.claimStatus(w.ConsumerID, w.Epoch); st != "active" {
		t.Fatalf("claim is %s after refused callbacks, want active", st)
	}
}
