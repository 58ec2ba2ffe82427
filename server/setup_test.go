package server_test

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/metrics"
	"github.com/pullwake/pullwake/internal/pgnotify"
	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server"
	"github.com/pullwake/pullwake/server/shapes"
	"github.com/pullwake/pullwake/server/streams"
	"github.com/pullwake/pullwake/server/writeauth"
)

// bundle is one test's server over its own database.
type bundle struct {
	t        testing.TB
	db       *testdb.DB
	pool     *pgxpool.Pool // counts acquisitions, see acquires
	acquires *atomic.Int64
	srv      *server.Server
	url      string
	admin    string
}

type options struct {
	adminToken string
	sweep      time.Duration
	listen     bool
	listenURL  string        // connection string of the LISTEN connection ("" = the database's)
	noWait     bool          // do not wait for the listener to connect
	reconcile  time.Duration // token reconcile interval (0 = the server's default)
	metrics    bool
	empty      bool // database without migrations
	publish    bool // announce releases and appends after commit (pgnotify)
	// singleCalls turns group commit off. The server tests run with it on,
	// so every HTTP test also covers the batched path; the tests of the
	// binary (internal/e2e, cmd/pullwake) run pullwake serve's default, off.
	singleCalls  bool
	requireTypes bool          // Config.RequireEntityTypes
	resend       time.Duration // Config.WakeEventResend (0 = the server's default)
}

// setup starts a server on a fresh database.
func setup(t testing.TB, opts ...func(*options)) *bundle {
	t.Helper()
	o := options{}
	for _, f := range opts {
		f(&o)
	}
	if o.empty {
		return startOn(t, testdb.Empty(t), opts...)
	}
	return startOn(t, testdb.New(t), opts...)
}

// startOn starts another server instance (empty token store) on d.
func startOn(t testing.TB, d *testdb.DB, opts ...func(*options)) *bundle {
	t.Helper()
	o := options{sweep: time.Hour}
	for _, f := range opts {
		f(&o)
	}
	// Registered first, so it runs last: after the server closed, every
	// answer is recorded.
	traffic := &trafficRecorder{}
	t.Cleanup(func() { traffic.check(t) })
	var acquires atomic.Int64
	pc, err := pgxpool.ParseConfig(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	pc.PrepareConn = func(ctx context.Context, c *pgx.Conn) (bool, error) {
		acquires.Add(1)
		return true, nil
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(pool.Close)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(testWriter{t}, nil))
	}
	store, _ := writeauth.NewStore(context.Background(), pool, "default") // an unmigrated database: a key of its own
	var met *metrics.Metrics
	if o.metrics {
		met = metrics.New(metrics.Config{TokenStoreSize: store.Len, Source: metrics.DBSource{Conn: pool, Tenant: "default"}})
	}
	scfg := streams.Config{Pool: pool, Gate: writeauth.New(store, pool, "default"), AdminToken: o.adminToken, LongPollTimeout: time.Second, Logger: log}
	var pub *pgnotify.Publisher
	if o.publish {
		pub = pgnotify.New(pool, log)
		scfg.Publisher = pub
	}
	if met != nil {
		scfg.Metrics = met
	}
	var bw *streams.BatchWriter
	if !o.singleCalls {
		bw = streams.NewBatchWriter(pool, "default", 0, nil)
		scfg.Writer = bw
	}
	sh := streams.New(scfg)
	// Shapes are mounted as pullwake serve mounts them; the feed starts
	// only if a test asks for a shape.
	feed := shapes.NewFeed(shapes.FeedConfig{Pool: pool, ConnString: d.URL, Tenant: "default", Logger: log})
	cfg := server.Config{
		Pool: pool, Tenant: "default", AdminToken: o.adminToken, SweepInterval: o.sweep, WakeEventResend: o.resend,
		Tokens: store, Streams: sh, StreamChannel: streams.NotifyChannel, Logger: log,
		ReconcileInterval: o.reconcile, GroupCommit: !o.singleCalls, RequireEntityTypes: o.requireTypes,
		Shapes: shapes.New(shapes.Config{Feed: feed, Logger: log, LongPollTimeout: time.Second, Private: o.adminToken != ""}),
	}
	if o.listen {
		cfg.ConnString = cmp.Or(o.listenURL, d.URL)
	}
	if met != nil {
		cfg.Metrics = met
	}
	if pub != nil {
		cfg.Publisher = pub
	}
	hs := httptest.NewUnstartedServer(nil)
	hs.Start()
	cfg.PublicURL = hs.URL
	srv, err := server.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = traffic.wrap(srv.Handler())
	ctx, cancel := context.WithCancel(context.Background())
	srv.Start(ctx)
	if bw != nil {
		bw.Start(ctx)
	}
	if pub != nil {
		pub.Start(ctx)
		t.Cleanup(pub.Stop)
	}
	if l := srv.Listener(); l != nil && !o.noWait {
		select {
		case <-l.Connected():
		case <-time.After(10 * time.Second):
			t.Fatal("listener did not connect")
		}
	}
	t.Cleanup(func() {
		feed.Close() // live shape readers answer, then the server closes
		hs.Close()
		cancel()
		srv.Stop()
		if bw != nil {
			bw.Stop()
		}
	})
	return &bundle{t: t, db: d, pool: pool, acquires: &acquires, srv: srv, url: hs.URL, admin: o.adminToken}
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// resp is a decoded response.
type resp struct {
	status int
	header http.Header
	body   []byte
}

func (r resp) json(t testing.TB) map[string]any {
	t.Helper()
	var m map[string]any
	if err := json.Unmarshal(r.body, &m); err != nil {
		t.Fatalf("response %d is not a JSON object: %q", r.status, r.body)
	}
	return m
}

// errorCode returns error.code of an error body.
func (r resp) errorCode(t testing.TB) string {
	t.Helper()
	e, ok := r.json(t)["error"].(map[string]any)
	if !ok {
		t.Fatalf("no error object in %q", r.body)
	}
	if msg, _ := e["message"].(string); msg == "" {
		t.Fatalf("error without message: %q", r.body)
	}
	code, _ := e["code"].(string)
	return code
}

// do sends a request; body may be nil, a string (sent raw) or a value (JSON).
func (b *bundle) do(method, path, token string, body any, hdr ...string) resp {
	b.t.Helper()
	var rd io.Reader
	switch v := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(v)
	case []byte:
		rd = bytes.NewReader(v)
	default:
		buf, err := json.Marshal(v)
		if err != nil {
			b.t.Fatal(err)
		}
		rd = bytes.NewReader(buf)
	}
	req, err := http.NewRequest(method, b.url+path, rd)
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: data}
}

func (b *bundle) must(want int, r resp) resp {
	b.t.Helper()
	if r.status != want {
		b.t.Fatalf("status %d, want %d: %s", r.status, want, r.body)
	}
	return r
}

// registerRunner registers a runner and returns its token.
func (b *bundle) registerRunner(id string) string {
	b.t.Helper()
	r := b.must(201, b.do("POST", "/_electric/runners", b.admin, map[string]any{"id": id}))
	return r.json(b.t)["runner_token"].(string)
}

func (b *bundle) spawn(url string) {
	b.t.Helper()
	b.must(201, b.do("PUT", "/entities"+url, b.admin, map[string]any{}))
}

func (b *bundle) send(url string, payload any) string {
	b.t.Helper()
	r := b.must(202, b.do("POST", "/entities"+url, b.admin, map[string]any{"payload": payload}))
	return r.json(b.t)["offset"].(string)
}

// wake is a decoded wake notification.
type wake struct {
	WakeID     string `json:"wake_id"`
	ConsumerID string `json:"consumer_id"`
	Epoch      int64  `json:"epoch"`
	EntityURL  string `json:"entity_url"`
	StreamPath string `json:"stream_path"`
	Streams    []struct {
		Path   string `json:"path"`
		Offset string `json:"offset"`
	} `json:"streams"`
	ClaimToken     string    `json:"claim_token"`
	WriteToken     string    `json:"write_token"`
	Callback       string    `json:"callback"`
	LeaseTTLMS     int       `json:"lease_ttl_ms"`
	LeaseExpiresAt time.Time `json:"lease_expires_at"`
}

func (b *bundle) claim(runner, token string, leaseMS int) (wake, bool) {
	b.t.Helper()
	body := map[string]any{}
	if leaseMS > 0 {
		body["lease_ttl_ms"] = leaseMS
	}
	r := b.do("POST", "/_electric/runners/"+runner+"/claim", token, body)
	if r.status == http.StatusNoContent {
		return wake{}, false
	}
	b.must(200, r)
	var w wake
	if err := json.Unmarshal(r.body, &w); err != nil {
		b.t.Fatal(err)
	}
	return w, true
}

func (b *bundle) mustClaim(runner, token string, leaseMS int) wake {
	b.t.Helper()
	w, ok := b.claim(runner, token, leaseMS)
	if !ok {
		b.t.Fatalf("runner %s got no wake", runner)
	}
	return w
}

// callback posts to the claim's wake-callback.
func (b *bundle) callback(w wake, token string, body map[string]any) resp {
	b.t.Helper()
	return b.do("POST", "/_electric/wake-callbacks/"+w.ConsumerID, token, body)
}

func (b *bundle) done(w wake, acks ...map[string]any) resp {
	b.t.Helper()
	body := map[string]any{"epoch": w.Epoch, "done": true}
	if len(acks) > 0 {
		body["acks"] = acks
	}
	return b.callback(w, w.ClaimToken, body)
}

func (b *bundle) appendMain(w wake, token string, msg any) resp {
	b.t.Helper()
	return b.do("POST", w.StreamPath, token, msg)
}

func (b *bundle) entity(url string) map[string]any {
	b.t.Helper()
	return b.must(200, b.do("GET", "/entities"+url, b.admin, nil)).json(b.t)
}

func (b *bundle) health(runner, token string) map[string]any {
	b.t.Helper()
	return b.must(200, b.do("GET", "/_electric/runners/"+runner+"/health", token, nil)).json(b.t)
}

// claimStatus reads a claim's status straight from the database.
func (b *bundle) claimStatus(consumer string, epoch int64) string {
	b.t.Helper()
	var st string
	if err := b.db.Pool.QueryRow(context.Background(),
		"SELECT status FROM consumer_claims WHERE consumer_id = $1 AND epoch = $2", consumer, epoch).Scan(&st); err != nil {
		b.t.Fatal(err)
	}
	return st
}

func activeCount(h map[string]any) float64 {
	return h["claims"].(map[string]any)["active_count"].(float64)
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
