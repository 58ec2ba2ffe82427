package streams

import "sync"

// notifier wakes live readers per stream path. A reader takes the path's
// current channel before it queries, then waits on it; notify closes the
// channel (waking every reader of that path at once) and the next reader
// gets a fresh one. Entries are reference counted so paths nobody waits on
// are not kept.
type notifier struct {
	mu     sync.Mutex
	paths  map[string]*waitSet
	done   chan struct{}
	closed bool
}

type waitSet struct {
	ch   chan struct{}
	refs int
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

// subscribe registers a reader of path. Call C before each query and wait on
// the channel it returned; call release when done.
func (n *notifier) subscribe(path string) *subscription {
	n.mu.Lock()
	defer n.mu.Unlock()
	ws := n.paths[path]
	if ws == nil {
		ws = &waitSet{ch: make(chan struct{})}
		n.paths[path] = ws
	}
	ws.refs++
	return &subscription{n: n, path: path, ws: ws}
}

// C returns the channel closed by the next notify of the path.
func (s *subscription) C() <-chan struct{} {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	return s.ws.ch
}

func (s *subscription) release() {
	s.n.mu.Lock()
	defer s.n.mu.Unlock()
	s.ws.refs--
	if s.ws.refs == 0 && s.n.paths[s.path] == s.ws {
		delete(s.n.paths, s.path)
	}
}

// notify wakes every reader waiting on path.
func (n *notifier) notify(path string) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if ws := n.paths[path]; ws != nil {
		close(ws.ch)
		ws.ch = make(chan struct{})
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

// close releases every waiting reader for good.
func (n *notifier) close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.closed {
		n.closed = true
		close(n.done)
	}
}
