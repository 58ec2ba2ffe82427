package server_test

import (
	"encoding/json"
	"net/url"
	"slices"
	"testing"

	"github.com/pullwake/pullwake/internal/testdb"
)

// shapeMessage is one message of a shape log.
type shapeMessage struct {
	Key     string         `json:"key"`
	Value   map[string]any `json:"value"`
	Headers struct {
		Operation string  `json:"operation"`
		Control   string  `json:"control"`
		TxIDs     []int64 `json:"txids"`
	} `json:"headers"`
}

// entitiesShape follows the entities shape as Electric's client does.
type entitiesShape struct {
	b              *bundle
	handle, offset string
}

func followEntities(t *testing.T, b *bundle) *entitiesShape {
	t.Helper()
	r := b.must(200, b.do("GET", "/_electric/electric/v1/shape?table=entities&offset=-1", electricAdmin, nil))
	s := &entitiesShape{b: b, handle: r.header.Get("electric-handle"), offset: r.header.Get("electric-offset")}
	if s.handle == "" || s.offset == "" {
		t.Fatalf("shape answer without handle or offset: %v", r.header)
	}
	return s
}

// changeIn long-polls until a change of the entity's row made by
// transaction txid arrives (at most a few polls), and reports the txids
// of the entity's changes seen.
func (s *entitiesShape) changeIn(t *testing.T, entityURL string, txid int64) (found bool, seen [][]int64) {
	t.Helper()
	for range 5 {
		q := url.Values{"table": {"entities"}, "handle": {s.handle}, "offset": {s.offset}, "live": {"true"}}
		r := s.b.must(200, s.b.do("GET", "/_electric/electric/v1/shape?"+q.Encode(), electricAdmin, nil))
		s.offset = r.header.Get("electric-offset")
		var msgs []shapeMessage
		if err := json.Unmarshal(r.body, &msgs); err != nil {
			t.Fatalf("shape answer: %v: %s", err, r.body)
		}
		for _, m := range msgs {
			if m.Headers.Control == "" && m.Value["url"] == entityURL {
				if slices.Contains(m.Headers.TxIDs, txid) {
					return true, seen
				}
				seen = append(seen, m.Headers.TxIDs)
			}
		}
	}
	return false, seen
}

// Electric's agents UI waits, after a spawn, a tag change or a signal,
// until a change of the entities shape carries the answer's txid in
// headers.txids, and after a send until an inbox event on the main stream
// carries the answer's txid in its headers: every such answer names the
// transaction that made the change, and the change carries it.
func TestElectricMutationsNameTheirTransaction(t *testing.T) {
	t.Parallel()
	b := startOn(t, testdb.NewLogical(t), withElectricAdmin)
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, map[string]any{"name": "chat"}))
	shape := followEntities(t, b)

	txidOf := func(what string, ans map[string]any) int64 {
		t.Helper()
		n, ok := ans["txid"].(float64) // the UI checks typeof txid === "number"
		if !ok || n <= 0 || n != float64(int64(n)) {
			t.Fatalf("%s answer without a numeric txid: %v", what, ans)
		}
		return int64(n)
	}
	carries := func(what string, txid int64) {
		t.Helper()
		if found, seen := shape.changeIn(t, "/chat/t1", txid); !found {
			t.Fatalf("%s: no change of the entity carries the answer's txid %d (changes seen with txids %v)", what, txid, seen)
		}
	}

	spawn := b.must(201, b.do("PUT", "/_electric/entities/chat/t1", electricAdmin, map[string]any{})).json(t)
	if spawn["url"] != "/chat/t1" || spawn["status"] != "idle" {
		t.Fatalf("spawn answer is not the entity: %v", spawn)
	}
	carries("spawn", txidOf("spawn", spawn))

	tag := b.must(200, b.do("POST", "/_electric/entities/chat/t1/tags/title", electricAdmin, map[string]any{"value": "Hello"})).json(t)
	if tags, _ := tag["tags"].(map[string]any); tags["title"] != "Hello" {
		t.Fatalf("tag answer is not the entity: %v", tag)
	}
	carries("tag", txidOf("tag", tag))

	// The send's txid is text (what the UI reads), the inbox event's
	// headers.txid on the main stream.
	sent := b.must(200, b.do("POST", "/_electric/entities/chat/t1/send", electricAdmin, map[string]any{"payload": "hi"})).json(t)
	txid, ok := sent["txid"].(string)
	if !ok || txid == "" || sent["offset"] == nil {
		t.Fatalf("send answer without a txid string: %v", sent)
	}
	var events []map[string]any
	if err := json.Unmarshal(b.must(200, b.do("GET", "/v1/stream/chat/t1/main?offset=-1", electricAdmin, nil)).body, &events); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(events, func(e map[string]any) bool {
		h, _ := e["headers"].(map[string]any)
		return e["type"] == "inbox" && h["txid"] == txid
	}) {
		t.Fatalf("no inbox event with headers.txid %q on the main stream: %v", txid, events)
	}

	kill := b.must(200, b.do("POST", "/_electric/entities/chat/t1/signal", electricAdmin, map[string]any{"signal": "SIGKILL"})).json(t)
	if kill["new_state"] != "killed" {
		t.Fatalf("signal answer: %v", kill)
	}
	carries("signal", txidOf("signal", kill))

	// The /entities routes answer as SPEC section 4 has them, without one.
	b.must(201, b.do("PUT", "/entities/chat/t2", electricAdmin, map[string]any{}))
	if got := b.must(202, b.do("POST", "/entities/chat/t2", electricAdmin, map[string]any{"payload": "hi"})).json(t); got["txid"] != nil {
		t.Fatalf("/entities send answer has a txid: %v", got)
	}
}
