package push

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/internal/webhooksig"
	"github.com/pullwake/pullwake/server"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const admin = "push-test-admin-token-0123456789abcdef"

// env is one test's server, database and delivery worker (driven by
// runOnce, never started).
type env struct {
	t    *testing.T
	pool *pgxpool.Pool
	url  string
	w    *Worker
}

func setup(t *testing.T, timeout time.Duration) *env {
	t.Helper()
	d := testdb.New(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	signer := webhooksig.Generate()
	hs := httptest.NewServer(nil)
	srv, err := server.New(server.Config{Pool: d.Pool, AdminToken: admin, PublicURL: hs.URL,
		SweepInterval: time.Hour, Logger: log, WebhookSigner: signer})
	if err != nil {
		t.Fatal(err)
	}
	hs.Config.Handler = srv.Handler()
	t.Cleanup(func() { hs.Close(); srv.Stop() })
	w := New(Config{Pool: d.Pool, Host: srv, Signer: signer, Timeout: timeout,
		BackoffBase: 20 * time.Millisecond, BackoffMax: 100 * time.Millisecond, Logger: log})
	return &env{t: t, pool: d.Pool, url: hs.URL, w: w}
}

func (e *env) do(method, path string, body any) (int, map[string]any) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, e.url+path, rd)
	req.Header.Set("Authorization", "Bearer "+admin)
	req.Header.Set("Content-Type", "application/json")
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	var m map[string]any
	_ = json.NewDecoder(res.Body).Decode(&m)
	return res.StatusCode, m
}

func (e *env) must(want int, method, path string, body any) map[string]any {
	e.t.Helper()
	got, m := e.do(method, path, body)
	if got != want {
		e.t.Fatalf("%s %s: %d, want %d: %v", method, path, got, want, m)
	}
	return m
}

func (e *env) subscribe(id, pattern, url string) {
	e.t.Helper()
	e.must(201, "PUT", "/__ds/subscriptions/"+id, map[string]any{
		"type": "webhook", "pattern": pattern, "webhook": map[string]any{"url": url}})
}

func (e *env) spawnAndSend(url string, payload any) string {
	e.t.Helper()
	e.must(201, "PUT", "/entities"+url, map[string]any{})
	return e.must(202, "POST", "/entities"+url, map[string]any{"payload": payload})["offset"].(string)
}

func (e *env) query(sql string, args ...any) string {
	e.t.Helper()
	var s string
	if err := e.pool.QueryRow(context.Background(), sql, args...).Scan(&s); err != nil {
		e.t.Fatalf("%s: %v", sql, err)
	}
	return s
}

// until runs passes of the worker until cond holds (deadline 15s).
func (e *env) until(what string, cond func() bool) {
	e.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			e.t.Fatalf("timed out waiting for %s", what)
		}
		if _, err := e.w.runOnce(context.Background()); err != nil {
			e.t.Fatal(err)
		}
		time.Sleep(5 * time.Millisecond) // a poll interval, not a wait for a state
	}
}

// delivery is one POST an endpoint received.
type delivery struct {
	body      []byte
	signature string
	n         map[string]any
}

// endpoint is a push endpoint served by the test; answer decides each
// answer from the delivery's number (1-based).
type endpoint struct {
	*httptest.Server
	mu    sync.Mutex
	got   []delivery
	calls atomic.Int64
}

func newEndpoint(t *testing.T, answer func(n int64, w http.ResponseWriter, r *http.Request)) *endpoint {
	ep := &endpoint{}
	ep.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := ep.calls.Add(1)
		body, _ := io.ReadAll(r.Body)
		var m map[string]any
		_ = json.Unmarshal(body, &m)
		ep.mu.Lock()
		ep.got = append(ep.got, delivery{body: body, signature: r.Header.Get("Webhook-Signature"), n: m})
		ep.mu.Unlock()
		answer(n, w, r)
	}))
	t.Cleanup(ep.Close)
	return ep
}

func (ep *endpoint) deliveries() []delivery {
	ep.mu.Lock()
	defer ep.mu.Unlock()
	return append([]delivery(nil), ep.got...)
}

func ok(w http.ResponseWriter) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"ok":true}`))
}

// An endpoint that fails (500), then times out, then recovers: the wake is
// delivered on the third attempt, the endpoint's done through the callback
// releases it, no message is lost and no claim is left active; each failed
// attempt's claim was released at once. The delivery's signature verifies
// with the key the server publishes at /__ds/jwks.json.
func TestPushFailsTimesOutThenRecovers(t *testing.T) {
	t.Parallel()
	e := setup(t, 300*time.Millisecond)
	ep := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		switch n {
		case 1:
			http.Error(w, "boom", http.StatusInternalServerError)
		case 2:
			<-r.Context().Done() // never answers: the worker's timeout ends it
		default:
			ok(w)
		}
	})
	e.subscribe("chat-sub", "/chat/**", ep.URL+"/hook")
	offset := e.spawnAndSend("/chat/1", "hello")

	e.until("a successful delivery", func() bool { return ep.calls.Load() >= 3 })
	got := ep.deliveries()
	if len(got) != 3 {
		t.Fatalf("%d deliveries, want 3", len(got))
	}
	last := got[2].n
	if last["entity_url"] != "/chat/1" || last["claim_token"] == "" || last["callback"] == nil {
		t.Fatalf("notification %s", got[2].body)
	}
	if ent, _ := last["entity"].(map[string]any); ent["type"] != "chat" || ent["url"] != "/chat/1" {
		t.Fatalf("entity context %v", last["entity"])
	}
	// Each attempt was its own claim (epochs 1, 2, 3); the failed ones ended.
	for i, d := range got {
		if d.n["epoch"] != float64(i+1) {
			t.Fatalf("delivery %d has epoch %v", i+1, d.n["epoch"])
		}
	}
	if s := e.query(`SELECT string_agg(epoch || ':' || status, ',' ORDER BY epoch) FROM consumer_claims`); s != "1:released,2:released,3:active" {
		t.Fatalf("claims %s", s)
	}
	if f := e.query(`SELECT failures::text FROM push_subscriptions WHERE id = 'chat-sub'`); f != "0" {
		t.Fatalf("failures %s after a delivery", f)
	}

	// The signature verifies against the published key set.
	res, err := http.Get(e.url + "/__ds/jwks.json")
	if err != nil {
		t.Fatal(err)
	}
	var set webhooksig.JWKS
	if err := json.NewDecoder(res.Body).Decode(&set); err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if err := webhooksig.Verify(got[2].body, got[2].signature, set, time.Now(), 5*time.Minute); err != nil {
		t.Fatalf("signature %q: %v", got[2].signature, err)
	}

	// The endpoint finishes through the normal callback with its claim token.
	done, _ := json.Marshal(map[string]any{"epoch": last["epoch"], "done": true,
		"acks": []map[string]any{{"stream": last["stream_path"], "offset": offset}}})
	req, _ := http.NewRequest("POST", last["callback"].(string), bytes.NewReader(done))
	req.Header.Set("Authorization", "Bearer "+last["claim_token"].(string))
	req.Header.Set("Content-Type", "application/json")
	cres, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	cres.Body.Close()
	if cres.StatusCode != 200 {
		t.Fatalf("done: %d", cres.StatusCode)
	}

	if s := e.query(`SELECT status || ' ' || pw_offset(d.acked_offset) FROM entities e JOIN entity_dispatch_state d USING (tenant_id)
	                   WHERE e.url = '/chat/1' AND d.entity_url = e.url`); s != "idle "+offset {
		t.Fatalf("entity %s, want idle %s", s, offset)
	}
	if s := e.query(`SELECT count(*) FILTER (WHERE status = 'active') || '/' || count(*) FILTER (WHERE status = 'queued') FROM
	                   (SELECT status FROM consumer_claims UNION ALL SELECT status FROM wakes) x`); s != "0/0" {
		t.Fatalf("active claims / queued wakes: %s", s)
	}
	if n, err := e.w.runOnce(context.Background()); err != nil || n != 0 || ep.calls.Load() != 3 {
		t.Fatalf("after done: pass found %d (%v), %d calls", n, err, ep.calls.Load())
	}
}

// A synchronous {"done": true} answer releases the claim at once,
// acknowledging the main stream up to its tail at the claim.
func TestPushDoneAnswerReleases(t *testing.T) {
	t.Parallel()
	e := setup(t, 5*time.Second)
	ep := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"done": true}`))
	})
	e.subscribe("s", "chat/*/main", ep.URL)
	offset := e.spawnAndSend("/chat/2", map[string]any{"text": "hi"})
	e.until("the entity idle again", func() bool {
		return e.query(`SELECT status FROM entities WHERE url = '/chat/2'`) == "idle" && ep.calls.Load() == 1
	})
	if s := e.query(`SELECT pw_offset(acked_offset) FROM entity_dispatch_state WHERE entity_url = '/chat/2'`); s != offset {
		t.Fatalf("acked %s, want %s", s, offset)
	}
	if s := e.query(`SELECT string_agg(status, ',') FROM consumer_claims`); s != "released" {
		t.Fatalf("claims %s", s)
	}
}

// An endpoint that never answers while the server cannot even record the
// failure still leaks no claim: the claim is ordinary and the sweeper
// expires it after its lease (here: the release is impossible because the
// worker is stopped mid-delivery, and expire_claims runs at a pinned time).
func TestPushClaimEndsByLeaseWhenWorkerDies(t *testing.T) {
	t.Parallel()
	e := setup(t, time.Minute)
	entered := make(chan struct{}, 1)
	ep := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		entered <- struct{}{}
		<-r.Context().Done()
	})
	e.subscribe("s", "chat/**", ep.URL)
	e.spawnAndSend("/chat/3", "x")
	ctx, cancel := context.WithCancel(context.Background())
	e.w.cfg.Host = deadHost{e.w.cfg.Host} // the release after the failure cannot reach the database
	done := make(chan struct{})
	go func() { defer close(done); _, _ = e.w.runOnce(ctx) }()
	<-entered
	cancel()
	<-done
	if s := e.query(`SELECT status FROM consumer_claims`); s != "active" {
		t.Fatalf("claim %s before expiry", s)
	}
	// The sweeper's pass, past the lease: the claim ends and the message
	// gets a new wake.
	if _, err := e.pool.Exec(context.Background(), `SELECT * FROM expire_claims(now() + interval '31 seconds')`); err != nil {
		t.Fatal(err)
	}
	if s := e.query(`SELECT (SELECT status FROM consumer_claims) || ' ' || (SELECT status FROM entities) || ' ' ||
	                   (SELECT count(*) FROM wakes WHERE status = 'queued')`); s != "expired idle 1" {
		t.Fatalf("after expiry: %s", s)
	}
}

type deadHost struct{ Host }

func (deadHost) PushRelease(context.Context, string, int64, []byte) error { return context.Canceled }

// DELETE of a subscription stops its deliveries: a later wake is not
// claimed for it and its endpoint is not called again.
func TestDeleteSubscriptionStopsDeliveries(t *testing.T) {
	t.Parallel()
	e := setup(t, 5*time.Second)
	ep := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		_, _ = w.Write([]byte(`{"done": true}`))
	})
	e.subscribe("s", "chat/**", ep.URL)
	e.spawnAndSend("/chat/4", "first")
	e.until("the first delivery", func() bool {
		return ep.calls.Load() == 1 && e.query(`SELECT status FROM entities WHERE url = '/chat/4'`) == "idle"
	})
	e.must(204, "DELETE", "/__ds/subscriptions/s", nil)
	e.must(404, "GET", "/__ds/subscriptions/s", nil)
	e.must(202, "POST", "/entities/chat/4", map[string]any{"payload": "second"})
	for range 5 {
		if n, err := e.w.runOnce(context.Background()); err != nil || n != 0 {
			t.Fatalf("pass after delete found %d (%v)", n, err)
		}
	}
	if ep.calls.Load() != 1 {
		t.Fatalf("%d calls after delete", ep.calls.Load())
	}
	// The wake waits, queued, for a runner (or a new subscription).
	if s := e.query(`SELECT count(*)::text FROM wakes WHERE status = 'queued'`); s != "1" {
		t.Fatalf("queued wakes %s", s)
	}
}

// Only registered URLs are called: an entity no subscription matches is
// not pushed, a subscription with a non-http(s) URL or without the admin
// token is refused and stores nothing, and an entity type's webhook target
// is called only for that type's entities.
func TestOnlyRegisteredEndpointsAreCalled(t *testing.T) {
	t.Parallel()
	e := setup(t, 5*time.Second)
	var stray atomic.Int64
	strayEP := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { stray.Add(1) }))
	t.Cleanup(strayEP.Close)
	chat := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"done":true}`)) })
	typed := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"done":true}`)) })

	for _, u := range []string{"ftp://" + strings.TrimPrefix(strayEP.URL, "http://"), "file:///etc/passwd", "/relative", "http://"} {
		e.must(400, "PUT", "/__ds/subscriptions/bad", map[string]any{"type": "webhook", "pattern": "**",
			"webhook": map[string]any{"url": u}})
	}
	req, _ := http.NewRequest("PUT", e.url+"/__ds/subscriptions/anon",
		strings.NewReader(`{"type":"webhook","pattern":"**","webhook":{"url":"`+strayEP.URL+`"}}`))
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != 401 {
		t.Fatalf("subscription without admin token: %d", res.StatusCode)
	}
	if n := e.query(`SELECT count(*)::text FROM push_subscriptions`); n != "0" {
		t.Fatalf("%s subscriptions stored by refused requests", n)
	}

	e.subscribe("chat", "chat/**", chat.URL)
	e.must(201, "POST", "/_electric/entity-types", map[string]any{"name": "worker", "description": "",
		"default_dispatch_policy": map[string]any{"targets": []any{
			map[string]any{"type": "webhook", "url": "gopher://" + strings.TrimPrefix(strayEP.URL, "http://")},
			map[string]any{"type": "webhook", "url": typed.URL}}}})
	e.spawnAndSend("/other/1", "nobody's")
	e.spawnAndSend("/worker/1", "typed")
	e.spawnAndSend("/chat/5", "subscribed")
	e.until("both deliveries", func() bool { return chat.calls.Load() == 1 && typed.calls.Load() == 1 })
	for range 3 {
		_, _ = e.w.runOnce(context.Background())
	}
	if chat.deliveries()[0].n["entity_url"] != "/chat/5" || typed.deliveries()[0].n["entity_url"] != "/worker/1" {
		t.Fatalf("chat got %s, typed got %s", chat.deliveries()[0].body, typed.deliveries()[0].body)
	}
	if stray.Load() != 0 || chat.calls.Load() != 1 || typed.calls.Load() != 1 {
		t.Fatalf("calls: stray %d, chat %d, typed %d", stray.Load(), chat.calls.Load(), typed.calls.Load())
	}
	if s := e.query(`SELECT status FROM entities WHERE url = '/other/1'`); s != "idle" {
		t.Fatalf("unsubscribed entity %s", s)
	}
}

// An endpoint that hangs holds one delivery slot until its timeout, not
// the worker: another subscription's wakes are delivered meanwhile.
func TestHangingEndpointDoesNotDelayOthers(t *testing.T) {
	t.Parallel()
	e := setup(t, time.Minute)
	release := make(chan struct{})
	hung := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	t.Cleanup(func() { close(release) })
	fine := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"done":true}`)) })
	e.subscribe("slow", "slow/**", hung.URL)
	e.subscribe("fast", "fast/**", fine.URL)
	e.w.cfg.PollInterval = 10 * time.Millisecond
	e.w.Start(context.Background())
	t.Cleanup(e.w.Stop)

	e.spawnAndSend("/slow/1", "hangs")
	deadline := time.Now().Add(15 * time.Second)
	for hung.calls.Load() == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the hanging endpoint was never called")
		}
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 3 {
		u := "/fast/" + string(rune('1'+i))
		e.spawnAndSend(u, "quick")
		for e.query(`SELECT status FROM entities WHERE url = $1`, u) != "idle" || fine.calls.Load() != int64(i+1) {
			if time.Now().After(deadline) {
				t.Fatalf("%s not delivered while another endpoint hangs (%d calls)", u, fine.calls.Load())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
}

// stuck is an endpoint that accepts every POST and never answers: each
// handler blocks until the test ends or the worker gives up on it. It
// counts the POSTs in flight per path (one path per target).
type stuck struct {
	*httptest.Server
	mu       sync.Mutex
	inflight map[string]int
	most     map[string]int // the most in flight at once, per path
	calls    int
	ended    int // handlers that returned: deliveries the worker gave up on
}

func newStuck(t *testing.T) *stuck {
	s := &stuck{inflight: map[string]int{}, most: map[string]int{}}
	release := make(chan struct{})
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// With the body read, the server watches the connection: the
		// request's context ends when the worker gives up on it.
		_, _ = io.Copy(io.Discard, r.Body)
		s.mu.Lock()
		s.calls++
		s.inflight[r.URL.Path]++
		s.most[r.URL.Path] = max(s.most[r.URL.Path], s.inflight[r.URL.Path])
		s.mu.Unlock()
		select {
		case <-release:
		case <-r.Context().Done():
		}
		s.mu.Lock()
		s.inflight[r.URL.Path]--
		s.ended++
		s.mu.Unlock()
	}))
	t.Cleanup(func() { close(release); s.Close() })
	return s
}

// snapshot returns the POSTs received, the handlers that returned and the
// most POSTs one path had in flight at once.
func (s *stuck) snapshot() (calls, ended, most int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.most {
		most = max(most, n)
	}
	return s.calls, s.ended, most
}

// Ten targets whose endpoint accepts and never answers, each with three
// queued wakes, do not delay an eleventh, healthy target whose wake was
// queued after all of theirs: it is delivered while every stuck delivery
// is still waiting for its answer (none has reached the push timeout),
// and no stuck target ever has more than its share (PerTarget) in flight.
func TestStuckTargetsDoNotDelayAHealthyOne(t *testing.T) {
	t.Parallel()
	const timeout = time.Minute
	e := setup(t, timeout)
	hung := newStuck(t)
	fine := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"done":true}`)) })
	for i := range 10 {
		e.subscribe(fmt.Sprintf("stuck%d", i), fmt.Sprintf("stuck%d/**", i), fmt.Sprintf("%s/stuck%d", hung.URL, i))
	}
	e.subscribe("healthy", "healthy/**", fine.URL)
	e.w.cfg.PollInterval = 10 * time.Millisecond
	e.w.Start(context.Background())
	t.Cleanup(e.w.Stop) // runs before the endpoints close: it ends the stuck POSTs

	for i := range 10 {
		for j := range 3 {
			e.spawnAndSend(fmt.Sprintf("/stuck%d/%d", i, j), "never answered")
		}
	}
	start := time.Now()
	e.spawnAndSend("/healthy/1", "answered")
	deadline := start.Add(timeout / 2)
	for fine.calls.Load() == 0 || e.query(`SELECT status FROM entities WHERE url = '/healthy/1'`) != "idle" {
		if time.Now().After(deadline) {
			calls, ended, _ := hung.snapshot()
			t.Fatalf("healthy wake not delivered within %s (half the push timeout); stuck endpoint: %d POSTs, %d given up", timeout/2, calls, ended)
		}
		time.Sleep(5 * time.Millisecond)
	}
	took := time.Since(start)
	if _, ended, _ := hung.snapshot(); ended != 0 {
		t.Fatalf("healthy wake delivered after %s, only once %d stuck deliveries had timed out", took, ended)
	}
	t.Logf("healthy wake delivered %s after it was queued, behind 30 wakes of 10 stuck targets", took)

	// Every stuck target gets its share, and no more.
	want := 10 * e.w.cfg.PerTarget
	for {
		calls, ended, most := hung.snapshot()
		if most > e.w.cfg.PerTarget {
			t.Fatalf("a stuck target had %d POSTs in flight, share %d", most, e.w.cfg.PerTarget)
		}
		if calls == want && ended == 0 {
			break
		}
		if calls > want || ended > 0 || time.Now().After(deadline) {
			t.Fatalf("stuck endpoint: %d POSTs (want %d), %d given up", calls, want, ended)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// silent accepts TCP connections and never writes a byte.
func silent(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l
}

// firstFailure drives the worker until target's first failed delivery and
// returns its error and how long it took.
func (e *env) firstFailure(target string) (string, time.Duration) {
	e.t.Helper()
	start := time.Now()
	e.until("a failed delivery", func() bool {
		return e.query(`SELECT failures::text FROM push_subscriptions WHERE id = $1`, target) != "0"
	})
	return e.query(`SELECT last_error FROM push_subscriptions WHERE id = $1`, target), time.Since(start)
}

// An https endpoint that accepts the TCP connection and never answers the
// TLS handshake fails at the connect timeout (default 3s), not the push
// timeout: its slot is free again long before.
func TestConnectTimeoutCoversTLSHandshake(t *testing.T) {
	t.Parallel()
	const timeout = time.Minute
	e := setup(t, timeout)
	l := silent(t)
	e.subscribe("mute", "mute/**", "https://"+l.Addr().String()+"/hook")
	e.spawnAndSend("/mute/1", "x")
	msg, took := e.firstFailure("mute")
	if !strings.Contains(msg, "no connection within 3s") || took > timeout/4 {
		t.Fatalf("failed after %s with %q; want the 3s connect timeout", took, msg)
	}
	t.Logf("TLS handshake never answered: failed after %s: %s", took, msg)
}

// A plain http endpoint that accepts the connection and never answers is
// connected: it is cut by the push timeout, not the connect timeout.
func TestConnectedEndpointGetsThePushTimeout(t *testing.T) {
	t.Parallel()
	e := setup(t, 4*time.Second)
	e.w.cfg.ConnectTimeout = 500 * time.Millisecond
	l := silent(t)
	e.subscribe("mute", "mute/**", "http://"+l.Addr().String()+"/hook")
	e.spawnAndSend("/mute/1", "x")
	msg, took := e.firstFailure("mute")
	if strings.Contains(msg, "no connection") || !strings.Contains(msg, "deadline exceeded") || took < 4*time.Second {
		t.Fatalf("failed after %s with %q; want the 4s push timeout", took, msg)
	}
}

// A target at its share with a long backlog does not hide the wakes queued
// behind it: the pass reads further than one wake per free slot. Here the
// global cap is 4, the stuck target's 12 wakes are the oldest, and the
// healthy target's wake is the 13th.
func TestBusyTargetsBacklogDoesNotHideOthers(t *testing.T) {
	t.Parallel()
	const timeout = time.Minute
	e := setup(t, timeout)
	e.w = New(Config{Pool: e.pool, Host: e.w.cfg.Host, Signer: e.w.cfg.Signer, Timeout: timeout,
		Concurrency: 4, PollInterval: 10 * time.Millisecond, Logger: e.w.cfg.Logger})
	hung := newStuck(t)
	fine := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) { _, _ = w.Write([]byte(`{"done":true}`)) })
	e.subscribe("stuck", "stuck/**", hung.URL+"/stuck")
	e.subscribe("healthy", "healthy/**", fine.URL)
	for i := range 12 {
		e.spawnAndSend(fmt.Sprintf("/stuck/%d", i), "never answered")
	}
	e.spawnAndSend("/healthy/1", "answered")
	e.w.Start(context.Background())
	t.Cleanup(e.w.Stop)
	deadline := time.Now().Add(timeout / 2)
	for fine.calls.Load() == 0 || e.query(`SELECT status FROM entities WHERE url = '/healthy/1'`) != "idle" {
		if time.Now().After(deadline) {
			t.Fatal("healthy wake not delivered within half the push timeout")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if calls, ended, most := hung.snapshot(); calls > 2 || ended != 0 || most > 2 {
		t.Fatalf("stuck endpoint: %d POSTs, %d given up, %d at once; want at most 2, none given up", calls, ended, most)
	}
}

// The slots' caps: the global one, each target's share, one per wake.
func TestSlots(t *testing.T) {
	t.Parallel()
	s := newSlots(3, 2)
	steps := []struct {
		target, wake string
		want         bool
	}{
		{"a", "w1", true},
		{"a", "w1", false}, // the same wake twice
		{"a", "w2", true},
		{"a", "w3", false}, // a's share is used up
		{"b", "w4", true},
		{"c", "w5", false}, // the global cap
	}
	for i, st := range steps {
		if got := s.take(st.target, st.wake); got != st.want {
			t.Fatalf("step %d: take(%s, %s) = %v", i, st.target, st.wake, got)
		}
	}
	if s.free() != 0 {
		t.Fatalf("free %d with every slot taken", s.free())
	}
	s.give("a", "w1")
	if !s.take("c", "w5") || s.take("a", "w3") {
		t.Fatal("a freed slot went to the wrong target")
	}
	s.give("a", "w2")
	if !s.take("a", "w3") || len(s.byTarget) != 3 {
		t.Fatalf("after give: %v", s.byTarget)
	}
}

// OnDelivery hears each delivery's outcome and its lag from the wake's
// queueing: the first attempt (answered 500) of a wake queued an hour ago
// (its created_at moved back) is a failure an hour late; the retry is of
// the wake the failure's release queued anew, so its lag starts there.
// A pass that claims nothing tells it nothing.
func TestPushDeliveryHook(t *testing.T) {
	t.Parallel()
	e := setup(t, 5*time.Second)
	type seen struct {
		outcome string
		lag     time.Duration
	}
	var mu sync.Mutex
	var got []seen
	e.w = New(Config{Pool: e.pool, Host: e.w.cfg.Host, Signer: e.w.cfg.Signer, Timeout: 5 * time.Second,
		BackoffBase: time.Millisecond, BackoffMax: time.Millisecond, Logger: e.w.cfg.Logger,
		OnDelivery: func(outcome string, lag time.Duration) {
			mu.Lock()
			defer mu.Unlock()
			got = append(got, seen{outcome, lag})
		}})
	ep := newEndpoint(t, func(n int64, w http.ResponseWriter, r *http.Request) {
		if n == 1 {
			http.Error(w, "boom", http.StatusInternalServerError)
			return
		}
		_, _ = w.Write([]byte(`{"done": true}`))
	})
	e.subscribe("s", "chat/**", ep.URL)
	e.spawnAndSend("/chat/lag", "hi")
	if _, err := e.pool.Exec(context.Background(),
		`UPDATE wakes SET created_at = created_at - interval '1 hour' WHERE entity_url = '/chat/lag' AND status = 'queued'`); err != nil {
		t.Fatal(err)
	}
	e.until("a delivery after a failure", func() bool { return ep.calls.Load() == 2 })
	if n, err := e.w.runOnce(context.Background()); err != nil || n != 0 {
		t.Fatalf("pass after done: %d, %v", n, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || got[0].outcome != Failed || got[1].outcome != Delivered {
		t.Fatalf("OnDelivery heard %+v, want failed then delivered", got)
	}
	if got[0].lag < time.Hour || got[0].lag > time.Hour+time.Minute {
		t.Errorf("first attempt's lag %s, want about an hour", got[0].lag)
	}
	if got[1].lag < 0 || got[1].lag > time.Minute {
		t.Errorf("retry's lag %s, want from its re-queue (well under a minute)", got[1].lag)
	}
}
