// Package freezeproxy is a TCP proxy for tests that can freeze every
// connection through it: bytes stop flowing both ways while the sockets stay
// open, which is how a half-open connection (a frozen backend, a network
// path that drops packets without a reset) looks to a client.
package freezeproxy

import (
	"net"
	"sync"
	"testing"
)

// Proxy forwards 127.0.0.1:Port() to an upstream address.
type Proxy struct {
	ln       net.Listener
	upstream string

	mu     sync.Mutex
	frozen bool
	thaw   chan struct{} // closed by Thaw
	conns  []net.Conn
	wg     sync.WaitGroup
}

// Start listens on a free loopback port and forwards to upstream (host:port)
// until the test ends.
func Start(t testing.TB, upstream string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("freezeproxy: %v", err)
	}
	p := &Proxy{ln: ln, upstream: upstream, thaw: make(chan struct{})}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	return p
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return p.ln.Addr().String() }

// Freeze stops all traffic, on current and future connections.
func (p *Proxy) Freeze() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.frozen {
		p.frozen = true
		p.thaw = make(chan struct{})
	}
}

// Thaw lets traffic flow again.
func (p *Proxy) Thaw() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.frozen {
		p.frozen = false
		close(p.thaw)
	}
}

// gate blocks while the proxy is frozen; false when the proxy closed.
func (p *Proxy) gate(done <-chan struct{}) bool {
	p.mu.Lock()
	frozen, thaw := p.frozen, p.thaw
	p.mu.Unlock()
	if !frozen {
		return true
	}
	select {
	case <-thaw:
		return true
	case <-done:
		return false
	}
}

func (p *Proxy) accept() {
	defer p.wg.Done()
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		u, err := net.Dial("tcp", p.upstream)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, u)
		p.mu.Unlock()
		done := make(chan struct{})
		var once sync.Once
		end := func() { once.Do(func() { close(done); c.Close(); u.Close() }) }
		p.wg.Add(2)
		go p.pipe(u, c, done, end)
		go p.pipe(c, u, done, end)
	}
}

// pipe copies src to dst, holding each chunk while frozen.
func (p *Proxy) pipe(dst, src net.Conn, done <-chan struct{}, end func()) {
	defer p.wg.Done()
	defer end()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			if !p.gate(done) {
				return
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return // EOF or closed: end both directions
		}
	}
}

func (p *Proxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	if p.frozen {
		p.frozen = false
		close(p.thaw)
	}
	p.mu.Unlock()
	p.wg.Wait()
}
