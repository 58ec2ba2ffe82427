package server_test

import (
	"encoding/json"
	"slices"
	"testing"
)

// streamEvent is a JSON-mode event as a reader sees it.
type streamEvent struct {
	Type    string         `json:"type"`
	Value   map[string]any `json:"value"`
	Headers map[string]any `json:"headers"`
}

func (b *bundle) readEvents(path, from string) []streamEvent {
	b.t.Helper()
	var evs []streamEvent
	if err := json.Unmarshal(b.must(200, b.do("GET", path+"?offset="+from, b.admin, nil)).body, &evs); err != nil {
		b.t.Fatal(err)
	}
	return evs
}

// Electric's runtime reads an entity's main stream from the start at each
// wake and places each State Protocol event against the claim's stream
// offset (the acked offset) by its headers.offset. Each such event carries
// its own offset (the stream's just after it, as an append answers it), so
// the acked message is at the claim's offset and exactly the messages sent
// since the ack are beyond it: the runtime is handed no message it
// answered before. Reading from an event's offset returns the events after
// it. Plain JSON streams return what was appended.
func TestEntityStreamEventsCarryTheirOffset(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/o1")
	main := "/v1/stream/chat/o1/main"
	b.send("/chat/o1", "first")
	w1 := b.mustClaim("r1", rt, 0)
	b.must(200, b.done(w1, map[string]any{"stream": main, "offset": "0000000000000001"}))
	b.send("/chat/o1", "second")
	b.send("/chat/o1", "third")
	w2 := b.mustClaim("r1", rt, 0)
	if len(w2.Streams) != 1 || w2.Streams[0].Offset != "0000000000000001" {
		t.Fatalf("second claim's streams: %+v", w2.Streams)
	}

	all := b.readEvents(main, "-1")
	var kept []any
	for i, e := range all {
		at, ok := e.Headers["offset"].(string)
		if !ok || at != []string{"0000000000000001", "0000000000000002", "0000000000000003"}[i] {
			t.Fatalf("event %d: headers.offset %v, want its own offset: %+v", i, e.Headers["offset"], all)
		}
		if at == w2.Streams[0].Offset && e.Value["payload"] != "first" {
			t.Fatalf("the event at the claim's offset is %v, want the acked one", e.Value["payload"])
		}
		if at > w2.Streams[0].Offset {
			kept = append(kept, e.Value["payload"])
		}
	}
	if !slices.Equal(kept, []any{"second", "third"}) {
		t.Fatalf("events past the claim's offset: %v, want the two messages sent since the ack", kept)
	}
	if from := b.readEvents(main, "0000000000000002"); len(from) != 1 || from[0].Value["payload"] != "third" {
		t.Fatalf("reading from the second event's offset: %+v", from)
	}

	b.must(201, b.do("PUT", "/v1/stream/plain-json", b.admin, nil, "Content-Type", "application/json"))
	appended := `{"type":"x","headers":{"operation":"insert"}}`
	b.must(204, b.do("POST", "/v1/stream/plain-json", b.admin, appended, "Content-Type", "application/json"))
	if got := string(b.must(200, b.do("GET", "/v1/stream/plain-json?offset=-1", b.admin, nil)).body); got != "["+appended+"]" {
		t.Fatalf("a plain stream's event changed: %s", got)
	}
}
