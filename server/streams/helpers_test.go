package streams

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/testdb"
)

// queryCounter counts the queries a pool sends (pgx tracer).
type queryCounter struct{ n atomic.Int64 }

func (q *queryCounter) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	q.n.Add(1)
	return ctx
}
func (q *queryCounter) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// fakeGate is a WriteGate over a fixed map; it records each call with the
// number of queries the handler had sent at that moment.
type fakeGate struct {
	mu      sync.Mutex
	tokens  map[string]string // path -> token
	epochs  map[string]int64
	queries *queryCounter
	calls   []int64 // queries seen at each call
}

func (g *fakeGate) Authorize(_ context.Context, path, token string) (int64, bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls = append(g.calls, g.queries.n.Load())
	tok, ok := g.tokens[path]
	return g.epochs[path], ok && tok == token
}

type bundle struct {
	h       *Handler
	url     string // server root
	db      *testdb.DB
	queries *queryCounter // queries sent by the handler's pool
	gate    *fakeGate
}

type setupOpts struct {
	adminToken string
	longPoll   time.Duration
	db         *testdb.DB // share a database (a second server)
	publisher  Publisher
	writeAuth  string
	readAuth   string
	reqTimeout time.Duration
	maxLive    int
}

// setup starts a Handler over its own database behind an httptest server.
func setup(t *testing.T, o setupOpts) *bundle {
	t.Helper()
	d := o.db
	if d == nil {
		d = testdb.New(t)
	}
	qc := &queryCounter{}
	pc, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.ConnConfig.Tracer = qc
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	gate := &fakeGate{tokens: map[string]string{}, epochs: map[string]int64{}, queries: qc}
	h := New(Config{Pool: pool, Gate: gate, AdminToken: o.adminToken, LongPollTimeout: cmpDur(o.longPoll, 30*time.Second),
		Publisher: o.publisher, WriteAuth: o.writeAuth, ReadAuth: o.readAuth, RequestTimeout: o.reqTimeout,
		MaxLiveReaders: o.maxLive})
	mux := http.NewServeMux()
	mux.Handle(Prefix, h)
	srv := httptest.NewServer(mux)
	t.Cleanup(func() {
		h.Close()
		srv.Close()
		pool.Close()
	})
	return &bundle{h: h, url: srv.URL, db: d, queries: qc, gate: gate}
}

func cmpDur(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

type resp struct {
	status int
	header http.Header
	body   string
}

func (b *bundle) do(t *testing.T, method, path, body string, hdr ...string) resp {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, b.url+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	rb, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: string(rb)}
}

func (b *bundle) must(t *testing.T, want int, method, path, body string, hdr ...string) resp {
	t.Helper()
	r := b.do(t, method, path, body, hdr...)
	if r.status != want {
		t.Fatalf("%s %s: status %d, want %d; body %s", method, path, r.status, want, r.body)
	}
	return r
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// exec runs SQL on the test database (outside the handler's pool).
func (b *bundle) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := b.db.Pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}
