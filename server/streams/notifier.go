package streams

import (
	"sync"
	"time"
)

// notifier wakes live readers per stream path. A reader takes the path's
// current generation before it queries, then waits on its channel; notify
// closes the channel (waking every reader of that path at once) and starts
// a new generation for the readers that come next. Entries are reference
// counted so paths nobody waits on are not kept.
//
// A generation also carries the reads its readers share (see shared): every
// read started within a generation began after the notify that opened it,
// so it sees every append announced before any of its readers took that
// generation. One read therefore serves all readers of a generation that
// read from the same offset: an append that wakes N readers costs one query,
// not N.
//
// A reader's first read (a long-poll's, after it re-polls with the offset
// its last response gave it) shares too, among equal offsets only: its need
// began when it arrived, not when the generation opened, so it takes a read
// of its generation that started at most shareWindow ago and answered "ok"
// (see shared). The long-poll readers that an append wakes re-poll at the
// same new offset within moments of each other, so one query answers all of
// their first reads as well.
type notifier struct {
	mu     sync.Mutex
	paths  map[string]*waitSet
	done   chan struct{}
	closed bool
}

type waitSet struct {
	gen    *generation
	refs   int
	parked int // readers waiting on the generation's channel now (tests)
}

// generation is the time between two notifies of a path.
type generation struct {
	ch    chan struct{}
	reads map[readKey]*sharedRead
}

// readKey names a shared read: the offset it reads after, and whether it
// restarts the sliding TTL (a first read does; a wake-up's read does not).
// Readers at different offsets never share a read: each gets exactly the
// chunk the database returns for its own offset.
type readKey struct {
	after int64
	touch bool
}

// shareWindow bounds how old a read may be when a reader arriving after it
// started takes its answer. It stays under the shortest TTL (1 s): a read
// that restarted the TTL when it started proves the stream alive for at
// least that long.
const shareWindow = 500 * time.Millisecond

func newGeneration() *generation { return &generation{ch: make(chan struct{})} }

// sharedRead is one query whose answer the readers of a generation share.
type sharedRead struct {
	start time.Time     // when the query was started
	done  chan struct{} // closed when c and err are set
	c     *chunk
	err   error
}

// takes reports whether a reader that asked at `since` may take the answer
// of sr (finished), as of now. A read that started after the reader asked
// is as good as its own. An older one only when it is at most shareWindow
// old and answered "ok" before any Stream-Expires-At: a not-found, a gone
// or a bad offset may be out of date for a reader who just created the
// stream or appended through another server, and an "ok" chunk's data is
// immutable, so at worst the reader waits for the notification of an
// append the read did not see, as it would had the append come a moment
// later.
func (sr *sharedRead) takes(since, now time.Time) bool {
	if !sr.start.Before(since) || sr.err != nil {
		return true
	}
	c := sr.c
	return now.Sub(sr.start) <= shareWindow && c.Status == "ok" &&
		(c.ExpiresAtUs < 0 || now.UnixMicro() < c.ExpiresAtUs)
}

func newNotifier() *notifier {
	return &notifier{paths: make(map[string]*waitSet), done: make(chan struct{})}
}

// subscription is one reader's registration on a path.
type subscription struct {
	n    *notifier
	path string
	ws   *waitSet
}

// subscribe registers a reader of path. Call gen before each query and wait
// on its channel; call release when done.
func (n *notifier) subscribe(path string) *subscription {
	n.mu.Lock()
	defer n.mu.Unlock()
	ws := n.paths[path]
	if ws == nil {
		ws = &waitSet{gen: newGeneration()}
		n.paths[path] = ws
	}
	ws.refs++
	return &subscription{n: n, path: path, ws: ws}
}

// gen returns the current generation: its channel is closed by the next
// notify of the path.
func (s *subscription) gen() *generation {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	return s.ws.gen
}

// C returns the channel closed by the next notify of the path.
func (s *subscription) C() <-chan struct{} { return s.gen().ch }

// park and unpark count the readers blocked on a wake-up (tests).
func (s *subscription) park(on bool) {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	if on {
		s.ws.parked++
	} else {
		s.ws.parked--
	}
}

func (s *subscription) release() {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	s.ws.refs--
	if s.ws.refs == 0 && s.n.paths[s.path] == s.ws {
		delete(s.n.paths, s.path)
	}
}

// shared returns the read of generation g for key, running read only when
// no reader of g has started it yet; the others wait for its answer or for
// their own cancel. A failed read is forgotten, so the next reader tries
// again.
//
// A woken reader (arrival false) needs the data announced by the notify
// that opened g, which every read of g sees: it takes any read of g. An
// arriving reader (arrival true) needs every append made before it asked:
// it takes a read only as sharedRead.takes allows, else it runs its own and
// leaves that one for the readers who come next. An arrival's read is
// forgotten shareWindow after it answers, so a long generation does not
// keep chunks nobody will take.
func (s *subscription) shared(g *generation, key readKey, arrival bool, cancelled <-chan struct{}, read func() (*chunk, error)) (*chunk, error) {
	n := s.n
	since := time.Now()
	for {
		n.mu.Lock()
		sr := g.reads[key]
		leader := sr == nil
		if leader {
			if g.reads == nil {
				g.reads = make(map[readKey]*sharedRead)
			}
			sr = &sharedRead{start: time.Now(), done: make(chan struct{})}
			g.reads[key] = sr
		}
		n.mu.Unlock()
		if leader {
			sr.c, sr.err = read()
			if sr.err != nil {
				n.forget(g, key, sr)
			} else if arrival {
				time.AfterFunc(shareWindow, func() { n.forget(g, key, sr) })
			}
			close(sr.done)
			return sr.c, sr.err
		}
		select {
		case <-sr.done:
		case <-cancelled:
			return nil, errCancelled
		}
		if !arrival || sr.takes(since, time.Now()) {
			return sr.c, sr.err
		}
		n.forget(g, key, sr) // too old or not "ok": read afresh
	}
}

// forget drops sr from g unless another read has replaced it.
func (n *notifier) forget(g *generation, key readKey, sr *sharedRead) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if g.reads[key] == sr {
		delete(g.reads, key)
	}
}

// notify wakes every reader waiting on path.
func (n *notifier) notify(path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ws := n.paths[path]; ws != nil {
		close(ws.gen.ch)
		ws.gen = newGeneration()
	}
}

// waiting reports how many readers are registered on path (tests).
func (n *notifier) waiting(path string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ws := n.paths[path]; ws != nil {
		return ws.refs
	}
	return 0
}

// parkedOn reports how many readers of path wait for a wake-up (tests).
func (n *notifier) parkedOn(path string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ws := n.paths[path]; ws != nil {
		return ws.parked
	}
	return 0
}

// close releases every waiting reader for good.
func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		close(n.done)
	}
}
