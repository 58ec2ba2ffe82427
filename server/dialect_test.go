package server_test

// Electric's dialect under /_electric/entities, and /entities unchanged.

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
)

func list(t *testing.T, r resp) []map[string]any {
	t.Helper()
	var out []map[string]any
	if err := json.Unmarshal(r.body, &out); err != nil {
		t.Fatalf("list %q: %v", r.body, err)
	}
	return out
}

func keys(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func wantErr(t *testing.T, r resp, status int, code string) {
	t.Helper()
	if r.status != status || r.errorCode(t) != code {
		t.Fatalf("got %d %s, want %d %s", r.status, r.body, status, code)
	}
}

func TestElectricDialectShapesAndErrors(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	a := electricAdmin
	b.must(201, b.do("POST", "/_electric/entity-types", a, map[string]any{"name": "chat"}))

	// Spawn: Electric's entity, tags set, no parent key, times in ms.
	e := b.must(201, b.do("PUT", "/_electric/entities/chat/1", a, map[string]any{"tags": map[string]any{"color": "blue"}})).json(t)
	if e["url"] != "/chat/1" || e["type"] != "chat" || e["status"] != "idle" ||
		e["streams"].(map[string]any)["main"] != "/chat/1/main" || e["tags"].(map[string]any)["color"] != "blue" {
		t.Fatalf("spawn: %v", e)
	}
	if _, ok := e["parent"]; ok {
		t.Fatalf("parent without a parent: %v", e)
	}
	if ms, ok := e["created_at"].(float64); !ok || ms < 1e12 {
		t.Fatalf("created_at in ms: %v", e["created_at"])
	}
	wantErr(t, b.do("PUT", "/_electric/entities/chat/1", a, map[string]any{}), 409, "DUPLICATE_URL")
	wantErr(t, b.do("PUT", "/_electric/entities/chat/x", a, map[string]any{"tags": map[string]any{"wrong": 123}}), 400, "INVALID_REQUEST")
	wantErr(t, b.do("PUT", "/_electric/entities/chat/x", a, map[string]any{"parent": "/chat/404"}), 404, "NOT_FOUND")
	wantErr(t, b.do("PUT", "/_electric/entities/chat/x", a, map[string]any{"parent": "chat"}), 400, "INVALID_REQUEST")
	if r := b.do("GET", "/_electric/entities/chat/x", a, nil); r.status != 404 {
		t.Fatalf("a refused spawn created the entity: %d", r.status)
	}
	c := b.must(201, b.do("PUT", "/_electric/entities/chat/2", a, map[string]any{"parent": "/chat/1", "initialMessage": map[string]any{"hi": 1}})).json(t)
	if c["parent"] != "/chat/1" || c["tags"] == nil || len(c["tags"].(map[string]any)) != 0 ||
		c["dispatch"].(map[string]any)["last_sent_offset"] != "0000000000000001" {
		t.Fatalf("child: %v", c)
	}

	// Missing entities: NOT_FOUND when the type is registered, UNKNOWN_ENTITY_TYPE otherwise.
	wantErr(t, b.do("GET", "/_electric/entities/chat/404", a, nil), 404, "NOT_FOUND")
	wantErr(t, b.do("POST", "/_electric/entities/chat/404/send", a, map[string]any{"payload": 1}), 404, "NOT_FOUND")
	wantErr(t, b.do("GET", "/_electric/entities/other/1", a, nil), 404, "UNKNOWN_ENTITY_TYPE")
	wantErr(t, b.do("POST", "/_electric/entities/chat/404/signal", a, map[string]any{"signal": "SIGKILL"}), 404, "NOT_FOUND")

	// Send: 200; the inbox from is the principal.
	b.must(200, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": map[string]any{"task": "hello"}}))
	b.must(200, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": 2, "from": "/principal/user%3Aalice"},
		"Electric-Principal", "user:alice"))
	b.must(200, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": 3, "from_principal": "service:bot"}))
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": 3, "from": "someone"}), 400, "INVALID_REQUEST")
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": 3, "from_principal": "user:bob"},
		"Electric-Principal", "user:alice"), 400, "INVALID_REQUEST")
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": 3}, "Electric-Principal", "root"), 400, "INVALID_REQUEST")

	// The main stream at the root, from Electric's start offset.
	if r := b.do("HEAD", "/chat/1/main", "", nil); r.status != 200 {
		t.Fatalf("HEAD at the root: %d", r.status)
	}
	evs := decodeEvents(t, b.must(200, b.do("GET", "/chat/1/main?offset=0000000000000000_0000000000000000", "", nil)).body)
	if len(evs) != 4 || evs[0]["type"] != "tag" || evs[1]["type"] != "inbox" ||
		evs[1]["value"].(map[string]any)["from"] != "/principal/system%3Aadmin" ||
		evs[2]["value"].(map[string]any)["from"] != "/principal/user%3Aalice" ||
		evs[3]["value"].(map[string]any)["from"] != "/principal/service%3Abot" {
		t.Fatalf("root read: %v", evs)
	}
	if same := b.must(200, b.do("GET", "/v1/stream/chat/1/main?offset=-1", "", nil)); string(same.body) != string(b.do("GET", "/chat/1/main?offset=-1", "", nil).body) {
		t.Fatalf("the root and /v1/stream differ")
	}
	if r := b.do("GET", "/chat/1/other", "", nil); r.status != 404 || r.errorCode(t) != "STREAM_NOT_FOUND" {
		t.Fatalf("no stream there: %d %s", r.status, r.body)
	}

	// List with Electric's filters.
	if l := list(t, b.must(200, b.do("GET", "/_electric/entities?type=chat", a, nil))); len(l) != 2 {
		t.Fatalf("list by type: %v", l)
	}
	if l := list(t, b.must(200, b.do("GET", "/_electric/entities?parent=/chat/1", a, nil))); len(l) != 1 || l[0]["url"] != "/chat/2" {
		t.Fatalf("list by parent: %v", l)
	}
	wantErr(t, b.do("GET", "/_electric/entities?status=gone", a, nil), 400, "INVALID_REQUEST")

	// Kill by signal: killed, the stream ends with SIGKILL, sends refused.
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/signal", a, map[string]any{"signal": "SIGSTOP"}), 422, "INVALID_SIGNAL")
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/signal", a, map[string]any{"signal": "KILL"}), 400, "INVALID_REQUEST")
	s := b.must(200, b.do("POST", "/_electric/entities/chat/1/signal", a, map[string]any{"signal": "SIGKILL", "reason": "test"})).json(t)
	if s["previous_state"] != "idle" || s["new_state"] != "killed" || s["signal"] != "SIGKILL" {
		t.Fatalf("signal: %v", s)
	}
	if g := b.must(200, b.do("GET", "/_electric/entities/chat/1", a, nil)).json(t); g["status"] != "killed" {
		t.Fatalf("after kill: %v", g)
	}
	if l := list(t, b.must(200, b.do("GET", "/_electric/entities?status=killed", a, nil))); len(l) != 1 || l[0]["url"] != "/chat/1" {
		t.Fatalf("list killed: %v", l)
	}
	evs = decodeEvents(t, b.must(200, b.do("GET", "/chat/1/main?offset=0000000000000000_0000000000000000", "", nil)).body)
	last := evs[len(evs)-1]
	if last["type"] != "signal" || last["value"].(map[string]any)["signal"] != "SIGKILL" || last["value"].(map[string]any)["reason"] != "test" {
		t.Fatalf("stream end: %v", last)
	}
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/send", a, map[string]any{"payload": 1}), 409, "NOT_RUNNING")
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/signal", a, map[string]any{"signal": "SIGTERM"}), 409, "INVALID_SIGNAL")
	if k := b.must(200, b.do("DELETE", "/_electric/entities/chat/1", a, nil)).json(t); k["status"] != "killed" {
		t.Fatalf("DELETE of a killed entity: %v", k)
	}
	// SIGTERM reads stopped.
	b.must(200, b.do("POST", "/_electric/entities/chat/2/signal", a, map[string]any{"signal": "SIGTERM"}))
	if g := b.must(200, b.do("GET", "/_electric/entities/chat/2", a, nil)).json(t); g["status"] != "stopped" {
		t.Fatalf("after SIGTERM: %v", g)
	}
	// Auth: the admin token on every route but send and tags.
	for _, r := range []resp{
		b.do("PUT", "/_electric/entities/chat/9", "", map[string]any{}),
		b.do("GET", "/_electric/entities", "", nil),
		b.do("POST", "/_electric/entities/chat/2/signal", "", map[string]any{"signal": "SIGKILL"}),
		b.do("POST", "/_electric/entities/chat/2/send", "", map[string]any{"payload": 1}),
		b.do("POST", "/_electric/entities/chat/2/tags/k", "", map[string]any{"value": "v"}),
	} {
		if r.status != 401 {
			t.Fatalf("without a token: %d %s", r.status, r.body)
		}
	}
}

func TestElectricTags(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	a := electricAdmin
	tok := b.registerRunner("r1")
	b.must(201, b.do("POST", "/_electric/entity-types", a, map[string]any{"name": "chat"}))
	b.must(201, b.do("PUT", "/_electric/entities/chat/1", a, map[string]any{"runner_id": "r1", "tags": map[string]any{"a": "1"}}))
	tags := func(r resp) map[string]any { return b.must(200, r).json(t)["tags"].(map[string]any) }
	if got := tags(b.do("POST", "/_electric/entities/chat/1/tags/b", a, map[string]any{"value": "2"})); len(got) != 2 || got["b"] != "2" {
		t.Fatalf("set: %v", got)
	}
	if got := tags(b.do("POST", "/_electric/entities/chat/1/tags/a", a, map[string]any{"value": "3"})); got["a"] != "3" {
		t.Fatalf("update: %v", got)
	}
	if got := tags(b.do("DELETE", "/_electric/entities/chat/1/tags/b", a, nil)); len(got) != 1 {
		t.Fatalf("remove: %v", got)
	}
	if got := b.must(200, b.do("GET", "/_electric/entities/chat/1", a, nil)).json(t)["tags"].(map[string]any); len(got) != 1 || got["a"] != "3" {
		t.Fatalf("read: %v", got)
	}
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/tags/b", a, map[string]any{}), 400, "INVALID_REQUEST")
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/tags/b", a, map[string]any{"value": 1}), 400, "INVALID_REQUEST")
	wantErr(t, b.do("POST", "/_electric/entities/chat/404/tags/b", a, map[string]any{"value": "1"}), 404, "NOT_FOUND")

	// The entity's own write token tags it; another token does not.
	b.send("/chat/1", "go")
	w := b.mustClaim("r1", tok, 0)
	b.must(200, b.do("POST", "/_electric/entities/chat/1/tags/runner", w.WriteToken, map[string]any{"value": "yes"}))
	b.must(200, b.do("POST", "/_electric/entities/chat/1/tags/runner", "", map[string]any{"value": "again"}, "electric-claim-token", w.WriteToken))
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/tags/runner", "nope", map[string]any{"value": "x"}), 401, "UNAUTHORIZED")

	// Every change is an event on the main stream.
	var ops []string
	for _, ev := range decodeEvents(t, b.must(200, b.do("GET", "/chat/1/main?offset=-1", "", nil)).body) {
		if ev["type"] == "tag" {
			ops = append(ops, ev["key"].(string)+":"+ev["headers"].(map[string]any)["operation"].(string))
		}
	}
	if strings.Join(ops, " ") != "a:insert b:insert a:update b:delete runner:insert runner:update" {
		t.Fatalf("tag events: %v", ops)
	}

	// Refused once stopping or stopped; nothing changes.
	b.must(200, b.do("DELETE", "/_electric/entities/chat/1", a, nil))
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/tags/z", a, map[string]any{"value": "1"}), 409, "NOT_RUNNING")
	b.must(200, b.done(w))
	wantErr(t, b.do("DELETE", "/_electric/entities/chat/1/tags/a", a, nil), 409, "NOT_RUNNING")
	if got := b.must(200, b.do("GET", "/_electric/entities/chat/1", a, nil)).json(t); got["status"] != "killed" || len(got["tags"].(map[string]any)) != 2 {
		t.Fatalf("after refused tags: %v", got)
	}
}

// /entities answers as SPEC §4 says, whatever Electric's prefix does.
func TestPullwakeEntityRoutesUnchanged(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	a := electricAdmin
	e := b.must(201, b.do("PUT", "/entities/chat/1", a, map[string]any{"tags": map[string]any{"x": "y"}, "parent": "/chat/404"})).json(t)
	if got := strings.Join(keys(e), ","); got != "created_at,dispatch,main_stream,runner_id,status,streams,type,updated_at,url" {
		t.Fatalf("entity fields: %s", got)
	}
	if e["status"] != "idle" || e["streams"].(map[string]any)["main"] != "/v1/stream/chat/1/main" {
		t.Fatalf("spawn: %v", e)
	}
	if _, ok := e["created_at"].(string); !ok {
		t.Fatalf("created_at is a timestamp: %v", e["created_at"])
	}
	wantErr(t, b.do("PUT", "/entities/chat/1", a, map[string]any{}), 409, "ENTITY_EXISTS")
	wantErr(t, b.do("GET", "/entities/other/1", a, nil), 404, "ENTITY_NOT_FOUND")
	wantErr(t, b.do("POST", "/entities/chat/404", a, map[string]any{"payload": 1}), 404, "ENTITY_NOT_FOUND")
	if r := b.must(202, b.do("POST", "/entities/chat/1", a, map[string]any{"payload": 1})); r.json(t)["offset"] != "0000000000000001" {
		t.Fatalf("send: %s", r.body)
	}
	if s := b.must(200, b.do("DELETE", "/entities/chat/1", a, nil)).json(t); s["status"] != "stopped" {
		t.Fatalf("stop: %v", s)
	}
	wantErr(t, b.do("POST", "/entities/chat/1", a, map[string]any{"payload": 1}), 409, "ENTITY_STOPPED")
	wantErr(t, b.do("GET", "/entities?status=killed", a, nil), 400, "INVALID_REQUEST")
	evs := decodeEvents(t, b.must(200, b.do("GET", "/v1/stream/chat/1/main?offset=-1", "", nil)).body)
	if len(evs) != 2 || evs[0]["value"].(map[string]any)["from"] != "admin" ||
		evs[1]["type"] != "signal" || evs[1]["value"].(map[string]any)["signal"] != "SIGTERM" {
		t.Fatalf("stream: %v", evs)
	}
	// pullwake's stop reads stopped under Electric's prefix too (SIGTERM).
	if g := b.must(200, b.do("GET", "/_electric/entities/chat/1", a, nil)).json(t); g["status"] != "stopped" {
		t.Fatalf("Electric's view of a pullwake stop: %v", g)
	}
}

// Plain streams are served at the root too, where Electric serves them: the
// same stream as under /v1/stream, with its rules (an admin token set: writes
// need it). The API's own paths are never taken for streams.
func TestPlainStreamsAtTheRoot(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	a := electricAdmin
	wantErr(t, b.do("PUT", "/plain-1", "", nil), 401, "UNAUTHORIZED")
	b.must(201, b.do("PUT", "/plain-1", a, ""))
	b.must(204, b.do("POST", "/plain-1", a, `{"n":1}`))
	b.must(204, b.do("POST", "/v1/stream/plain-1", a, `{"n":2}`))
	root := b.must(200, b.do("GET", "/plain-1?offset=0000000000000000_0000000000000000", "", nil))
	same := b.must(200, b.do("GET", "/v1/stream/plain-1?offset=-1", "", nil))
	if string(root.body) != `[{"n":1},{"n":2}]` || string(same.body) != string(root.body) {
		t.Fatalf("root read %s, /v1/stream read %s", root.body, same.body)
	}
	wantErr(t, b.do("GET", "/nope", "", nil), 404, "STREAM_NOT_FOUND")
	for _, p := range []string{"/entities/chat/1/extra", "/_electric/nope", "/__ds/nope", "/runners/r1"} {
		if r := b.do("GET", p, a, nil); r.status != 404 || r.errorCode(t) != "NOT_FOUND" {
			t.Fatalf("GET %s: %d %s, want the API's 404 NOT_FOUND", p, r.status, r.body)
		}
	}
	if r := b.do("PUT", "/runners/r1", a, ""); r.status != 404 {
		t.Fatalf("PUT /runners/r1 made a stream: %d %s", r.status, r.body)
	}
}

// The tag cap holds after spawn too: an entity has at most 64 tags; the
// 65th is 400 and writes nothing (no tag, no event on the main stream);
// changing or deleting a tag of a full entity still works.
func TestTagCapAfterSpawn(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	a := electricAdmin
	b.must(201, b.do("POST", "/_electric/entity-types", a, map[string]any{"name": "chat"}))
	b.must(201, b.do("PUT", "/_electric/entities/chat/1", a, map[string]any{}))
	for i := range 64 {
		b.must(200, b.do("POST", fmt.Sprintf("/_electric/entities/chat/1/tags/k%02d", i), a, map[string]any{"value": "v"}))
	}
	tail := func() string {
		return b.must(200, b.do("HEAD", "/v1/stream/chat/1/main", a, nil)).header.Get("Stream-Next-Offset")
	}
	before := tail()
	wantErr(t, b.do("POST", "/_electric/entities/chat/1/tags/k64", a, map[string]any{"value": "v"}), 400, "INVALID_REQUEST")
	if after := tail(); after != before {
		t.Fatalf("a refused tag appended to the main stream: %s -> %s", before, after)
	}
	tags := b.must(200, b.do("GET", "/_electric/entities/chat/1", a, nil)).json(t)["tags"].(map[string]any)
	if len(tags) != 64 || tags["k64"] != nil {
		t.Fatalf("%d tags after the refused 65th", len(tags))
	}
	b.must(200, b.do("POST", "/_electric/entities/chat/1/tags/k00", a, map[string]any{"value": "changed"}))
	b.must(200, b.do("DELETE", "/_electric/entities/chat/1/tags/k01", a, nil))
	b.must(200, b.do("POST", "/_electric/entities/chat/1/tags/k64", a, map[string]any{"value": "v"}))
}
