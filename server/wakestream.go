package server

import (
	"context"
	"encoding/json"
	"log/slog"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/httpx"
)

// Wake streams: every runner has a JSON-mode Durable Stream at
// /v1/stream/runners/{id}/wake, also served at /runners/{id}/wake (the
// path Electric's runtime reads by default). The database writes one
// event per queued wake to it: the queueing transaction logs the wake,
// and the wake-event publisher (server/wakepublish, run by every server
// after its own commits and on a timer) writes the events after the
// commit (sql/wake_events.sql); clients only read it, with the runner's
// token or the admin token. Reading is the stream handler's, after this
// check.
//
// The appends do not NOTIFY, so each server watches the tails of the wake
// streams its own live readers wait on: a poll every wakePollInterval
// while there are such readers, and at once after this server's
// publisher wrote events. A changed tail wakes the readers of that stream.

// wakePollInterval bounds how long a live reader of a wake stream waits
// for events another server's publisher wrote.
const wakePollInterval = 20 * time.Millisecond

// wakeStream serves GET and HEAD of a runner's wake stream under either
// path. It runs outside the request timeout: a live read waits up to the
// long-poll limit, as on any stream.
func (s *Server) wakeStream(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Streams == nil {
		httpx.Fail(s.log, w, r, httpx.Errorf(http.StatusNotFound, "NOT_FOUND", "streams are not served"))
		return
	}
	path := wakeStreamPath(r.PathValue("id"))
	switch r.Method {
	case http.MethodOptions:
	case http.MethodGet, http.MethodHead:
		ctx, cancel := context.WithTimeout(r.Context(), min(s.cfg.RequestTimeout, 5*time.Second))
		err := s.requireRunner(r.WithContext(ctx))
		cancel()
		if err != nil {
			httpx.Fail(s.log, w, r, err)
			return
		}
		if r.Method == http.MethodGet && r.URL.Query().Get("live") != "" {
			defer s.wakes.watch(path)()
		}
	default:
		httpx.Fail(s.log, w, r, httpx.Errorf(http.StatusForbidden, "FORBIDDEN", "a wake stream is written by the server only; %s is refused", r.Method))
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = path
	r2.URL.RawPath = ""
	s.cfg.Streams.ServeHTTP(w, r2)
}

// wakeWatcher wakes this server's live readers of wake streams when the
// streams' tails move.
type wakeWatcher struct {
	pool   *pgxpool.Pool
	tenant string
	q      *db.Queries
	wake   func(path string) // wakes this process's readers of path
	log    *slog.Logger

	mu      sync.Mutex
	readers map[string]int   // wake stream path -> live readers
	tails   map[string]int64 // last tail seen; absent = not seen yet
	kickCh  chan struct{}
	cancel  context.CancelFunc
	done    chan struct{}
}

func newWakeWatcher(pool *pgxpool.Pool, tenant string, wake func(string), log *slog.Logger) *wakeWatcher {
	return &wakeWatcher{pool: pool, tenant: tenant, q: db.New(), wake: wake, log: log,
		readers: map[string]int{}, tails: map[string]int64{}, kickCh: make(chan struct{}, 1)}
}

// watch registers a live reader of path; call the result when it is done.
func (ww *wakeWatcher) watch(path string) func() {
	ww.mu.Lock()
	ww.readers[path]++
	ww.mu.Unlock()
	return func() {
		ww.mu.Lock()
		defer ww.mu.Unlock()
		if ww.readers[path]--; ww.readers[path] <= 0 {
			delete(ww.readers, path)
			delete(ww.tails, path)
		}
	}
}

// kick asks for a poll now (this server's publisher just wrote events).
func (ww *wakeWatcher) kick() {
	select {
	case ww.kickCh <- struct{}{}:
	default:
	}
}

// Start polls until Stop or ctx ends.
func (ww *wakeWatcher) Start(ctx context.Context) {
	ctx, ww.cancel = context.WithCancel(ctx)
	ww.done = make(chan struct{})
	go func() {
		defer close(ww.done)
		t := time.NewTicker(wakePollInterval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			case <-ww.kickCh:
			}
			if err := ww.pollOnce(ctx); err != nil && ctx.Err() == nil {
				ww.log.Warn("wake stream poll failed", "err", err)
			}
		}
	}()
}

// Stop ends the poller and waits for it.
func (ww *wakeWatcher) Stop() {
	if ww.cancel == nil {
		return
	}
	ww.cancel()
	<-ww.done
}

// pollOnce reads the tails of the watched wake streams and wakes the
// readers of each stream whose tail moved (or was not seen before: a
// spurious wake costs a reader one read, a missed one its whole wait).
func (ww *wakeWatcher) pollOnce(ctx context.Context) error {
	ww.mu.Lock()
	paths := make([]string, 0, len(ww.readers))
	for p := range ww.readers {
		paths = append(paths, p)
	}
	ww.mu.Unlock()
	if len(paths) == 0 {
		return nil
	}
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rows, err := ww.q.WakeStreamTails(qctx, ww.pool, db.WakeStreamTailsParams{TenantID: ww.tenant, Paths: paths})
	if err != nil {
		return err
	}
	var moved []string
	ww.mu.Lock()
	for _, row := range rows {
		if _, watched := ww.readers[row.Path]; !watched {
			continue
		}
		if last, seen := ww.tails[row.Path]; !seen || last != row.TailSeq {
			ww.tails[row.Path] = row.TailSeq
			moved = append(moved, row.Path)
		}
	}
	ww.mu.Unlock()
	for _, p := range moved {
		ww.wake(p)
	}
	return nil
}

// wakeLocalReaders wakes this process's live readers of path only (the
// other servers watch their own).
func (s *Server) wakeLocalReaders(path string) {
	if s.cfg.Streams == nil {
		return
	}
	b, _ := json.Marshal(map[string]string{"tenant_id": s.cfg.Tenant, "path": path})
	s.cfg.Streams.HandleNotification(string(b))
}
