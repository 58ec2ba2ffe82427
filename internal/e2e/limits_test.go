package e2e

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// closedByServer reports whether the server closes c (EOF or reset) before
// within passes; a read deadline error means it kept c open.
func closedByServer(t *testing.T, c net.Conn, r *bufio.Reader, within time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(within))
	_, err := r.ReadByte()
	if err == nil {
		t.Fatal("server sent unexpected bytes")
	}
	return !errors.Is(err, os.ErrDeadlineExceeded)
}

func dial(t *testing.T, addr string) (net.Conn, *bufio.Reader) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c, bufio.NewReader(c)
}

// An idle keep-alive connection is closed after PULLWAKE_IDLE_TIMEOUT.
func TestHTTPIdleClosed(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	s := startServer(t, serverConfig{DatabaseURL: d.URL, Env: []string{"PULLWAKE_IDLE_TIMEOUT=1s"}})

	c, r := dial(t, s.addr)
	if _, err := io.WriteString(c, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(r, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if !closedByServer(t, c, r, 10*time.Second) {
		t.Fatal("idle keep-alive connection still open after 10s with a 1s idle timeout")
	}
}

// A request whose body never finishes is dropped after PULLWAKE_READ_TIMEOUT.
func TestHTTPSlowBodyClosed(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	s := startServer(t, serverConfig{DatabaseURL: d.URL, Env: []string{"PULLWAKE_READ_TIMEOUT=1s"}})
	c2, r2 := dial(t, s.addr)
	if _, err := io.WriteString(c2, "POST /entities/chat/1 HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"pay"); err != nil {
		t.Fatal(err)
	}
	for {
		_ = c2.SetReadDeadline(time.Now().Add(10 * time.Second))
		line, err := r2.ReadString('\n')
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatal("request with an unfinished body still held after 10s with a 1s read timeout")
			}
			break // closed: what we want
		}
		_ = line // an error answer before the close is fine too
	}
}

// TestHTTPConnectionCap: with both places held by live readers, a third
// connection is answered at once, 503 with Retry-After and Connection:
// close, never left waiting in the accept queue; a health probe is still
// answered 200.
func TestHTTPConnectionCap(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	s := startServer(t, serverConfig{DatabaseURL: d.URL, LongPoll: 30 * time.Second,
		Env: []string{"PULLWAKE_MAX_CONNECTIONS=2", "PULLWAKE_MAX_CONNECTIONS_PER_CLIENT=2"}})
	c := s.Client()
	c.must(t, "PUT", "/v1/stream/cap/s", "", nil, http.StatusCreated)
	for range 2 {
		conn, r := dial(t, s.addr)
		if _, err := io.WriteString(conn, "GET /v1/stream/cap/s?offset=now&live=long-poll HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = r // held until the test ends: a live read
	}
	// Both places are held once the server counts two live readers; a
	// third request gets its answer at once either way.
	deadline := time.Now().Add(10 * time.Second)
	for {
		c3, r3 := dial(t, s.addr)
		if _, err := io.WriteString(c3, "GET /v1/stream/cap/s?offset=-1 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		_ = c3.SetReadDeadline(time.Now().Add(5 * time.Second))
		resp, err := http.ReadResponse(r3, nil)
		if err != nil {
			t.Fatalf("third connection got no answer: %v", err)
		}
		resp.Body.Close()
		c3.Close()
		if resp.StatusCode == http.StatusServiceUnavailable {
			if resp.Header.Get("Retry-After") == "" || !resp.Close {
				t.Fatalf("refused connection: Retry-After %q, Connection close %v", resp.Header.Get("Retry-After"), resp.Close)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a third connection was still served (%d) while two live readers held both places", resp.StatusCode)
		}
		time.Sleep(50 * time.Millisecond)
	}
	probe, rp := dial(t, s.addr)
	if _, err := io.WriteString(probe, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	_ = probe.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(rp, nil)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("/healthz with every place held: %v %v", resp, err)
	}
	resp.Body.Close()
}
