package runner_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testserver"
	"github.com/pullwake/pullwake/runner"
)

// A whole cycle: the runner registers, claims the wake of a sent message,
// hands the handler the inbox from the acked offset, appends with the write
// token and producer headers, and its done acks what it read.
func TestWholeCycle(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	first := e.send("/chat/1", map[string]any{"text": "hello"})

	var mu sync.Mutex
	var seen []runner.InboxMessage
	rn := e.run(e.config("r1"), runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		mu.Lock()
		seen = append(seen, w.Inbox...)
		mu.Unlock()
		return echo(ctx, w)
	}))
	e.settled("/chat/1", first)
	last := e.send("/chat/1", map[string]any{"text": "again"})
	e.settled("/chat/1", last)

	echoes := eventsOfType(e.events("/chat/1"), "echo")
	if len(echoes) != 2 {
		t.Fatalf("%d echoes, want 2: %v", len(echoes), echoes)
	}
	mu.Lock()
	if len(seen) != 2 || text(t, seen[0].Payload) != "hello" || text(t, seen[1].Payload) != "again" ||
		seen[0].From != "admin" || seen[0].Timestamp.IsZero() {
		t.Fatalf("the handler saw %+v, want each message once, in order", seen)
	}
	mu.Unlock()
	for i, ev := range echoes {
		if ev["value"].(map[string]any)["in_reply_to"] != seen[i].Key {
			t.Fatalf("echo %d answers %v, want %s", i, ev["value"], seen[i].Key)
		}
	}
	for _, c := range e.claims("/chat/1") {
		if c.Status != "released" {
			t.Fatalf("claim %s/%d is %s, want released", c.ConsumerID, c.Epoch, c.Status)
		}
	}
	// Appends carried the producer headers: a request with them is a 200
	// (a plain append answers 204).
	appends := e.rec.exchanges(func(x exchange) bool { return x.Method == "POST" && x.Path == "/v1/stream/chat/1/main" })
	if len(appends) != 2 || appends[0].Status != 200 || appends[1].Status != 200 {
		t.Fatalf("appends %+v, want two producer appends answered 200", appends)
	}
	// Dones acked the read offsets.
	dones := e.rec.exchanges(func(x exchange) bool { return strings.Contains(x.Body, `"done":true`) })
	if len(dones) != 2 || !strings.Contains(dones[1].Body, `"offset":"`+last+`"`) {
		t.Fatalf("dones %+v, want two, the last acking %s", dones, last)
	}
	if err := rn.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
}

// The runner's heartbeats keep its liveness lease: health says online.
func TestLiveness(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	cfg := e.config("r1")
	cfg.LivenessInterval = 100 * time.Millisecond
	e.run(cfg, runner.HandlerFunc(echo))
	eventually(t, 10*time.Second, "runner online", func() bool {
		st, body := e.do("GET", "/_electric/runners/r1", nil)
		var r struct {
			LivenessStatus string          `json:"liveness_status"`
			Diagnostics    json.RawMessage `json:"diagnostics"`
		}
		_ = json.Unmarshal(body, &r)
		return st == 200 && r.LivenessStatus == "online" && strings.Contains(string(r.Diagnostics), "pullwake-go-runner")
	})
}

// A server restart while the handler runs empties the server's token
// store; the write token still appends (the new process checks it against
// its claim's row) and the done releases. When the token cannot be checked
// any more (here: the shared signing key was replaced while the server was
// down), the append answers 401, the library re-mints the write token
// through the wake-callback, retries, and the done releases.
func TestServerRestartMidHandler(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name     string
		newKey   bool
		exchange []string
	}{
		{"token survives", false, []string{"append OK"}},
		{"token refused, re-minted", true, []string{"append Unauthorized", "claim-request OK", "append OK"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			e := newEnv(t, testserver.Options{})
			e.spawn("/chat/1")
			sent := e.send("/chat/1", "hi")

			started := make(chan struct{})
			proceed := make(chan struct{})
			var once sync.Once
			e.run(e.config("r1"), runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
				once.Do(func() { close(started) })
				select {
				case <-proceed:
				case <-ctx.Done():
					return ctx.Err()
				}
				return echo(ctx, w)
			}))
			waitClosed(t, started, "handler started")
			if c.newKey {
				if _, err := e.pool.Exec(context.Background(), `DELETE FROM token_keys`); err != nil {
					t.Fatal(err)
				}
			}
			e.srv.Restart()
			close(proceed)
			e.settled("/chat/1", sent)

			if n := len(eventsOfType(e.events("/chat/1"), "echo")); n != 1 {
				t.Fatalf("%d echoes, want 1", n)
			}
			var steps []string
			for _, x := range e.rec.exchanges(func(x exchange) bool {
				return x.Method == "POST" && (x.Path == "/v1/stream/chat/1/main" || strings.Contains(x.Body, `"wake_id"`))
			}) {
				what := "append"
				if strings.Contains(x.Body, `"wake_id"`) {
					what = "claim-request"
				}
				steps = append(steps, what+" "+http.StatusText(x.Status))
			}
			if strings.Join(steps, ", ") != strings.Join(c.exchange, ", ") {
				t.Fatalf("exchange %v, want %v", steps, c.exchange)
			}
			cs := e.claims("/chat/1")
			if len(cs) != 1 || cs[0].Status != "released" {
				t.Fatalf("claims %+v, want one, released", cs)
			}
		})
	}
}

// A handler that panics gets its claim released without acks: the message
// is offered again at once (not after the lease), and the next call
// answers it.
func TestHandlerPanicReleasesWithoutAcks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "boom")

	var calls atomic.Int32
	cfg := e.config("r1")
	cfg.LeaseTTL = 10 * time.Minute // an expiry cannot explain a second claim
	e.run(cfg, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		if calls.Add(1) == 1 {
			panic("handler bug")
		}
		return echo(ctx, w)
	}))
	e.settled("/chat/1", sent)

	cs := e.claims("/chat/1")
	if len(cs) != 2 || cs[0].Status != "released" || cs[1].Status != "released" {
		t.Fatalf("claims %+v, want two released: the panicked one and its retry", cs)
	}
	dones := e.rec.exchanges(func(x exchange) bool { return strings.Contains(x.Body, `"done":true`) })
	if len(dones) != 2 || strings.Contains(dones[0].Body, "acks") || !strings.Contains(dones[1].Body, "acks") {
		t.Fatalf("dones %+v: want the first without acks, the second with", dones)
	}
	if n := len(eventsOfType(e.events("/chat/1"), "echo")); n != 1 {
		t.Fatalf("%d echoes, want 1", n)
	}
}

// A handler that returns an error is treated as a panic is: released
// without acks, offered again.
func TestHandlerErrorReleasesWithoutAcks(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	var calls atomic.Int32
	e.run(e.config("r1"), runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		if calls.Add(1) == 1 {
			return errors.New("temporary trouble")
		}
		return echo(ctx, w)
	}))
	e.settled("/chat/1", sent)
	if calls.Load() != 2 {
		t.Fatalf("%d handler calls, want 2", calls.Load())
	}
}

// A handler slower than its lease keeps the claim: heartbeats extend the
// lease while it runs (the sweeper runs every 100 ms and would expire it),
// and once it returns the claim is released; nothing leaks.
func TestSlowHandlerKeepsClaim(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{SweepInterval: 100 * time.Millisecond})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "slow")

	started := make(chan struct{})
	proceed := make(chan struct{})
	var handlerErr atomic.Value
	cfg := e.config("r1")
	cfg.LeaseTTL = 2 * time.Second
	e.run(cfg, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		close(started)
		select {
		case <-proceed:
		case <-ctx.Done():
		}
		if err := ctx.Err(); err != nil {
			handlerErr.Store(err)
			return err
		}
		return echo(ctx, w)
	}))
	waitClosed(t, started, "handler started")
	first := e.claims("/chat/1")[0]
	// Wait until two leases have passed since the claim's first expiry
	// time, with the claim still active.
	eventually(t, 30*time.Second, "two leases past the first lease end", func() bool {
		return time.Now().After(first.LeaseEnd.Add(2 * cfg.LeaseTTL))
	})
	now := e.claims("/chat/1")[0]
	if now.Status != "active" || !now.LeaseEnd.After(first.LeaseEnd) {
		t.Fatalf("claim %+v after two leases, want active with a later lease end than %s", now, first.LeaseEnd)
	}
	close(proceed)
	e.settled("/chat/1", sent)
	if err := handlerErr.Load(); err != nil {
		t.Fatalf("the handler's context ended: %v", err)
	}
	cs := e.claims("/chat/1")
	if len(cs) != 1 || cs[0].Status != "released" {
		t.Fatalf("claims %+v, want the one claim released", cs)
	}
	var h struct {
		Claims struct {
			ActiveCount int `json:"active_count"`
		} `json:"claims"`
		Health struct {
			Issues []string `json:"issues"`
		} `json:"health"`
	}
	if err := json.Unmarshal(e.must(200, "GET", "/_electric/runners/r1/health", nil), &h); err != nil {
		t.Fatal(err)
	}
	if h.Claims.ActiveCount != 0 || len(h.Health.Issues) != 0 {
		t.Fatalf("health %+v, want no active claim and no issue", h)
	}
}

// A claim that ends under the handler (an operator's release) cancels the
// handler's context with ErrClaimLost at the next heartbeat; no done is
// sent.
func TestClaimLostCancelsHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")

	started := make(chan struct{})
	cause := make(chan error, 1)
	var calls atomic.Int32
	cfg := e.config("r1")
	cfg.HeartbeatInterval = 50 * time.Millisecond
	e.run(cfg, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		if calls.Add(1) > 1 {
			return echo(ctx, w) // the wake the release queued again
		}
		close(started)
		<-ctx.Done()
		cause <- context.Cause(ctx)
		return ctx.Err()
	}))
	waitClosed(t, started, "handler started")
	c := e.claims("/chat/1")[0]
	e.must(200, "POST", "/_electric/claims/"+c.ConsumerID+"/1/release", nil)
	select {
	case err := <-cause:
		if !errors.Is(err, runner.ErrClaimLost) {
			t.Fatalf("cause %v, want ErrClaimLost", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler's context was not cancelled")
	}
	// The slot is free again: the message the release left unacked is
	// answered by a second claim.
	e.settled("/chat/1", sent)
	if n := len(e.rec.exchanges(func(x exchange) bool {
		return x.Path == "/_electric/wake-callbacks/"+c.ConsumerID && strings.Contains(x.Body, `"done":true`)
	})); n != 0 {
		t.Fatalf("%d dones sent for the lost claim, want 0", n)
	}
}

// No more than Concurrency handlers run at once, and that many do.
func TestConcurrencyLimit(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	urls := []string{"/chat/1", "/chat/2", "/chat/3", "/chat/4", "/chat/5"}
	last := map[string]string{}
	for _, u := range urls {
		e.spawn(u)
		last[u] = e.send(u, "x")
	}
	var cur, peak atomic.Int32
	gate := make(chan struct{})
	cfg := e.config("r1")
	cfg.Concurrency = 2
	e.run(cfg, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		n := cur.Add(1)
		defer cur.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-gate:
		case <-ctx.Done():
			return ctx.Err()
		}
		return echo(ctx, w)
	}))
	eventually(t, 20*time.Second, "two handlers at once", func() bool { return cur.Load() == 2 })
	close(gate)
	for _, u := range urls {
		e.settled(u, last[u])
	}
	if p := peak.Load(); p != 2 {
		t.Fatalf("peak of %d handlers at once, want 2", p)
	}
}

// A stop lets a running handler finish: Run returns after its append and
// its done, which acked what it read.
func TestStopFinishesRunningHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	started := make(chan struct{})
	proceed := make(chan struct{})
	rn := e.run(e.config("r1"), runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		close(started)
		<-proceed
		return echo(ctx, w)
	}))
	waitClosed(t, started, "handler started")
	// The stop begins while the handler is blocked; Run must wait for it.
	rn.cancel()
	close(proceed)
	if err := rn.wait(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	en := e.entity("/chat/1")
	if en.Status != "idle" || en.Dispatch.AckedOffset != sent {
		t.Fatalf("after the stop: %+v, want idle with %s acked", en, sent)
	}
	if n := len(eventsOfType(e.events("/chat/1"), "echo")); n != 1 {
		t.Fatalf("%d echoes, want 1", n)
	}
}

// A stop whose StopTimeout passes cancels the handler and releases its
// claim without acks: the message waits for the next runner, at once.
func TestStopReleasesSlowHandler(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	e.send("/chat/1", "x")
	started := make(chan struct{})
	cfg := e.config("r1")
	cfg.StopTimeout = 100 * time.Millisecond
	cfg.LeaseTTL = 10 * time.Minute
	rn := e.run(cfg, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}))
	waitClosed(t, started, "handler started")
	before := e.entity("/chat/1").Dispatch.AckedOffset
	if err := rn.stop(); err != nil {
		t.Fatalf("Run: %v", err)
	}
	cs := e.claims("/chat/1")
	if len(cs) != 1 || cs[0].Status != "released" {
		t.Fatalf("claims %+v, want the one claim released (not left to expire)", cs)
	}
	en := e.entity("/chat/1")
	if en.Status != "idle" || en.Dispatch.AckedOffset != before || en.Dispatch.OutstandingWakeID == nil {
		t.Fatalf("after the stop: %+v, want idle, nothing acked, a wake queued again", en)
	}
}

// Without a wake stream (the server answers 404 for it), the runner polls
// the claim route every PollInterval.
func TestNoWakeStreamPolls(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.rec.setFault(func(r *http.Request) (*http.Response, error) {
		if strings.HasPrefix(r.URL.Path, "/runners/") {
			return &http.Response{StatusCode: 404, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
		}
		return nil, nil
	})
	cfg := e.config("r1")
	cfg.PollInterval = 50 * time.Millisecond
	e.run(cfg, runner.HandlerFunc(echo))
	eventually(t, 10*time.Second, "a few polls", func() bool {
		return len(e.rec.exchanges(func(x exchange) bool { return strings.HasSuffix(x.Path, "/claim") })) >= 2
	})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	e.settled("/chat/1", sent)
}

// Config errors are reported by New.
func TestNewChecksConfig(t *testing.T) {
	t.Parallel()
	h := runner.HandlerFunc(echo)
	for name, cfg := range map[string]runner.Config{
		"no server":   {RunnerID: "r1"},
		"bad scheme":  {ServerURL: "ftp://x", RunnerID: "r1"},
		"bad id":      {ServerURL: "http://x", RunnerID: "r 1"},
		"short lease": {ServerURL: "http://x", RunnerID: "r1", LeaseTTL: time.Millisecond},
		"negative":    {ServerURL: "http://x", RunnerID: "r1", Concurrency: -1},
	} {
		if _, err := runner.New(cfg, h); err == nil {
			t.Errorf("%s: New accepted %+v", name, cfg)
		}
	}
	if _, err := runner.New(runner.Config{ServerURL: "http://x", RunnerID: "r1"}, nil); err == nil {
		t.Error("New accepted a nil handler")
	}
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("not within 20s: %s", what)
	}
}

// text returns the "text" field of a JSON payload.
func text(t *testing.T, payload json.RawMessage) string {
	t.Helper()
	var p struct {
		Text string `json:"text"`
	}
	if err := json.Unmarshal(payload, &p); err != nil {
		t.Fatalf("payload %s: %v", payload, err)
	}
	return p.Text
}

// Wakes arrive on the runner's wake stream: with polling disabled, a
// message sent while the runner waits is claimed with its wake event as the
// claim's body.
func TestWakeStreamDeliversWakes(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{LongPoll: 30 * time.Second})
	cfg := e.config("r1")
	cfg.PollInterval = time.Hour
	e.run(cfg, runner.HandlerFunc(echo))
	// The start-up probe found no work; from now on only a wake event (or a
	// long-poll timeout, 30 s away) leads to a claim.
	eventually(t, 10*time.Second, "the start-up probe answered 204", func() bool {
		return len(e.rec.exchanges(func(x exchange) bool { return strings.HasSuffix(x.Path, "/claim") && x.Status == 204 })) >= 1
	})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	e.settled("/chat/1", sent)
	claims := e.rec.exchanges(func(x exchange) bool { return strings.HasSuffix(x.Path, "/claim") && x.Status == 200 })
	if len(claims) != 1 || !strings.Contains(claims[0].Body, `"type":"wake"`) || !strings.Contains(claims[0].Body, `"/v1/stream/chat/1/main"`) {
		t.Fatalf("claims %+v, want one whose body is the wake event of /chat/1", claims)
	}
}

// The wake stream reader reconnects after failed reads (with back-off) and
// goes on delivering wakes.
func TestWakeStreamReconnects(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	var failures atomic.Int32
	e.rec.setFault(func(r *http.Request) (*http.Response, error) {
		if strings.HasSuffix(r.URL.Path, "/wake") && r.URL.Query().Get("live") == "long-poll" && failures.Add(1) <= 3 {
			return nil, errors.New("connection reset by the test")
		}
		return nil, nil
	})
	cfg := e.config("r1")
	cfg.PollInterval = time.Hour
	e.run(cfg, runner.HandlerFunc(echo))
	eventually(t, 10*time.Second, "a long-poll after three failed ones", func() bool { return failures.Load() >= 4 })
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	e.settled("/chat/1", sent)
}

// Registering an existing runner id is a restart of that runner: the
// second Run gets a new token (200) and works; a refused token ends Run
// with ErrRunnerTokenRefused.
func TestRestartOfTheSameRunner(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	first := e.run(e.config("r1"), runner.HandlerFunc(echo))
	sent := e.send("/chat/1", "one")
	e.settled("/chat/1", sent)
	if err := first.stop(); err != nil {
		t.Fatalf("first Run: %v", err)
	}
	e.run(e.config("r1"), runner.HandlerFunc(echo))
	sent = e.send("/chat/1", "two")
	e.settled("/chat/1", sent)
	var statuses []int
	for _, x := range e.rec.exchanges(func(x exchange) bool { return x.Path == "/_electric/runners" }) {
		statuses = append(statuses, x.Status)
	}
	if len(statuses) != 2 || statuses[0] != 201 || statuses[1] != 200 {
		t.Fatalf("registrations answered %v, want [201 200]", statuses)
	}

	cfg := e.config("r1")
	cfg.RunnerToken = "not-the-runner-token"
	r, err := runner.New(cfg, runner.HandlerFunc(echo))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := r.Run(ctx); !errors.Is(err, runner.ErrRunnerTokenRefused) {
		t.Fatalf("Run with a wrong token: %v, want ErrRunnerTokenRefused", err)
	}
}

// An append whose answer is lost is retried with the same Producer-Seq:
// the server recognizes the retry and the message is stored once.
func TestAppendRetryAfterLostAnswerStoresOnce(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	var lost atomic.Int32
	e.rec.setFault(func(r *http.Request) (*http.Response, error) {
		if r.Method == "POST" && r.URL.Path == "/v1/stream/chat/1/main" && lost.Add(1) == 1 {
			res, err := e.rec.next.RoundTrip(r)
			if err != nil {
				return nil, err
			}
			res.Body.Close()
			return nil, errors.New("connection reset after the server answered")
		}
		return nil, nil
	})
	e.run(e.config("r1"), runner.HandlerFunc(echo))
	e.settled("/chat/1", sent)
	if n := len(eventsOfType(e.events("/chat/1"), "echo")); n != 1 {
		t.Fatalf("%d echoes, want 1", n)
	}
	appends := e.rec.exchanges(func(x exchange) bool { return x.Method == "POST" && x.Path == "/v1/stream/chat/1/main" })
	if len(appends) != 2 || appends[0].Status != 0 || appends[1].Status != 204 {
		t.Fatalf("appends %+v, want a lost answer, then a 204 (recognized retry)", appends)
	}
}

// An append given up with its outcome unknown (its context ended while the
// answers were lost) makes the claim's later appends fail: the same
// Producer-Seq with other messages would be taken for a retry and dropped.
func TestAppendAfterUnknownOutcomeRefused(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	sent := e.send("/chat/1", "x")
	e.rec.setFault(func(r *http.Request) (*http.Response, error) {
		if r.Method == "POST" && r.URL.Path == "/v1/stream/chat/1/main" {
			return nil, errors.New("network down")
		}
		return nil, nil
	})
	var calls atomic.Int32
	second := make(chan error, 1)
	e.run(e.config("r1"), runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		if calls.Add(1) > 1 {
			return echo(ctx, w)
		}
		actx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
		defer cancel()
		if _, err := w.Append(actx, map[string]any{"type": "first"}); err == nil {
			return errors.New("the first append succeeded through a network that is down")
		}
		e.rec.setFault(nil)
		_, err := w.Append(ctx, map[string]any{"type": "second"})
		second <- err
		return err
	}))
	select {
	case err := <-second:
		if err == nil || !strings.Contains(err.Error(), "may or may not have been stored") {
			t.Fatalf("second append: %v, want a refusal", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the handler did not try a second append")
	}
	// The failed handler released without acks: a new claim answers.
	e.settled("/chat/1", sent)
	if n := len(eventsOfType(e.events("/chat/1"), "second")); n != 0 {
		t.Fatalf("the refused append was stored")
	}
}

// An inbox longer than one read chunk (1000 messages) is read whole, page
// by page, and acked up to its end.
func TestLongInboxReadWhole(t *testing.T) {
	t.Parallel()
	e := newEnv(t, testserver.Options{})
	e.spawn("/chat/1")
	var last string
	if err := e.pool.QueryRow(context.Background(),
		`SELECT max(s.msg_offset) FROM generate_series(1, 1500) g, send_to_entity('/chat/1', to_jsonb(g)) s`).Scan(&last); err != nil {
		t.Fatal(err)
	}
	got := make(chan []runner.InboxMessage, 1)
	e.run(e.config("r1"), runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		select {
		case got <- w.Inbox:
		default:
		}
		return nil
	}))
	e.settled("/chat/1", last)
	inbox := <-got
	if len(inbox) != 1500 {
		t.Fatalf("the handler saw %d messages, want 1500", len(inbox))
	}
	for i, m := range inbox {
		if string(m.Payload) != fmt.Sprint(i+1) {
			t.Fatalf("message %d is %s, want %d", i, m.Payload, i+1)
		}
	}
}
