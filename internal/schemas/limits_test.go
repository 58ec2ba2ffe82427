package schemas

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestCheckSize(t *testing.T) {
	t.Parallel()
	many := map[string]any{}
	for i := range MaxSchemas {
		many[fmt.Sprintf("m%d", i)] = map[string]any{"type": "string"}
	}
	raw, _ := json.Marshal(many)
	if err := CheckSize("chat", nil, raw, nil); err != nil {
		t.Fatalf("%d schemas: %v", MaxSchemas, err)
	}
	var tl *TooLargeError
	if err := CheckSize("chat", json.RawMessage(`{"type":"object"}`), raw, nil); !errors.As(err, &tl) || tl.What != "schemas" || tl.Type != "chat" {
		t.Fatalf("%d schemas: %v, want too many schemas", MaxSchemas+1, err)
	}
	big := json.RawMessage(`{"big":{"description":"` + strings.Repeat("x", MaxTypeBytes) + `"}}`)
	if err := CheckSize("chat", nil, nil, big); !errors.As(err, &tl) || tl.What != "bytes" {
		t.Fatalf("%d bytes: %v, want too many bytes", len(big), err)
	}
}

// A type whose schemas take longer than the budget to compile answers
// *CompileBudgetError naming it (never a deadline error that reads as a
// database outage); the compilation finishes and a later call uses it.
func TestCompileBudget(t *testing.T) {
	t.Parallel()
	props := map[string]any{}
	for i := range 4000 {
		props[fmt.Sprintf("p%d", i)] = map[string]any{"type": "string", "pattern": fmt.Sprintf("^a{%d}b*$", i%50)}
	}
	raw, _ := json.Marshal(map[string]any{"type": "object", "properties": props})
	heavy := Type{Name: "heavy", Revision: 3, CreatedAt: chat.CreatedAt, CreationSchema: raw}
	_, v := newFake(heavy)
	v.Budget = time.Microsecond
	var cb *CompileBudgetError
	if err := v.ValidateSpawn(context.Background(), "heavy", json.RawMessage(`{}`)); !errors.As(err, &cb) ||
		cb.Type != "heavy" || cb.Revision != 3 {
		t.Fatalf("spawn under a 1µs budget: %v, want *CompileBudgetError for heavy/3", err)
	}
	v.Budget = time.Minute
	if err := v.ValidateSpawn(context.Background(), "heavy", json.RawMessage(`{"p1":"ab"}`)); err != nil {
		t.Fatalf("spawn once compiled: %v", err)
	}
}
