package streams

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"
)

// count returns one integer from SQL.
func (b *bundle) count(t *testing.T, sql string, args ...any) int64 {
	t.Helper()
	var n int64
	if err := b.db.Pool.QueryRow(context.Background(), sql, args...).Scan(&n); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
	return n
}

// readAllJSON reads a JSON stream from offset -1 chunk by chunk and returns
// its messages and the last Stream-Next-Offset; offsets must increase.
func (b *bundle) readAllJSON(t *testing.T, path string) ([]json.RawMessage, string) {
	t.Helper()
	var all []json.RawMessage
	off := "-1"
	for range 1000 {
		r := b.must(t, 200, "GET", path+"?offset="+off, "")
		var msgs []json.RawMessage
		if err := json.Unmarshal([]byte(r.body), &msgs); err != nil {
			t.Fatalf("read %s at %s: %v", path, off, err)
		}
		all = append(all, msgs...)
		next := r.header.Get("Stream-Next-Offset")
		if off != "-1" && next <= off && len(msgs) > 0 {
			t.Fatalf("offset went from %s to %s", off, next)
		}
		off = next
		if r.header.Get("Stream-Up-To-Date") == "true" {
			return all, off
		}
	}
	t.Fatalf("read %s: no end", path)
	return nil, ""
}

// A fork of a 100,000-message stream at offset 50,000 copies no message,
// and reading it from the start returns exactly the parent's first 50,000
// messages, then the fork's own. Creation times are logged, not asserted.
func TestFork100kNoCopy(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	parent := "/v1/stream/big/parent"
	b.must(t, 201, "PUT", parent, "", "Content-Type", jsonCT)
	b.exec(t, `INSERT INTO stream_messages (tenant_id, path, seq, data)
	           SELECT 'default', $1, i, convert_to('{"i":' || i || '}', 'UTF8') FROM generate_series(1, 100000) i`, parent)
	b.exec(t, `UPDATE streams SET tail_seq = 100000 WHERE path = $1`, parent)
	rows := b.count(t, `SELECT count(*) FROM stream_messages`)
	if rows != 100000 {
		t.Fatalf("%d message rows, want 100000", rows)
	}

	const n = 15
	timed := func(path string, hdr ...string) time.Duration {
		start := time.Now()
		b.must(t, 201, "PUT", path, "", hdr...)
		return time.Since(start)
	}
	var empty, fork []time.Duration
	for i := range n {
		empty = append(empty, timed(fmt.Sprintf("/v1/stream/big/empty-%d", i), "Content-Type", jsonCT))
		fork = append(fork, timed(fmt.Sprintf("/v1/stream/big/fork-%d", i), "Stream-Forked-From", parent,
			"Stream-Fork-Offset", offset(50000)))
	}
	slices.Sort(empty)
	slices.Sort(fork)
	t.Logf("PUT of an empty stream: median %v (min %v); PUT of a fork of 100,000 messages at 50,000: median %v (min %v); %d each",
		empty[n/2], empty[0], fork[n/2], fork[0], n)
	if got := b.count(t, `SELECT count(*) FROM stream_messages`); got != rows {
		t.Fatalf("forking changed the message rows from %d to %d", rows, got)
	}

	f := "/v1/stream/big/fork-0"
	for _, m := range []string{`{"own":1}`, `[{"own":2},{"own":3}]`} {
		b.must(t, 204, "POST", f, m, "Content-Type", jsonCT)
	}
	b.must(t, 204, "POST", parent, `{"parent":"after the fork"}`, "Content-Type", jsonCT)
	msgs, last := b.readAllJSON(t, f)
	if len(msgs) != 50003 {
		t.Fatalf("fork read %d messages, want 50003", len(msgs))
	}
	for i := range 50000 {
		if want := fmt.Sprintf(`{"i":%d}`, i+1); string(msgs[i]) != want {
			t.Fatalf("message %d = %s, want %s", i+1, msgs[i], want)
		}
	}
	if got := string(msgs[50000]) + string(msgs[50001]) + string(msgs[50002]); got != `{"own":1}{"own":2}{"own":3}` {
		t.Fatalf("fork's own messages = %s", got)
	}
	if last != offset(50003) {
		t.Fatalf("fork tail %s, want %s", last, offset(50003))
	}
	if got := b.count(t, `SELECT count(*) FROM stream_messages WHERE path = $1`, f); got != 3 {
		t.Fatalf("the fork stores %d messages, want its own 3", got)
	}
}

// Reads across the boundary, offsets continuing the source's, and
// independence of source and fork.
func TestForkReadsAndWrites(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	src, f := "/v1/stream/fk/src", "/v1/stream/fk/fork"
	b.must(t, 201, "PUT", src, "A", "Content-Type", "text/plain")
	mid := b.must(t, 204, "POST", src, "B", "Content-Type", "text/plain").header.Get("Stream-Next-Offset")
	b.must(t, 204, "POST", src, "C", "Content-Type", "text/plain")
	r := b.must(t, 201, "PUT", f, "", "Stream-Forked-From", src, "Stream-Fork-Offset", mid)
	if r.header.Get("Stream-Next-Offset") != mid || r.header.Get("Content-Type") != "text/plain" {
		t.Fatalf("fork created with %v", r.header)
	}
	for _, h := range []string{"Stream-Forked-From", "Stream-Fork-Offset"} {
		if r.header.Get(h) != "" {
			t.Fatalf("fork answer carries %s", h)
		}
	}
	own := b.must(t, 204, "POST", f, "x", "Content-Type", "text/plain").header.Get("Stream-Next-Offset")
	if own <= mid {
		t.Fatalf("fork's first own offset %s is not after the fork offset %s", own, mid)
	}
	b.must(t, 204, "POST", src, "D", "Content-Type", "text/plain")
	if r := b.must(t, 200, "GET", f+"?offset=-1", ""); r.body != "ABx" || r.header.Get("Stream-Next-Offset") != own {
		t.Fatalf("fork read %q next %s", r.body, r.header.Get("Stream-Next-Offset"))
	}
	// An offset of the source before the fork point resumes on the fork.
	first := b.must(t, 200, "GET", src+"?offset=-1", "")
	if first.body != "ABCD" {
		t.Fatalf("source read %q", first.body)
	}
	if r := b.must(t, 200, "GET", f+"?offset="+offset(1), ""); r.body != "Bx" {
		t.Fatalf("fork read from 1 = %q", r.body)
	}
	if r := b.must(t, 200, "GET", f+"?offset="+mid, ""); r.body != "x" {
		t.Fatalf("fork read from the fork point = %q", r.body)
	}
	// Closing the fork leaves the source open, and the other way round.
	b.must(t, 204, "POST", f, "", "Stream-Closed", "true")
	if r := b.must(t, 200, "HEAD", src, ""); r.header.Get("Stream-Closed") != "" {
		t.Fatal("closing the fork closed the source")
	}
	b.must(t, 204, "POST", src, "", "Stream-Closed", "true")
	f2 := "/v1/stream/fk/fork2"
	b.must(t, 201, "PUT", f2, "", "Stream-Forked-From", src)
	if r := b.must(t, 204, "POST", f2, "E", "Content-Type", "text/plain"); r.header.Get("Stream-Closed") != "" {
		t.Fatal("a fork of a closed stream starts closed")
	}
	if r := b.must(t, 200, "GET", f2, ""); r.body != "ABCDE" {
		t.Fatalf("fork of the closed source = %q", r.body)
	}
	// Idempotent creation: same source, offset, sub-offset; anything else 409.
	b.must(t, 200, "PUT", f, "", "Stream-Forked-From", src, "Stream-Fork-Offset", mid, "Stream-Closed", "true")
	b.must(t, 409, "PUT", f, "", "Stream-Forked-From", src, "Stream-Fork-Offset", offset(1), "Stream-Closed", "true")
	b.must(t, 409, "PUT", f, "", "Content-Type", "text/plain", "Stream-Closed", "true") // a plain PUT on a fork
	b.must(t, 409, "PUT", src, "", "Stream-Forked-From", f2)                            // a fork PUT on a plain stream
}

// Recursive forks, composed sub-offsets, JSON across the boundary, and an
// initial body after the inherited part.
func TestForkChainsAndSubOffsets(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	l0, l1, l2, l3 := "/v1/stream/ch/l0", "/v1/stream/ch/l1", "/v1/stream/ch/l2", "/v1/stream/ch/l3"
	b.must(t, 201, "PUT", l0, "abcdef", "Content-Type", "text/plain")
	b.must(t, 204, "POST", l0, "gh", "Content-Type", "text/plain")
	// 4 bytes into the first message: the prefix "abcd" is the fork's first own message.
	r := b.must(t, 201, "PUT", l1, "", "Stream-Forked-From", l0, "Stream-Fork-Offset", zeroOffsetAlias,
		"Stream-Fork-Sub-Offset", "4")
	if r.header.Get("Stream-Next-Offset") != offset(1) {
		t.Fatalf("sub-offset fork tail %s", r.header.Get("Stream-Next-Offset"))
	}
	b.must(t, 204, "POST", l1, "XY", "Content-Type", "text/plain")
	b.must(t, 201, "PUT", l2, "!", "Stream-Forked-From", l1, "Stream-Fork-Offset", offset(1), "Stream-Fork-Sub-Offset", "1")
	b.must(t, 201, "PUT", l3, "", "Stream-Forked-From", l2)
	b.must(t, 204, "POST", l3, "?", "Content-Type", "text/plain")
	for p, want := range map[string]string{l0: "abcdefgh", l1: "abcdXY", l2: "abcdX!", l3: "abcdX!?"} {
		if r := b.must(t, 200, "GET", p, ""); r.body != want {
			t.Errorf("%s = %q, want %q", p, r.body, want)
		}
	}
	// A whole message's bytes inherit the message; more are refused.
	b.must(t, 201, "PUT", "/v1/stream/ch/whole", "", "Stream-Forked-From", l0, "Stream-Fork-Offset", offset(1),
		"Stream-Fork-Sub-Offset", "2")
	if r := b.must(t, 200, "GET", "/v1/stream/ch/whole", ""); r.body != "abcdefgh" {
		t.Fatalf("whole-message sub-offset = %q", r.body)
	}
	b.must(t, 400, "PUT", "/v1/stream/ch/over", "", "Stream-Forked-From", l0, "Stream-Fork-Offset", offset(1),
		"Stream-Fork-Sub-Offset", "3")
	if got := b.count(t, `SELECT count(*) FROM stream_messages WHERE path LIKE '/v1/stream/ch/%'`); got != 7 {
		t.Fatalf("%d message rows, want 7 (l0 2, l1 a prefix and 1, l2 a prefix and 1, l3 1, whole none)", got)
	}

	// JSON: messages counted past the anchor; reads span the boundary as one array.
	j0, j1 := "/v1/stream/ch/j0", "/v1/stream/ch/j1"
	b.must(t, 201, "PUT", j0, `[{"a":1},{"b":2},{"c":3}]`, "Content-Type", jsonCT)
	b.must(t, 201, "PUT", j1, `{"own":1}`, "Stream-Forked-From", j0, "Stream-Fork-Offset", offset(1),
		"Stream-Fork-Sub-Offset", "1")
	if r := b.must(t, 200, "GET", j1+"?offset=-1", ""); r.body != `[{"a":1},{"b":2},{"own":1}]` {
		t.Fatalf("JSON fork read %s", r.body)
	}
	b.must(t, 400, "PUT", "/v1/stream/ch/j2", "", "Stream-Forked-From", j0, "Stream-Fork-Offset", offset(1),
		"Stream-Fork-Sub-Offset", "3")
}

// The number of ancestor segments a fork reads through is bounded.
func TestForkSegmentLimit(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	prev := "/v1/stream/deep/0"
	b.must(t, 201, "PUT", prev, "m", "Content-Type", "text/plain")
	for i := 1; i <= MaxForkSegments; i++ {
		p := fmt.Sprintf("/v1/stream/deep/%d", i)
		b.must(t, 201, "PUT", p, "m", "Stream-Forked-From", prev) // one own message per level: one segment more
		prev = p
	}
	// deep/32 reads through 32 segments (deep/0 ... deep/31) plus its own.
	if r := b.must(t, 200, "GET", prev, ""); r.body != strings.Repeat("m", MaxForkSegments+1) {
		t.Fatalf("deep read = %q", r.body)
	}
	r := b.must(t, 400, "PUT", "/v1/stream/deep/too", "", "Stream-Forked-From", prev)
	if !strings.Contains(r.body, "FORK_TOO_DEEP") {
		t.Fatalf("too deep: %s", r.body)
	}
	// A fork below the deepest segment needs fewer and is fine.
	b.must(t, 201, "PUT", "/v1/stream/deep/shallow", "", "Stream-Forked-From", prev, "Stream-Fork-Offset", offset(3))
	if r := b.must(t, 200, "GET", "/v1/stream/deep/shallow", ""); r.body != "mmm" {
		t.Fatalf("shallow = %q", r.body)
	}
}

// Deleting a source with forks soft-deletes it: 410 on its URL, 409 on
// re-creation and on forking it, fork reads unchanged; deleting the last
// fork collects it, up the chain, with its messages.
func TestForkSoftDeleteAndCascade(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	l0, l1, l2 := "/v1/stream/del/l0", "/v1/stream/del/l1", "/v1/stream/del/l2"
	b.must(t, 201, "PUT", l0, "A", "Content-Type", "text/plain")
	b.must(t, 201, "PUT", l1, "B", "Stream-Forked-From", l0)
	b.must(t, 201, "PUT", l2, "C", "Stream-Forked-From", l1)
	b.must(t, 204, "DELETE", l0, "")
	b.must(t, 204, "DELETE", l1, "")
	for _, p := range []string{l0, l1} {
		b.must(t, 410, "HEAD", p, "")
		b.must(t, 410, "GET", p+"?offset=-1", "")
		b.must(t, 410, "POST", p, "x", "Content-Type", "text/plain")
		b.must(t, 410, "DELETE", p, "")
		b.must(t, 409, "PUT", p, "", "Content-Type", "text/plain")
		b.must(t, 409, "PUT", "/v1/stream/del/other", "", "Stream-Forked-From", p)
	}
	if r := b.must(t, 200, "GET", l2, ""); r.body != "ABC" {
		t.Fatalf("fork read after its ancestors' deletion = %q", r.body)
	}
	if got := b.count(t, `SELECT count(*) FROM stream_messages`); got != 3 {
		t.Fatalf("%d message rows kept, want 3", got)
	}
	b.must(t, 204, "DELETE", l2, "")
	for _, p := range []string{l0, l1, l2} {
		b.must(t, 404, "HEAD", p, "")
	}
	if got := b.count(t, `SELECT count(*) FROM streams`) + b.count(t, `SELECT count(*) FROM stream_messages`); got != 0 {
		t.Fatalf("%d rows left after the cascade", got)
	}
	// The path is free again.
	b.must(t, 201, "PUT", l0, "", "Content-Type", "text/plain")

	// Deleting the middle of a chain keeps what the leaf reads; a refused
	// fork leaves no reference behind.
	m0, m1, m2 := "/v1/stream/mid/0", "/v1/stream/mid/1", "/v1/stream/mid/2"
	b.must(t, 201, "PUT", m0, "A", "Content-Type", "text/plain")
	b.must(t, 201, "PUT", m1, "B", "Stream-Forked-From", m0)
	b.must(t, 201, "PUT", m2, "C", "Stream-Forked-From", m1)
	b.must(t, 409, "PUT", "/v1/stream/mid/refused", "", "Stream-Forked-From", m2, "Content-Type", jsonCT)
	b.must(t, 204, "DELETE", m1, "")
	b.must(t, 410, "HEAD", m1, "")
	if r := b.must(t, 200, "GET", m2, ""); r.body != "ABC" {
		t.Fatalf("leaf after deleting the middle = %q", r.body)
	}
	b.must(t, 204, "DELETE", m2, "")
	b.must(t, 404, "HEAD", m1, "")
	b.must(t, 404, "HEAD", m2, "")
	if r := b.must(t, 200, "GET", m0, ""); r.body != "A" {
		t.Fatalf("root after its forks went = %q", r.body)
	}
	// The foreign key is the last line of defence: a stream a fork names
	// cannot be dropped by any statement.
	b.must(t, 201, "PUT", m1, "", "Stream-Forked-From", m0)
	if _, err := b.db.Pool.Exec(context.Background(), `DELETE FROM streams WHERE path = $1`, m0); err == nil {
		t.Fatal("a plain DELETE dropped a stream that a fork reads")
	}
}

// A long-poll at a fork's tail is answered by the fork's appends only: an
// append to the source after the fork point never reaches it.
func TestForkLongPollIgnoresSource(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{longPoll: 300 * time.Millisecond})
	src, f := "/v1/stream/lp/src", "/v1/stream/lp/fork"
	b.must(t, 201, "PUT", src, "s", "Content-Type", "text/plain")
	tail := b.must(t, 201, "PUT", f, "", "Stream-Forked-From", src).header.Get("Stream-Next-Offset")
	// In the inherited range: at once.
	if r := b.must(t, 200, "GET", f+"?offset=-1&live=long-poll", ""); r.body != "s" {
		t.Fatalf("inherited long-poll = %q", r.body)
	}
	done := make(chan resp, 1)
	go func() { done <- b.do(t, "GET", f+"?offset="+tail+"&live=long-poll", "") }()
	waitFor(t, "the long-poll to wait", func() bool { return b.h.n.waiting(f) == 1 })
	b.must(t, 204, "POST", src, "source after the fork", "Content-Type", "text/plain")
	if r := <-done; r.status != 204 || r.header.Get("Stream-Next-Offset") != tail {
		t.Fatalf("long-poll after a source append: %d %q next %s", r.status, r.body, r.header.Get("Stream-Next-Offset"))
	}
	go func() { done <- b.do(t, "GET", f+"?offset="+tail+"&live=long-poll", "") }()
	waitFor(t, "the long-poll to wait", func() bool { return b.h.n.waiting(f) == 1 })
	b.must(t, 204, "POST", f, "fork", "Content-Type", "text/plain")
	// Under load the 300 ms long-poll may time out before the append
	// lands; a client then polls again, as this does (never a fixed wait).
	r := <-done
	for i := 0; r.status == 204 && i < 50; i++ {
		r = b.do(t, "GET", f+"?offset="+tail+"&live=long-poll", "")
	}
	if r.status != 200 || r.body != "fork" {
		t.Fatalf("long-poll after a fork append: %d %q", r.status, r.body)
	}
}

// SSE on a fork sends the inherited data, then the fork's own, then the
// fork's live appends; the source's later appends never.
func TestForkSSE(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	src, f := "/v1/stream/sse/src", "/v1/stream/sse/fork"
	b.must(t, 201, "PUT", src, "inherited;", "Content-Type", "text/plain")
	b.must(t, 201, "PUT", f, "own;", "Stream-Forked-From", src)
	res, err := http.Get(b.url + f + "?offset=-1&live=sse")
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	sc := bufio.NewScanner(res.Body)
	var data strings.Builder
	next := func(want string) {
		t.Helper()
		for !strings.Contains(data.String(), want) {
			if !sc.Scan() {
				t.Fatalf("SSE ended before %q; got %q", want, data.String())
			}
			if line, ok := strings.CutPrefix(sc.Text(), "data:"); ok && !strings.HasPrefix(line, "{") {
				data.WriteString(line)
			}
		}
	}
	next("inherited;own;")
	waitFor(t, "the SSE reader to wait", func() bool { return b.h.n.waiting(f) == 1 })
	b.must(t, 204, "POST", src, "SOURCE;", "Content-Type", "text/plain")
	b.must(t, 204, "POST", f, "live;", "Content-Type", "text/plain")
	next("live;")
	if got := data.String(); got != "inherited;own;live;" {
		t.Fatalf("SSE data %q", got)
	}
}

// Fork lifetimes follow the protocol's table: an omitted TTL or expiry is
// the source's, a given one is the fork's own.
func TestForkLifetimes(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	far := time.Now().Add(time.Hour).UTC().Truncate(time.Second).Format(time.RFC3339)
	farther := time.Now().Add(2 * time.Hour).UTC().Truncate(time.Second).Format(time.RFC3339)
	b.must(t, 201, "PUT", "/v1/stream/lt/none", "", "Content-Type", "text/plain")
	b.must(t, 201, "PUT", "/v1/stream/lt/ttl", "", "Content-Type", "text/plain", "Stream-TTL", "3600")
	b.must(t, 201, "PUT", "/v1/stream/lt/exp", "", "Content-Type", "text/plain", "Stream-Expires-At", far)
	cases := []struct {
		src, name, hk, hv string
		ttl, exp          string
	}{
		{"none", "a", "", "", "", ""},
		{"none", "b", "Stream-TTL", "60", "60", ""},
		{"none", "c", "Stream-Expires-At", farther, "", farther},
		{"ttl", "d", "", "", "3600", ""},
		{"ttl", "e", "Stream-TTL", "99999", "99999", ""},
		{"ttl", "f", "Stream-Expires-At", farther, "", farther},
		{"exp", "g", "", "", "", far},
		{"exp", "h", "Stream-TTL", "60", "60", ""},
		{"exp", "i", "Stream-Expires-At", farther, "", farther},
	}
	for _, c := range cases {
		p := "/v1/stream/lt/fork-" + c.name
		hdr := []string{"Stream-Forked-From", "/v1/stream/lt/" + c.src}
		if c.hk != "" {
			hdr = append(hdr, c.hk, c.hv)
		}
		b.must(t, 201, "PUT", p, "", hdr...)
		h := b.must(t, 200, "HEAD", p, "")
		exp := h.header.Get("Stream-Expires-At")
		if exp != "" {
			tm, _ := time.Parse(time.RFC3339Nano, exp)
			exp = tm.UTC().Format(time.RFC3339)
		}
		if h.header.Get("Stream-TTL") != c.ttl || exp != c.exp {
			t.Errorf("fork of %s with %s=%s: TTL %q expiry %q, want %q %q", c.src, c.hk, c.hv,
				h.header.Get("Stream-TTL"), exp, c.ttl, c.exp)
		}
		b.must(t, 200, "PUT", p, "", hdr...) // the same request again: idempotent
	}
}
