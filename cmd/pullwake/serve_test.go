package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/syncbuf"
	"github.com/pullwake/pullwake/internal/testdb"
)

func TestServeRefusesBadGroupCommitAndPprofFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"pprof address", []string{"--pprof-addr", "6060"}, `--pprof-addr "6060" must be host:port`},
		{"in-flight zero", []string{"--group-commit-in-flight", "0"}, `--group-commit-in-flight 0 must be between 1 and 32`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--database-url", "postgres://nobody@127.0.0.1:1/x"}, tc.args...)
			pullwake(t, nil, args...).expect(t, 2, `^$`, tc.stderr)
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// pprof is served on its own listener when asked for, and not on the API's.
func TestServePprofOnItsOwnListener(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	api, prof := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "serve", "--database-url", tdb.URL, "--addr", api, "--pprof-addr", prof,
		"--group-commit")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	get := func(url string) (int, error) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, err := get("http://" + prof + "/debug/pprof/cmdline")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pprof never answered (%v, %d); log:\n%s", err, code, out.String())
		}
		time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline
	}
	if code, err := get("http://" + api + "/debug/pprof/cmdline"); err != nil || code != http.StatusNotFound {
		t.Fatalf("the API listener answers pprof: %d %v", code, err)
	}
	if !strings.Contains(out.String(), `"group_commit":true`) {
		t.Errorf("start-up line does not report group commit on:\n%s", out.String())
	}
}

// served is a `pullwake serve` process for one test, on its own database.
type served struct {
	addr string
	out  *syncbuf.Buffer
}

// startServe runs `pullwake serve` with env (on top of an environment
// cleared of pullwake's settings) and args, and waits until /readyz
// answers 200; the process is killed when t ends.
func startServe(t *testing.T, env []string, args ...string) *served {
	t.Helper()
	return startServeUnder(t, nil, env, args...)
}

// startServeUnder is startServe run by the command wrap (like prlimit).
func startServeUnder(t *testing.T, wrap, env []string, args ...string) *served {
	t.Helper()
	tdb := testdb.New(t)
	s := &served{addr: freeAddr(t), out: &syncbuf.Buffer{}}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	argv := append(append(wrap, binary(t), "serve", "--database-url", tdb.URL, "--addr", s.addr), args...)
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "DATABASE_URL" || strings.HasPrefix(k, "PULLWAKE_") || strings.HasPrefix(k, "PG") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	cmd.Env = append(cmd.Env, env...)
	cmd.Stdout, cmd.Stderr = s.out, s.out
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		_ = cmd.Wait()
		if t.Failed() {
			t.Logf("server log:\n%s", s.out.String())
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		if r, err := s.closing("GET", "/readyz"); err == nil && r.status == http.StatusOK {
			return s
		}
		if time.Now().After(deadline) {
			t.Fatalf("serve never answered /readyz with 200; log:\n%s", s.out.String())
		}
		time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline
	}
}

// closing sends one request with Connection: close from 127.0.0.1 and
// returns its answer once the server has closed the connection, so the
// connection no longer counts when the caller goes on.
func (s *served) closing(method, path string) (rawResp, error) {
	c, err := dialFrom("127.0.0.1", s.addr)
	if err != nil {
		return rawResp{}, err
	}
	defer c.Close()
	if _, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: pullwake\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", method, path); err != nil {
		return rawResp{}, err
	}
	r, err := c.answer(answered)
	if err != nil {
		return r, err
	}
	if _, err := c.r.ReadByte(); !errors.Is(err, io.EOF) {
		return r, fmt.Errorf("connection not closed after Connection: close (%v)", err)
	}
	return r, nil
}

// mustCreateStream creates the stream the live reads wait on.
func mustCreateStream(t *testing.T, s *served) {
	t.Helper()
	if r, err := s.closing("PUT", "/v1/stream/limits/1"); err != nil || r.status != http.StatusCreated {
		t.Fatalf("create stream: %v %d %s", err, r.status, r.body)
	}
}

// rawConn is one client connection spoken to by hand, so a test decides
// exactly which connections are open and what each has sent.
type rawConn struct {
	net.Conn
	r *bufio.Reader
}

type rawResp struct {
	status int
	header http.Header
	close  bool // Connection: close (net/http takes it out of header)
	body   string
}

// dialFrom connects to addr from the local address ip: any of 127.0.0.0/8
// works on loopback, and each is a client of its own.
func dialFrom(ip, addr string) (*rawConn, error) {
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}, Timeout: 5 * time.Second}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, err
	}
	return &rawConn{c, bufio.NewReader(c)}, nil
}

func mustDial(t *testing.T, ip, addr string) *rawConn {
	t.Helper()
	c, err := dialFrom(ip, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func (c *rawConn) send(method, path string) error {
	_, err := fmt.Fprintf(c, "%s %s HTTP/1.1\r\nHost: pullwake\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n", method, path)
	return err
}

// answer reads one response, waiting up to wait.
func (c *rawConn) answer(wait time.Duration) (rawResp, error) {
	_ = c.SetReadDeadline(time.Now().Add(wait))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		return rawResp{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return rawResp{resp.StatusCode, resp.Header, resp.Close, string(b)}, err
}

func (c *rawConn) do(method, path string, wait time.Duration) (rawResp, error) {
	if err := c.send(method, path); err != nil {
		return rawResp{}, err
	}
	return c.answer(wait)
}

// answered is a bound for answers that must come at once: generous, so
// only a connection left waiting (for a place, or its long-poll) misses it.
const answered = 10 * time.Second

// mustAnswer sends a request on a new connection from ip and wants an
// answer with status within the bound.
func mustAnswer(t *testing.T, s *served, ip, method, path string, status int) rawResp {
	t.Helper()
	c := mustDial(t, ip, s.addr)
	start := time.Now()
	r, err := c.do(method, path, answered)
	if err != nil {
		t.Fatalf("%s %s from %s: no answer within %s (%v)", method, path, ip, answered, err)
	}
	if r.status != status {
		t.Fatalf("%s %s from %s: %d %s, want %d", method, path, ip, r.status, r.body, status)
	}
	t.Logf("%s %s from %s: %d in %s", method, path, ip, r.status, time.Since(start).Round(time.Millisecond))
	return r
}

// refused checks a refusal past the connection limits.
func refused(t *testing.T, r rawResp, status int, code string) {
	t.Helper()
	if r.status != status || r.header.Get("Retry-After") == "" || !r.close || !strings.Contains(r.body, code) {
		t.Fatalf("refusal: %d %v %s; want %d %s with Retry-After and Connection: close", r.status, r.header, r.body, status, code)
	}
}

const liveRead = "/v1/stream/limits/1?offset=now&live=long-poll"

// holdReaders starts n long-poll readers from ip, each on a connection of
// its own; they wait for the long-poll timeout (a minute here).
func holdReaders(t *testing.T, s *served, ip string, n int) {
	t.Helper()
	for range n {
		if err := mustDial(t, ip, s.addr).send("GET", liveRead); err != nil {
			t.Fatal(err)
		}
	}
}

// 300 idle keep-alive connections, more than the cap of 128, no longer
// keep anyone out: each new connection takes the place of the oldest idle
// one, so probes and API requests are answered at once.
func TestServeIdleKeepAlivesDoNotStarve(t *testing.T) {
	t.Parallel()
	s := startServe(t, []string{"PULLWAKE_MAX_CONNECTIONS=128"})
	// From 10 clients (30 each, under the per-client limit of 32), so
	// it is the cap that is reached.
	var idle []*rawConn
	for i := range 300 {
		c := mustDial(t, fmt.Sprintf("127.0.0.%d", 10+i%10), s.addr)
		if err := c.send("GET", "/healthz"); err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	// The first 128 are answered, then idle; each of the rest takes the
	// place of the oldest idle one.
	for _, c := range idle[:128] {
		if r, err := c.answer(answered); err != nil || r.status != http.StatusOK {
			t.Fatalf("keep-alive request: %v %d", err, r.status)
		}
	}
	mustAnswer(t, s, "127.0.0.1", "GET", "/healthz", http.StatusOK)
	mustAnswer(t, s, "127.0.0.1", "GET", "/readyz", http.StatusOK)
	mustAnswer(t, s, "127.0.0.1", "GET", "/metrics", http.StatusOK)
	mustAnswer(t, s, "127.0.0.1", "PUT", "/v1/stream/limits/1", http.StatusCreated)
	// The oldest idle connections were closed to make room.
	_ = idle[0].SetReadDeadline(time.Now().Add(answered))
	if _, err := idle[0].r.ReadByte(); err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the oldest idle connection is still open (%v)", err)
	}
}

// With the default settings but an open-file limit of 256 (the server's
// own, hard and soft), 300 idle keep-alive connections used to leave new
// connections in the accept queue, probes included, until an idle timeout
// closed some: now running out of files closes the oldest idle connection.
func TestServeIdleKeepAlivesPastFileLimit(t *testing.T) {
	t.Parallel()
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		t.Skip("needs prlimit (util-linux) to lower the server's open-file limit")
	}
	s := startServeUnder(t, []string{prlimit, "--nofile=256:256", "--"}, nil)
	var idle []*rawConn
	for i := range 300 {
		c := mustDial(t, fmt.Sprintf("127.0.0.%d", 10+i%10), s.addr)
		if err := c.send("GET", "/healthz"); err != nil {
			t.Fatal(err)
		}
		idle = append(idle, c)
	}
	for _, c := range idle[:200] {
		if r, err := c.answer(answered); err != nil || r.status != http.StatusOK {
			t.Fatalf("keep-alive request: %v %d", err, r.status)
		}
	}
	mustAnswer(t, s, "127.0.0.1", "GET", "/healthz", http.StatusOK)
	mustAnswer(t, s, "127.0.0.1", "GET", "/readyz", http.StatusOK)
}

// At the cap, with every place held by a live reader, a new reader gets
// 503 with Retry-After and Connection: close at once, instead of waiting
// for a place; /healthz and /readyz are answered as usual.
func TestServeReaderPastCapRefused(t *testing.T) {
	t.Parallel()
	s := startServe(t, []string{"PULLWAKE_MAX_CONNECTIONS=8", "PULLWAKE_MAX_CONNECTIONS_PER_CLIENT=8", "PULLWAKE_LONG_POLL_TIMEOUT=60s"})
	mustCreateStream(t, s)
	holdReaders(t, s, "127.0.0.1", 8)

	r := mustAnswer(t, s, "127.0.0.1", "GET", liveRead, http.StatusServiceUnavailable)
	refused(t, r, http.StatusServiceUnavailable, "TOO_MANY_CONNECTIONS")
	mustAnswer(t, s, "127.0.0.1", "GET", "/healthz", http.StatusOK)
	r = mustAnswer(t, s, "127.0.0.1", "GET", "/readyz", http.StatusOK)
	if !r.close {
		t.Errorf("/readyz past the cap kept its connection open: %v", r.header)
	}
	r = mustAnswer(t, s, "127.0.0.2", "POST", "/v1/stream/limits/1", http.StatusServiceUnavailable)
	refused(t, r, http.StatusServiceUnavailable, "TOO_MANY_CONNECTIONS")
}

// One client may hold PULLWAKE_MAX_CONNECTIONS_PER_CLIENT connections
// (loopback included): past it, a request gets 429 with Retry-After and
// Connection: close, unless one of its connections is idle (that one is
// closed for it) or it is a probe; other clients are served.
func TestServePerClientLimit(t *testing.T) {
	t.Parallel()
	s := startServe(t, []string{"PULLWAKE_MAX_CONNECTIONS_PER_CLIENT=3", "PULLWAKE_LONG_POLL_TIMEOUT=60s"})
	mustCreateStream(t, s)
	holdReaders(t, s, "127.0.0.2", 3)

	r := mustAnswer(t, s, "127.0.0.2", "GET", liveRead, http.StatusTooManyRequests)
	refused(t, r, http.StatusTooManyRequests, "TOO_MANY_CLIENT_CONNECTIONS")
	mustAnswer(t, s, "127.0.0.2", "GET", "/healthz", http.StatusOK)
	mustAnswer(t, s, "127.0.0.3", "GET", "/v1/stream/limits/1?offset=-1", http.StatusOK)

	// A client at its limit with idle connections: its oldest idle one
	// makes room.
	var idle []*rawConn
	for range 3 {
		c := mustDial(t, "127.0.0.4", s.addr)
		if r, err := c.do("GET", "/healthz", answered); err != nil || r.status != http.StatusOK {
			t.Fatalf("keep-alive request: %v %d", err, r.status)
		}
		idle = append(idle, c)
	}
	mustAnswer(t, s, "127.0.0.4", "GET", "/v1/stream/limits/1?offset=-1", http.StatusOK)
	// One of them (the oldest, unless the server saw them go idle in
	// another order) was closed; the others still serve.
	closed := -1
	for deadline := time.Now().Add(answered); closed < 0 && time.Now().Before(deadline); {
		for i, c := range idle {
			_ = c.SetReadDeadline(time.Now().Add(50 * time.Millisecond)) // a poll, bounded by the deadline
			if _, err := c.r.ReadByte(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				closed = i
				break
			}
		}
	}
	if closed < 0 {
		t.Fatal("none of the client's idle connections was closed for its new one")
	}
	for i, c := range idle {
		if i == closed {
			continue
		}
		if r, err := c.do("GET", "/healthz", answered); err != nil || r.status != http.StatusOK {
			t.Fatalf("the client's idle connection %d: %v %d", i, err, r.status)
		}
	}
}

// With --probe-addr, /healthz and /readyz have a listener of their own
// that API clients cannot fill: answered there even when the API's
// connections and its overflow are all taken. Other paths are 404 there.
func TestServeProbeAddr(t *testing.T) {
	t.Parallel()
	probe := freeAddr(t)
	s := startServe(t, []string{"PULLWAKE_MAX_CONNECTIONS=2", "PULLWAKE_MAX_CONNECTIONS_PER_CLIENT=2",
		"PULLWAKE_OVERFLOW_CONNECTIONS=1", "PULLWAKE_LONG_POLL_TIMEOUT=60s"}, "--probe-addr", probe)
	mustCreateStream(t, s)
	holdReaders(t, s, "127.0.0.1", 2)
	// A request that never ends holds the one overflow place.
	if _, err := io.WriteString(mustDial(t, "127.0.0.1", s.addr), "GET /healthz HTTP/1.1\r\n"); err != nil {
		t.Fatal(err)
	}

	p := &served{addr: probe}
	mustAnswer(t, p, "127.0.0.1", "GET", "/healthz", http.StatusOK)
	mustAnswer(t, p, "127.0.0.1", "GET", "/readyz", http.StatusOK)
	mustAnswer(t, p, "127.0.0.1", "GET", "/v1/stream/limits/1?offset=-1", http.StatusNotFound)
	if !strings.Contains(s.out.String(), `"probe_addr":"`+probe+`"`) {
		t.Errorf("start-up line does not name the probe address:\n%s", s.out.String())
	}
}
