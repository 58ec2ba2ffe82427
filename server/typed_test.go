package server_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
)

type obj = map[string]any

// taskType has a creation schema needing a string topic and one inbox
// schema, query, needing a string text.
var taskType = obj{
	"name": "task", "description": "typed",
	"creation_schema": obj{"type": "object", "properties": obj{"topic": obj{"type": "string"}}, "required": []any{"topic"}},
	"inbox_schemas":   obj{"query": obj{"type": "object", "properties": obj{"text": obj{"type": "string"}}, "required": []any{"text"}}},
}

// wantRefused checks r's status and code; details, when asked for, must
// hold at least one validator message.
func wantRefused(t *testing.T, what string, r resp, status int, code string, details bool) {
	t.Helper()
	if r.status != status || r.errorCode(t) != code {
		t.Fatalf("%s: %d %s, want %d %s", what, r.status, r.body, status, code)
	}
	if details {
		d, _ := r.json(t)["error"].(obj)["details"].([]any)
		if len(d) == 0 || d[0].(obj)["path"] == nil || d[0].(obj)["message"] == "" {
			t.Fatalf("%s: no validator details: %s", what, r.body)
		}
	}
}

// entityURLs lists the entities' URLs (GET /entities).
func (b *bundle) entityURLs(t *testing.T) []string {
	t.Helper()
	var list []obj
	if err := json.Unmarshal(b.must(200, b.do("GET", "/entities", b.admin, nil)).body, &list); err != nil {
		t.Fatal(err)
	}
	var urls []string
	for _, e := range list {
		urls = append(urls, e["url"].(string))
	}
	return urls
}

func TestTypedSpawn(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, taskType))

	b.must(201, b.do("PUT", "/_electric/entities/task/1", electricAdmin, obj{"args": obj{"topic": "CRDTs"}}))
	b.must(201, b.do("PUT", "/entities/task/2", electricAdmin, obj{"args": obj{"topic": "logs"}}))
	// Refused: Electric's 422 under its prefix, the SPEC's 400 under /entities.
	for _, c := range []struct {
		path   string
		body   obj
		status int
		code   string
	}{
		{"/_electric/entities/task/3", obj{"args": obj{"invalid": true}}, 422, "SCHEMA_VALIDATION_FAILED"},
		{"/_electric/entities/task/3", obj{"args": obj{"topic": 7}}, 422, "SCHEMA_VALIDATION_FAILED"},
		{"/_electric/entities/task/3", obj{}, 422, "SCHEMA_VALIDATION_FAILED"}, // absent args are {}
		{"/entities/task/3", obj{"args": obj{"invalid": true}}, 400, "INVALID_REQUEST"},
		{"/entities/task/3", obj{}, 400, "INVALID_REQUEST"},
	} {
		wantRefused(t, c.path+" "+string(must(json.Marshal(c.body))), b.do("PUT", c.path, electricAdmin, c.body), c.status, c.code, true)
	}
	for _, path := range []string{"/_electric/entities/task/3", "/entities/task/3"} {
		wantRefused(t, "args not an object", b.do("PUT", path, electricAdmin, obj{"args": []any{1}}), 400, "INVALID_REQUEST", false)
	}
	// Unregistered types: always refused under Electric's prefix, spawned
	// under /entities unless the server requires types.
	wantRefused(t, "unregistered type", b.do("PUT", "/_electric/entities/ghost/1", electricAdmin, obj{}), 404, "UNKNOWN_ENTITY_TYPE", false)
	b.must(201, b.do("PUT", "/entities/free/1", electricAdmin, obj{"args": obj{"any": "thing"}}))
	if got := strings.Join(b.entityURLs(t), " "); got != "/free/1 /task/1 /task/2" {
		t.Fatalf("entities after refusals: %s", got)
	}
	if r := b.do("HEAD", "/v1/stream/task/3/main", "", nil); r.status != 404 {
		t.Fatalf("a refused spawn created its stream: %d", r.status)
	}
}

func TestRequireEntityTypes(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin, func(o *options) { o.requireTypes = true })
	wantRefused(t, "unregistered type on /entities", b.do("PUT", "/entities/ghost/1", electricAdmin, obj{}), 400, "INVALID_REQUEST", false)
	wantRefused(t, "unregistered type on Electric's prefix", b.do("PUT", "/_electric/entities/ghost/1", electricAdmin, obj{}), 404, "UNKNOWN_ENTITY_TYPE", false)
	if urls := b.entityURLs(t); len(urls) != 0 {
		t.Fatalf("refused spawns created %v", urls)
	}
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, obj{"name": "ghost"}))
	b.must(201, b.do("PUT", "/entities/ghost/1", electricAdmin, obj{}))
}

func TestTypedSend(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, taskType))
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, obj{"name": "closed", "inbox_schemas": obj{}}))
	b.must(201, b.do("PUT", "/_electric/entities/task/1", electricAdmin, obj{"args": obj{"topic": "x"}}))
	b.must(201, b.do("PUT", "/_electric/entities/closed/1", electricAdmin, obj{}))

	e := "/_electric/entities/task/1/send"
	b.must(200, b.do("POST", e, electricAdmin, obj{"type": "query", "payload": obj{"text": "hello"}}))
	b.must(202, b.do("POST", "/entities/task/1", electricAdmin, obj{"type": "query", "payload": obj{"text": "again"}}))
	b.must(200, b.do("POST", e, electricAdmin, obj{"payload": "untyped sends are not checked"}))
	for _, c := range []struct {
		path   string
		body   obj
		status int
		code   string
		detail bool
	}{
		{e, obj{"type": "query", "payload": obj{"invalid": true}}, 422, "SCHEMA_VALIDATION_FAILED", true},
		{e, obj{"type": "nope", "payload": obj{"text": "hi"}}, 422, "UNKNOWN_MESSAGE_TYPE", false},
		{"/entities/task/1", obj{"type": "query", "payload": obj{"text": 1}}, 400, "INVALID_REQUEST", true},
		{"/entities/task/1", obj{"type": "nope", "payload": 1}, 400, "INVALID_REQUEST", false},
		{"/_electric/entities/closed/1/send", obj{"type": "any", "payload": 1}, 422, "UNKNOWN_MESSAGE_TYPE", false},
	} {
		wantRefused(t, c.path+" "+string(must(json.Marshal(c.body))), b.do("POST", c.path, electricAdmin, c.body), c.status, c.code, c.detail)
	}
	b.must(200, b.do("POST", "/_electric/entities/closed/1/send", electricAdmin, obj{"payload": 1}))
	// Only the accepted messages are on the stream.
	evs := decodeEvents(t, b.must(200, b.do("GET", "/v1/stream/task/1/main?offset=-1", "", nil)).body)
	if len(evs) != 3 {
		t.Fatalf("stream holds %d messages, want the 3 accepted", len(evs))
	}
	// A typed send's inbox event names its message type; an untyped one none.
	for i, want := range []any{"query", "query", nil} {
		if got := evs[i]["value"].(obj)["message_type"]; got != want {
			t.Fatalf("event %d: message_type %v, want %v", i, got, want)
		}
	}
	got := b.must(200, b.do("GET", "/entities/task/1", electricAdmin, nil)).json(t)
	if got["dispatch"].(obj)["last_sent_offset"] != "0000000000000003" {
		t.Fatalf("refused sends moved last_sent_offset: %v", got["dispatch"])
	}
}

func TestAmendEntityTypeSchemas(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, taskType))
	b.must(201, b.do("PUT", "/_electric/entities/task/1", electricAdmin, obj{"args": obj{"topic": "x"}}))
	send := func(typ string, payload any) resp {
		return b.do("POST", "/_electric/entities/task/1/send", electricAdmin, obj{"type": typ, "payload": payload})
	}
	wantRefused(t, "command before the amendment", send("command", obj{"action": "go"}), 422, "UNKNOWN_MESSAGE_TYPE", false)

	// PATCH adds a key: the new revision is enforced at once.
	command := obj{"type": "object", "properties": obj{"action": obj{"type": "string"}}, "required": []any{"action"}}
	r := b.must(200, b.do("PATCH", "/_electric/entity-types/task/schemas", electricAdmin, obj{"inbox_schemas": obj{"command": command}})).json(t)
	if r["revision"] != float64(2) || r["inbox_schemas"].(obj)["query"] == nil || r["inbox_schemas"].(obj)["command"] == nil {
		t.Fatalf("amended: %v", r)
	}
	b.must(200, send("command", obj{"action": "go"}))
	wantRefused(t, "command without action", send("command", obj{}), 422, "SCHEMA_VALIDATION_FAILED", true)

	// Changing a key is 409 naming it, and changes nothing.
	changed := obj{"type": "object", "properties": obj{"text": obj{"type": "number"}}}
	r409 := b.do("PATCH", "/_electric/entity-types/task/schemas", electricAdmin, obj{"inbox_schemas": obj{"query": changed, "extra": obj{}}})
	wantRefused(t, "PATCH changing query", r409, 409, "SCHEMA_KEY_EXISTS", false)
	if !strings.Contains(string(r409.body), "inbox_schemas.query") {
		t.Fatalf("409 does not name the key: %s", r409.body)
	}
	// The same schema again changes nothing (a retried PATCH).
	same := b.must(200, b.do("PATCH", "/_electric/entity-types/task/schemas", electricAdmin, obj{"input_schemas": obj{"command": command}})).json(t)
	if same["revision"] != float64(2) || same["inbox_schemas"].(obj)["extra"] != nil {
		t.Fatalf("repeated amendment: %v", same)
	}

	// Re-registration: the same rule; an absent map keeps the registered one.
	re := func(inbox any) resp {
		body := obj{"name": "task", "description": "again", "creation_schema": taskType["creation_schema"]}
		if inbox != nil {
			body["inbox_schemas"] = inbox
		}
		return b.do("POST", "/_electric/entity-types", electricAdmin, body)
	}
	query := taskType["inbox_schemas"].(obj)["query"]
	wantRefused(t, "POST changing query", re(obj{"query": changed, "command": command}), 409, "SCHEMA_KEY_EXISTS", false)
	wantRefused(t, "POST dropping command", re(obj{"query": query}), 409, "SCHEMA_KEY_EXISTS", false)
	if r := b.must(201, re(obj{"query": query, "command": command, "note": obj{}})).json(t); r["revision"] != float64(3) {
		t.Fatalf("adding by re-registration: %v", r)
	}
	kept := b.must(201, re(nil)).json(t)
	if kept["revision"] != float64(4) || len(kept["inbox_schemas"].(obj)) != 3 || kept["description"] != "again" {
		t.Fatalf("re-registration without inbox_schemas: %v", kept)
	}
	// Amend refusals: unknown type, a schema that does not compile.
	wantRefused(t, "PATCH unknown type", b.do("PATCH", "/_electric/entity-types/ghost/schemas", electricAdmin, obj{"inbox_schemas": obj{"m": obj{}}}), 404, "ENTITY_TYPE_NOT_FOUND", false)
	wantRefused(t, "PATCH bad schema", b.do("PATCH", "/_electric/entity-types/task/schemas", electricAdmin, obj{"inbox_schemas": obj{"bad": obj{"type": "nonsense"}}}), 400, "INVALID_REQUEST", false)
	wantRefused(t, "PATCH not an object", b.do("PATCH", "/_electric/entity-types/task/schemas", electricAdmin, obj{"state_schemas": 5}), 400, "INVALID_REQUEST", false)
	if g := b.must(200, b.do("GET", "/_electric/entity-types/task", electricAdmin, nil)).json(t); g["revision"] != float64(4) {
		t.Fatalf("refusals changed the type: %v", g)
	}
}

// Concurrent amendments adding different keys all land: none overwrites
// another's key (each applies at the revision it checked, or reads again).
// (A re-registration giving a whole map would rightly be refused here: the
// map lacks the keys added meanwhile.)
func TestConcurrentAmendments(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, taskType))
	const n = 8
	errs := make(chan string, n)
	for i := range n {
		go func() {
			key := fmt.Sprintf("k%d", i)
			r := b.do("PATCH", "/_electric/entity-types/task/schemas", electricAdmin, obj{"inbox_schemas": obj{key: obj{}}})
			if r.status != 200 {
				errs <- fmt.Sprintf("%s: %d %s", key, r.status, r.body)
				return
			}
			errs <- ""
		}()
	}
	for range n {
		if e := <-errs; e != "" {
			t.Fatal(e)
		}
	}
	got := b.must(200, b.do("GET", "/_electric/entity-types/task", electricAdmin, nil)).json(t)
	if got["revision"] != float64(1+n) || len(got["inbox_schemas"].(obj)) != 1+n {
		t.Fatalf("after %d concurrent amendments: revision %v, inbox_schemas %v", n, got["revision"], got["inbox_schemas"])
	}
}

func TestEntityTypeSchemasMustCompile(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	for _, bad := range []obj{
		{"name": "t", "creation_schema": obj{"type": "nonsense"}},
		{"name": "t", "creation_schema": obj{"$ref": "file:///etc/passwd"}},
		{"name": "t", "inbox_schemas": obj{"q": obj{"$ref": "http://127.0.0.1:1/s.json"}}},
		{"name": "t", "inbox_schemas": obj{"q": 5}},
		{"name": "t", "state_schemas": obj{"s": obj{"pattern": "("}}},
	} {
		wantRefused(t, string(must(json.Marshal(bad))), b.do("POST", "/_electric/entity-types", electricAdmin, bad), 400, "INVALID_REQUEST", false)
	}
	if r := b.do("GET", "/_electric/entity-types/t", electricAdmin, nil); r.status != 404 {
		t.Fatalf("a refused registration was stored: %d", r.status)
	}
}

// A spawn's parent must exist (Electric's prefix takes parent): a refused
// spawn creates nothing. Typed validation runs before it.
// A type whose stored schema does not compile (written by hand, or before
// schemas were checked) refuses its spawns and typed sends with a 409
// naming the schema, never a 500.
func TestStoredSchemaThatDoesNotCompile(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	b.must(201, b.do("PUT", "/entities/bad/1", electricAdmin, obj{}))
	if _, err := b.pool.Exec(t.Context(), `INSERT INTO entity_types (name, creation_schema, inbox_schemas)
		VALUES ('bad', '{"type": "nonsense"}', '{"q": {"$ref": "file:///etc/passwd"}}')`); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{"/_electric/entities/bad/2", "/entities/bad/2"} {
		r := b.do("PUT", path, electricAdmin, obj{})
		wantRefused(t, "spawn", r, 409, "ENTITY_TYPE_INVALID", false)
		if !strings.Contains(string(r.body), "creation_schema") {
			t.Fatalf("409 does not name the schema: %s", r.body)
		}
	}
	wantRefused(t, "typed send", b.do("POST", "/entities/bad/1", electricAdmin, obj{"type": "q", "payload": 1}), 409, "ENTITY_TYPE_INVALID", false)
	b.must(202, b.do("POST", "/entities/bad/1", electricAdmin, obj{"payload": 1}))
}

func TestSpawnParent(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, taskType))
	b.must(201, b.do("PUT", "/_electric/entities/task/boss", electricAdmin, obj{"args": obj{"topic": "x"}}))
	c := b.must(201, b.do("PUT", "/_electric/entities/task/kid", electricAdmin, obj{"args": obj{"topic": "y"}, "parent": "/task/boss"})).json(t)
	if c["parent"] != "/task/boss" {
		t.Fatalf("spawned child: %v", c)
	}
	p := "/_electric/entities/task/orphan"
	wantRefused(t, "missing parent", b.do("PUT", p, electricAdmin, obj{"args": obj{"topic": "z"}, "parent": "/task/nobody"}), 404, "NOT_FOUND", false)
	wantRefused(t, "own url as parent", b.do("PUT", p, electricAdmin, obj{"args": obj{"topic": "z"}, "parent": "/task/orphan"}), 404, "NOT_FOUND", false)
	wantRefused(t, "bad args and a parent", b.do("PUT", p, electricAdmin, obj{"args": obj{}, "parent": "/task/boss"}), 422, "SCHEMA_VALIDATION_FAILED", true)
	if got := strings.Join(b.entityURLs(t), " "); got != "/task/boss /task/kid" {
		t.Fatalf("entities after refusals: %s", got)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
