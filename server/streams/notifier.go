package streams

import "sync"

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
	reads map[int64]*sharedRead // by the offset read after
}

func newGeneration() *generation { return &generation{ch: make(chan struct{})} }

// sharedRead is one query whose answer the readers of a generation share.
type sharedRead struct {
	done chan struct{} // closed when c and err are set
	c    *chunk
	err  error
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

// shared returns the read of generation g after offset `after`, running
// read only when no reader of g has started it yet; the others wait for its
// answer or for their own cancel. A failed read is forgotten, so the next
// reader tries again.
func (s *subscription) shared(g *generation, after int64, cancelled <-chan struct{}, read func() (*chunk, error)) (*chunk, error) {
	n := s.n
	n.mu.Lock()
	sr := g.reads[after]
	leader := sr == nil
	if leader {
		if g.reads == nil {
			g.reads = make(map[int64]*sharedRead)
		}
		sr = &sharedRead{done: make(chan struct{})}
		g.reads[after] = sr
	}
	n.mu.Unlock()
	if leader {
		sr.c, sr.err = read()
		if sr.err != nil {
			n.mu.Lock()
			delete(g.reads, after)
			n.mu.Unlock()
		}
		close(sr.done)
		return sr.c, sr.err
	}
	select {
	case <-sr.done:
		return sr.c, sr.err
	case <-cancelled:
		return nil, errCancelled
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
