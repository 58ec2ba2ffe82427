package push

import "sync"

// slots counts the deliveries in flight: at most max in all, at most
// perTarget for one target, and never two for one wake. Only the pass
// takes slots; deliveries give theirs back when they end.
type slots struct {
	mu        sync.Mutex
	max       int
	perTarget int
	total     int
	byTarget  map[string]int      // deliveries in flight per target
	wakes     map[string]struct{} // wakes being delivered
}

func newSlots(max, perTarget int) *slots {
	return &slots{max: max, perTarget: perTarget,
		byTarget: map[string]int{}, wakes: map[string]struct{}{}}
}

// free is how many more deliveries may start, all targets together.
func (s *slots) free() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max - s.total
}

// take reserves a slot for delivering wake to target; false when the
// global cap or the target's share is used up, or the wake is already
// being delivered (listed again before its claim was made).
func (s *slots) take(target, wake string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.total >= s.max || s.byTarget[target] >= s.perTarget {
		return false
	}
	if _, busy := s.wakes[wake]; busy {
		return false
	}
	s.total++
	s.byTarget[target]++
	s.wakes[wake] = struct{}{}
	return true
}

// give returns the slot take reserved.
func (s *slots) give(target, wake string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.total--
	s.byTarget[target]--
	if s.byTarget[target] == 0 {
		delete(s.byTarget, target)
	}
	delete(s.wakes, wake)
}
