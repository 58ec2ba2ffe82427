package server_test

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// rowCounts snapshots every table's row count: bad input must change nothing.
func (b *bundle) rowCounts() string {
	b.t.Helper()
	var s string
	err := b.db.Pool.QueryRow(context.Background(), `SELECT concat_ws(',',
		(SELECT count(*) FROM entities), (SELECT count(*) FROM runners), (SELECT count(*) FROM wakes),
		(SELECT count(*) FROM consumer_claims), (SELECT count(*) FROM stream_messages),
		(SELECT string_agg(status, '') FROM (SELECT status FROM consumer_claims ORDER BY 1) c),
		(SELECT string_agg(status, '') FROM (SELECT status FROM entities ORDER BY 1) e))`).Scan(&s)
	if err != nil {
		b.t.Fatal(err)
	}
	return s
}

func TestBadInputChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 0)
	before := b.rowCounts()

	big := `{"payload": "` + strings.Repeat("x", 1<<20) + `"}`
	cases := []struct {
		name, method, path, token string
		body                      any
		status                    int
		code                      string
	}{
		{"malformed json", "POST", "/entities/chat/1", "", `{"payload": `, 400, "INVALID_REQUEST"},
		{"body not an object", "POST", "/entities/chat/1", "", `[1,2]`, 400, "INVALID_REQUEST"},
		{"missing payload", "POST", "/entities/chat/1", "", `{"from": "me"}`, 400, "INVALID_REQUEST"},
		{"from wrong type", "POST", "/entities/chat/1", "", `{"payload": 1, "from": 5}`, 400, "INVALID_REQUEST"},
		{"oversize body", "POST", "/entities/chat/1", "", big, 413, "PAYLOAD_TOO_LARGE"},
		{"unknown entity send", "POST", "/entities/chat/404", "", `{"payload": 1}`, 404, "ENTITY_NOT_FOUND"},
		{"unknown entity get", "GET", "/entities/chat/404", "", nil, 404, "ENTITY_NOT_FOUND"},
		{"unknown entity stop", "DELETE", "/entities/chat/404", "", nil, 404, "ENTITY_NOT_FOUND"},
		{"sql in entity id", "PUT", "/entities/chat/1';DROP%20TABLE%20entities;--", "", `{}`, 400, "INVALID_REQUEST"},
		{"upper-case type", "PUT", "/entities/Chat/1", "", `{}`, 400, "INVALID_REQUEST"},
		{"type too long", "PUT", "/entities/" + strings.Repeat("a", 65) + "/1", "", `{}`, 400, "INVALID_REQUEST"},
		{"id too long", "PUT", "/entities/chat/" + strings.Repeat("a", 129), "", `{}`, 400, "INVALID_REQUEST"},
		{"runner_id wrong type", "PUT", "/entities/chat/9", "", `{"runner_id": 7}`, 400, "INVALID_REQUEST"},
		{"runner_id bad chars", "PUT", "/entities/chat/9", "", `{"runner_id": "a b"}`, 400, "INVALID_REQUEST"},
		{"existing entity", "PUT", "/entities/chat/1", "", `{}`, 409, "ENTITY_EXISTS"},
		{"runner without id", "POST", "/_electric/runners", "", `{"label": "x"}`, 400, "INVALID_REQUEST"},
		{"runner id sql", "POST", "/_electric/runners", "", `{"id": "r'; DELETE FROM runners; --"}`, 400, "INVALID_REQUEST"},
		{"lease too short", "POST", "/_electric/runners/r1/claim", rt, `{"lease_ttl_ms": 999}`, 400, "INVALID_REQUEST"},
		{"lease too long", "POST", "/_electric/runners/r1/claim", rt, `{"lease_ttl_ms": 600001}`, 400, "INVALID_REQUEST"},
		{"lease wrong type", "POST", "/_electric/runners/r1/claim", rt, `{"lease_ttl_ms": "30s"}`, 400, "INVALID_REQUEST"},
		{"unknown runner, another runner's token", "POST", "/_electric/runners/nobody/claim", rt, `{}`, 401, "UNAUTHORIZED"},
		{"no runner token", "POST", "/_electric/runners/r1/claim", "", `{}`, 401, "UNAUTHORIZED"},
		{"wrong runner token", "POST", "/_electric/runners/r1/claim", "nope", `{}`, 401, "UNAUTHORIZED"},
		{"epoch wrong type", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, w.ClaimToken, `{"epoch": "1", "done": true}`, 400, "INVALID_REQUEST"},
		{"epoch missing", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, w.ClaimToken, `{"done": true}`, 400, "INVALID_REQUEST"},
		{"acks wrong type", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, w.ClaimToken, fmt.Sprintf(`{"epoch": %d, "done": true, "acks": {"a": 1}}`, w.Epoch), 400, "INVALID_REQUEST"},
		{"ack without offset", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, w.ClaimToken, fmt.Sprintf(`{"epoch": %d, "done": true, "acks": [{"stream": "x"}]}`, w.Epoch), 400, "INVALID_REQUEST"},
		{"ack bad offset", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, w.ClaimToken, fmt.Sprintf(`{"epoch": %d, "done": true, "acks": [{"stream": %q, "offset": "1';--"}]}`, w.Epoch, w.StreamPath), 400, "INVALID_REQUEST"},
		{"unknown claim", "POST", "/_electric/wake-callbacks/wake-999", w.ClaimToken, `{"epoch": 1, "done": true}`, 404, "CLAIM_NOT_FOUND"},
		{"unknown epoch", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, w.ClaimToken, `{"epoch": 99, "done": true}`, 404, "CLAIM_NOT_FOUND"},
		{"no claim token", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, "", fmt.Sprintf(`{"epoch": %d, "done": true}`, w.Epoch), 401, "UNAUTHORIZED"},
		{"wrong claim token", "POST", "/_electric/wake-callbacks/" + w.ConsumerID, rt, fmt.Sprintf(`{"epoch": %d, "done": true}`, w.Epoch), 401, "UNAUTHORIZED"},
		{"bad list status", "GET", "/entities?status=zombie", "", nil, 400, "INVALID_REQUEST"},
		{"bad claims status", "GET", "/_electric/claims?status=zombie", "", nil, 400, "INVALID_REQUEST"},
		{"bad release epoch", "POST", "/_electric/claims/" + w.ConsumerID + "/x/release", "", nil, 400, "INVALID_REQUEST"},
		{"unknown release", "POST", "/_electric/claims/wake-999/1/release", "", nil, 404, "CLAIM_NOT_FOUND"},
		{"heartbeat lease bad", "POST", "/_electric/runners/r1/heartbeat", rt, `{"lease_ms": -5}`, 400, "INVALID_REQUEST"},
		{"unknown route", "GET", "/_electric/nope", "", nil, 404, "NOT_FOUND"},
		{"no stream at a root path", "GET", "/nope", "", nil, 404, "STREAM_NOT_FOUND"},
	}
	for _, c := range cases {
		r := b.do(c.method, c.path, c.token, c.body)
		if r.status != c.status {
			t.Errorf("%s: status %d, want %d: %.200s", c.name, r.status, c.status, r.body)
			continue
		}
		if code := r.errorCode(t); code != c.code {
			t.Errorf("%s: code %s, want %s", c.name, code, c.code)
		}
	}
	if after := b.rowCounts(); after != before {
		t.Fatalf("bad input changed state: %s -> %s", before, after)
	}
}

func TestAdminTokenGuardsManagementRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.adminToken = "admin-secret" })
	for _, tok := range []string{"", "wrong"} {
		r := b.do("PUT", "/entities/chat/1", tok, map[string]any{})
		if r.status != 401 || r.errorCode(t) != "UNAUTHORIZED" {
			t.Fatalf("spawn with token %q: %d", tok, r.status)
		}
		if r := b.do("POST", "/_electric/runners", tok, map[string]any{"id": "r1"}); r.status != 401 {
			t.Fatalf("register with token %q: %d", tok, r.status)
		}
		if r := b.do("GET", "/_electric/claims", tok, nil); r.status != 401 {
			t.Fatalf("claims with token %q: %d", tok, r.status)
		}
	}
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	// The runner's own token works on its routes, the admin token too.
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", rt, map[string]any{"lease_ms": 5000}))
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", "admin-secret", nil))
	// A runner token is not an admin token.
	if r := b.do("GET", "/_electric/runners", rt, nil); r.status != 401 {
		t.Fatalf("runner token on admin route: %d", r.status)
	}
	list := b.must(200, b.do("GET", "/_electric/runners", "admin-secret", nil))
	if strings.Contains(string(list.body), "runner_token") || strings.Contains(string(list.body), "token_hash") {
		t.Fatalf("runner list leaks a token: %s", list.body)
	}
	// Another runner's token does not open r1's routes.
	rt2 := b.registerRunner("r2")
	if r := b.do("POST", "/_electric/runners/r1/claim", rt2, nil); r.status != 401 {
		t.Fatalf("r2's token on r1's claim: %d", r.status)
	}
}

func TestStopAndStatusGuards(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/idle")
	b.spawn("/chat/busy")

	// Stopping an idle entity stops it at once.
	r := b.must(200, b.do("DELETE", "/entities/chat/idle", "", nil)).json(t)
	if r["status"] != "stopped" {
		t.Fatalf("stop idle: %v", r["status"])
	}
	if r := b.do("POST", "/entities/chat/idle", "", map[string]any{"payload": 1}); r.status != 409 || r.errorCode(t) != "ENTITY_STOPPED" {
		t.Fatalf("send to stopped: %d %s", r.status, r.body)
	}

	// Stopping a running one waits for its claim to end.
	b.send("/chat/busy", "work")
	w := b.mustClaim("r1", rt, 0)
	r = b.must(200, b.do("DELETE", "/entities/chat/busy", "", nil)).json(t)
	if r["status"] != "stopping" {
		t.Fatalf("stop running: %v", r["status"])
	}
	if r := b.do("POST", "/entities/chat/busy", "", map[string]any{"payload": 1}); r.status != 409 {
		t.Fatalf("send to stopping: %d", r.status)
	}
	// The runner may still finish its writes while stopping.
	b.must(204, b.appendMain(w, w.WriteToken, map[string]any{"last": "words"}))
	d := b.must(200, b.done(w)).json(t)
	if d["entity_status"] != "stopped" {
		t.Fatalf("done of a stopping entity: %v", d)
	}
	// A repeated done never turns stopped back into idle; nothing is claimable.
	b.must(200, b.done(w))
	if e := b.entity("/chat/busy"); e["status"] != "stopped" {
		t.Fatalf("entity %v after repeated done", e["status"])
	}
	if _, ok := b.claim("r1", rt, 0); ok {
		t.Fatal("claimed work of a stopped entity")
	}
	// Stopped entity's stream refuses appends (the token is gone anyway).
	if r := b.appendMain(w, w.WriteToken, map[string]any{"x": 1}); r.status != 401 {
		t.Fatalf("append after stop: %d", r.status)
	}
}

func TestSingleFlightAndRequeue(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	rt2 := b.registerRunner("r2")
	b.spawn("/chat/1")
	b.send("/chat/1", "one")
	w := b.mustClaim("r1", rt, 0)
	// A send during the live claim queues nothing; no other runner gets it.
	second := b.send("/chat/1", "two")
	if _, ok := b.claim("r2", rt2, 0); ok {
		t.Fatal("second claim while the first is live")
	}
	// Done acking only the first message re-queues a wake for the second.
	first := w.Streams[0].Offset
	if first != "0000000000000000" {
		t.Fatalf("resume offset %s", first)
	}
	r := b.must(200, b.done(w, map[string]any{"stream": w.StreamPath, "offset": "0000000000000001"})).json(t)
	if r["entity_cleared"] != true || r["acked_offset"] != "0000000000000001" {
		t.Fatalf("done: %v", r)
	}
	w2 := b.mustClaim("r2", rt2, 0)
	if w2.Epoch != w.Epoch+1 || w2.Streams[0].Offset != "0000000000000001" {
		t.Fatalf("requeued claim: epoch %d offset %s", w2.Epoch, w2.Streams[0].Offset)
	}
	// path is accepted for stream; acked_offset never moves backwards.
	r = b.must(200, b.done(w2, map[string]any{"path": w2.StreamPath, "offset": second})).json(t)
	if r["acked_offset"] != second {
		t.Fatalf("ack via path: %v", r)
	}
	if _, ok := b.claim("r1", rt, 0); ok {
		t.Fatal("work left after everything was acked")
	}
}

func TestHeartbeatCallback(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 2000)
	r := b.must(200, b.callback(w, w.ClaimToken, map[string]any{"epoch": w.Epoch, "lease_ttl_ms": 60000})).json(t)
	exp, err := time.Parse(time.RFC3339Nano, r["lease_expires_at"].(string))
	if err != nil || !exp.After(w.LeaseExpiresAt.Add(30*time.Second)) {
		t.Fatalf("heartbeat lease %v (was %v)", r["lease_expires_at"], w.LeaseExpiresAt)
	}
	e := b.entity("/chat/1")["dispatch"].(map[string]any)
	if got, _ := time.Parse(time.RFC3339Nano, e["active_lease_expires_at"].(string)); !got.Equal(exp) {
		t.Fatalf("dispatch lease %v, claim lease %v", e["active_lease_expires_at"], exp)
	}
	b.must(200, b.done(w))
	hb := b.callback(w, w.ClaimToken, map[string]any{"epoch": w.Epoch})
	if hb.status != 409 || hb.errorCode(t) != "CLAIM_NOT_ACTIVE" {
		t.Fatalf("heartbeat after done: %d %s", hb.status, hb.body)
	}
}

func TestDisabledRunnerAndForceRelease(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	b.must(200, b.do("POST", "/_electric/runners/r1/disable", "", nil))
	if r := b.do("POST", "/_electric/runners/r1/claim", rt, nil); r.status != 409 || r.errorCode(t) != "RUNNER_DISABLED" {
		t.Fatalf("claim by disabled runner: %d %s", r.status, r.body)
	}
	h := b.health("r1", rt)
	if h["health"].(map[string]any)["status"] == "healthy" {
		t.Fatalf("disabled runner reported healthy: %v", h["health"])
	}
	b.must(200, b.do("POST", "/_electric/runners/r1/enable", "", nil))
	w := b.mustClaim("r1", rt, 0)

	list := b.must(200, b.do("GET", "/_electric/claims?status=active&runner_id=r1&entity_url=/chat/1", "", nil))
	var claims []map[string]any
	if err := jsonUnmarshal(list.body, &claims); err != nil || len(claims) != 1 || claims[0]["consumer_id"] != w.ConsumerID {
		t.Fatalf("active claims: %s", list.body)
	}
	r := b.must(200, b.do("POST", fmt.Sprintf("/_electric/claims/%s/%d/release", w.ConsumerID, w.Epoch), "", nil)).json(t)
	if r["released"] != true || r["entity_cleared"] != true || r["entity_status"] != "idle" {
		t.Fatalf("force release: %v", r)
	}
	// The operator's release dropped the token at once (same process).
	if r := b.appendMain(w, w.WriteToken, map[string]any{"x": 1}); r.status != 401 {
		t.Fatalf("append after force release: %d", r.status)
	}
	// The runner's done after that is a harmless no-op.
	d := b.must(200, b.done(w)).json(t)
	if d["released"] != false || d["claim_status"] != "released" {
		t.Fatalf("done after force release: %v", d)
	}
}

// A leaked claim (active, not named by any slot) shows in health as degraded.
func TestHealthReportsLeakedClaim(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 0)
	h := b.health("r1", rt)
	if h["health"].(map[string]any)["status"] != "healthy" || activeCount(h) != 1 {
		t.Fatalf("health with one good claim: %v", h)
	}
	// Corrupt the slot the way the modelled bug did: the claim stays active
	// while nothing names it.
	if _, err := b.db.Pool.Exec(context.Background(), `UPDATE entity_dispatch_state
		SET active_consumer_id = NULL, active_epoch = NULL, active_lease_expires_at = NULL`); err != nil {
		t.Fatal(err)
	}
	h = b.health("r1", rt)
	hh := h["health"].(map[string]any)
	issues := hh["issues"].([]any)
	if hh["status"] != "degraded" || len(issues) != 1 || !strings.Contains(issues[0].(string), w.ConsumerID) {
		t.Fatalf("health with a leaked claim: %v", hh)
	}
}

func TestClaimNextInDone(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	for i := 1; i <= 2; i++ {
		b.spawn(fmt.Sprintf("/chat/%d", i))
		b.send(fmt.Sprintf("/chat/%d", i), i)
	}
	w := b.mustClaim("r1", rt, 0)
	r := b.must(200, b.callback(w, w.ClaimToken, map[string]any{"epoch": w.Epoch, "done": true, "claim_next": true,
		"acks": []any{map[string]any{"stream": w.StreamPath, "offset": "0000000000000001"}}})).json(t)
	next, ok := r["next"].(map[string]any)
	if r["released"] != true || r["entity_cleared"] != true || !ok {
		t.Fatalf("done+claim_next: %v", r)
	}
	if next["entity_url"] == w.EntityURL || next["write_token"] == "" || next["claim_token"] == "" {
		t.Fatalf("next wake: %v", next)
	}
	nw := wake{EntityURL: next["entity_url"].(string), ConsumerID: next["consumer_id"].(string), Epoch: int64(next["epoch"].(float64)),
		StreamPath: next["stream_path"].(string), ClaimToken: next["claim_token"].(string)}
	b.must(204, b.appendMain(nw, next["write_token"].(string), map[string]any{"via": "claim_next"}))
	// Without an ack the sent message is still pending: claim_next hands
	// the same entity straight back (no sent message is left without a wake).
	r = b.must(200, b.callback(nw, nw.ClaimToken, map[string]any{"epoch": nw.Epoch, "done": true, "claim_next": true})).json(t)
	again, ok := r["next"].(map[string]any)
	if !ok || again["entity_url"] != nw.EntityURL {
		t.Fatalf("unacked done+claim_next: %v", r)
	}
	nw = wake{EntityURL: nw.EntityURL, ConsumerID: again["consumer_id"].(string), Epoch: int64(again["epoch"].(float64)),
		StreamPath: again["stream_path"].(string), ClaimToken: again["claim_token"].(string)}
	r = b.must(200, b.callback(nw, nw.ClaimToken, map[string]any{"epoch": nw.Epoch, "done": true, "claim_next": true,
		"acks": []any{map[string]any{"stream": nw.StreamPath, "offset": "0000000000000002"}}})).json(t)
	if r["released"] != true || r["next"] != nil {
		t.Fatalf("last done+claim_next: %v", r)
	}
	if n := activeCount(b.health("r1", rt)); n != 0 {
		t.Fatalf("active claims: %v", n)
	}
}

// A release from psql reaches the server's memory through LISTEN/NOTIFY.
func TestOutOfBandReleaseDropsToken(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.listen = true })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 0)
	b.must(204, b.appendMain(w, w.WriteToken, map[string]any{"x": 1}))
	if _, err := b.db.Pool.Exec(context.Background(), "SELECT * FROM release_claim($1, $2)", w.ConsumerID, w.Epoch); err != nil {
		t.Fatal(err)
	}
	eventually(t, time.Second, "psql release drops the write token", func() bool {
		return b.appendMain(w, w.WriteToken, map[string]any{"x": 2}).status == http.StatusUnauthorized
	})
}

// A done on one server reaches another server's memory: the releasing
// server publishes the claim's end after the commit (release_claim itself
// does not notify when the server asks it not to).
func TestReleaseOnOneServerDropsTokenOnAnother(t *testing.T) {
	t.Parallel()
	a := setup(t, func(o *options) { o.listen = true; o.publish = true })
	b := startOn(t, a.db, func(o *options) { o.listen = true; o.publish = true })
	rt := a.registerRunner("r1")
	a.spawn("/chat/1")
	a.send("/chat/1", "x")
	w := a.mustClaim("r1", rt, 0)
	// The runner re-mints on server b (say, behind a load balancer).
	r := b.must(200, b.callback(w, w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID})).json(t)
	tokB := r["write_token"].(string)
	b.must(204, b.appendMain(w, tokB, map[string]any{"on": "b"}))
	a.must(200, a.done(w))
	eventually(t, time.Second, "the release on a drops b's token", func() bool {
		return b.appendMain(w, tokB, map[string]any{"x": 1}).status == http.StatusUnauthorized
	})
}
