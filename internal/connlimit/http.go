package connlimit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net"
	"net/http"
	"time"
)

// RetryAfter is the Retry-After of a refusal, in seconds.
const RetryAfter = "1"

// peekMax is the most of a request refuse reads before deciding; a longer
// request head goes to the overflow server.
const peekMax = 4096

// The overflow server's deadlines: a connection past the limits holds its
// place for one short request at most.
const (
	overflowReadTimeout  = 2 * time.Second
	overflowWriteTimeout = 5 * time.Second // /readyz may take 3s
)

// OverflowServer returns the server for l.Overflow(): one request per
// connection, then close. A request Config.Probe accepts (a health check)
// is served by h; any other is refused (Refuse).
func (l *Listener) OverflowServer(h http.Handler, errorLog *log.Logger) *http.Server {
	s := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if l.cfg.Probe(r) {
				w.Header().Set("Connection", "close")
				h.ServeHTTP(w, r)
				return
			}
			Refuse(w, r)
		}),
		ReadHeaderTimeout: overflowReadTimeout,
		ReadTimeout:       overflowReadTimeout,
		WriteTimeout:      overflowWriteTimeout,
		IdleTimeout:       time.Second,
		MaxHeaderBytes:    16 << 10,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, refusalKey{}, RefusalOf(c))
		},
		ErrorLog: errorLog,
	}
	s.SetKeepAlivesEnabled(false)
	return s
}

type refusalKey struct{}

// Refuse answers a request that came on a connection past the limits:
// 429 TOO_MANY_CLIENT_CONNECTIONS past the client's limit, else 503
// TOO_MANY_CONNECTIONS; both with Retry-After and Connection: close.
func Refuse(w http.ResponseWriter, r *http.Request) {
	why, _ := r.Context().Value(refusalKey{}).(Refusal)
	status, body := refusal(why)
	hd := w.Header()
	hd.Set("Retry-After", RetryAfter)
	hd.Set("Connection", "close")
	hd.Set("Cache-Control", "no-store")
	hd.Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(body)
}

// refusal is the status and body that refuse a request for why.
func refusal(why Refusal) (int, []byte) {
	status, code, msg := http.StatusServiceUnavailable, "TOO_MANY_CONNECTIONS",
		"the server holds as many connections as it takes; retry"
	if why == ClientFull {
		status, code, msg = http.StatusTooManyRequests, "TOO_MANY_CLIENT_CONNECTIONS",
			"this client (its IP address) holds as many connections as one client may; close idle ones or retry"
	}
	b, _ := json.Marshal(map[string]any{"error": map[string]string{"code": code, "message": msg}})
	return status, append(b, '\n')
}

// parseHead parses b as the head of a request: whole is false until b
// holds the blank line that ends it; req is nil when the head is whole but
// malformed.
func parseHead(b []byte) (req *http.Request, whole bool) {
	if !bytes.Contains(b, []byte("\r\n\r\n")) {
		return nil, false
	}
	req, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(b)))
	if err != nil {
		return nil, true
	}
	return req, true
}

// writeRefusal writes Refuse's answer to req (nil: malformed) straight to
// nc, waiting for nothing: a new connection's send buffer is empty.
func writeRefusal(nc net.Conn, why Refusal, req *http.Request) {
	status, body := refusal(why)
	var b bytes.Buffer
	fmt.Fprintf(&b, "HTTP/1.1 %d %s\r\nRetry-After: %s\r\nConnection: close\r\nCache-Control: no-store\r\n"+
		"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n", status, http.StatusText(status), RetryAfter, len(body))
	if req == nil || req.Method != http.MethodHead {
		b.Write(body)
	}
	_ = nc.SetWriteDeadline(time.Now().Add(time.Millisecond))
	_, _ = nc.Write(b.Bytes())
}
