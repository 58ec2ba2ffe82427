package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzInput is one request of the fuzz corpus. Placeholders in path,
// headers and body are replaced with the fixture's values: {admin},
// {runner} (token), {claim} (claim token), {write} (write token),
// {consumer}, {epoch}, {main} (the claimed entity's main stream).
type fuzzInput struct {
	method, path, headers string // headers: "Name: value" lines
	body                  string
}

// unstorable are inputs that answered 500 before the edge checks: text
// PostgreSQL refuses (NUL, lone surrogates, invalid UTF-8), numbers beyond
// numeric's range, out-of-range stream TTLs and expiry times. Each must be
// a 400 INVALID_REQUEST that changes nothing.
var unstorable = []fuzzInput{
	{"POST", "/entities/chat/1", "", `{"payload": "a\u0000b"}`},
	{"POST", "/entities/chat/1", "", `{"payload": {"k\u0000": 1}}`},
	{"POST", "/entities/chat/1", "", `{"payload": "\ud800"}`},
	{"POST", "/entities/chat/1", "", `{"payload": ["\udc00x"]}`},
	{"POST", "/entities/chat/1", "", "{\"payload\": \"\xff\xfe\"}"},
	{"POST", "/entities/chat/1", "", `{"payload": 1e1000000}`},
	{"POST", "/entities/chat/1", "", `{"payload": -1e-1000000}`},
	{"POST", "/entities/chat/1", "", `{"payload": 0e-99999}`},
	{"POST", "/entities/chat/1", "", `{"payload": 1, "from": "a\u0000"}`},
	{"POST", "/entities/chat/1", "", `{"payload": 1, "from": "\ud800"}`},
	{"POST", "/entities/chat/1", "", "{\"payload\": 1, \"from\": \"\xff\"}"},
	{"PUT", "/entities/chat/77", "", `{"runner_id": "\u0000"}`},
	{"POST", "/_electric/runners", "", `{"id": "rx", "label": "a\u0000"}`},
	{"POST", "/_electric/runners", "", `{"id": "rx", "kind": "\ud800"}`},
	{"POST", "/_electric/runners", "", "{\"id\": \"rx\", \"label\": \"\xff\"}"},
	{"POST", "/_electric/runners", "", `{"id": "rx", "label": 1e1000000}`},
	{"POST", "/_electric/runners/r1/heartbeat", "Authorization: Bearer {runner}", `{"diagnostics": {"a": "\u0000"}}`},
	{"POST", "/_electric/runners/r1/heartbeat", "Authorization: Bearer {runner}", `{"diagnostics": "\ud800"}`},
	{"POST", "/_electric/runners/r1/heartbeat", "Authorization: Bearer {runner}", `{"diagnostics": [1e1000000]}`},
	{"POST", "/_electric/runners/r1/heartbeat", "Authorization: Bearer {runner}", "{\"diagnostics\": \"\xff\"}"},
	{"POST", "/_electric/runners/r1/claim", "Authorization: Bearer {runner}", `{"lease_ttl_ms": 1e1000000}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": {epoch}, "done": true, "acks": [{"stream": "\u0000", "offset": "0000000000000001"}]}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": {epoch}, "done": true, "acks": [{"stream": "{main}", "offset": "\u0000"}]}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": {epoch}, "done": true, "acks": [{"path": "\ud800", "offset": "1"}]}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", "{\"epoch\": {epoch}, \"done\": true, \"acks\": [{\"stream\": \"\xff\", \"offset\": \"1\"}]}"},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": 1e1000000, "done": true}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": {epoch}, "wake_id": "\u0000"}`},
	{"GET", "/_electric/claims?entity_url=%00", "", ""},
	{"GET", "/_electric/claims?entity_url=%ff", "", ""},
	{"GET", "/_electric/claims?runner_id=%00", "", ""},
	{"GET", "/entities?status=%ff", "", ""},
	{"GET", "/_electric/runners?after=%00", "", ""},
	{"GET", "/entities/chat/%ff", "", ""},
	{"PUT", "/v1/stream/%ff", "Content-Type: text/plain", ""},
	{"POST", "/v1/stream/plain%00x", "Content-Type: text/plain", "x"},
	{"POST", "/v1/stream/plain", "Content-Type: text/plain\nProducer-Id: \xff\nProducer-Epoch: 0\nProducer-Seq: 0", "x"},
	{"POST", "/v1/stream/plain", "Content-Type: text/plain\nStream-Seq: \xff", "x"},
	{"POST", "/v1/stream/plain", "Content-Type: text/plain\nProducer-Epoch: 0\nProducer-Seq: 0\nProducer-Id: " + strings.Repeat("pQ7zX2mK9v", 500), "x"},
	{"PUT", "/v1/stream/forked", "Content-Type: text/plain\nStream-Forked-From: /v1/stream/\xff", ""},
	{"PUT", "/v1/stream/ttl-huge", "Content-Type: text/plain\nStream-TTL: 99999999999999", ""},
	{"PUT", "/v1/stream/ttl-zero", "Content-Type: text/plain\nStream-TTL: 0", ""},
	{"PUT", "/v1/stream/exp-zero", "Content-Type: text/plain\nStream-Expires-At: 0000-01-01T00:00:00Z", ""},
	{"PUT", "/v1/stream/exp-past", "Content-Type: text/plain\nStream-Expires-At: 2001-01-01T00:00:00Z", ""},
}

// more seeds: valid requests and other refusals over every route, so the
// fuzzer starts from each route's shape.
var fuzzSeeds = []fuzzInput{
	{"GET", "/healthz", "", ""},
	{"GET", "/entities/chat/1", "Authorization: Bearer {admin}", ""},
	{"GET", "/entities?status=idle", "Authorization: Bearer {admin}", ""},
	{"PUT", "/entities/chat/2", "Authorization: Bearer {admin}", `{"runner_id": "r1"}`},
	{"POST", "/entities/chat/2", "Authorization: Bearer {admin}", `{"payload": {"t": "hi"}, "from": "me"}`},
	{"POST", "/entities/chat/1", "", `{"payload": 1}`},
	{"DELETE", "/entities/chat/404", "Authorization: Bearer {admin}", ""},
	{"POST", "/_electric/runners", "Authorization: Bearer {admin}", `{"id": "r2", "label": "l", "kind": "k"}`},
	{"GET", "/_electric/runners?limit=1&after=r1", "Authorization: Bearer {admin}", ""},
	{"GET", "/_electric/runners?limit=0", "Authorization: Bearer {admin}", ""},
	{"GET", "/_electric/runners/r1", "Authorization: Bearer {admin}", ""},
	{"POST", "/_electric/runners/r1/heartbeat", "Authorization: Bearer {runner}", `{"lease_ms": 5000, "diagnostics": {"v": 1}}`},
	{"POST", "/_electric/runners/r1/heartbeat", "Authorization: Bearer {runner}", `{"diagnostics": "` + strings.Repeat("d", 17<<10) + `"}`},
	{"POST", "/_electric/runners/r1/disable", "", ""},
	{"GET", "/_electric/runners/r1/health", "Authorization: Bearer {runner}", ""},
	{"POST", "/_electric/runners/r1/claim", "Authorization: Bearer {runner}", `{"lease_ttl_ms": 99}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": {epoch}}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer {claim}", `{"epoch": {epoch}, "wake_id": "{consumer}"}`},
	{"POST", "/_electric/wake-callbacks/{consumer}", "Authorization: Bearer nope", `{"epoch": {epoch}, "done": true}`},
	{"GET", "/_electric/claims?status=active&limit=5", "Authorization: Bearer {admin}", ""},
	{"POST", "/_electric/claims/{consumer}/99/release", "Authorization: Bearer {admin}", ""},
	{"POST", "{main}", "Authorization: Bearer {write}\nContent-Type: application/json", `{"reply": 1}`},
	{"POST", "{main}", "Authorization: Bearer {write}\nStream-Closed: true", ""},
	{"POST", "{main}", "Content-Type: application/json", `{"anon": 1}`},
	{"POST", "{main}", "Authorization: Bearer {write}\nContent-Type: application/json\nProducer-Id: p\nProducer-Epoch: 9007199254740991\nProducer-Seq: 0", `{"p": 1}`},
	{"GET", "{main}?offset=-1", "", ""},
	{"GET", "{main}?offset=9999999999999999", "", ""},
	{"HEAD", "{main}", "", ""},
	{"PUT", "{main}", "Authorization: Bearer {admin}", ""},
	{"DELETE", "{main}", "Authorization: Bearer {admin}", ""},
	{"PUT", "/v1/stream/new", "Authorization: Bearer {admin}\nContent-Type: application/json\nStream-TTL: 3600", `[{"a": 1}]`},
	{"POST", "/v1/stream/plain", "Content-Type: text/plain", "anonymous"},
	{"POST", "/v1/stream/plain", "Authorization: Bearer {admin}\nContent-Type: application/json", `[]`},
	{"POST", "/v1/stream/plain", "Authorization: Bearer {admin}\nContent-Type: text/plain\nStream-Seq: b", "x"},
	{"GET", "/v1/stream/plain?offset=abc", "", ""},
	{"GET", "/v1/stream/ttl?offset=9999999999999999", "", ""},
	{"GET", "/v1/stream/plain?offset=-1&live=sometimes", "", ""},
	{"PUT", "/v1/stream/__ds/x", "Authorization: Bearer {admin}", ""},
	{"PATCH", "/v1/stream/plain", "", ""},
	{"DELETE", "/v1/stream/absent", "Authorization: Bearer {admin}", ""},
	{"GET", "/nope", "", ""},
	{"PUT", "/_electric/entities/chat/3", "Authorization: Bearer {admin}", `{"tags": {"a": "b"}, "parent": "/chat/1", "initialMessage": {"x": 1}}`},
	{"PUT", "/_electric/entities/chat/4", "Authorization: Bearer {admin}", `{"tags": {"a": 1}, "parent": "/chat/404"}`},
	{"GET", "/_electric/entities?type=chat&status=killed&parent=/chat/1", "Authorization: Bearer {admin}", ""},
	{"POST", "/_electric/entities/chat/1/send", "Authorization: Bearer {admin}\nElectric-Principal: user:a", `{"payload": 1, "from_principal": "user:b"}`},
	{"POST", "/_electric/entities/chat/1/tags/k", "Authorization: Bearer {write}", `{"value": "v"}`},
	{"DELETE", "/_electric/entities/chat/1/tags/k", "Authorization: Bearer {admin}", ""},
	{"POST", "/_electric/entities/chat/1/signal", "Authorization: Bearer {admin}", `{"signal": "SIGSTOP"}`},
	{"POST", "/_electric/entities/chat/1/signal", "Authorization: Bearer {admin}", `{"signal": "SIGKILL", "reason": "r"}`},
	{"GET", "/chat/1/main?offset=0000000000000000_0000000000000000", "", ""},
	{"POST", "/chat/1/main", "Content-Type: application/json", `{"anon": 1}`},
	{"POST", "/entities/chat/1", "Authorization: Bearer {admin}", `{"payload": ` + strings.Repeat("[", 600) + strings.Repeat("]", 600) + `}`},
}

// fuzzFixture is the state every fuzz input runs against.
type fuzzFixture struct {
	b       *bundle
	replace *strings.Replacer
	digest  string // SQL: a digest of every table's rows, at $1 as now
	client  *http.Client
}

func newFuzzFixture(tb testing.TB) *fuzzFixture {
	b := setup(tb, func(o *options) { o.adminToken = "fuzz-admin-token" })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 60000)
	b.must(201, b.do("PUT", "/v1/stream/plain", b.admin, "", "Content-Type", "text/plain"))
	b.must(201, b.do("PUT", "/v1/stream/ttl", b.admin, "", "Content-Type", "text/plain", "Stream-TTL", "3600"))
	fx := &fuzzFixture{
		b: b,
		replace: strings.NewReplacer("{admin}", b.admin, "{runner}", rt, "{claim}", w.ClaimToken,
			"{write}", w.WriteToken, "{consumer}", w.ConsumerID, "{epoch}", strconv.FormatInt(w.Epoch, 10),
			"{main}", w.StreamPath),
		client: &http.Client{Timeout: 30 * time.Second},
	}
	fx.digest = digestSQL(tb, b)
	return fx
}

// digestSQL builds one query hashing every row of every table (but
// goose's), so that any change a request makes shows. Two things are not
// state a refusal changes: a stream's sliding-TTL clock (accessed_at: any
// read attempt of a TTL stream is an access) and streams that have expired
// by $1 (the next request at their path removes them lazily; they answer
// 404 either way).
func digestSQL(tb testing.TB, b *bundle) string {
	rows, err := b.db.Pool.Query(context.Background(), `
		SELECT c.table_name, string_agg(quote_ident(c.column_name), ', ' ORDER BY c.ordinal_position)
		  FROM information_schema.columns c JOIN information_schema.tables t USING (table_schema, table_name)
		 WHERE c.table_schema = 'public' AND t.table_type = 'BASE TABLE'
		   AND c.table_name NOT LIKE 'goose%' AND NOT (c.table_name = 'streams' AND c.column_name = 'accessed_at')
		 GROUP BY c.table_name ORDER BY c.table_name`)
	if err != nil {
		tb.Fatal(err)
	}
	defer rows.Close()
	const live = `(s.entity_url IS NOT NULL OR NOT pw_stream_expired(s, $1::timestamptz))`
	var parts []string
	for rows.Next() {
		var table, cols string
		if err := rows.Scan(&table, &cols); err != nil {
			tb.Fatal(err)
		}
		where := ""
		switch table {
		case "streams":
			where = " s WHERE " + live
		case "stream_messages", "stream_producers":
			where = " x WHERE EXISTS (SELECT 1 FROM streams s WHERE s.tenant_id = x.tenant_id AND s.path = x.path AND " + live + ")"
		}
		parts = append(parts, fmt.Sprintf(`(SELECT %s || ':' || md5(coalesce(string_agg(r::text, '|' ORDER BY r::text), ''))
			FROM (SELECT %s FROM %s%s) r)`, quoteLiteral(table), cols, table, where))
	}
	if err := rows.Err(); err != nil {
		tb.Fatal(err)
	}
	return "SELECT concat_ws(',', " + strings.Join(parts, ", ") + ")"
}

func quoteLiteral(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

func (fx *fuzzFixture) snapshot(t *testing.T, at time.Time) string {
	t.Helper()
	waitPublished(t, fx.b.db.Pool) // as bundle.state
	var d string
	if err := fx.b.db.Pool.QueryRow(context.Background(), fx.digest, at).Scan(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

// run sends one input; ok is false when the input is no HTTP request a
// client could send (then nothing is checked).
func (fx *fuzzFixture) run(t *testing.T, in fuzzInput) (status int, body []byte, ok bool) {
	t.Helper()
	req, err := http.NewRequest(in.method, fx.b.url+fx.replace.Replace(in.path), strings.NewReader(fx.replace.Replace(in.body)))
	if err != nil || req.URL.Host != strings.TrimPrefix(fx.b.url, "http://") {
		return 0, nil, false
	}
	for _, line := range strings.Split(fx.replace.Replace(in.headers), "\n") {
		k, v, found := strings.Cut(line, ":")
		if found {
			req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
		}
	}
	res, err := fx.client.Do(req)
	if err != nil {
		return 0, nil, false // the client refused to send it (bad header, method)
	}
	defer res.Body.Close()
	body, _ = io.ReadAll(res.Body)
	return res.StatusCode, body, true
}

// check runs one input and asserts the server's promises: never a 5xx,
// a JSON error body on every 4xx, and
// no change of any table on a 4xx.
func (fx *fuzzFixture) check(t *testing.T, in fuzzInput) int {
	t.Helper()
	at := time.Now()
	// The wake events of earlier requests are published first: the
	// server's publisher would otherwise write them during this request.
	waitPublished(t, fx.b.db.Pool)
	before := fx.snapshot(t, at)
	status, body, ok := fx.run(t, in)
	if !ok {
		return 0
	}
	if status >= 500 {
		t.Fatalf("%s %q (headers %q, body %.200q): %d %s", in.method, in.path, in.headers, in.body, status, body)
	}
	if status >= 400 {
		// net/http answers a request it cannot parse (a request line with a
		// space in the target, say) itself, in plain text, before any
		// handler: not pullwake's answer to check.
		parsed := !(status == http.StatusBadRequest && strings.HasPrefix(string(body), "400 Bad Request"))
		if in.method != http.MethodHead && parsed {
			var e struct {
				Error struct{ Code, Message string } `json:"error"`
			}
			if err := json.Unmarshal(body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
				t.Fatalf("%s %q: %d without a JSON error body: %q", in.method, in.path, status, body)
			}
		}
		if after := fx.snapshot(t, at); after != before {
			t.Fatalf("%s %q (headers %q, body %.200q): %d changed the database", in.method, in.path, in.headers, in.body, status)
		}
	}
	return status
}

// FuzzRequests sends arbitrary requests to every route. `go test` runs the
// seeds only (a second or two); `go test -fuzz FuzzRequests ./server/`
// explores from them.
func FuzzRequests(f *testing.F) {
	for _, in := range unstorable {
		in = withAuth(in)
		f.Add(in.method, in.path, in.headers, []byte(in.body))
	}
	for _, in := range fuzzSeeds {
		f.Add(in.method, in.path, in.headers, []byte(in.body))
	}
	for _, in := range encodedPathSeeds() {
		f.Add(in.method, in.path, in.headers, []byte(in.body))
	}
	fx := newFuzzFixture(f)
	f.Fuzz(func(t *testing.T, method, path, headers string, body []byte) {
		if !strings.HasPrefix(path, "/") && !strings.HasPrefix(path, "{") {
			path = "/" + path
		}
		fx.check(t, fuzzInput{method, path, headers, string(body)})
	})
}

// encodedPathSeeds are the paths of wake streams, main streams and the
// routes that lead to them with each separator in turn written as %2F,
// %2f, %252F (double encoding), %5C, or followed by a dot segment (./,
// ../, %2E%2E/), on each method, with the admin token.
func encodedPathSeeds() []fuzzInput {
	bases := []string{"/v1/stream/runners/r1/wake", "/runners/r1/wake", "/v1/stream/chat/1/main", "/chat/1/main",
		"/entities/chat/1", "/_electric/entities/chat/1/send", "/_electric/runners/r1/claim", "/_electric/wake-callbacks/{consumer}"}
	forms := []func(before, after string) string{
		func(b, a string) string { return b + "%2F" + a },
		func(b, a string) string { return b + "%2f" + a },
		func(b, a string) string { return b + "%252F" + a },
		func(b, a string) string { return b + "%5C" + a },
		func(b, a string) string { return b + "/./" + a },
		func(b, a string) string { return b + "/x/../" + a },
		func(b, a string) string { return b + "/x/%2E%2E/" + a },
	}
	var out []fuzzInput
	for _, p := range bases {
		for i := 1; i < len(p); i++ {
			if p[i] != '/' {
				continue
			}
			for _, form := range forms {
				for _, m := range []string{"GET", "POST", "DELETE"} {
					out = append(out, fuzzInput{m, form(p[:i], p[i+1:]), "Authorization: Bearer {admin}", `[{"type":"wake"}]`})
				}
			}
		}
	}
	return out
}

// withAuth gives an input without credentials the admin token, so that it
// reaches the handler's checks rather than a 401.
func withAuth(in fuzzInput) fuzzInput {
	if !strings.Contains(in.headers, "Authorization") {
		in.headers = strings.TrimSpace("Authorization: Bearer {admin}\n" + in.headers)
	}
	return in
}

// Each input that used to answer 500 is now a 400 INVALID_REQUEST that
// changes nothing.
func TestUnstorableInputIs400(t *testing.T) {
	t.Parallel()
	fx := newFuzzFixture(t)
	for _, in := range unstorable {
		in = withAuth(in)
		if st := fx.check(t, in); st != http.StatusBadRequest {
			t.Errorf("%s %q (body %.80q): status %d, want 400", in.method, in.path, in.body, st)
		}
	}
}
