// Package syncbuf is a text buffer that goroutines may write while another
// reads it: the log sink of a test whose code under test logs from its own
// goroutines.
package syncbuf

import (
	"strings"
	"sync"
)

// Buffer is a strings.Builder guarded by a mutex; the zero value is ready.
type Buffer struct {
	mu sync.Mutex
	b  strings.Builder
}

// Write appends p.
func (s *Buffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

// String returns what was written so far.
func (s *Buffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
