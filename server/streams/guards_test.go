package streams

import (
	"context"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/migrate"
	"github.com/pullwake/pullwake/internal/testdb"
)

// Closing an entity's main stream is refused like PUT and DELETE, with or
// without a body, for its write token and for anyone else; the stream stays
// open and the next claim's token still appends.
func TestClosingEntityStreamIsForbidden(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{adminToken: "admin"})
	p := b.spawn(t, "/chat/7", "tok-1", 1)
	dev := setup(t, setupOpts{db: b.db}) // no admin token: anyone may write plain streams
	for _, c := range []struct {
		b   *bundle
		hdr []string
	}{
		{b, []string{"Authorization", "Bearer tok-1"}},
		{b, []string{"electric-claim-token", "tok-1"}},
		{b, []string{"Authorization", "Bearer admin"}},
		{dev, nil},
	} {
		args := append([]string{"Stream-Closed", "true"}, c.hdr...)
		r := c.b.must(t, 403, "POST", p, "", args...)
		if !strings.Contains(r.body, `"FORBIDDEN"`) {
			t.Fatalf("close %v: %s", c.hdr, r.body)
		}
		args = append([]string{"Stream-Closed", "true", "Content-Type", jsonCT}, c.hdr...)
		c.b.must(t, 403, "POST", p, `{"last":1}`, args...)
	}
	b.must(t, 401, "POST", p, "", "Stream-Closed", "true") // no token at all
	// Nor can it fence later claims' producers with an epoch ahead of its own.
	b.must(t, 400, "POST", p, `{"p":1}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-1",
		"Producer-Id", "runner", "Producer-Epoch", "9007199254740991", "Producer-Seq", "0")
	// A later claim's token still appends: the stream is not closed.
	b.gate.mu.Lock()
	b.gate.tokens[p], b.gate.epochs[p] = "tok-2", 2
	b.gate.mu.Unlock()
	b.must(t, 204, "POST", p, `{"next":1}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-2")
	b.must(t, 200, "POST", p, `{"next":2}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-2",
		"Producer-Id", "runner", "Producer-Epoch", "2", "Producer-Seq", "0")
	if r := b.must(t, 200, "GET", p, "", "Authorization", "Bearer admin"); r.body != `[{"next":1},{"next":2}]` || r.header.Get("Stream-Closed") != "" {
		t.Fatalf("main stream %s %v", r.body, r.header)
	}
}

// Whether a stream is an entity's is read from its row (entity_url), not
// guessed from its path: a stream that names an entity at any path takes
// appends from its write token only, and a plain stream at the entity shape
// (made outside the API) is plain.
func TestEntityGatingAsksTheDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{readAuth: ReadAuthEntity, adminToken: "admin"})
	b.spawn(t, "/chat/1", "tok-1", 1)
	odd := "/v1/stream/custom/inbox-of-chat-1"
	b.exec(t, `INSERT INTO streams (path, content_type, entity_url) VALUES ($1, 'application/json', '/chat/1')`, odd)
	plain := "/v1/stream/chat/2/main"
	b.exec(t, `INSERT INTO streams (path, content_type) VALUES ($1, 'application/json')`, plain)

	b.must(t, 401, "POST", odd, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer admin")
	b.must(t, 403, "POST", odd, "", "Stream-Closed", "true", "Authorization", "Bearer admin")
	b.must(t, 401, "GET", odd+"?offset=-1", "")
	b.must(t, 204, "POST", plain, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer admin")
	b.must(t, 200, "GET", plain+"?offset=-1", "")
	b.must(t, 204, "DELETE", plain, "", "Authorization", "Bearer admin")
}

// With an admin token configured, the write mode decides who appends to,
// closes and producer-fences a plain stream; the read mode who reads.
func TestStreamAuthModes(t *testing.T) {
	t.Parallel()
	const admin = "Bearer s3cret"
	t.Run("write admin (default)", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{adminToken: "s3cret"})
		p := "/v1/stream/w"
		b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain", "Authorization", admin)
		b.must(t, 401, "POST", p, "x", "Content-Type", "text/plain")
		b.must(t, 401, "POST", p, "", "Stream-Closed", "true")
		b.must(t, 401, "POST", p, "x", "Content-Type", "text/plain",
			"Producer-Id", "evil", "Producer-Epoch", "9007199254740991", "Producer-Seq", "0")
		b.must(t, 401, "POST", p, "x", "Content-Type", "text/plain", "Authorization", "Bearer wrong")
		if r := b.must(t, 200, "GET", p, ""); r.body != "" || r.header.Get("Stream-Closed") != "" {
			t.Fatalf("refused writes changed the stream: %q %v", r.body, r.header)
		}
		b.must(t, 200, "POST", p, "x", "Content-Type", "text/plain", "Authorization", admin,
			"Producer-Id", "good", "Producer-Epoch", "0", "Producer-Seq", "0")
	})
	t.Run("write none", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{adminToken: "s3cret", writeAuth: WriteAuthNone})
		p := "/v1/stream/w"
		b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain", "Authorization", admin)
		b.must(t, 204, "POST", p, "x", "Content-Type", "text/plain")
		b.must(t, 401, "DELETE", p, "")
	})
	t.Run("read entity", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{adminToken: "s3cret", readAuth: ReadAuthEntity})
		e := b.spawn(t, "/chat/9", "tok-9", 1)
		p := "/v1/stream/plain"
		b.must(t, 201, "PUT", p, "hi", "Content-Type", "text/plain", "Authorization", admin)
		b.must(t, 200, "GET", p, "")
		for _, q := range []string{"?offset=-1", "?offset=-1&live=long-poll", "?offset=-1&live=sse"} {
			r := b.must(t, 401, "GET", e+q, "")
			if strings.Contains(r.body, "inbox") || !strings.Contains(r.body, "UNAUTHORIZED") {
				t.Fatalf("GET %s: %s", q, r.body)
			}
		}
		b.must(t, 401, "HEAD", e, "")
		b.must(t, 200, "GET", e, "", "Authorization", admin)
		b.must(t, 200, "GET", e, "", "Authorization", "Bearer tok-9")
		b.must(t, 200, "HEAD", e, "", "electric-claim-token", "tok-9")
	})
	t.Run("read admin", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{adminToken: "s3cret", readAuth: ReadAuthAdmin})
		p := "/v1/stream/plain"
		b.must(t, 201, "PUT", p, "hi", "Content-Type", "text/plain", "Authorization", admin)
		before := b.queries.n.Load()
		b.must(t, 401, "GET", p, "")
		b.must(t, 401, "HEAD", p, "")
		if n := b.queries.n.Load() - before; n != 0 {
			t.Fatalf("refused reads sent %d queries", n)
		}
		b.must(t, 200, "GET", p, "", "Authorization", admin)
	})
	t.Run("dev mode is open", func(t *testing.T) {
		t.Parallel()
		b := setup(t, setupOpts{readAuth: ReadAuthAdmin})
		p := "/v1/stream/plain"
		b.must(t, 201, "PUT", p, "hi", "Content-Type", "text/plain")
		b.must(t, 204, "POST", p, "x", "Content-Type", "text/plain")
		b.must(t, 200, "GET", p, "")
	})
}

func TestAuthModesAreChecked(t *testing.T) {
	t.Parallel()
	if err := CheckAuthModes("admin", "entity"); err != nil {
		t.Fatal(err)
	}
	for _, m := range [][2]string{{"open", "none"}, {"admin", "all"}, {"", "none"}} {
		if CheckAuthModes(m[0], m[1]) == nil {
			t.Fatalf("CheckAuthModes(%q, %q) accepted", m[0], m[1])
		}
	}
}

// Out-of-range TTLs and expiry times are refused at creation (before, a TTL
// of 99999999999999 s made a stream that answered 500 to every request).
func TestTTLAndExpiryRanges(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/ranged"
	for _, hdr := range [][2]string{
		{"Stream-TTL", "0"}, {"Stream-TTL", "315360001"}, {"Stream-TTL", "99999999999999"},
		{"Stream-TTL", "999999999999999999"},
		{"Stream-Expires-At", "0000-01-01T00:00:00Z"}, {"Stream-Expires-At", "1969-12-31T23:59:59Z"},
		{"Stream-Expires-At", time.Now().Add(-time.Second).UTC().Format(time.RFC3339)},
	} {
		r := b.must(t, 400, "PUT", p, "", "Content-Type", "text/plain", hdr[0], hdr[1])
		if !strings.Contains(r.body, "INVALID_REQUEST") {
			t.Fatalf("%s: %s", hdr, r.body)
		}
		b.must(t, 404, "HEAD", p, "")
	}
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain", "Stream-TTL", "315360000")
	b.must(t, 201, "PUT", p+"2", "", "Content-Type", "text/plain", "Stream-Expires-At", "9999-12-31T23:59:59Z")
	b.must(t, 200, "GET", p+"2", "")
	// The table refuses them from any other writer too.
	if _, err := b.db.Pool.Exec(context.Background(),
		`INSERT INTO streams (path, content_type, ttl_seconds) VALUES ('/v1/stream/x', 'text/plain', 99999999999999)`); err == nil {
		t.Fatal("the streams table took a TTL of 99999999999999 s")
	}
}

// Text that PostgreSQL cannot store (invalid UTF-8; NUL) in the path or in
// the headers that reach the database is 400, not 500.
func TestInvalidTextIsRefused(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/text"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	cases := []struct {
		method, path, body string
		hdr                []string
	}{
		{"PUT", "/v1/stream/%ff", "", []string{"Content-Type", "text/plain"}},
		{"GET", "/v1/stream/a%ffb", "", nil},
		{"POST", "/v1/stream/%00", "x", []string{"Content-Type", "text/plain"}},
		{"POST", p, "x", []string{"Content-Type", "text/plain", "Producer-Id", "\xff", "Producer-Epoch", "0", "Producer-Seq", "0"}},
		{"POST", p, "x", []string{"Content-Type", "text/plain", "Stream-Seq", "a\xffb"}},
		{"POST", p, "x", []string{"Content-Type", "text/plain", "Producer-Id", randomText(5000), "Producer-Epoch", "0", "Producer-Seq", "0"}},
		{"POST", p, "x", []string{"Content-Type", "text/plain; x=\xff"}},
		{"PUT", "/v1/stream/fork", "", []string{"Content-Type", "text/plain", "Stream-Forked-From", "/v1/stream/\xff"}},
	}
	for _, c := range cases {
		r := b.must(t, 400, c.method, c.path, c.body, c.hdr...)
		if !strings.Contains(r.body, "INVALID_REQUEST") {
			t.Fatalf("%s %s %q: %s", c.method, c.path, c.hdr, r.body)
		}
	}
	if r := b.must(t, 200, "GET", p, ""); r.body != "" {
		t.Fatalf("refused writes stored %q", r.body)
	}
}

// Stream requests run under the request deadline: with the streams table
// locked (a stuck database), an append, a read and a live read answer 503
// once RequestTimeout has passed instead of hanging.
func TestStreamRequestsHaveADeadline(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{reqTimeout: 300 * time.Millisecond, longPoll: time.Minute})
	p := "/v1/stream/stuck"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	ctx := context.Background()
	tx, err := b.db.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = tx.Rollback(ctx) }()
	if _, err := tx.Exec(ctx, "LOCK TABLE streams IN ACCESS EXCLUSIVE MODE"); err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Timeout: 20 * time.Second} // far beyond the deadline: a hang fails here
	for _, c := range []struct{ method, path, body string }{
		{"POST", p, "x"}, {"GET", p + "?offset=-1", ""}, {"GET", p + "?offset=-1&live=long-poll", ""}, {"HEAD", p, ""},
	} {
		req, _ := http.NewRequest(c.method, b.url+c.path, strings.NewReader(c.body))
		req.Header.Set("Content-Type", "text/plain")
		res, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", c.method, c.path, err)
		}
		res.Body.Close()
		if res.StatusCode != 503 || res.Header.Get("Retry-After") == "" {
			t.Fatalf("%s %s: status %d, want 503 with Retry-After", c.method, c.path, res.StatusCode)
		}
	}
	_ = tx.Rollback(ctx)
	b.must(t, 204, "POST", p, "x", "Content-Type", "text/plain")
}

// Live readers are capped: one more than MaxLiveReaders is 503 with
// Retry-After, and a slot frees when a reader ends.
func TestLiveReadersAreCapped(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{maxLive: 2})
	p := "/v1/stream/capped"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	var wg sync.WaitGroup
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.do(t, "GET", p+"?offset=now&live=long-poll", "")
		}()
	}
	waitFor(t, "two parked readers", func() bool { return b.h.n.parkedOn(p) == 2 })
	r := b.must(t, 503, "GET", p+"?offset=now&live=sse", "")
	if r.header.Get("Retry-After") == "" || !strings.Contains(r.body, "TOO_MANY_READERS") {
		t.Fatalf("over the cap: %v %s", r.header, r.body)
	}
	b.must(t, 200, "GET", p+"?offset=-1", "") // catch-up reads are not live
	b.must(t, 204, "POST", p, "x", "Content-Type", "text/plain")
	wg.Wait()
	waitFor(t, "readers gone", func() bool { return b.h.LiveReaders() == 0 })
	b.must(t, 200, "GET", p+"?offset=-1&live=long-poll", "")
}

// The readers of one stream woken by one append share one read: N parked
// long-polls cost one query after the append, not N.
func TestWakeReadsAreShared(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := "/v1/stream/fanout"
	b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain")
	const n = 40
	var wg sync.WaitGroup
	bodies := make(chan string, n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := b.do(t, "GET", p+"?offset=now&live=long-poll", "")
			bodies <- strings.TrimSpace(r.body) + "/" + http.StatusText(r.status)
		}()
	}
	waitFor(t, "all readers parked", func() bool { return b.h.n.parkedOn(p) == n })
	before := b.queries.n.Load()
	b.must(t, 204, "POST", p, "hello", "Content-Type", "text/plain")
	wg.Wait()
	close(bodies)
	for body := range bodies {
		if body != "hello/OK" {
			t.Fatalf("a reader got %q", body)
		}
	}
	if q := b.queries.n.Load() - before; q != 2 {
		t.Fatalf("one append with %d readers cost %d queries, want 2 (the append and one shared read)", n, q)
	}
}

// Migration 00009 clamps TTLs and expiry times stored before it into the
// accepted ranges, so those streams answer again instead of failing every
// request on timestamp overflow.
func TestMigrationClampsStoredRanges(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := context.Background()
	m, err := migrate.New(d.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.DownTo(ctx, 8); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Pool.Exec(ctx, `INSERT INTO streams (path, content_type, ttl_seconds, expires_at) VALUES
		('/v1/stream/huge', 'text/plain', 99999999999999, NULL),
		('/v1/stream/old', 'text/plain', NULL, '0001-01-01 00:00:00+00')`); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Up(ctx); err != nil {
		t.Fatal(err)
	}
	b := setup(t, setupOpts{db: d})
	if r := b.must(t, 200, "HEAD", "/v1/stream/huge", ""); r.header.Get("Stream-TTL") != "315360000" {
		t.Fatalf("clamped TTL %q", r.header.Get("Stream-TTL"))
	}
	b.must(t, 404, "GET", "/v1/stream/old", "") // expired long ago, and answers so
}

// randomText is n bytes of letters that do not compress (an index entry of
// them cannot be squeezed under PostgreSQL's btree limit).
func randomText(n int) string {
	const letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	b := make([]byte, n)
	x := uint32(2463534242)
	for i := range b {
		x ^= x << 13
		x ^= x >> 17
		x ^= x << 5
		b[i] = letters[x%uint32(len(letters))]
	}
	return string(b)
}
