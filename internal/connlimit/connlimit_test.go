package connlimit

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// bench is a Listener served the way serve wires it: the API server on
// the admitted connections, OverflowServer on the rest.
type bench struct {
	ln      *Listener
	addr    string
	release chan struct{} // closing it ends every /hold request
	held    chan struct{} // one value per /hold request that started
}

func start(t *testing.T, cfg Config) *bench {
	t.Helper()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Probe = func(r *http.Request) bool { return r.URL.Path == "/healthz" }
	b := &bench{ln: New(inner, cfg), addr: inner.Addr().String(), release: make(chan struct{}), held: make(chan struct{}, 100)}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("GET /hold", func(w http.ResponseWriter, r *http.Request) {
		b.held <- struct{}{}
		select {
		case <-b.release:
		case <-r.Context().Done():
		}
	})
	hs := &http.Server{Handler: mux, ConnState: b.ln.ConnState, ReadHeaderTimeout: 10 * time.Second}
	ohs := b.ln.OverflowServer(mux, nil)
	go hs.Serve(b.ln)
	go ohs.Serve(b.ln.Overflow())
	var once sync.Once
	t.Cleanup(func() {
		once.Do(func() { close(b.release) })
		hs.Close()
		ohs.Close()
	})
	return b
}

type peer struct {
	c net.Conn
	r *bufio.Reader
}

func (b *bench) dial(t *testing.T) *peer { t.Helper(); return b.dialFrom(t, "127.0.0.1") }

// dialFrom connects from local address ip (any of 127.0.0.0/8 on loopback).
func (b *bench) dialFrom(t *testing.T, ip string) *peer {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	c, err := d.Dial("tcp", b.addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &peer{c, bufio.NewReader(c)}
}

func (c *peer) send(t *testing.T, path string) {
	t.Helper()
	if _, err := fmt.Fprintf(c.c, "GET %s HTTP/1.1\r\nHost: x\r\n\r\n", path); err != nil {
		t.Fatal(err)
	}
}

// answer reads one response, waiting 10s at most.
func (c *peer) answer(t *testing.T) (*http.Response, string) {
	t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	resp, err := http.ReadResponse(c.r, nil)
	if err != nil {
		t.Fatalf("no answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp, string(body)
}

func (c *peer) get(t *testing.T, path string) (*http.Response, string) {
	t.Helper()
	c.send(t, path)
	return c.answer(t)
}

// closedByServer: the server closed c (EOF or reset) within 10s.
func (c *peer) closedByServer(t *testing.T) bool {
	t.Helper()
	_ = c.c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.r.ReadByte()
	return err != nil && !errors.Is(err, os.ErrDeadlineExceeded)
}

// hold starts a request that lasts until b.release is closed.
func (b *bench) hold(t *testing.T) *peer {
	t.Helper()
	c := b.dial(t)
	c.send(t, "/hold")
	select {
	case <-b.held:
	case <-time.After(10 * time.Second):
		t.Fatal("/hold never started")
	}
	return c
}

func waitStats(t *testing.T, l *Listener, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		st := l.Stats()
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("stats never got there: %+v", st)
		}
		time.Sleep(5 * time.Millisecond) // poll, bounded by the deadline
	}
}

// At the cap, a new connection is served and the oldest idle keep-alive
// connection is closed for it.
func TestIdleClosedFirstAtCap(t *testing.T) {
	t.Parallel()
	b := start(t, Config{Max: 2, Overflow: 4})
	c1 := b.dial(t)
	c1.get(t, "/healthz")
	waitStats(t, b.ln, func(s Stats) bool { return s.Idle == 1 }) // c1 idle first
	c2 := b.dial(t)
	c2.get(t, "/healthz")
	waitStats(t, b.ln, func(s Stats) bool { return s.Idle == 2 })

	c3 := b.dial(t)
	if resp, _ := c3.get(t, "/healthz"); resp.StatusCode != 200 || resp.Header.Get("Connection") == "close" {
		t.Fatalf("third connection: %d, Connection %q; want a kept-alive 200", resp.StatusCode, resp.Header.Get("Connection"))
	}
	if !c1.closedByServer(t) {
		t.Fatal("the oldest idle connection was not closed")
	}
	if resp, _ := c2.get(t, "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("the newer idle connection: %d", resp.StatusCode)
	}
	if st := b.ln.Stats(); st.Open != 2 || st.Evicted != 1 || st.OverCap != 0 {
		t.Fatalf("stats %+v", st)
	}
}

// At the cap with every connection busy, a new connection is answered at
// once: a probe as usual, anything else 503 + Retry-After + close.
func TestOverCapAnsweredAtOnce(t *testing.T) {
	t.Parallel()
	b := start(t, Config{Max: 2, Overflow: 4})
	b.hold(t)
	b.hold(t)

	c := b.dial(t)
	resp, body := c.get(t, "/hold")
	if resp.StatusCode != 503 || resp.Header.Get("Retry-After") != RetryAfter || !resp.Close ||
		!strings.Contains(body, "TOO_MANY_CONNECTIONS") {
		t.Fatalf("over the cap: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if !c.closedByServer(t) {
		t.Fatal("refused connection left open")
	}
	p := b.dial(t)
	if resp, body := p.get(t, "/healthz"); resp.StatusCode != 200 || body != "ok" || !resp.Close {
		t.Fatalf("probe over the cap: %d %q close=%v", resp.StatusCode, body, resp.Close)
	}
	st := waitStats(t, b.ln, func(s Stats) bool { return s.Overflow == 0 })
	if st.Open != 2 || st.OverCap != 2 {
		t.Fatalf("stats %+v", st)
	}
}

// Past the limits, a request whose head is not all there yet is read by
// the overflow server, and refused there too; past Overflow as well, the
// connection is closed unanswered, unless its whole request was at hand:
// that one is refused at once.
func TestOverCapSlowRequests(t *testing.T) {
	t.Parallel()
	b := start(t, Config{Max: 1, Overflow: 1})
	b.hold(t)

	slow := b.dial(t)
	io.WriteString(slow.c, "GET /hold HTTP/1.1\r\n")
	waitStats(t, b.ln, func(s Stats) bool { return s.Overflow == 1 })
	dropped := b.dial(t)
	io.WriteString(dropped.c, "GET /hold HTTP/1.1\r\n")
	if !dropped.closedByServer(t) {
		t.Fatal("a partial request past the overflow was not closed")
	}
	if resp, _ := b.dial(t).get(t, "/hold"); resp.StatusCode != 503 || !resp.Close {
		t.Fatalf("a whole request past the overflow: %d close=%v, want 503 and close", resp.StatusCode, resp.Close)
	}

	io.WriteString(slow.c, "Host: x\r\n\r\n")
	if resp, body := slow.answer(t); resp.StatusCode != 503 || resp.Header.Get("Retry-After") != RetryAfter || !strings.Contains(body, "TOO_MANY_CONNECTIONS") {
		t.Fatalf("the slow request: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	st := waitStats(t, b.ln, func(s Stats) bool { return s.Overflow == 0 })
	if st.Dropped != 1 || st.OverCap != 3 {
		t.Fatalf("stats %+v", st)
	}
}

// A client at its limit has its own idle connection closed for a new one,
// and gets 429 when none is idle; other clients are not affected.
func TestPerClientLimit(t *testing.T) {
	t.Parallel()
	b := start(t, Config{Max: 10, PerClient: 2, Overflow: 4})
	idle := b.dial(t)
	idle.get(t, "/healthz")
	b.hold(t)
	waitStats(t, b.ln, func(s Stats) bool { return s.Idle == 1 })
	b.hold(t) // takes the idle one's place
	if !idle.closedByServer(t) {
		t.Fatal("the client's idle connection was not closed for its new one")
	}

	c := b.dial(t)
	resp, body := c.get(t, "/hold")
	if resp.StatusCode != 429 || resp.Header.Get("Retry-After") != RetryAfter || !resp.Close ||
		!strings.Contains(body, "TOO_MANY_CLIENT_CONNECTIONS") {
		t.Fatalf("over the client limit: %d %v %q", resp.StatusCode, resp.Header, body)
	}
	if resp, _ := b.dial(t).get(t, "/healthz"); resp.StatusCode != 200 {
		t.Fatalf("probe over the client limit: %d", resp.StatusCode)
	}
	other := b.dialFrom(t, "127.0.0.2")
	other.send(t, "/hold")
	select {
	case <-b.held:
	case <-time.After(10 * time.Second):
		t.Fatal("another client was not served")
	}
	st := waitStats(t, b.ln, func(s Stats) bool { return s.Overflow == 0 })
	if st.Open != 3 || st.OverClient != 2 || st.Evicted != 1 {
		t.Fatalf("stats %+v", st)
	}
}

// A connection that has sent no whole request is closable once IdleGrace
// has passed, not before.
func TestSilentConnectionClosableAfterGrace(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	now := time.Unix(1e9, 0)
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	b := start(t, Config{Max: 1, Overflow: 4, IdleGrace: time.Minute, now: clock})
	silent := b.dial(t)
	io.WriteString(silent.c, "GET /hold HT") // (Linux defers accepting until something arrives)
	waitStats(t, b.ln, func(s Stats) bool { return s.Open == 1 })

	if resp, _ := b.dial(t).get(t, "/hold"); resp.StatusCode != 503 {
		t.Fatalf("within the grace: %d, want 503", resp.StatusCode)
	}
	mu.Lock()
	now = now.Add(time.Minute)
	mu.Unlock()
	b.hold(t)
	if !silent.closedByServer(t) {
		t.Fatal("the silent connection was not closed past its grace")
	}
}

// Every place comes back: closed connections leave no count behind.
func TestPlacesFreed(t *testing.T) {
	t.Parallel()
	b := start(t, Config{Max: 3, PerClient: 2, Overflow: 2})
	var cs []*peer
	for range 6 {
		c := b.dial(t)
		c.send(t, "/healthz")
		cs = append(cs, c)
	}
	for _, c := range cs {
		c.c.Close()
	}
	waitStats(t, b.ln, func(s Stats) bool { return s.Open == 0 && s.Overflow == 0 && s.Idle == 0 })
	b.ln.mu.Lock()
	n := len(b.ln.clients)
	b.ln.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d clients still counted", n)
	}
}

func TestClientKey(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ addr, want string }{
		{"127.0.0.1:5000", "127.0.0.1/32"},
		{"[::ffff:10.0.0.1]:80", "10.0.0.1/32"},
		{"[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:443", "2001:db8:1:2::/64"},
	} {
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := clientKey(a); got != netip.MustParsePrefix(tc.want) {
			t.Errorf("%s: %s, want %s", tc.addr, got, tc.want)
		}
	}
	if got := clientKey(&net.UnixAddr{Name: "x", Net: "unix"}); got.IsValid() {
		t.Errorf("unix address: %s, want the zero prefix", got)
	}
}

// emfileOnce fails its next Accept with EMFILE when armed, as a process
// out of file descriptors does.
type emfileOnce struct {
	net.Listener
	armed atomic.Bool
}

func (e *emfileOnce) Accept() (net.Conn, error) {
	if e.armed.CompareAndSwap(true, false) {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: os.NewSyscallError("accept4", syscall.EMFILE)}
	}
	return e.Listener.Accept()
}

// Out of file descriptors, the listener closes the oldest idle connection
// and accepts again, instead of leaving the queue waiting.
func TestOutOfFilesClosesIdle(t *testing.T) {
	t.Parallel()
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &emfileOnce{Listener: inner}
	l := New(e, Config{Max: 10})
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), ConnState: l.ConnState}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	b := &bench{ln: l, addr: inner.Addr().String()}
	old := b.dial(t)
	old.get(t, "/")
	waitStats(t, l, func(s Stats) bool { return s.Idle == 1 })
	e.armed.Store(true)
	if resp, _ := b.dial(t).get(t, "/"); resp.StatusCode != 200 {
		t.Fatalf("after EMFILE: %d", resp.StatusCode)
	}
	if !old.closedByServer(t) {
		t.Fatal("the idle connection was not closed for a descriptor")
	}
	if st := l.Stats(); st.Evicted != 1 {
		t.Fatalf("stats %+v", st)
	}
}
