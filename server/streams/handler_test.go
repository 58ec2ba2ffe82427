package streams

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"
)

const jsonCT = "application/json"

func TestJSONCreateAppendRead(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/chat/room-1"
	r := b.must(t, 201, "PUT", p, `[{"a":1}]`, "Content-Type", jsonCT)
	if got := r.header.Get("Stream-Next-Offset"); got != "0000000000000001" {
		t.Fatalf("offset after create = %q", got)
	}
	b.must(t, 200, "PUT", p, "", "Content-Type", jsonCT) // same config: idempotent
	b.must(t, 409, "PUT", p, "", "Content-Type", "text/plain")

	prev := "0000000000000001"
	for _, body := range []string{`[{"b":2},{"c":3}]`, `{"d":4}`, `[[1,2],[3]]`} {
		r := b.must(t, 204, "POST", p, body, "Content-Type", "application/json; charset=utf-8")
		next := r.header.Get("Stream-Next-Offset")
		if next <= prev {
			t.Fatalf("offset %q not after %q", next, prev)
		}
		prev = next
	}
	r = b.must(t, 200, "GET", p+"?offset=-1", "")
	if r.body != `[{"a":1},{"b":2},{"c":3},{"d":4},[1,2],[3]]` {
		t.Fatalf("read -1 = %s", r.body)
	}
	if r.header.Get("Stream-Up-To-Date") != "true" || r.header.Get("Stream-Next-Offset") != prev {
		t.Fatalf("headers %v", r.header)
	}
	r = b.must(t, 200, "GET", p+"?offset=0000000000000003", "")
	if r.body != `[{"d":4},[1,2],[3]]` {
		t.Fatalf("read from 3 = %s", r.body)
	}
	r = b.must(t, 200, "GET", p+"?offset=now", "")
	if r.body != `[]` || r.header.Get("Stream-Next-Offset") != prev || r.header.Get("Cache-Control") != "no-store" {
		t.Fatalf("read now = %s %v", r.body, r.header)
	}
	// ETag round trip.
	r = b.must(t, 200, "GET", p+"?offset=-1", "")
	b.must(t, 304, "GET", p+"?offset=-1", "", "If-None-Match", r.header.Get("ETag"))
	b.must(t, 204, "DELETE", p, "")
	b.must(t, 404, "GET", p, "")
}

func TestBytesStream(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/files/a.bin"
	b.must(t, 201, "PUT", p, "", "Content-Type", "application/octet-stream")
	var offs []string
	for _, part := range []string{"he", "llo ", "world"} {
		offs = append(offs, b.must(t, 204, "POST", p, part, "Content-Type", "application/octet-stream").header.Get("Stream-Next-Offset"))
	}
	for i := 1; i < len(offs); i++ {
		if offs[i] <= offs[i-1] {
			t.Fatalf("offsets not increasing: %v", offs)
		}
	}
	if r := b.must(t, 200, "GET", p, ""); r.body != "hello world" {
		t.Fatalf("read = %q", r.body)
	}
	if r := b.must(t, 200, "GET", p+"?offset="+offs[0], ""); r.body != "llo world" {
		t.Fatalf("read after first = %q", r.body)
	}
	b.must(t, 409, "POST", p, "x", "Content-Type", "text/plain")
	h := b.must(t, 200, "HEAD", p, "")
	if h.header.Get("Stream-Next-Offset") != offs[2] || h.header.Get("Content-Type") != "application/octet-stream" {
		t.Fatalf("HEAD %v", h.header)
	}
}

func TestBadInputIs4xxAndChangesNothing(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/bad"
	b.must(t, 201, "PUT", p, `{"x":1}`, "Content-Type", jsonCT)
	big := strings.Repeat("a", StreamBodyLimit+1)
	cases := []struct {
		name, method, path, body string
		want                     int
		hdr                      []string
	}{
		{"bad offset", "GET", p + "?offset=12", "", 400, nil},
		{"offset past tail", "GET", p + "?offset=0000000000000009", "", 400, nil},
		{"bad live", "GET", p + "?offset=-1&live=poll", "", 400, nil},
		{"control character", "GET", "/v1/stream/a%01b", "", 400, nil},
		{"reserved prefix", "PUT", "/v1/stream/__ds/subscriptions/x", "", 400, nil},
		{"bad ttl", "PUT", "/v1/stream/t1", "", 400, []string{"Stream-TTL", "+10"}},
		{"ttl and expiry", "PUT", "/v1/stream/t2", "", 400, []string{"Stream-TTL", "10", "Stream-Expires-At", "2099-01-01T00:00:00Z"}},
		{"bad expiry", "PUT", "/v1/stream/t3", "", 400, []string{"Stream-Expires-At", "tomorrow"}},
		{"bad json put", "PUT", "/v1/stream/t4", "{", 400, []string{"Content-Type", jsonCT}},
		{"empty body", "POST", p, "", 400, []string{"Content-Type", jsonCT}},
		{"invalid json", "POST", p, "{nope", 400, []string{"Content-Type", jsonCT}},
		{"empty array", "POST", p, "[]", 400, []string{"Content-Type", jsonCT}},
		{"no content type", "POST", p, "1", 400, nil},
		{"partial producer", "POST", p, "1", 400, []string{"Content-Type", jsonCT, "Producer-Id", "x"}},
		{"bad producer epoch", "POST", p, "1", 400, []string{"Content-Type", jsonCT, "Producer-Id", "x", "Producer-Epoch", "-1", "Producer-Seq", "0"}},
		{"too large", "POST", p, big, 413, []string{"Content-Type", jsonCT}},
		{"missing stream", "POST", "/v1/stream/nope", "1", 404, []string{"Content-Type", jsonCT}},
		{"fork header without source", "PUT", "/v1/stream/f1", "", 400, []string{"Stream-Fork-Sub-Offset", "0"}},
		{"fork of a missing source", "PUT", "/v1/stream/f2", "", 404, []string{"Stream-Forked-From", "/v1/stream/nope"}},
		{"fork past the tail", "PUT", "/v1/stream/f3", "", 400, []string{"Stream-Forked-From", p, "Stream-Fork-Offset", "0000000000000005"}},
		{"fork sub-offset past the next message", "PUT", "/v1/stream/f4", "", 400, []string{"Stream-Forked-From", p, "Stream-Fork-Offset", "0000000000000000", "Stream-Fork-Sub-Offset", "2"}},
		{"fork sub-offset malformed", "PUT", "/v1/stream/f5", "", 400, []string{"Stream-Forked-From", p, "Stream-Fork-Offset", "0000000000000000", "Stream-Fork-Sub-Offset", "05"}},
		{"fork sub-offset without fork offset", "PUT", "/v1/stream/f6", "", 400, []string{"Stream-Forked-From", p, "Stream-Fork-Sub-Offset", "1"}},
		{"fork source not a stream path", "PUT", "/v1/stream/f7", "", 400, []string{"Stream-Forked-From", "bad"}},
		{"fork source not UTF-8", "PUT", "/v1/stream/f8", "", 400, []string{"Stream-Forked-From", "/v1/stream/\xff"}},
		{"fork content type differs", "PUT", "/v1/stream/f9", "", 409, []string{"Stream-Forked-From", p, "Content-Type", "text/plain"}},
		{"fork offset now", "PUT", "/v1/stream/f10", "", 400, []string{"Stream-Forked-From", p, "Stream-Fork-Offset", "now"}},
	}
	for _, c := range cases {
		r := b.do(t, c.method, c.path, c.body, c.hdr...)
		if r.status != c.want {
			t.Errorf("%s: status %d, want %d (%s)", c.name, r.status, c.want, r.body)
		}
		if c.method != "HEAD" && r.status != 304 && !strings.Contains(r.body, `"code"`) {
			t.Errorf("%s: body %q is not an error object", c.name, r.body)
		}
	}
	if r := b.must(t, 200, "GET", p, ""); r.body != `[{"x":1}]` {
		t.Fatalf("stream changed: %s", r.body)
	}
	for _, q := range []string{"/v1/stream/t1", "/v1/stream/t2", "/v1/stream/t3", "/v1/stream/t4", "/v1/stream/f1", "/v1/stream/f2",
		"/v1/stream/f3", "/v1/stream/f4", "/v1/stream/f5", "/v1/stream/f6", "/v1/stream/f7", "/v1/stream/f8", "/v1/stream/f9", "/v1/stream/f10"} {
		b.must(t, 404, "HEAD", q, "")
	}
}

func TestLongPollWakesOnAppend(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/lp"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	got := make(chan resp, 1)
	go func() { got <- b.do(t, "GET", p+"?offset=0000000000000000&live=long-poll", "") }()
	waitFor(t, "the long-poll to wait", func() bool { return b.h.n.waiting(p) == 1 })
	b.must(t, 204, "POST", p, "hi", "Content-Type", "text/plain")
	select {
	case r := <-got:
		if r.status != 200 || r.body != "hi" || r.header.Get("Stream-Cursor") == "" {
			t.Fatalf("long-poll = %d %q %v", r.status, r.body, r.header)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("long-poll not woken by the append")
	}
}

func TestLongPollTimeoutAndClosedStream(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{longPoll: 100 * time.Millisecond})
	p := "/v1/stream/lp2"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	r := b.must(t, 204, "GET", p+"?offset=-1&live=long-poll&cursor=999999999", "")
	if c, _ := strconv.Atoi(r.header.Get("Stream-Cursor")); r.header.Get("Stream-Up-To-Date") != "true" || c <= 999999999 {
		t.Fatalf("timeout headers %v", r.header)
	}
	b.must(t, 204, "POST", p, "", "Stream-Closed", "true")
	r = b.must(t, 204, "GET", p+"?offset=now&live=long-poll", "")
	if r.header.Get("Stream-Closed") != "true" {
		t.Fatalf("closed long-poll headers %v", r.header)
	}
}

// sseEvents reads SSE events from a live response until n events arrived.
func sseEvents(t *testing.T, sc *bufio.Scanner, n int) []string {
	t.Helper()
	var evs []string
	var cur strings.Builder
	for len(evs) < n && sc.Scan() {
		line := sc.Text()
		if line == "" {
			evs = append(evs, cur.String())
			cur.Reset()
			continue
		}
		cur.WriteString(line + "\n")
	}
	if len(evs) < n {
		t.Fatalf("SSE ended after %d events: %v", len(evs), sc.Err())
	}
	return evs
}

func openSSE(t *testing.T, url string) (*http.Response, *bufio.Scanner) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { res.Body.Close() })
	return res, bufio.NewScanner(res.Body)
}

func TestSSEFramingAndOneQueryPerWakeUp(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/sse-text"
	b.must(t, 201, "PUT", p, "line1\nline2\r\n data", "Content-Type", "text/plain")
	res, sc := openSSE(t, b.url+p+"?offset=-1&live=sse")
	if res.Header.Get("Content-Type") != "text/event-stream" || res.Header.Get("Stream-SSE-Data-Encoding") != "" {
		t.Fatalf("SSE headers %v", res.Header)
	}
	evs := sseEvents(t, sc, 2)
	if evs[0] != "event: data\ndata:line1\ndata:line2\ndata:  data\n" {
		t.Fatalf("data event %q", evs[0])
	}
	var ctl controlEvent
	if err := json.Unmarshal([]byte(strings.TrimPrefix(strings.SplitN(evs[1], "\n", 2)[1], "data:")), &ctl); err != nil {
		t.Fatalf("control event %q: %v", evs[1], err)
	}
	if !ctl.UpToDate || ctl.StreamCursor == "" || ctl.StreamNextOffset != "0000000000000001" {
		t.Fatalf("control %+v", ctl)
	}
	// Each append wakes the reader once: one read query per wake-up.
	waitFor(t, "the SSE reader to wait", func() bool { return b.h.n.waiting(p) == 1 })
	for i := range 3 {
		before := b.queries.n.Load()
		// Append through the test pool: only the reader's queries are counted.
		b.exec(t, "SELECT pw_stream_append('default', $1, ARRAY[convert_to('x', 'UTF8')], now())", p)
		b.h.Notify(p)
		evs := sseEvents(t, sc, 2)
		if evs[0] != "event: data\ndata:x\n" {
			t.Fatalf("append %d: data event %q", i, evs[0])
		}
		if n := b.queries.n.Load() - before; n != 1 {
			t.Fatalf("append %d: %d queries for one wake-up, want 1", i, n)
		}
	}
	// Closing ends the SSE response with streamClosed.
	b.must(t, 204, "POST", p, "", "Stream-Closed", "true")
	evs = sseEvents(t, sc, 1)
	if !strings.Contains(evs[0], `"streamClosed":true`) {
		t.Fatalf("final control %q", evs[0])
	}
	if sc.Scan() {
		t.Fatalf("SSE went on after streamClosed: %q", sc.Text())
	}
}

func TestSSEBinaryIsBase64(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/sse-bin"
	raw := "\x00\x01\n\x02\xff"
	b.must(t, 201, "PUT", p, raw, "Content-Type", "application/octet-stream")
	res, sc := openSSE(t, b.url+p+"?offset=-1&live=sse")
	if res.Header.Get("Stream-SSE-Data-Encoding") != "base64" {
		t.Fatalf("headers %v", res.Header)
	}
	evs := sseEvents(t, sc, 1)
	if evs[0] != "event: data\ndata:"+base64.StdEncoding.EncodeToString([]byte(raw))+"\n" {
		t.Fatalf("data event %q", evs[0])
	}
}

func TestClosure(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/fin"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	r := b.must(t, 204, "POST", p, "last", "Content-Type", "text/plain", "Stream-Closed", "true")
	if r.header.Get("Stream-Closed") != "true" {
		t.Fatalf("close headers %v", r.header)
	}
	r = b.must(t, 409, "POST", p, "more", "Content-Type", "text/plain")
	if r.header.Get("Stream-Closed") != "true" || r.header.Get("Stream-Next-Offset") != "0000000000000001" {
		t.Fatalf("append after close headers %v", r.header)
	}
	b.must(t, 204, "POST", p, "", "Stream-Closed", "true") // idempotent close
	r = b.must(t, 200, "GET", p+"?offset=0000000000000001", "")
	if r.body != "" || r.header.Get("Stream-Closed") != "true" {
		t.Fatalf("EOF read %q %v", r.body, r.header)
	}
	b.must(t, 409, "PUT", p, "", "Content-Type", "text/plain") // closure differs
	b.must(t, 200, "PUT", p, "", "Content-Type", "text/plain", "Stream-Closed", "true")
}

func TestIdempotentProducers(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/prod"
	b.must(t, 201, "PUT", p, "", "Content-Type", jsonCT)
	post := func(want int, epoch, seq, body string) resp {
		return b.must(t, want, "POST", p, body, "Content-Type", jsonCT,
			"Producer-Id", "w1", "Producer-Epoch", epoch, "Producer-Seq", seq)
	}
	r := post(200, "0", "0", `{"n":0}`)
	if r.header.Get("Producer-Epoch") != "0" || r.header.Get("Producer-Seq") != "0" {
		t.Fatalf("accept headers %v", r.header)
	}
	post(200, "0", "1", `{"n":1}`)
	post(204, "0", "1", `{"n":1}`) // retry: duplicate, not stored again
	r = post(409, "0", "3", `{"n":3}`)
	if r.header.Get("Producer-Expected-Seq") != "2" || r.header.Get("Producer-Received-Seq") != "3" {
		t.Fatalf("gap headers %v", r.header)
	}
	post(400, "1", "5", `{"n":5}`) // a new epoch starts at 0
	post(200, "1", "0", `{"e":1}`)
	r = post(403, "0", "2", `{"n":2}`) // zombie fenced
	if r.header.Get("Producer-Epoch") != "1" {
		t.Fatalf("fence headers %v", r.header)
	}
	// Stream-Seq regressions are refused.
	b.must(t, 204, "POST", p, `{"s":"b"}`, "Content-Type", jsonCT, "Stream-Seq", "b")
	b.must(t, 409, "POST", p, `{"s":"a"}`, "Content-Type", jsonCT, "Stream-Seq", "a")
	if r := b.must(t, 200, "GET", p, ""); r.body != `[{"n":0},{"n":1},{"e":1},{"s":"b"}]` {
		t.Fatalf("read %s", r.body)
	}
}

func TestTTLAndExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/ttl"
	r := b.must(t, 201, "PUT", p, "x", "Content-Type", "text/plain", "Stream-TTL", "60")
	h := b.must(t, 200, "HEAD", p, "")
	if h.header.Get("Stream-TTL") != "60" {
		t.Fatalf("HEAD %v", h.header)
	}
	_ = r
	// Pin time instead of sleeping: age the last access past the TTL.
	b.exec(t, "UPDATE streams SET accessed_at = now() - interval '61 seconds' WHERE path = $1", p)
	b.must(t, 404, "GET", p, "")
	b.must(t, 404, "POST", p, "y", "Content-Type", "text/plain")
	// A read restarts the sliding window.
	b.must(t, 201, "PUT", p, "again", "Content-Type", "text/plain", "Stream-TTL", "60")
	b.exec(t, "UPDATE streams SET accessed_at = now() - interval '50 seconds' WHERE path = $1", p)
	b.must(t, 200, "GET", p, "")
	b.exec(t, "UPDATE streams SET accessed_at = accessed_at - interval '20 seconds' WHERE path = $1", p)
	if r := b.must(t, 200, "GET", p, ""); r.body != "again" {
		t.Fatalf("re-created stream reads %q", r.body)
	}
	// Absolute expiry, then re-creation at the same path.
	q := "/v1/stream/abs"
	soon := time.Now().Add(time.Minute).UTC().Format(time.RFC3339)
	b.must(t, 201, "PUT", q, "", "Content-Type", "text/plain", "Stream-Expires-At", soon)
	b.exec(t, "UPDATE streams SET expires_at = now() - interval '1 second' WHERE path = $1", q)
	b.must(t, 404, "HEAD", q, "")
	future := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	b.must(t, 201, "PUT", q, "", "Content-Type", "text/plain", "Stream-Expires-At", future)
	if h := b.must(t, 200, "HEAD", q, ""); h.header.Get("Stream-Expires-At") == "" {
		t.Fatalf("HEAD %v", h.header)
	}
}

func TestAdminTokenGuardsCreateAndDelete(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{adminToken: "s3cret"})
	p := "/v1/stream/guarded"
	b.must(t, 401, "PUT", p, "", "Content-Type", "text/plain")
	b.must(t, 401, "PUT", p, "", "Content-Type", "text/plain", "Authorization", "Bearer wrong")
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain", "Authorization", "Bearer s3cret")
	b.must(t, 401, "POST", p, "anonymous", "Content-Type", "text/plain")
	b.must(t, 401, "POST", p, "", "Stream-Closed", "true")
	b.must(t, 204, "POST", p, "admin appends", "Content-Type", "text/plain", "Authorization", "Bearer s3cret")
	b.must(t, 401, "DELETE", p, "")
	b.must(t, 204, "DELETE", p, "", "Authorization", "Bearer s3cret")
}

func TestCORSPreflightAndSecurityHeaders(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	r := b.must(t, 204, "OPTIONS", "/v1/stream/any", "", "Origin", "https://app.example", "Access-Control-Request-Method", "POST")
	if !strings.Contains(r.header.Get("Access-Control-Allow-Methods"), "POST") || r.header.Get("Access-Control-Allow-Origin") == "" {
		t.Fatalf("preflight %v", r.header)
	}
	r = b.must(t, 404, "GET", "/v1/stream/none", "")
	if r.header.Get("X-Content-Type-Options") != "nosniff" || r.header.Get("Cross-Origin-Resource-Policy") == "" {
		t.Fatalf("security headers %v", r.header)
	}
}
