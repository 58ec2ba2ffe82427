package schemas

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeSource is a registry in memory; reads counts the lookups.
type fakeSource struct {
	mu    sync.Mutex
	types map[string]Type
	reads int
}

func (f *fakeSource) set(t Type) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.types[t.Name] = t
}

func (f *fakeSource) del(name string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.types, name)
}

func (f *fakeSource) load(_ context.Context, name string) (Type, bool, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reads++
	t, ok := f.types[name]
	return t, ok, nil
}

func newFake(types ...Type) (*fakeSource, *Validator) {
	f := &fakeSource{types: map[string]Type{}}
	for _, t := range types {
		f.set(t)
	}
	return f, New(f.load)
}

var chat = Type{
	Name: "chat", Revision: 1, CreatedAt: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
	CreationSchema: json.RawMessage(`{"type":"object","properties":{"topic":{"type":"string"}},"required":["topic"]}`),
	InboxSchemas:   json.RawMessage(`{"query":{"type":"object","properties":{"text":{"type":"string"}},"required":["text"]}}`),
}

func TestValidateSpawn(t *testing.T) {
	t.Parallel()
	_, v := newFake(chat, Type{Name: "free", Revision: 1})
	ctx := context.Background()
	if err := v.ValidateSpawn(ctx, "chat", json.RawMessage(`{"topic":"CRDTs"}`)); err != nil {
		t.Fatalf("valid args refused: %v", err)
	}
	err := v.ValidateSpawn(ctx, "chat", json.RawMessage(`{"invalid":true}`))
	var ie *InvalidError
	if !errors.As(err, &ie) {
		t.Fatalf("invalid args: got %v, want *InvalidError", err)
	}
	if len(ie.Details) == 0 || !strings.Contains(ie.Details[0].Message, "topic") {
		t.Fatalf("details do not name the missing property: %+v", ie.Details)
	}
	if err := v.ValidateSpawn(ctx, "chat", nil); !errors.As(err, &ie) {
		t.Fatalf("absent args are checked as {}: got %v", err)
	}
	if err := v.ValidateSpawn(ctx, "chat", json.RawMessage(`{"topic":7}`)); !errors.As(err, &ie) || ie.Details[0].Path != "/topic" {
		t.Fatalf("wrong type: got %v", err)
	}
	if err := v.ValidateSpawn(ctx, "free", json.RawMessage(`[1,2]`)); err != nil {
		t.Fatalf("a type without creation_schema takes any args: %v", err)
	}
	var ut *UnknownTypeError
	if err := v.ValidateSpawn(ctx, "ghost", nil); !errors.As(err, &ut) || ut.Type != "ghost" {
		t.Fatalf("unregistered type: got %v", err)
	}
}

func TestValidateSend(t *testing.T) {
	t.Parallel()
	_, v := newFake(chat, Type{Name: "free", Revision: 1},
		Type{Name: "closed", Revision: 1, InboxSchemas: json.RawMessage(`{}`)})
	ctx := context.Background()
	if err := v.ValidateSend(ctx, "chat", "query", json.RawMessage(`{"text":"hi"}`)); err != nil {
		t.Fatalf("valid message refused: %v", err)
	}
	var ie *InvalidError
	if err := v.ValidateSend(ctx, "chat", "query", json.RawMessage(`{"invalid":true}`)); !errors.As(err, &ie) {
		t.Fatalf("invalid message: got %v", err)
	}
	var um *UnknownMessageTypeError
	if err := v.ValidateSend(ctx, "chat", "nope", json.RawMessage(`{}`)); !errors.As(err, &um) || um.MessageType != "nope" {
		t.Fatalf("unknown message type: got %v", err)
	}
	if err := v.ValidateSend(ctx, "closed", "any", json.RawMessage(`{}`)); !errors.As(err, &um) {
		t.Fatalf("empty inbox_schemas refuses every typed send: got %v", err)
	}
	for _, c := range []struct{ typ, msg string }{{"chat", ""}, {"free", "x"}, {"ghost", "x"}} {
		if err := v.ValidateSend(ctx, c.typ, c.msg, json.RawMessage(`"anything"`)); err != nil {
			t.Fatalf("send %q to %s is not checked: got %v", c.msg, c.typ, err)
		}
	}
}

// TestCompiledOncePerRevision: many validations of one revision compile it
// once; a new revision compiles once more; a deleted type leaves the cache.
func TestCompiledOncePerRevision(t *testing.T) {
	t.Parallel()
	f, v := newFake(chat)
	ctx := context.Background()
	var wg sync.WaitGroup
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = v.ValidateSend(ctx, "chat", "query", json.RawMessage(`{"text":"x"}`))
		}()
	}
	wg.Wait()
	// Concurrent first uses may each compile; once cached, never again.
	first := v.Compilations()
	for range 100 {
		if err := v.ValidateSpawn(ctx, "chat", json.RawMessage(`{"topic":"x"}`)); err != nil {
			t.Fatal(err)
		}
	}
	if got := v.Compilations(); got != first || first < 1 {
		t.Fatalf("compilations after 100 more validations of revision 1: %d, want %d (>= 1)", got, first)
	}
	next := chat
	next.Revision = 2
	next.InboxSchemas = json.RawMessage(`{"query":{"type":"object"},"command":{"type":"object","required":["action"]}}`)
	f.set(next)
	var ie *InvalidError
	if err := v.ValidateSend(ctx, "chat", "command", json.RawMessage(`{}`)); !errors.As(err, &ie) {
		t.Fatalf("revision 2's new key is not enforced: %v", err)
	}
	for range 10 {
		_ = v.ValidateSend(ctx, "chat", "command", json.RawMessage(`{"action":"go"}`))
	}
	if got := v.Compilations(); got != first+1 {
		t.Fatalf("compilations after revision 2: %d, want %d", got, first+1)
	}
	if f.reads == 0 {
		t.Fatal("the source was never read")
	}
	// Deleted and registered again: revision 1 again, another schema.
	again := Type{Name: "chat", Revision: 1, CreatedAt: chat.CreatedAt.Add(time.Second),
		CreationSchema: json.RawMessage(`{"type":"object","required":["other"]}`)}
	f.set(again)
	if err := v.ValidateSpawn(ctx, "chat", json.RawMessage(`{"topic":"x"}`)); !errors.As(err, &ie) {
		t.Fatalf("a type registered again at revision 1 is validated with the old schema: %v", err)
	}
	f.del("chat")
	var ut *UnknownTypeError
	if err := v.ValidateSpawn(ctx, "chat", nil); !errors.As(err, &ut) {
		t.Fatalf("deleted type: %v", err)
	}
	v.mu.Lock()
	_, cached := v.cache["chat"]
	v.mu.Unlock()
	if cached {
		t.Fatal("a deleted type stays in the cache")
	}
}

func TestCheckSchemas(t *testing.T) {
	t.Parallel()
	if err := CheckSchemas(chat.CreationSchema, chat.InboxSchemas, json.RawMessage(`{"s":{"type":"object"}}`)); err != nil {
		t.Fatalf("good schemas refused: %v", err)
	}
	bad := []struct {
		name                   string
		creation, inbox, state string
		field, key             string
	}{
		{"bad type keyword", `{"type":"nonsense"}`, ``, ``, "creation_schema", ""},
		{"file ref", `{"$ref":"file:///etc/passwd"}`, ``, ``, "creation_schema", ""},
		{"http ref", ``, `{"q":{"$ref":"http://127.0.0.1:1/x.json"}}`, ``, "inbox_schemas", "q"},
		{"relative ref", ``, ``, `{"s":{"$ref":"other.json"}}`, "state_schemas", "s"},
		{"map not object", ``, `[1]`, ``, "inbox_schemas", ""},
		{"bad pattern", ``, `{"q":{"type":"string","pattern":"("}}`, ``, "inbox_schemas", "q"},
	}
	for _, c := range bad {
		err := CheckSchemas(json.RawMessage(c.creation), json.RawMessage(c.inbox), json.RawMessage(c.state))
		var se *SchemaError
		if !errors.As(err, &se) || se.Field != c.field || se.Key != c.key {
			t.Errorf("%s: got %v, want *SchemaError on %s.%s", c.name, err, c.field, c.key)
		}
	}
	// An internal reference is fine.
	if err := CheckSchemas(json.RawMessage(`{"definitions":{"t":{"type":"string"}},"properties":{"a":{"$ref":"#/definitions/t"}}}`), nil, nil); err != nil {
		t.Fatalf("internal $ref refused: %v", err)
	}
}

func TestCheckReplace(t *testing.T) {
	t.Parallel()
	old := json.RawMessage(`{"a":{"type":"object","required":["x"]},"b":{"type":"string"}}`)
	ok := []string{
		`{"a":{"required":["x"],"type":"object"},"b":{"type":"string"}}`,        // key order
		`{"a":{"type":"object","required":["x"]},"b":{"type":"string"},"c":{}}`, // added key
		` { "b" : {"type":"string"}, "a":{"type":"object","required":["x"]} } `, // spacing
	}
	for _, n := range ok {
		if err := CheckReplace("inbox_schemas", old, json.RawMessage(n)); err != nil {
			t.Errorf("%s: %v", n, err)
		}
	}
	if err := CheckReplace("inbox_schemas", nil, json.RawMessage(`{"a":{}}`)); err != nil {
		t.Errorf("adding to an absent map: %v", err)
	}
	bad := []struct {
		next    string
		key     string
		removed bool
	}{
		{`{"a":{"type":"object"},"b":{"type":"string"}}`, "a", false},
		{`{"a":{"type":"object","required":["x"]}}`, "b", true},
		{`null`, "a", true},
		{`{"a":{"type":"object","required":["x"]},"b":{"type":"number"}}`, "b", false},
	}
	for _, c := range bad {
		err := CheckReplace("inbox_schemas", old, json.RawMessage(c.next))
		var ce *ConflictError
		if !errors.As(err, &ce) || ce.Key != c.key || ce.Removed != c.removed || ce.Field != "inbox_schemas" {
			t.Errorf("%s: got %v, want conflict on %s (removed %v)", c.next, err, c.key, c.removed)
		}
		if err != nil && !strings.Contains(err.Error(), "inbox_schemas."+c.key) {
			t.Errorf("message does not name the key: %v", err)
		}
	}
}

func TestMerge(t *testing.T) {
	t.Parallel()
	old := json.RawMessage(`{"query":{"type":"object","properties":{"text":{"type":"string"}}}}`)
	m, changed, err := Merge("inbox_schemas", old, json.RawMessage(`{"command":{"type":"object"}}`))
	if err != nil || !changed {
		t.Fatalf("add a key: %v changed=%v", err, changed)
	}
	if !sameJSON(m, json.RawMessage(`{"query":{"type":"object","properties":{"text":{"type":"string"}}},"command":{"type":"object"}}`)) {
		t.Fatalf("merged: %s", m)
	}
	if _, changed, err := Merge("inbox_schemas", old, old); err != nil || changed {
		t.Fatalf("re-adding the same key: %v changed=%v", err, changed)
	}
	_, _, err = Merge("inbox_schemas", old, json.RawMessage(`{"query":{"type":"object","properties":{"text":{"type":"number"}}}}`))
	var ce *ConflictError
	if !errors.As(err, &ce) || ce.Key != "query" {
		t.Fatalf("changing a key: got %v", err)
	}
	if m, changed, err := Merge("inbox_schemas", old, nil); err != nil || changed || string(m) != string(old) {
		t.Fatalf("nothing to add: %s %v %v", m, changed, err)
	}
	if m, changed, err := Merge("state_schemas", nil, json.RawMessage(`{"s":{}}`)); err != nil || !changed || !sameJSON(m, json.RawMessage(`{"s":{}}`)) {
		t.Fatalf("into an absent map: %s %v %v", m, changed, err)
	}
}
