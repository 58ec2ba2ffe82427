package runner

import (
	"testing"
	"time"
)

// The wait doubles from min up to max, with jitter in [d/2, d], and starts
// over after reset.
func TestBackoff(t *testing.T) {
	t.Parallel()
	b := &backoff{min: 100 * time.Millisecond, max: time.Second}
	for i, want := range []time.Duration{100, 200, 400, 800, 1000, 1000, 1000} {
		want *= time.Millisecond
		if got := b.next(); got < want/2 || got > want {
			t.Fatalf("wait %d: %s, want within [%s, %s]", i, got, want/2, want)
		}
	}
	b.reset()
	if got := b.next(); got > 100*time.Millisecond {
		t.Fatalf("after reset: %s, want at most 100ms", got)
	}
}
