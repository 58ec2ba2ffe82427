// Package e2e holds black-box tests of the real pullwake binary: they build
// cmd/pullwake once, run `pullwake serve` as child processes against real
// PostgreSQL databases, and talk to them over HTTP only. They kill and
// restart those processes (and, for some tests, a PostgreSQL cluster the test
// owns) to check the recovery promises of SPEC §3.5–3.8 and §6.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pullwake/pullwake/internal/testbin"
	"github.com/pullwake/pullwake/internal/testdb"
)

var ()

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// binary builds cmd/pullwake once per test process and returns its path.
func binary(t testing.TB) string {
	t.Helper()
	return testbin.Pullwake(t)
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("free port: %v", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// serverConfig is the environment of one `pullwake serve`.
type serverConfig struct {
	DatabaseURL   string
	AdminToken    string        // "" = dev mode
	SweepInterval time.Duration // 0 = server default
	DefaultLease  time.Duration // 0 = server default
	LongPoll      time.Duration // 0 = server default
	Env           []string      // extra KEY=VALUE
}

// serverProc is a `pullwake serve` child process on a fixed address; it can
// be killed and started again on the same address and database.
type serverProc struct {
	t    testing.TB
	cfg  serverConfig
	addr string
	log  string // path of the combined stdout/stderr of every start

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
	state  *os.ProcessState
	starts int
}

// startServer starts `pullwake serve` on a free port and waits until it
// answers /healthz. The process is killed when the test ends.
func startServer(t testing.TB, cfg serverConfig) *serverProc {
	t.Helper()
	p := &serverProc{
		t:    t,
		cfg:  cfg,
		addr: fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		log:  filepath.Join(t.TempDir(), "serve.log"),
	}
	t.Cleanup(func() {
		p.Kill()
		if t.Failed() {
			t.Logf("server log (%s), last lines:\n%s", p.log, tailFile(p.log, 60))
		}
	})
	p.Start()
	return p
}

func (p *serverProc) URL() string { return "http://" + p.addr }

// Client returns an API client for this server (admin token included).
func (p *serverProc) Client() *client { return newClient(p.URL(), p.cfg.AdminToken) }

// Start starts the process (again) and waits for /healthz.
func (p *serverProc) Start() {
	p.t.Helper()
	env := []string{}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "DATABASE_URL" || strings.HasPrefix(k, "PULLWAKE_") || strings.HasPrefix(k, "PG") {
			continue
		}
		env = append(env, kv)
	}
	env = append(env,
		"PULLWAKE_DATABASE_URL="+p.cfg.DatabaseURL,
		"PULLWAKE_ADDR="+p.addr,
		"PULLWAKE_LOG_FORMAT=text",
	)
	if p.cfg.AdminToken != "" {
		env = append(env, "PULLWAKE_ADMIN_TOKEN="+p.cfg.AdminToken)
	}
	if p.cfg.SweepInterval > 0 {
		env = append(env, "PULLWAKE_SWEEP_INTERVAL="+p.cfg.SweepInterval.String())
	}
	if p.cfg.DefaultLease > 0 {
		env = append(env, "PULLWAKE_DEFAULT_LEASE_TTL="+p.cfg.DefaultLease.String())
	}
	if p.cfg.LongPoll > 0 {
		env = append(env, "PULLWAKE_LONG_POLL_TIMEOUT="+p.cfg.LongPoll.String())
	}
	env = append(env, p.cfg.Env...)

	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatalf("open server log: %v", err)
	}
	p.mu.Lock()
	p.starts++
	fmt.Fprintf(f, "=== start %d at %s\n", p.starts, time.Now().Format(time.RFC3339Nano))
	cmd := exec.Command(binary(p.t), "serve")
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		p.mu.Unlock()
		f.Close()
		p.t.Fatalf("start pullwake serve: %v", err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited, p.state = cmd, exited, nil
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		f.Close()
		p.mu.Lock()
		p.state = cmd.ProcessState
		p.mu.Unlock()
		close(exited)
	}()

	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			p.t.Fatalf("pullwake serve exited during start-up (%v); log:\n%s", p.exitState(), tailFile(p.log, 40))
		default:
		}
		resp, err := hc.Get(p.URL() + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("pullwake serve did not answer /healthz within 30s; log:\n%s", tailFile(p.log, 40))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Kill sends SIGKILL (if running) and waits for the process to be gone.
func (p *serverProc) Kill() {
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-exited
}

// Restart is SIGKILL followed by Start on the same address.
func (p *serverProc) Restart() {
	p.t.Helper()
	p.Kill()
	p.Start()
}

// Terminate sends SIGTERM and waits up to bound for the exit; it returns the
// exit code and how long the exit took, or fails the test.
func (p *serverProc) Terminate(bound time.Duration) (int, time.Duration) {
	p.t.Helper()
	p.mu.Lock()
	cmd, exited := p.cmd, p.exited
	p.mu.Unlock()
	start := time.Now()
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatalf("SIGTERM: %v", err)
	}
	select {
	case <-exited:
	case <-time.After(bound):
		p.t.Fatalf("pullwake serve did not exit within %s of SIGTERM", bound)
	}
	return p.exitState().ExitCode(), time.Since(start)
}

func (p *serverProc) exitState() *os.ProcessState {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// pgCluster is a private PostgreSQL cluster a test owns (scripts/pg.sh), for
// tests that stop or restart PostgreSQL itself.
type pgCluster struct {
	t    testing.TB
	dir  string
	port int
	URL  string
}

// startCluster initdbs and starts a private cluster under the test's temp
// dir; it is stopped when the test ends.
func startCluster(t testing.TB) *pgCluster {
	t.Helper()
	tmp := t.TempDir()
	// pg.sh runs the server as the postgres user when we are root: it must
	// be able to reach the data directory.
	_ = os.Chmod(tmp, 0o755)
	_ = os.Chmod(filepath.Dir(tmp), 0o755)
	c := &pgCluster{t: t, dir: filepath.Join(tmp, "pg"), port: freePort(t)}
	t.Cleanup(func() { c.pgsh("stop", c.dir) })
	c.URL = strings.TrimSpace(c.pgsh("ensure", c.dir, fmt.Sprint(c.port)))
	if c.URL == "" {
		t.Fatalf("pg.sh ensure printed no URL")
	}
	return c
}

func (c *pgCluster) pgsh(args ...string) string {
	c.t.Helper()
	root, err := testdb.RepoRoot()
	if err != nil {
		c.t.Fatalf("repo root: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	// Output goes to files, not pipes: `pg_ctl restart` (no -l) leaves the
	// restarted postmaster writing to, and holding open, its caller's
	// stdout and stderr, and a pipe would then never reach EOF.
	outF, err := os.CreateTemp(filepath.Dir(c.dir), "pgsh-out-")
	if err != nil {
		c.t.Fatalf("pg.sh output file: %v", err)
	}
	defer outF.Close()
	errF, err := os.OpenFile(filepath.Join(filepath.Dir(c.dir), "pgsh.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		c.t.Fatalf("pg.sh log file: %v", err)
	}
	defer errF.Close()
	cmd := exec.CommandContext(ctx, filepath.Join(root, "scripts", "pg.sh"), args...)
	cmd.Stdout, cmd.Stderr = outF, errF
	if err := cmd.Run(); err != nil {
		c.t.Fatalf("pg.sh %s: %v\n%s", strings.Join(args, " "), err, tailFile(errF.Name(), 20))
	}
	out, err := os.ReadFile(outF.Name())
	if err != nil {
		c.t.Fatalf("pg.sh output: %v", err)
	}
	return string(out)
}

// Stop stops the cluster (fast shutdown: every backend is terminated).
func (c *pgCluster) Stop() { c.t.Helper(); c.pgsh("stop", c.dir) }

// Start starts it again on the same port.
func (c *pgCluster) Start() { c.t.Helper(); c.pgsh("ensure", c.dir, fmt.Sprint(c.port)) }

// Restart is pg.sh restart.
func (c *pgCluster) Restart() { c.t.Helper(); c.pgsh("restart", c.dir) }

// sqlConn opens a separate connection to url (an operator's psql session),
// closed when the test ends.
func sqlConn(t testing.TB, url string) *pgx.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return conn
}

// ---- HTTP client ----

// client is a small typed client for the pullwake API.
type client struct {
	base  string
	admin string
	hc    *http.Client
}

func newClient(base, admin string) *client {
	tr := &http.Transport{MaxIdleConnsPerHost: 32, IdleConnTimeout: 30 * time.Second}
	return &client{base: base, admin: admin, hc: &http.Client{Timeout: 5 * time.Second, Transport: tr}}
}

// response is an HTTP answer read in full.
type response struct {
	Status int
	Header http.Header
	Body   []byte
}

// Code is the error code of an error answer ("" otherwise).
func (r *response) Code() string {
	var e struct {
		Error struct {
			Code string `json:"code"`
		} `json:"error"`
	}
	_ = json.Unmarshal(r.Body, &e)
	return e.Error.Code
}

func (r *response) String() string {
	return fmt.Sprintf("%d %s", r.Status, bytes.TrimSpace(r.Body))
}

func (r *response) decode(v any) error {
	if err := json.Unmarshal(r.Body, v); err != nil {
		return fmt.Errorf("decode %s: %w", r, err)
	}
	return nil
}

// do sends one request. body: nil, []byte (sent as is) or a value sent as
// JSON. token "" means the admin token (when configured). An error means no
// HTTP answer (connection refused, reset, timeout).
func (c *client) do(ctx context.Context, method, path, token string, body any) (*response, error) {
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case []byte:
		rd = bytes.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			return nil, err
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequestWithContext(ctx, method, c.base+path, rd)
	if err != nil {
		return nil, err
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token == "" {
		token = c.admin
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// must sends a request from the test goroutine and fails the test unless
// the status is one of want.
func (c *client) must(t testing.TB, method, path, token string, body any, want ...int) *response {
	t.Helper()
	r, err := c.do(context.Background(), method, path, token, body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	for _, w := range want {
		if r.Status == w {
			return r
		}
	}
	t.Fatalf("%s %s: got %s, want status %v", method, path, r, want)
	return nil
}

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
	LeaseTTLMS     int64     `json:"lease_ttl_ms"`
	LeaseExpiresAt time.Time `json:"lease_expires_at"`
}

type entity struct {
	URL      string `json:"url"`
	Status   string `json:"status"`
	Dispatch struct {
		ActiveConsumerID  *string `json:"active_consumer_id"`
		ActiveEpoch       *int64  `json:"active_epoch"`
		OutstandingWakeID *string `json:"outstanding_wake_id"`
		AckedOffset       string  `json:"acked_offset"`
		LastSentOffset    string  `json:"last_sent_offset"`
	} `json:"dispatch"`
}

type claimRow struct {
	ConsumerID string `json:"consumer_id"`
	Epoch      int64  `json:"epoch"`
	EntityURL  string `json:"entity_url"`
	Status     string `json:"status"`
}

type doneResult struct {
	OK            bool   `json:"ok"`
	Released      bool   `json:"released"`
	EntityCleared bool   `json:"entity_cleared"`
	ClaimStatus   string `json:"claim_status"`
	EntityStatus  string `json:"entity_status"`
}

type ack struct {
	Stream string `json:"stream"`
	Offset string `json:"offset"`
}

// runnerCreds is a registered runner.
type runnerCreds struct {
	ID    string
	Token string
}

func (c *client) registerRunner(t testing.TB, id string) runnerCreds {
	t.Helper()
	var out struct {
		RunnerToken string `json:"runner_token"`
	}
	r := c.must(t, "POST", "/_electric/runners", "", map[string]any{"id": id}, http.StatusCreated)
	if err := r.decode(&out); err != nil || out.RunnerToken == "" {
		t.Fatalf("register runner %s: %s", id, r)
	}
	return runnerCreds{ID: id, Token: out.RunnerToken}
}

func (c *client) spawn(t testing.TB, url string) {
	t.Helper()
	c.must(t, "PUT", "/entities"+url, "", map[string]any{}, http.StatusCreated)
}

// send posts a message to an entity and returns its offset.
func (c *client) send(t testing.TB, url string, payload any) string {
	t.Helper()
	var out struct {
		Offset string `json:"offset"`
	}
	r := c.must(t, "POST", "/entities"+url, "", map[string]any{"payload": payload}, http.StatusAccepted)
	if err := r.decode(&out); err != nil || out.Offset == "" {
		t.Fatalf("send to %s: %s", url, r)
	}
	return out.Offset
}

func (c *client) entity(t testing.TB, url string) entity {
	t.Helper()
	var e entity
	if err := c.must(t, "GET", "/entities"+url, "", nil, http.StatusOK).decode(&e); err != nil {
		t.Fatal(err)
	}
	return e
}

func (c *client) claims(t testing.TB, query string) []claimRow {
	t.Helper()
	var rows []claimRow
	if err := c.must(t, "GET", "/_electric/claims?"+query, "", nil, http.StatusOK).decode(&rows); err != nil {
		t.Fatal(err)
	}
	return rows
}

// claim asks for run's next wake; nil when there is no work (204).
func (c *client) claim(t testing.TB, run runnerCreds, leaseMS int) *wake {
	t.Helper()
	r := c.must(t, "POST", "/_electric/runners/"+run.ID+"/claim", run.Token,
		map[string]any{"lease_ttl_ms": leaseMS}, http.StatusOK, http.StatusNoContent)
	if r.Status == http.StatusNoContent {
		return nil
	}
	var w wake
	if err := r.decode(&w); err != nil {
		t.Fatal(err)
	}
	return &w
}

// callbackPath is the path of w's wake callback.
func callbackPath(w *wake) string { return "/_electric/wake-callbacks/" + w.ConsumerID }

// doCallback sends body to w's callback with its claim token.
func (c *client) doCallback(ctx context.Context, w *wake, body map[string]any) (*response, error) {
	return c.do(ctx, "POST", callbackPath(w), w.ClaimToken, body)
}

func (c *client) done(t testing.TB, w *wake, acks ...ack) doneResult {
	t.Helper()
	if acks == nil {
		acks = []ack{}
	}
	var out doneResult
	r := c.must(t, "POST", callbackPath(w), w.ClaimToken,
		map[string]any{"epoch": w.Epoch, "done": true, "acks": acks}, http.StatusOK)
	if err := r.decode(&out); err != nil {
		t.Fatal(err)
	}
	return out
}

// remint is the wake-callback claim request: a fresh write token.
func (c *client) remint(ctx context.Context, w *wake) (*response, error) {
	return c.doCallback(ctx, w, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID})
}

// appendMsg appends one JSON message to a stream with a write token.
func (c *client) appendMsg(ctx context.Context, stream, token string, msg any) (*response, error) {
	j, err := json.Marshal(msg)
	if err != nil {
		return nil, err
	}
	return c.do(ctx, "POST", stream, token, j)
}

// readStream reads a JSON stream from offset to its tail (catch-up reads
// until Stream-Up-To-Date) and returns the messages and the next offset.
func (c *client) readStream(ctx context.Context, stream, offset string) ([]json.RawMessage, string, error) {
	var all []json.RawMessage
	for range 1000 {
		r, err := c.do(ctx, "GET", stream+"?offset="+offset, "", nil)
		if err != nil {
			return nil, "", err
		}
		if r.Status != http.StatusOK {
			return nil, "", &statusError{r}
		}
		var msgs []json.RawMessage
		if len(bytes.TrimSpace(r.Body)) > 0 {
			if err := json.Unmarshal(r.Body, &msgs); err != nil {
				return nil, "", fmt.Errorf("read %s: %w", stream, err)
			}
		}
		all = append(all, msgs...)
		next := r.Header.Get("Stream-Next-Offset")
		if next == "" {
			return nil, "", fmt.Errorf("read %s: no Stream-Next-Offset", stream)
		}
		offset = next
		if r.Header.Get("Stream-Up-To-Date") == "true" {
			return all, offset, nil
		}
	}
	return nil, "", fmt.Errorf("read %s: never up to date", stream)
}

// statusError is an HTTP answer with an unexpected status.
type statusError struct{ r *response }

func (e *statusError) Error() string { return "unexpected answer " + e.r.String() }

func httpStatus(err error) int {
	var se *statusError
	if errors.As(err, &se) {
		return se.r.Status
	}
	return 0
}

// ---- polling ----

// eventually calls check every interval until it reports true or the
// deadline passes; then the test fails with check's last explanation.
func eventually(t testing.TB, within, interval time.Duration, what string, check func() (bool, string)) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(within)
	for {
		ok, why := check()
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s: %s", what, within, why)
		}
		time.Sleep(interval)
	}
}
