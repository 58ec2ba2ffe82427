package server_test

// Electric compatibility over HTTP (SPEC §7): runner restart, wake stream
// routes and their auth, claim from an event, camelCase notification
// fields, entity types, the /_electric/entities routes.

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/server/sweeper"
)

const electricAdmin = "admin-secret"

func withElectricAdmin(o *options) { o.adminToken = electricAdmin }

func TestRunnerRestartRotatesToken(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	r := b.must(201, b.do("POST", "/_electric/runners", electricAdmin, map[string]any{"id": "r1", "label": "one", "kind": "local"}))
	first := r.json(t)
	if first["wake_stream"] != "/v1/stream/runners/r1/wake" || first["wake_stream_offset"] != "0000000000000000" {
		t.Fatalf("registration: %s", r.body)
	}
	tok1 := first["runner_token"].(string)
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", tok1, 0)
	b.must(401, b.do("POST", "/_electric/runners/r1/disable", tok1, nil)) // runner token is not admin
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", tok1, map[string]any{}))

	r = b.must(200, b.do("POST", "/_electric/runners", electricAdmin, map[string]any{"id": "r1"}))
	second := r.json(t)
	tok2, _ := second["runner_token"].(string)
	if tok2 == "" || tok2 == tok1 || second["label"] != "one" || second["kind"] != "local" || second["wake_stream"] != "/v1/stream/runners/r1/wake" {
		t.Fatalf("restart: %s", r.body)
	}
	if c := b.do("POST", "/_electric/runners/r1/heartbeat", tok1, map[string]any{}); c.status != 401 {
		t.Fatalf("old token after restart: %d %s", c.status, c.body)
	}
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", tok2, map[string]any{}))
	if s := b.claimStatus(w.ConsumerID, w.Epoch); s != "active" {
		t.Fatalf("claim after restart: %s", s)
	}
	// GET answers the wake stream and its offset too (the claimed wake's
	// event is behind it: the offset is the tail).
	g := b.must(200, b.do("GET", "/_electric/runners/r1", electricAdmin, nil)).json(t)
	if g["wake_stream"] != "/v1/stream/runners/r1/wake" || g["wake_stream_offset"] != "0000000000000001" || g["runner_token"] != nil {
		t.Fatalf("runner GET: %v", g)
	}
}

func TestWakeStreamRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	tok := b.registerRunner("r1")
	tok2 := b.registerRunner("r2")
	b.must(201, b.do("PUT", "/entities/chat/1", electricAdmin, map[string]any{"runner_id": "r1"}))
	b.send("/chat/1", "x")

	for _, path := range []string{"/runners/r1/wake", "/v1/stream/runners/r1/wake"} {
		for _, c := range []struct {
			token string
			want  int
		}{{"", 401}, {"nope", 401}, {tok2, 401}, {tok, 200}, {electricAdmin, 200}} {
			r := b.do("GET", path+"?offset=-1", c.token, nil)
			if r.status != c.want {
				t.Fatalf("GET %s with %q: %d %s, want %d", path, c.token, r.status, r.body, c.want)
			}
			if c.want == 200 {
				var evs []map[string]any
				if err := json.Unmarshal(r.body, &evs); err != nil || len(evs) != 1 || evs[0]["type"] != "wake" ||
					evs[0]["subscription_id"] != "runner:r1" || evs[0]["stream"] != "/v1/stream/chat/1/main" ||
					evs[0]["generation"] != float64(1) || r.header.Get("Stream-Next-Offset") != "0000000000000001" {
					t.Fatalf("GET %s: %s %v", path, r.body, r.header)
				}
			}
		}
		if r := b.do("HEAD", path, tok, nil); r.status != 200 {
			t.Fatalf("HEAD %s: %d", path, r.status)
		}
		for _, m := range []string{"PUT", "POST", "DELETE"} {
			if r := b.do(m, path, electricAdmin, `[{"type":"wake"}]`); r.status != 403 || r.errorCode(t) != "FORBIDDEN" {
				t.Fatalf("%s %s: %d %s, want 403", m, path, r.status, r.body)
			}
		}
	}
	// Another runner's token learns nothing of an unknown runner: 401, as on
	// every runner route; the admin token is told it does not exist.
	if r := b.do("GET", "/runners/nobody/wake?offset=-1", tok, nil); r.status != 401 {
		t.Fatalf("unknown runner, another runner's token: %d %s", r.status, r.body)
	}
	if r := b.do("GET", "/runners/nobody/wake?offset=-1", electricAdmin, nil); r.status != 404 {
		t.Fatalf("unknown runner, admin token: %d %s", r.status, r.body)
	}
	if r := b.do("GET", "/runners/a%20b/wake?offset=-1", tok, nil); r.status != 400 {
		t.Fatalf("bad runner id: %d %s", r.status, r.body)
	}
	// Still one event: refused writes changed nothing.
	r := b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", tok, nil))
	if evs := decodeEvents(t, r.body); len(evs) != 1 || evs[0]["type"] != "wake" {
		t.Fatalf("wake stream after refused writes: %s", r.body)
	}
}

// A long-poll of the wake stream wakes on a send through the API.
func TestWakeStreamLongPoll(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin, func(o *options) { o.listen = true })
	tok := b.registerRunner("r1")
	b.spawn("/chat/1")
	got := make(chan resp, 1)
	go func() {
		// The event is published after the send's commit, behind the
		// snapshot fence: a transaction elsewhere on the cluster may hold
		// it past one long-poll (1 s here), so a reader polls again, as a
		// runtime does.
		for {
			r := b.do("GET", "/runners/r1/wake?offset=0000000000000000&live=long-poll", tok, nil)
			if r.status != 204 {
				got <- r
				return
			}
		}
	}()
	b.must(202, b.do("POST", "/entities/chat/1", b.admin, map[string]any{"payload": "x"}))
	sent := time.Now()
	select {
	case r := <-got:
		if r.status != 200 || len(decodeEvents(t, r.body)) != 1 || decodeEvents(t, r.body)[0]["stream"] != "/v1/stream/chat/1/main" {
			t.Fatalf("long-poll: %d %s", r.status, r.body)
		}
		// Logged, not asserted: the send's answer to the event in the
		// long-poll's answer (publish after the commit, then the wake of
		// the server's readers).
		t.Logf("the event reached the long-poll %v after the send was answered", time.Since(sent))
	case <-time.After(time.Minute):
		t.Fatal("long-poll did not return the event within a minute")
	}
}

func TestClaimFromEventAndNotificationShape(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	tok := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	ev := b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", tok, nil)).body
	event := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(string(ev)), "["), "]")

	for _, bad := range []string{
		`{"type":"wake","subscription_id":"runner:r2","stream":"/v1/stream/chat/1/main","generation":1,"ts":1}`,
		`{"type":"other","subscription_id":"runner:r1"}`,
		`{"type":"wake","stream":"chat/1"}`,
		`{"type":"wake","generation":-1}`,
		`{"type":"wake","ts":{}}`,
		`{"type":"wake","generation":"one"}`,
	} {
		if r := b.do("POST", "/_electric/runners/r1/claim", tok, bad); r.status != 400 || r.errorCode(t) != "INVALID_REQUEST" {
			t.Fatalf("claim with %s: %d %s, want 400", bad, r.status, r.body)
		}
	}
	r := b.must(200, b.do("POST", "/_electric/runners/r1/claim", tok, event))
	n := r.json(t)
	for snake, camel := range map[string]string{"wake_id": "wakeId", "consumer_id": "consumerId", "stream_path": "streamPath",
		"claim_token": "claimToken", "write_token": "writeToken", "lease_expires_at": "leaseExpiresAt"} {
		if n[snake] == nil || n[snake] == "" || n[camel] != n[snake] {
			t.Fatalf("%s %v / %s %v: %s", snake, n[snake], camel, n[camel], r.body)
		}
	}
	ent, _ := n["entity"].(map[string]any)
	streams, _ := ent["streams"].(map[string]any)
	if ent["type"] != "chat" || ent["url"] != "/chat/1" || ent["status"] != "running" || streams["main"] != "/v1/stream/chat/1/main" {
		t.Fatalf("entity: %v", n["entity"])
	}
	// The same event again: its wake is claimed, nothing else queued: 204.
	if r := b.do("POST", "/_electric/runners/r1/claim", tok, event); r.status != 204 {
		t.Fatalf("second claim of the event: %d %s", r.status, r.body)
	}
	// The callback's claim request answers writeToken too.
	cb := b.do("POST", "/_electric/wake-callbacks/"+n["wakeId"].(string), n["claimToken"].(string),
		map[string]any{"epoch": n["epoch"], "wakeId": n["wakeId"]})
	ans := b.must(200, cb).json(t)
	if ans["writeToken"] == nil || ans["writeToken"] != ans["write_token"] {
		t.Fatalf("claim request answer: %s", cb.body)
	}
}

func TestEntityTypes(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	body := map[string]any{"name": "chat", "description": "a chat", "creation_schema": map[string]any{"type": "object"},
		"inbox_schemas": map[string]any{"msg": map[string]any{"type": "string"}}, "state_schemas": map[string]any{"reply": map[string]any{}},
		"default_dispatch_policy": map[string]any{"targets": []any{map[string]any{"type": "runner", "runnerId": "r-7"}}}}
	if r := b.do("POST", "/_electric/entity-types", "", body); r.status != 401 {
		t.Fatalf("without admin token: %d", r.status)
	}
	r := b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, body))
	got := r.json(t)
	if got["name"] != "chat" || got["description"] != "a chat" || got["inbox_schemas"].(map[string]any)["msg"] == nil {
		t.Fatalf("created: %s", r.body)
	}
	body["description"] = "changed"
	if again := b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, body)).json(t); again["revision"] != float64(2) {
		t.Fatalf("a second registration is revision 2: %v", again["revision"])
	}
	one := b.must(200, b.do("GET", "/_electric/entity-types/chat", electricAdmin, nil)).json(t)
	if one["description"] != "changed" || one["default_dispatch_policy"] == nil {
		t.Fatalf("get: %v", one)
	}
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, map[string]any{"name": "mail"}))
	var list []map[string]any
	if err := json.Unmarshal(b.must(200, b.do("GET", "/_electric/entity-types", electricAdmin, nil)).body, &list); err != nil ||
		len(list) != 2 || list[0]["name"] != "chat" || list[1]["name"] != "mail" || list[1]["creation_schema"] != nil {
		t.Fatalf("list: %v %v", list, err)
	}

	// Spawn without runner_id takes the type's runner target, under both prefixes.
	e := b.must(201, b.do("PUT", "/_electric/entities/chat/1", electricAdmin, map[string]any{})).json(t)
	if e["runner_id"] != "r-7" || e["type"] != "chat" || e["streams"].(map[string]any)["main"] != "/chat/1/main" || e["main_stream"] != "/v1/stream/chat/1/main" {
		t.Fatalf("spawn: %v", e)
	}
	if e := b.must(201, b.do("PUT", "/entities/chat/2", electricAdmin, map[string]any{"runner_id": "mine"})).json(t); e["runner_id"] != "mine" {
		t.Fatalf("spawn naming a runner: %v", e)
	}

	for _, bad := range []any{
		map[string]any{"description": "no name"},
		map[string]any{"name": "Chat"},
		map[string]any{"name": "chat", "description": 5},
		map[string]any{"name": "chat", "inbox_schemas": []any{1}},
		map[string]any{"name": "chat", "default_dispatch_policy": map[string]any{"targets": []any{map[string]any{"type": "runner"}}}},
		map[string]any{"name": "chat", "default_dispatch_policy": map[string]any{"targets": []any{map[string]any{"type": "runner", "runnerId": "a b"}}}},
		map[string]any{"name": "chat", "default_dispatch_policy": map[string]any{"targets": "x"}},
		map[string]any{"name": "chat", "default_dispatch_policy": map[string]any{"targets": []any{7}}},
	} {
		if r := b.do("POST", "/_electric/entity-types", electricAdmin, bad); r.status != 400 || r.errorCode(t) != "INVALID_REQUEST" {
			t.Fatalf("bad type %v: %d %s", bad, r.status, r.body)
		}
	}
	if one := b.must(200, b.do("GET", "/_electric/entity-types/chat", electricAdmin, nil)).json(t); one["description"] != "changed" {
		t.Fatalf("bad input changed the type: %v", one)
	}
	b.must(200, b.do("DELETE", "/_electric/entity-types/chat", electricAdmin, nil))
	if r := b.do("DELETE", "/_electric/entity-types/chat", electricAdmin, nil); r.status != 404 || r.errorCode(t) != "ENTITY_TYPE_NOT_FOUND" {
		t.Fatalf("second delete: %d %s", r.status, r.body)
	}
	if r := b.do("GET", "/_electric/entity-types/chat", electricAdmin, nil); r.status != 404 {
		t.Fatalf("get deleted: %d", r.status)
	}
	if r := b.do("GET", "/_electric/entity-types/Bad", electricAdmin, nil); r.status != 400 {
		t.Fatalf("bad name: %d", r.status)
	}
}

// Electric's agents UI shows "Cannot reach" until GET /_electric/health is
// 200; it sends no credentials.
func TestElectricHealth(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	if got := b.must(200, b.do("GET", "/_electric/health", "", nil)).json(t); got["status"] != "ok" {
		t.Fatalf("health: %v", got)
	}
}

func TestElectricEntityRoutes(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	tok := b.registerRunner("r1")
	// Electric's prefix spawns registered types only.
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, map[string]any{"name": "chat"}))
	b.must(201, b.do("PUT", "/_electric/entities/chat/1", electricAdmin, map[string]any{"runner_id": "r1"}))
	b.must(201, b.do("PUT", "/_electric/entities/chat/2", electricAdmin, map[string]any{"runner_id": "r1"}))
	if r := b.do("PUT", "/_electric/entities/chat/1", electricAdmin, map[string]any{}); r.status != 409 || r.errorCode(t) != "DUPLICATE_URL" {
		t.Fatalf("spawn twice: %d %s", r.status, r.body)
	}
	for _, c := range []struct {
		method, path string
		status       int
		code         string
	}{
		{"GET", "/_electric/entities/chat/404", 404, "NOT_FOUND"},
		{"POST", "/_electric/entities/chat/404/send", 404, "NOT_FOUND"},
		{"DELETE", "/_electric/entities/chat/404", 404, "NOT_FOUND"},
		{"GET", "/_electric/entities/ghost/404", 404, "UNKNOWN_ENTITY_TYPE"},
		{"PUT", "/_electric/entities/Chat/1", 400, "INVALID_REQUEST"},
	} {
		if r := b.do(c.method, c.path, electricAdmin, map[string]any{"payload": 1}); r.status != c.status || r.errorCode(t) != c.code {
			t.Fatalf("%s %s: %d %s", c.method, c.path, r.status, r.body)
		}
	}
	// Send, as the admin: 200 with the offset; from_agent names the sender.
	r := b.must(200, b.do("POST", "/_electric/entities/chat/1/send", electricAdmin, map[string]any{"payload": "hi", "from_agent": "/chat/9"}))
	if r.json(t)["offset"] != "0000000000000001" {
		t.Fatalf("send: %s", r.body)
	}
	w := b.mustClaim("r1", tok, 0)
	msgs := b.must(200, b.do("GET", "/v1/stream/chat/1/main?offset=-1", "", nil))
	inbox := decodeEvents(t, msgs.body)
	if len(inbox) != 1 || inbox[0]["value"].(map[string]any)["from"] != "/chat/9" || !strings.HasPrefix(inbox[0]["key"].(string), "msg-in-") {
		t.Fatalf("inbox event: %s", msgs.body)
	}
	// A handler's send to another entity: its own write token, from_agent itself.
	if r := b.do("POST", "/_electric/entities/chat/2/send", w.WriteToken, map[string]any{"payload": "x", "from_agent": "/chat/2"}); r.status != 401 {
		t.Fatalf("write token of another entity: %d %s", r.status, r.body)
	}
	if r := b.do("POST", "/_electric/entities/chat/2/send", "nope", map[string]any{"payload": "x", "from_agent": "/chat/1"}); r.status != 401 {
		t.Fatalf("wrong token: %d %s", r.status, r.body)
	}
	b.must(200, b.do("POST", "/_electric/entities/chat/2/send", w.WriteToken, map[string]any{"payload": "x", "from_agent": "/chat/1"}))
	b.must(200, b.do("POST", "/_electric/entities/chat/2/send", "", map[string]any{"payload": "y", "from_agent": "/chat/1"},
		"electric-claim-token", w.WriteToken))
	// Once the claim ends its write token no longer sends.
	b.must(200, b.done(w, map[string]any{"path": w.StreamPath, "offset": "0000000000000001"}))
	if r := b.do("POST", "/_electric/entities/chat/2/send", w.WriteToken, map[string]any{"payload": "x", "from_agent": "/chat/1"}); r.status != 401 {
		t.Fatalf("ended claim's write token: %d %s", r.status, r.body)
	}
	g := b.must(200, b.do("GET", "/_electric/entities/chat/2", electricAdmin, nil)).json(t)
	if g["dispatch"].(map[string]any)["last_sent_offset"] != "0000000000000002" || g["type"] != "chat" {
		t.Fatalf("get: %v", g)
	}
	k := b.must(200, b.do("DELETE", "/_electric/entities/chat/2", electricAdmin, nil)).json(t)
	if k["status"] != "killed" {
		t.Fatalf("kill: %v", k)
	}
	if r := b.do("POST", "/_electric/entities/chat/2/send", electricAdmin, map[string]any{"payload": 1}); r.status != 409 || r.errorCode(t) != "NOT_RUNNING" {
		t.Fatalf("send to stopped: %d %s", r.status, r.body)
	}
}

// decodeEvents decodes a JSON stream read.
func decodeEvents(t *testing.T, body []byte) []map[string]any {
	t.Helper()
	var evs []map[string]any
	if err := json.Unmarshal(body, &evs); err != nil {
		t.Fatalf("stream read %q: %v", body, err)
	}
	return evs
}

// The sweeper's retention pass trims the events of finished wakes.
func TestSweeperPurgesWakeEvents(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	tok := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", tok, 0)
	b.must(200, b.done(w, map[string]any{"stream": w.StreamPath, "offset": "0000000000000001"}))
	b.send("/chat/1", "y") // a second event: the stream's newest is never trimmed
	sw := sweeper.New(sweeper.Config{Pool: b.pool, Retention: time.Hour})
	now := time.Now()
	if n, err := sw.PurgeWakeEvents(t.Context(), &now); err != nil || n != 0 {
		t.Fatalf("purge within retention: %d %v", n, err)
	}
	later := now.Add(2 * time.Hour)
	if n, err := sw.PurgeWakeEvents(t.Context(), &later); err != nil || n != 1 {
		t.Fatalf("purge past retention: %d %v, want the finished wake's event", n, err)
	}
	evs := decodeEvents(t, b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", tok, nil)).body)
	if len(evs) != 1 || evs[0]["generation"] != float64(2) {
		t.Fatalf("wake stream after purge: %v", evs)
	}
}

// An event claims the wake of the entity it names and nothing else, even
// when an older wake is claimable (wake-event rule): a runner that claims
// once per event would otherwise spend the event on another wake.
func TestEventClaimNamesItsEntity(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	tok := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.spawn("/chat/2")
	b.send("/chat/1", "older")
	b.send("/chat/2", "newer")
	ev := func(url string) string {
		return `{"type":"wake","subscription_id":"runner:r1","stream":"/v1/stream` + url + `/main","generation":1,"ts":1}`
	}
	n := b.must(200, b.do("POST", "/_electric/runners/r1/claim", tok, ev("/chat/2"))).json(t)
	if n["entity_url"] != "/chat/2" {
		t.Fatalf("event for /chat/2 claimed %v", n["entity_url"])
	}
	// /chat/2 is claimed: its event again is 204, and /chat/1's wake is
	// left for /chat/1's event.
	if r := b.do("POST", "/_electric/runners/r1/claim", tok, ev("/chat/2")); r.status != 204 {
		t.Fatalf("event of a claimed entity: %d %s", r.status, r.body)
	}
	if n := b.must(200, b.do("POST", "/_electric/runners/r1/claim", tok, ev("/chat/1"))).json(t); n["entity_url"] != "/chat/1" {
		t.Fatalf("event for /chat/1 claimed %v", n["entity_url"])
	}
}

// The heartbeat's wake_stream_offset is stored as the runner's read
// position (the wake-event backstop reads it); a malformed one is a 400.
func TestRunnerHeartbeatWakeStreamOffset(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	tok := b.registerRunner("r1")
	read := func() *int64 {
		var seq *int64
		if err := b.db.Pool.QueryRow(context.Background(), `SELECT wake_stream_read_seq FROM runners WHERE id = 'r1'`).Scan(&seq); err != nil {
			t.Fatal(err)
		}
		return seq
	}
	for _, bad := range []any{"abc", "12", 7, "0000000000000001_0"} {
		if r := b.do("POST", "/_electric/runners/r1/heartbeat", tok, map[string]any{"wake_stream_offset": bad}); r.status != 400 {
			t.Fatalf("heartbeat with wake_stream_offset %v: %d %s", bad, r.status, r.body)
		}
	}
	if seq := read(); seq != nil {
		t.Fatalf("refused heartbeats stored %d", *seq)
	}
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", tok, map[string]any{"wake_stream_offset": "0000000000000004"}))
	if seq := read(); seq == nil || *seq != 4 {
		t.Fatalf("read position %v, want 4", seq)
	}
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", tok, map[string]any{"wake_stream_offset": "now"}))
	if seq := read(); seq == nil || *seq != 4 {
		t.Fatalf("\"now\" changed the read position to %v", seq)
	}
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", tok, map[string]any{"wake_stream_offset": "-1"}))
	if seq := read(); seq == nil || *seq != 0 {
		t.Fatalf("read position after -1: %v, want 0", seq)
	}
}

// The wake-event backstop through the server's own sweeper: a runner that
// read its wake stream past the only event of a wake (its heartbeat says
// so) but whose claim never arrived gets a new event once the event is
// older than PULLWAKE_WAKE_EVENT_RESEND, and claims with it.
func TestWakeEventBackstopThroughSweeper(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin, func(o *options) { o.sweep, o.resend = 200*time.Millisecond, time.Second })
	tok := b.registerRunner("r1")
	b.must(201, b.do("PUT", "/entities/chat/1", electricAdmin, map[string]any{"runner_id": "r1"}))
	b.send("/chat/1", "lost claim")
	r := b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", tok, nil))
	if evs := decodeEvents(t, r.body); len(evs) != 1 {
		t.Fatalf("wake stream: %s", r.body)
	}
	read := r.header.Get("Stream-Next-Offset")
	// Read, never claimed (the claim request was lost); the heartbeat
	// reports the read position.
	b.must(200, b.do("POST", "/_electric/runners/r1/heartbeat", tok, map[string]any{"lease_ms": 30000, "wake_stream_offset": read}))
	var next []map[string]any
	eventually(t, 10*time.Second, "a new wake event for the wake read but not claimed", func() bool {
		r := b.do("GET", "/runners/r1/wake?offset="+read, tok, nil)
		next = decodeEvents(t, r.body)
		return r.status == 200 && len(next) > 0
	})
	ev, _ := json.Marshal(next[0])
	if n := b.must(200, b.do("POST", "/_electric/runners/r1/claim", tok, string(ev))).json(t); n["entity_url"] != "/chat/1" {
		t.Fatalf("claim with the new event: %v", n)
	}
}
