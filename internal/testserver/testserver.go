// Package testserver runs a pullwake server in the test process, wired as
// `pullwake serve` wires it, over the test's own database, for tests of
// clients of the HTTP API (the runner library, the examples). Restart
// replaces the server with a fresh instance on the same database and URL:
// the in-memory write tokens are gone, as after a process restart.
package testserver

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/pgnotify"
	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server"
	"github.com/pullwake/pullwake/server/streams"
	"github.com/pullwake/pullwake/server/writeauth"
)

// Options tune the server; zero values get the defaults noted.
type Options struct {
	AdminToken    string        // "" = dev mode
	SweepInterval time.Duration // 1h: tests that need expiry set it
	LongPoll      time.Duration // 1s
}

// Server is one test's pullwake server.
type Server struct {
	URL string
	DB  *testdb.DB

	t    testing.TB
	opts Options
	hs   *httptest.Server

	mu      sync.Mutex
	handler http.Handler
	stop    func()
}

// Start serves a fresh database until the test ends.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if opts.SweepInterval == 0 {
		opts.SweepInterval = time.Hour
	}
	if opts.LongPoll == 0 {
		opts.LongPoll = time.Second
	}
	s := &Server{DB: testdb.New(t), t: t, opts: opts}
	s.hs = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		s.mu.Lock()
		h := s.handler
		s.mu.Unlock()
		h.ServeHTTP(w, r)
	}))
	s.URL = s.hs.URL
	s.boot()
	t.Cleanup(func() {
		s.hs.CloseClientConnections()
		s.hs.Close()
		s.mu.Lock()
		stop := s.stop
		s.mu.Unlock()
		stop()
	})
	return s
}

// Restart starts a new instance on the same database and URL, with an
// empty token store, routes every new request to it, and stops the old
// one.
func (s *Server) Restart() {
	s.t.Helper()
	s.mu.Lock()
	old := s.stop
	s.mu.Unlock()
	s.boot()
	old()
}

func (s *Server) boot() {
	t := s.t
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pool, err := pgxpool.New(ctx, s.DB.URL)
	if err != nil {
		cancel()
		t.Fatalf("testserver: pool: %v", err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	if testing.Verbose() {
		log = slog.New(slog.NewTextHandler(logWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	store, _ := writeauth.NewStore(ctx, pool, "default") // an unmigrated database: a key of its own
	pub := pgnotify.New(pool, log)
	sh := streams.New(streams.Config{
		Pool: pool, Gate: writeauth.New(store, pool, "default"), AdminToken: s.opts.AdminToken,
		LongPollTimeout: s.opts.LongPoll, Logger: log, Publisher: pub,
	})
	srv, err := server.New(server.Config{
		Pool: pool, ConnString: s.DB.URL, PublicURL: s.URL, AdminToken: s.opts.AdminToken,
		SweepInterval: s.opts.SweepInterval, Tokens: store, Streams: sh,
		StreamChannel: streams.NotifyChannel, Publisher: pub, Logger: log,
	})
	if err != nil {
		cancel()
		pool.Close()
		t.Fatalf("testserver: %v", err)
	}
	pub.Start(ctx)
	srv.Start(ctx)
	if l := srv.Listener(); l != nil {
		select {
		case <-l.Connected():
		case <-time.After(10 * time.Second):
			t.Fatal("testserver: the LISTEN connection did not connect")
		}
	}
	var once sync.Once
	s.mu.Lock()
	s.handler = srv.Handler()
	s.stop = func() {
		once.Do(func() {
			sh.Close()
			cancel()
			srv.Stop()
			pub.Stop()
			pool.Close()
		})
	}
	s.mu.Unlock()
}

type logWriter struct{ t testing.TB }

func (w logWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}
