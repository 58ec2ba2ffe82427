package runner_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/testbin"
	"github.com/pullwake/pullwake/internal/testserver"
	"github.com/pullwake/pullwake/runner"
)

// No goroutine of a runner (dispatcher, heartbeats, wake stream reader)
// may outlive its Run.
func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const adminToken = "test-admin-token-0123456789abcdef"

// env is one test's server and the HTTP traffic of its runners.
type env struct {
	t    *testing.T
	srv  *testserver.Server // nil when the server is a child process
	base string             // the server's URL
	pool *pgxpool.Pool      // the server's database
	rec  *recorder
	hc   *http.Client // the runners' client: recorded
	adm  *http.Client // the test's own requests: not recorded
}

func newEnv(t *testing.T, opts testserver.Options) *env {
	t.Helper()
	opts.AdminToken = adminToken
	srv := testserver.Start(t, opts)
	e := &env{t: t, srv: srv, base: srv.URL, pool: srv.DB.Pool}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	e.rec = &recorder{next: tr}
	e.hc = &http.Client{Transport: e.rec}
	e.adm = &http.Client{Transport: tr}
	t.Cleanup(tr.CloseIdleConnections)
	return e
}

// config is a runner configuration for this server, with short back-offs.
func (e *env) config(id string) runner.Config {
	return runner.Config{
		ServerURL: e.base, RunnerID: id, AdminToken: adminToken,
		HTTPClient: e.hc, Logger: testLogger(e.t),
		MinBackoff: 10 * time.Millisecond, MaxBackoff: 200 * time.Millisecond,
	}
}

// running is a Run in progress.
type running struct {
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
	err    error
}

// stop cancels Run and returns its error.
func (r *running) stop() error {
	r.cancel()
	return r.wait()
}

// wait returns Run's error once it returned.
func (r *running) wait() error {
	r.once.Do(func() {
		select {
		case r.err = <-r.done:
		case <-time.After(time.Minute):
			r.err = errors.New("Run did not return within a minute")
		}
	})
	return r.err
}

// run starts r.Run until the test ends or stop.
func (e *env) run(cfg runner.Config, h runner.Handler) *running {
	e.t.Helper()
	r, err := runner.New(cfg, h)
	if err != nil {
		e.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rn := &running{cancel: cancel, done: make(chan error, 1)}
	go func() { rn.done <- r.Run(ctx) }()
	e.t.Cleanup(func() { _ = rn.stop() })
	return rn
}

func testLogger(t *testing.T) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

type logWriter struct{ t *testing.T }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// do sends an admin request to the server and returns status and body.
func (e *env) do(method, path string, body any) (int, []byte) {
	e.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			e.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, e.base+path, rd)
	if err != nil {
		e.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+adminToken)
	res, err := e.adm.Do(req)
	if err != nil {
		e.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, _ := io.ReadAll(res.Body)
	return res.StatusCode, data
}

func (e *env) must(want int, method, path string, body any) []byte {
	e.t.Helper()
	st, data := e.do(method, path, body)
	if st != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, st, want, data)
	}
	return data
}

func (e *env) spawn(url string) { e.must(201, "PUT", "/entities"+url, map[string]any{}) }

// send sends payload to the entity and returns the message's offset.
func (e *env) send(url string, payload any) string {
	e.t.Helper()
	var ans struct {
		Offset string `json:"offset"`
	}
	if err := json.Unmarshal(e.must(202, "POST", "/entities"+url, map[string]any{"payload": payload}), &ans); err != nil {
		e.t.Fatal(err)
	}
	return ans.Offset
}

type entity struct {
	Status   string `json:"status"`
	Dispatch struct {
		ActiveConsumerID  *string `json:"active_consumer_id"`
		OutstandingWakeID *string `json:"outstanding_wake_id"`
		AckedOffset       string  `json:"acked_offset"`
	} `json:"dispatch"`
}

func (e *env) entity(url string) entity {
	e.t.Helper()
	var en entity
	if err := json.Unmarshal(e.must(200, "GET", "/entities"+url, nil), &en); err != nil {
		e.t.Fatal(err)
	}
	return en
}

// events reads the entity's whole main stream.
func (e *env) events(url string) []map[string]any {
	e.t.Helper()
	var evs []map[string]any
	if err := json.Unmarshal(e.must(200, "GET", "/v1/stream"+url+"/main?offset=-1", nil), &evs); err != nil {
		e.t.Fatal(err)
	}
	return evs
}

func eventsOfType(evs []map[string]any, typ string) []map[string]any {
	var out []map[string]any
	for _, ev := range evs {
		if ev["type"] == typ {
			out = append(out, ev)
		}
	}
	return out
}

type claimRow struct {
	ConsumerID string
	Epoch      int64
	Status     string
	LeaseEnd   time.Time
}

// claims reads the entity's claims from the database, oldest first.
func (e *env) claims(url string) []claimRow {
	e.t.Helper()
	rows, err := e.pool.Query(context.Background(),
		`SELECT consumer_id, epoch, status, lease_expires_at FROM consumer_claims WHERE entity_url = $1 ORDER BY epoch`, url)
	if err != nil {
		e.t.Fatal(err)
	}
	defer rows.Close()
	var out []claimRow
	for rows.Next() {
		var c claimRow
		if err := rows.Scan(&c.ConsumerID, &c.Epoch, &c.Status, &c.LeaseEnd); err != nil {
			e.t.Fatal(err)
		}
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		e.t.Fatal(err)
	}
	return out
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

// settled waits until the entity is idle with every sent message acked.
func (e *env) settled(url, lastSent string) {
	e.t.Helper()
	eventually(e.t, 20*time.Second, url+" idle with "+lastSent+" acked", func() bool {
		en := e.entity(url)
		return en.Status == "idle" && en.Dispatch.AckedOffset == lastSent && en.Dispatch.ActiveConsumerID == nil
	})
}

// echo answers each inbox message with an echo event.
func echo(ctx context.Context, w *runner.Wake) error {
	for _, m := range w.Inbox {
		ev := map[string]any{"type": "echo", "key": "echo-" + m.Key,
			"value": map[string]any{"in_reply_to": m.Key, "payload": m.Payload}}
		if _, err := w.Append(ctx, ev); err != nil {
			return err
		}
	}
	return nil
}

// exchange is one request the runners sent, with the answer's status
// (0 when the request failed).
type exchange struct {
	Method, Path string
	Body         string
	Status       int
}

// recorder is the runners' transport: it records every exchange and lets a
// test fail requests.
type recorder struct {
	next http.RoundTripper

	mu    sync.Mutex
	log   []exchange
	fault func(*http.Request) (*http.Response, error) // nil, or a replacement answer
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		body, _ = io.ReadAll(req.Body)
		req.Body.Close()
		req.Body = io.NopCloser(bytes.NewReader(body))
	}
	r.mu.Lock()
	fault := r.fault
	r.mu.Unlock()
	var res *http.Response
	var err error
	if fault != nil {
		res, err = fault(req)
	}
	if res == nil && err == nil {
		res, err = r.next.RoundTrip(req)
	}
	ex := exchange{Method: req.Method, Path: req.URL.Path, Body: string(body)}
	if err == nil {
		ex.Status = res.StatusCode
	}
	r.mu.Lock()
	r.log = append(r.log, ex)
	r.mu.Unlock()
	return res, err
}

func (r *recorder) setFault(f func(*http.Request) (*http.Response, error)) {
	r.mu.Lock()
	r.fault = f
	r.mu.Unlock()
}

// exchanges returns the recorded exchanges that match.
func (r *recorder) exchanges(match func(exchange) bool) []exchange {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []exchange
	for _, ex := range r.log {
		if match(ex) {
			out = append(out, ex)
		}
	}
	return out
}
