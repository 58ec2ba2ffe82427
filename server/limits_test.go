package server_test

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
)

// The runner list is paged: at most 1000 rows, ?limit= and ?after=<id>,
// a Link header to the next page when a page is full.
func TestRunnerListPages(t *testing.T) {
	t.Parallel()
	b := setup(t)
	for i := range 5 {
		b.registerRunner(fmt.Sprintf("r%d", i))
	}
	ids := func(r resp) string {
		var rows []map[string]any
		if err := jsonUnmarshal(r.body, &rows); err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, row := range rows {
			out = append(out, row["id"].(string))
		}
		return strings.Join(out, ",")
	}
	r := b.must(200, b.do("GET", "/_electric/runners?limit=2", "", nil))
	if ids(r) != "r0,r1" || r.header.Get("Link") != `</_electric/runners?after=r1&limit=2>; rel="next"` {
		t.Fatalf("first page %s, Link %q", ids(r), r.header.Get("Link"))
	}
	r = b.must(200, b.do("GET", "/_electric/runners?limit=2&after=r1", "", nil))
	if ids(r) != "r2,r3" {
		t.Fatalf("second page %s", ids(r))
	}
	r = b.must(200, b.do("GET", "/_electric/runners?limit=2&after=r3", "", nil))
	if ids(r) != "r4" || r.header.Get("Link") != "" {
		t.Fatalf("last page %s, Link %q", ids(r), r.header.Get("Link"))
	}
	if r := b.must(200, b.do("GET", "/_electric/runners", "", nil)); ids(r) != "r0,r1,r2,r3,r4" {
		t.Fatalf("whole list %s", ids(r))
	}
	for _, q := range []string{"limit=0", "limit=1001", "limit=x", "after=a%20b"} {
		if r := b.do("GET", "/_electric/runners?"+q, "", nil); r.status != 400 || r.errorCode(t) != "INVALID_REQUEST" {
			t.Fatalf("%s: %d %s", q, r.status, r.body)
		}
	}
}

// Heartbeat diagnostics are capped at 16 KiB of compact JSON: larger is 413
// and stores nothing; within the cap they are stored compacted.
func TestHeartbeatDiagnosticsAreCapped(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	hb := func(diag string) resp {
		return b.do("POST", "/_electric/runners/r1/heartbeat", rt, `{"diagnostics": `+diag+`}`)
	}
	b.must(200, hb(`{ "v" : 1 }`))
	big := `{"blob": "` + strings.Repeat("x", 16<<10) + `"}`
	if r := hb(big); r.status != http.StatusRequestEntityTooLarge || r.errorCode(t) != "PAYLOAD_TOO_LARGE" {
		t.Fatalf("big diagnostics: %d %s", r.status, r.body)
	}
	// Whitespace does not count: compacted it fits.
	b.must(200, hb(`{"pad": "`+strings.Repeat("y", 16<<10-20)+`"`+strings.Repeat(" ", 4096)+`}`))
	r := b.must(200, b.do("GET", "/_electric/runners/r1", "", nil)).json(t)
	d, _ := r["diagnostics"].(map[string]any)
	if p, _ := d["pad"].(string); len(p) != 16<<10-20 {
		t.Fatalf("stored diagnostics %v", r["diagnostics"])
	}
}

// A claim's write token cannot close its entity's main stream (with or
// without a final body): the next claim still appends.
func TestClaimCannotCloseMainStream(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "one")
	w := b.mustClaim("r1", rt, 0)
	for _, body := range []any{nil, map[string]any{"last": true}} {
		r := b.do("POST", w.StreamPath, w.WriteToken, body, "Stream-Closed", "true")
		if r.status != http.StatusForbidden || r.errorCode(t) != "FORBIDDEN" {
			t.Fatalf("close with body %v: %d %s", body, r.status, r.body)
		}
	}
	b.must(200, b.done(w))
	b.send("/chat/1", "two")
	w2 := b.mustClaim("r1", rt, 0)
	b.must(204, b.appendMain(w2, w2.WriteToken, map[string]any{"reply": 2}))
	if r := b.must(200, b.do("GET", w.StreamPath+"?offset=-1", "", nil)); r.header.Get("Stream-Closed") != "" {
		t.Fatalf("main stream closed: %v", r.header)
	}
}

// A runner list page ends once its diagnostics pass 1 MiB: 100 runners
// with 16 KiB diagnostics each come in pages of at most 65, each with a
// Link to the next, and every runner is listed once.
func TestRunnerListPagesByBytes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	diag := map[string]any{"blob": strings.Repeat("d", 16<<10-20)}
	for i := range 100 {
		id := fmt.Sprintf("r%03d", i)
		tok := b.registerRunner(id)
		b.must(200, b.do("POST", "/_electric/runners/"+id+"/heartbeat", tok, map[string]any{"diagnostics": diag}))
	}
	seen := 0
	next := "/_electric/runners"
	for pages := 0; next != ""; pages++ {
		if pages > 10 {
			t.Fatal("more than 10 pages")
		}
		r := b.must(200, b.do("GET", next, "", nil))
		if len(r.body) > 1<<20+(20<<10) { // the page budget plus the runner that passed it
			t.Fatalf("page of %d bytes", len(r.body))
		}
		var rows []map[string]any
		if err := jsonUnmarshal(r.body, &rows); err != nil {
			t.Fatal(err)
		}
		seen += len(rows)
		next = ""
		if l := r.header.Get("Link"); l != "" {
			next = strings.TrimPrefix(strings.Split(l, ">")[0], "<")
		}
	}
	if seen != 100 {
		t.Fatalf("listed %d runners over the pages, want 100", seen)
	}
}

// An error message that quotes its input is cut to 1024 bytes.
func TestErrorMessagesAreCut(t *testing.T) {
	t.Parallel()
	b := setup(t)
	r := b.do("POST", "/_electric/entity-types", "", map[string]any{"name": "big",
		"creation_schema": map[string]any{"type": "string", "pattern": "(" + strings.Repeat("a", 300<<10)}})
	if r.status != 400 {
		t.Fatalf("bad schema: %d", r.status)
	}
	if len(r.body) > 2048 {
		t.Fatalf("error answer of %d bytes: %.200s", len(r.body), r.body)
	}
}

// An entity type cannot grow past its caps by amendments: the amendment
// that would pass 256 schemas (or 512 KiB of them) is 400 naming the type,
// and the type is as it was.
func TestEntityTypeCaps(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.must(201, b.do("POST", "/_electric/entity-types", "", map[string]any{"name": "chat"}))
	add := func(from, n int) resp {
		m := map[string]any{}
		for i := from; i < from+n; i++ {
			m[fmt.Sprintf("m%03d", i)] = map[string]any{"type": "string"}
		}
		return b.do("PATCH", "/_electric/entity-types/chat/schemas", "", map[string]any{"inbox_schemas": m})
	}
	b.must(200, add(0, 200))
	b.must(200, add(200, 56))
	r := add(256, 1)
	if r.status != 400 || !strings.Contains(string(r.body), `\"chat\"`) || !strings.Contains(string(r.body), "256") {
		t.Fatalf("the 257th schema: %d %s", r.status, r.body)
	}
	typ := b.must(200, b.do("GET", "/_electric/entity-types/chat", "", nil)).json(t)
	if n := len(typ["inbox_schemas"].(map[string]any)); n != 256 || typ["revision"].(float64) != 3 {
		t.Fatalf("after the refused amendment: %d schemas, revision %v", n, typ["revision"])
	}
	big := map[string]any{"big": map[string]any{"description": strings.Repeat("x", 300<<10)}}
	b.must(201, b.do("POST", "/_electric/entity-types", "", map[string]any{"name": "wide", "inbox_schemas": big}))
	big2 := map[string]any{"big2": map[string]any{"description": strings.Repeat("y", 300<<10)}}
	if r := b.do("PATCH", "/_electric/entity-types/wide/schemas", "", map[string]any{"inbox_schemas": big2}); r.status != 400 ||
		!strings.Contains(string(r.body), "bytes") {
		t.Fatalf("amendment past 512 KiB: %d %.300s", r.status, r.body)
	}
}
