package schemas

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Type is what validation needs of a registered entity type.
type Type struct {
	Name     string
	Revision int64
	// CreatedAt tells a type deleted and registered again (its revision
	// starts over at 1) from the one cached.
	CreatedAt time.Time
	// CreationSchema checks spawn arguments; nil = any arguments.
	CreationSchema json.RawMessage
	// InboxSchemas maps message type -> schema; nil = sends are not
	// checked, {} = every typed send is refused.
	InboxSchemas json.RawMessage
}

// Source reads a registered type; ok is false when none is registered.
type Source func(ctx context.Context, name string) (t Type, ok bool, err error)

// UnknownTypeError: the spawn names a type that is not registered.
type UnknownTypeError struct{ Type string }

func (e *UnknownTypeError) Error() string {
	return fmt.Sprintf("entity type %q is not registered", e.Type)
}

// UnknownMessageTypeError: the send names a message type its entity's type
// has no inbox schema for.
type UnknownMessageTypeError struct{ Type, MessageType string }

func (e *UnknownMessageTypeError) Error() string {
	return fmt.Sprintf("entity type %q has no inbox schema for message type %q", e.Type, e.MessageType)
}

// Detail is one complaint of the validator: where in the value, and what.
type Detail struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// InvalidError: spawn arguments or a message payload do not match their
// schema. Details are the validator's messages (at most maxDetails).
type InvalidError struct {
	What    string // "spawn args" or "message payload"
	Schema  string // e.g. `creation_schema of type "chat"`
	Details []Detail
}

func (e *InvalidError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s do not match the %s", e.What, e.Schema)
	for i, d := range e.Details {
		if i == 3 {
			fmt.Fprintf(&b, "; and %d more", len(e.Details)-3)
			break
		}
		fmt.Fprintf(&b, "; at %s: %s", d.Path, d.Message)
	}
	return b.String()
}

const maxDetails = 20

// SchemaError: a schema given at registration is not a usable JSON Schema.
type SchemaError struct {
	Field string // creation_schema, inbox_schemas, state_schemas
	Key   string // the map key, "" for creation_schema
	Err   error
}

func (e *SchemaError) Error() string {
	where := e.Field
	if e.Key != "" {
		where += "." + e.Key
	}
	return fmt.Sprintf("%s is not a usable JSON Schema: %v", where, e.Err)
}

func (e *SchemaError) Unwrap() error { return e.Err }

// compiled is one revision of a type, compiled.
type compiled struct {
	revision int64
	created  time.Time
	creation *jsonschema.Schema            // nil = none
	inbox    map[string]*jsonschema.Schema // nil = sends not checked
}

// Validator validates spawns and sends against registered types, compiling
// each type's schemas once per revision. Safe for concurrent use.
type Validator struct {
	// Budget bounds how long a call waits for a type revision to compile
	// (DefaultCompileBudget); past it the call answers
	// *CompileBudgetError while the compilation finishes and is cached.
	Budget       time.Duration
	src          Source
	mu           sync.Mutex
	cache        map[string]*compiled
	compilations atomic.Int64
}

// New returns a Validator reading types from src.
func New(src Source) *Validator {
	return &Validator{src: src, cache: map[string]*compiled{}, Budget: DefaultCompileBudget}
}

// Compilations counts the type revisions compiled so far.
func (v *Validator) Compilations() int64 { return v.compilations.Load() }

// load returns the compiled current revision of the type, or nil when the
// type is not registered.
func (v *Validator) load(ctx context.Context, name string) (*compiled, error) {
	t, ok, err := v.src(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("read entity type %s: %w", name, err)
	}
	v.mu.Lock()
	c := v.cache[name]
	if !ok {
		delete(v.cache, name)
	}
	v.mu.Unlock()
	if !ok {
		return nil, nil
	}
	if c != nil && c.revision == t.Revision && c.created.Equal(t.CreatedAt) {
		return c, nil
	}
	type result struct {
		c   *compiled
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := compileType(t)
		if err == nil {
			v.compilations.Add(1)
			v.mu.Lock()
			if old := v.cache[name]; old == nil || !old.created.Equal(c.created) || old.revision < c.revision {
				v.cache[name] = c
			}
			v.mu.Unlock()
		}
		done <- result{c, err}
	}()
	budget := time.NewTimer(v.Budget)
	defer budget.Stop()
	select {
	case res := <-done:
		if res.err != nil {
			// Stored schemas were compiled at registration; failing now
			// means the row was written by hand.
			return nil, fmt.Errorf("entity type %s revision %d: %w", name, t.Revision, res.err)
		}
		return res.c, nil
	case <-budget.C:
		return nil, &CompileBudgetError{Type: name, Revision: t.Revision, Budget: v.Budget}
	}
}

// ValidateSpawn checks spawn arguments against the type's creation_schema.
// Absent arguments are checked as {}. A type that is not registered
// answers *UnknownTypeError (the caller decides whether that refuses the
// spawn); a mismatch answers *InvalidError.
func (v *Validator) ValidateSpawn(ctx context.Context, typeName string, args json.RawMessage) error {
	c, err := v.load(ctx, typeName)
	if err != nil {
		return err
	}
	if c == nil {
		return &UnknownTypeError{Type: typeName}
	}
	if c.creation == nil {
		return nil
	}
	if len(bytes.TrimSpace(args)) == 0 || string(bytes.TrimSpace(args)) == "null" {
		args = json.RawMessage("{}")
	}
	return check(c.creation, args, "spawn args", fmt.Sprintf("creation_schema of type %q", typeName))
}

// ValidateSend checks a message payload against the inbox schema of its
// message type. An untyped send (msgType ""), a send to an entity whose
// type is not registered, and a send to a type without inbox_schemas are
// not checked. A message type the type's inbox_schemas lack answers
// *UnknownMessageTypeError; a mismatch *InvalidError.
func (v *Validator) ValidateSend(ctx context.Context, typeName, msgType string, payload json.RawMessage) error {
	if msgType == "" {
		return nil
	}
	c, err := v.load(ctx, typeName)
	if err != nil || c == nil || c.inbox == nil {
		return err
	}
	sch, ok := c.inbox[msgType]
	if !ok {
		return &UnknownMessageTypeError{Type: typeName, MessageType: msgType}
	}
	return check(sch, payload, "message payload", fmt.Sprintf("inbox schema %q of type %q", msgType, typeName))
}

func check(sch *jsonschema.Schema, raw json.RawMessage, what, schema string) error {
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return &InvalidError{What: what, Schema: schema, Details: []Detail{{Path: "/", Message: "not JSON: " + err.Error()}}}
	}
	err = sch.Validate(inst)
	if err == nil {
		return nil
	}
	var ve *jsonschema.ValidationError
	if !errors.As(err, &ve) {
		return fmt.Errorf("validate %s: %w", what, err)
	}
	return &InvalidError{What: what, Schema: schema, Details: details(ve)}
}

// details flattens the validator's output to its leaf messages.
func details(ve *jsonschema.ValidationError) []Detail {
	var out []Detail
	var walk func(u jsonschema.OutputUnit)
	walk = func(u jsonschema.OutputUnit) {
		if u.Error != nil && len(out) < maxDetails {
			p := u.InstanceLocation
			if p == "" {
				p = "/"
			}
			out = append(out, Detail{Path: p, Message: u.Error.String()})
		}
		for _, e := range u.Errors {
			walk(e)
		}
	}
	walk(*ve.BasicOutput())
	if len(out) == 0 {
		out = append(out, Detail{Path: "/", Message: ve.Error()})
	}
	return out
}

// noLoader refuses every external reference: a schema may only refer
// inside itself (or to the JSON Schema meta-schemas, which the library
// embeds).
type noLoader struct{}

func (noLoader) Load(u string) (any, error) {
	return nil, fmt.Errorf("external $ref %s is not allowed", u)
}

// Compile compiles one schema given as JSON, refusing references outside
// it. field and key name it in errors.
func Compile(field, key string, raw json.RawMessage) (*jsonschema.Schema, error) {
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(raw))
	if err != nil {
		return nil, &SchemaError{Field: field, Key: key, Err: err}
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft7)
	c.UseLoader(noLoader{})
	loc := "mem:///" + url.PathEscape(field)
	if key != "" {
		loc += "/" + url.PathEscape(key)
	}
	loc += ".json"
	if err := c.AddResource(loc, doc); err != nil {
		return nil, &SchemaError{Field: field, Key: key, Err: err}
	}
	sch, err := c.Compile(loc)
	if err != nil {
		return nil, &SchemaError{Field: field, Key: key, Err: err}
	}
	return sch, nil
}

// schemaMap reads a schema map ({"name": schema, ...}); nil when absent.
func schemaMap(field string, raw json.RawMessage) (map[string]json.RawMessage, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(t, &m); err != nil || m == nil {
		return nil, &SchemaError{Field: field, Err: errors.New("must be an object of message type -> schema")}
	}
	return m, nil
}

func sortedKeys(m map[string]json.RawMessage) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// CheckSchemas compiles every schema of a registration: creation_schema
// and each entry of inbox_schemas and state_schemas. The first that does
// not compile is a *SchemaError.
func CheckSchemas(creation, inbox, state json.RawMessage) error {
	if t := bytes.TrimSpace(creation); len(t) > 0 && string(t) != "null" {
		if _, err := Compile("creation_schema", "", t); err != nil {
			return err
		}
	}
	for _, f := range []struct {
		name string
		raw  json.RawMessage
	}{{"inbox_schemas", inbox}, {"state_schemas", state}} {
		m, err := schemaMap(f.name, f.raw)
		if err != nil {
			return err
		}
		for _, k := range sortedKeys(m) {
			if _, err := Compile(f.name, k, m[k]); err != nil {
				return err
			}
		}
	}
	return nil
}

func compileType(t Type) (*compiled, error) {
	c := &compiled{revision: t.Revision, created: t.CreatedAt}
	if tr := bytes.TrimSpace(t.CreationSchema); len(tr) > 0 && string(tr) != "null" {
		sch, err := Compile("creation_schema", "", tr)
		if err != nil {
			return nil, err
		}
		c.creation = sch
	}
	m, err := schemaMap("inbox_schemas", t.InboxSchemas)
	if err != nil {
		return nil, err
	}
	if m != nil {
		c.inbox = make(map[string]*jsonschema.Schema, len(m))
		for k, raw := range m {
			sch, err := Compile("inbox_schemas", k, raw)
			if err != nil {
				return nil, err
			}
			c.inbox[k] = sch
		}
	}
	return c, nil
}
