package connlimit

import (
	"cmp"
	"container/list"
	"errors"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"syscall"
	"time"
)

// Config sets a Listener's limits.
type Config struct {
	// Max is the most connections served at once (at least 1).
	Max int
	// PerClient is the most of them one client may hold; 0 (or Max and
	// more) = no limit of its own.
	PerClient int
	// Overflow is the most connections taken past the limits at once, each
	// answered once and closed (OverflowServer); 0 = closed unanswered.
	Overflow int
	// IdleGrace: an accepted connection that has sent no whole request for
	// this long may be closed to make room, like an idle one. Default 5s:
	// long enough that a request waiting for a busy server to read it is
	// not mistaken for a silent client.
	IdleGrace time.Duration
	// Probe tells the requests answered as usual past the limits (health
	// checks); nil = none.
	Probe func(*http.Request) bool

	now func() time.Time // tests
}

// deferAcceptSecs: the kernel holds a connection that has sent nothing up
// to this long before handing it over (Linux).
const deferAcceptSecs = 5

// Refusal says why a connection was taken past the limits.
type Refusal int

const (
	Admitted   Refusal = iota // within the limits: served as usual
	ServerFull                // the listener held Max connections, none of them idle
	ClientFull                // the client held PerClient connections, none of them idle
)

// Stats are a Listener's counts: gauges now, counters since New.
type Stats struct {
	Open     int // admitted connections open
	Idle     int // of them, closable to make room (idle keep-alives, silent new ones)
	Overflow int // connections past the limits being answered

	Evicted    uint64 // idle connections closed to make room
	OverCap    uint64 // connections past Max (answered 503 unless a probe, or dropped)
	OverClient uint64 // connections past PerClient (answered 429 unless a probe, or dropped)
	Dropped    uint64 // of those, closed unanswered: no whole request at hand and past Overflow
}

// Listener accepts every connection and sorts it (package doc).
type Listener struct {
	inner net.Listener
	cfg   Config
	over  *overflowListener

	mu           sync.Mutex
	open         int
	overflowOpen int
	clients      map[netip.Prefix]*client
	evictable    lru
	st           Stats
}

type client struct {
	open      int
	evictable lru
}

// New wraps inner. Max below 1 counts as 1. On Linux it sets
// TCP_DEFER_ACCEPT on a TCP listener (deferAccept).
func New(inner net.Listener, cfg Config) *Listener {
	cfg.Max = max(cfg.Max, 1)
	if cfg.PerClient < 0 || cfg.PerClient >= cfg.Max {
		cfg.PerClient = 0
	}
	cfg.Overflow = max(cfg.Overflow, 0)
	cfg.IdleGrace = cmp.Or(cfg.IdleGrace, 5*time.Second)
	if cfg.now == nil {
		cfg.now = time.Now
	}
	if cfg.Probe == nil {
		cfg.Probe = func(*http.Request) bool { return false }
	}
	deferAccept(inner, deferAcceptSecs)
	return &Listener{
		inner:   inner,
		cfg:     cfg,
		over:    &overflowListener{addr: inner.Addr(), ch: make(chan net.Conn, cfg.Overflow), done: make(chan struct{})},
		clients: map[netip.Prefix]*client{},
	}
}

// Accept returns the next admitted connection. Connections past the limits
// go to Overflow (or are closed) without returning; Accept never waits for
// a place to free.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		nc, err := l.inner.Accept()
		if err != nil {
			// Out of file descriptors: an idle connection's makes room.
			if (errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE)) && l.evictOldest() {
				continue
			}
			return nil, err
		}
		c, why, victim := l.admit(nc)
		if victim != nil {
			_ = victim.Conn.Close()
		}
		if c != nil {
			return c, nil
		}
		l.refuse(nc, why)
	}
}

// refuse answers nc, a connection past the limits, without waiting: a
// whole request already at hand that is no probe gets its refusal here
// and now; a probe, or a request not all here yet, goes to the overflow
// server while it has room; anything else is closed.
func (l *Listener) refuse(nc net.Conn, why Refusal) {
	var buf [peekMax]byte
	n := peek(nc, buf[:])
	req, whole := parseHead(buf[:n])
	if whole && (req == nil || !l.cfg.Probe(req)) {
		writeRefusal(nc, why, req)
		_ = nc.Close()
		return
	}
	l.mu.Lock()
	room := l.overflowOpen < l.cfg.Overflow
	if room {
		l.overflowOpen++
	} else if !whole {
		l.st.Dropped++
	}
	l.mu.Unlock()
	if !room {
		if whole {
			writeRefusal(nc, why, req) // a probe, answered like any request
		}
		_ = nc.Close()
		return
	}
	c := &conn{Conn: nc, l: l, refusal: why}
	c.pre = append([]byte(nil), buf[:n]...)
	l.over.push(c)
}

// Close closes the inner listener. Overflow is closed by its own server.
func (l *Listener) Close() error { return l.inner.Close() }

// Addr is the inner listener's address.
func (l *Listener) Addr() net.Addr { return l.inner.Addr() }

// Overflow is the listener of the connections taken past the limits; serve
// it with OverflowServer. Each connection's Refusal says why it is there.
func (l *Listener) Overflow() net.Listener { return l.over }

// ConnState is the http.Server.ConnState hook that tells l which of its
// connections are idle.
func (l *Listener) ConnState(nc net.Conn, s http.ConnState) {
	c, ok := nc.(*conn)
	if !ok || c.l != l || c.refusal != Admitted {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.released {
		return
	}
	switch s {
	case http.StateIdle:
		l.untrackLocked(c)
		l.trackLocked(c, kindIdle, l.cfg.now())
	case http.StateActive, http.StateHijacked, http.StateClosed:
		l.untrackLocked(c)
	}
}

// Stats returns l's counts.
func (l *Listener) Stats() Stats {
	l.mu.Lock()
	defer l.mu.Unlock()
	st := l.st
	st.Open, st.Overflow = l.open, l.overflowOpen
	st.Idle = l.evictable.idle.Len() + l.evictable.silent.Len()
	return st
}

// RefusalOf says why c, a connection from l or its Overflow, was taken
// past the limits (Admitted for any other connection).
func RefusalOf(c net.Conn) Refusal {
	if c, ok := c.(*conn); ok {
		return c.refusal
	}
	return Admitted
}

// admit returns nc admitted, or why not; victim is an idle conn released
// to make room, for the caller to close.
func (l *Listener) admit(nc net.Conn) (c *conn, why Refusal, victim *conn) {
	key := clientKey(nc.RemoteAddr())
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.cfg.now()
	refusal := Admitted
	if cl := l.clients[key]; l.cfg.PerClient > 0 && cl != nil && cl.open >= l.cfg.PerClient {
		if victim = cl.evictable.oldest(now, l.cfg.IdleGrace); victim == nil {
			refusal = ClientFull
		}
	} else if l.open >= l.cfg.Max {
		if victim = l.evictable.oldest(now, l.cfg.IdleGrace); victim == nil {
			refusal = ServerFull
		}
	}
	if victim != nil {
		l.releaseLocked(victim)
		l.st.Evicted++
	}
	if refusal != Admitted {
		if refusal == ClientFull {
			l.st.OverClient++
		} else {
			l.st.OverCap++
		}
		return nil, refusal, victim
	}
	cl := l.clients[key]
	if cl == nil {
		cl = &client{}
		l.clients[key] = cl
	}
	cl.open++
	l.open++
	c = &conn{Conn: nc, l: l, cl: cl, key: key}
	l.trackLocked(c, kindSilent, now) // closable once silent for IdleGrace
	return c, Admitted, victim
}

// evictOldest closes the connection idle the longest, if any.
func (l *Listener) evictOldest() bool {
	l.mu.Lock()
	v := l.evictable.oldest(l.cfg.now(), l.cfg.IdleGrace)
	if v != nil {
		l.releaseLocked(v)
		l.st.Evicted++
	}
	l.mu.Unlock()
	if v == nil {
		return false
	}
	_ = v.Conn.Close()
	return true
}

func (l *Listener) releaseLocked(c *conn) {
	if c.released {
		return
	}
	c.released = true
	if c.refusal != Admitted {
		l.overflowOpen--
		return
	}
	l.untrackLocked(c)
	l.open--
	if c.cl.open--; c.cl.open == 0 {
		delete(l.clients, c.key)
	}
}

func (l *Listener) trackLocked(c *conn, k kind, now time.Time) {
	c.kind, c.since = k, now
	c.global = l.evictable.list(k).PushBack(c)
	c.own = c.cl.evictable.list(k).PushBack(c)
}

func (l *Listener) untrackLocked(c *conn) {
	if c.kind == kindNone {
		return
	}
	l.evictable.list(c.kind).Remove(c.global)
	c.cl.evictable.list(c.kind).Remove(c.own)
	c.kind, c.global, c.own = kindNone, nil, nil
}

// clientKey is the client a remote address counts against: the IPv4
// address, or the IPv6 /64 (one host's addresses are usually one /64).
func clientKey(a net.Addr) netip.Prefix {
	var ap netip.AddrPort
	if ta, ok := a.(*net.TCPAddr); ok {
		ap = ta.AddrPort()
	} else if a != nil {
		ap, _ = netip.ParseAddrPort(a.String())
	}
	ip := ap.Addr().Unmap()
	bits := 32
	if ip.Is6() {
		bits = 64
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{} // not IP (a test pipe): one client
	}
	return p
}

type kind int

const (
	kindNone   kind = iota // serving a request, hijacked or released
	kindSilent             // accepted, no whole request read yet
	kindIdle               // kept alive, waiting for its next request
)

// lru holds the closable connections, each list in the order they became
// closable, so the front is the oldest.
type lru struct {
	idle, silent list.List
}

func (q *lru) list(k kind) *list.List {
	if k == kindIdle {
		return &q.idle
	}
	return &q.silent
}

// oldest is the connection closable the longest: an idle one, or a silent
// one past grace.
func (q *lru) oldest(now time.Time, grace time.Duration) *conn {
	var best *conn
	if e := q.idle.Front(); e != nil {
		best = e.Value.(*conn)
	}
	if e := q.silent.Front(); e != nil {
		if c := e.Value.(*conn); now.Sub(c.since) >= grace && (best == nil || c.since.Before(best.since)) {
			best = c
		}
	}
	return best
}

// conn is an accepted connection; closing it frees its place.
type conn struct {
	net.Conn
	l       *Listener
	refusal Refusal
	key     netip.Prefix
	cl      *client // nil past the limits

	pre []byte // read by refuse before the overflow server reads on

	// Guarded by l.mu.
	released    bool
	kind        kind
	since       time.Time
	global, own *list.Element // in l.evictable and cl.evictable
}

func (c *conn) Read(p []byte) (int, error) {
	if len(c.pre) > 0 {
		n := copy(p, c.pre)
		c.pre = c.pre[n:]
		return n, nil
	}
	return c.Conn.Read(p)
}

// CloseWrite lets net/http send its FIN before closing (TCP only).
func (c *conn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

// Close frees c's place, then closes it: a client that sees the close
// finds the place free.
func (c *conn) Close() error {
	c.l.mu.Lock()
	c.l.releaseLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}

// overflowListener hands the connections past the limits to their server.
// Its buffer holds Overflow connections, the most that can be unreleased,
// so push never waits.
type overflowListener struct {
	addr net.Addr
	ch   chan net.Conn

	mu     sync.Mutex
	closed bool
	done   chan struct{}
}

func (o *overflowListener) push(c net.Conn) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		_ = c.Close()
		return
	}
	select {
	case o.ch <- c:
	default:
		_ = c.Close() // cannot happen (see above); never block Accept
	}
}

func (o *overflowListener) Accept() (net.Conn, error) {
	select {
	case c := <-o.ch:
		return c, nil
	case <-o.done:
		return nil, net.ErrClosed
	}
}

func (o *overflowListener) Close() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return nil
	}
	o.closed = true
	close(o.done)
	for {
		select {
		case c := <-o.ch:
			_ = c.Close()
		default:
			return nil
		}
	}
}

func (o *overflowListener) Addr() net.Addr { return o.addr }
