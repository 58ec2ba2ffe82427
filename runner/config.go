package runner

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strings"
	"time"
)

// Config says which server and runner identity to use and how much work to
// take. Zero values get the defaults written beside each field.
type Config struct {
	// ServerURL is the base URL of the pullwake server, e.g.
	// http://127.0.0.1:8080. Required.
	ServerURL string
	// RunnerID is the runner's id ([A-Za-z0-9._~-]{1,128}). Required.
	RunnerID string
	// AdminToken registers the runner (POST /_electric/runners). Empty in
	// dev mode (a server without an admin token).
	AdminToken string
	// RunnerToken, when set, skips registration and uses this token for the
	// runner's routes (a token from an earlier registration).
	RunnerToken string
	// Label and Kind are stored with the runner at registration.
	Label, Kind string

	// Concurrency is how many claims the runner holds at once (1).
	Concurrency int
	// LeaseTTL is the claim lease the runner asks for; 0 takes the server's
	// default. The server accepts 1s to 10m.
	LeaseTTL time.Duration
	// HeartbeatInterval is how often a running claim's lease is extended; 0
	// means a third of the claim's lease.
	HeartbeatInterval time.Duration
	// StopTimeout is how long a stop waits for running handlers before
	// cancelling their context (30s). A cancelled handler's claim is
	// released without acks, so its messages are offered again.
	StopTimeout time.Duration
	// PollInterval is how often the runner tries a claim when the server
	// has no wake stream for it (the wake stream answers 404): 1s.
	PollInterval time.Duration
	// LivenessInterval is how often the runner heartbeats its own liveness
	// lease (POST /_electric/runners/{id}/heartbeat, with a lease three
	// times as long): 10s.
	LivenessInterval time.Duration
	// MinBackoff and MaxBackoff bound the wait before retrying a failed
	// request to the server (100ms, 10s); the wait doubles on each failure,
	// with jitter, and resets after a success.
	MinBackoff, MaxBackoff time.Duration

	// HTTPClient sends every request (http.DefaultClient). It must not set
	// a Timeout shorter than the server's long-poll timeout.
	HTTPClient *http.Client
	// Logger receives the runner's log lines (slog.Default()).
	Logger *slog.Logger
}

var idRE = regexp.MustCompile(`^[A-Za-z0-9._~-]{1,128}$`)

// withDefaults checks c and fills in the defaults.
func (c Config) withDefaults() (Config, error) {
	c.ServerURL = strings.TrimRight(c.ServerURL, "/")
	if c.ServerURL == "" {
		return c, errors.New("runner: ServerURL is required")
	}
	if !strings.HasPrefix(c.ServerURL, "http://") && !strings.HasPrefix(c.ServerURL, "https://") {
		return c, fmt.Errorf("runner: ServerURL %q must start with http:// or https://", c.ServerURL)
	}
	if !idRE.MatchString(c.RunnerID) {
		return c, fmt.Errorf("runner: RunnerID %q must match %s", c.RunnerID, idRE)
	}
	if c.Concurrency < 0 || c.LeaseTTL < 0 || c.HeartbeatInterval < 0 || c.StopTimeout < 0 ||
		c.PollInterval < 0 || c.LivenessInterval < 0 || c.MinBackoff < 0 || c.MaxBackoff < 0 {
		return c, errors.New("runner: Concurrency and durations must not be negative")
	}
	if c.LeaseTTL != 0 && (c.LeaseTTL < time.Second || c.LeaseTTL > 10*time.Minute) {
		return c, fmt.Errorf("runner: LeaseTTL %s must be between 1s and 10m", c.LeaseTTL)
	}
	c.Concurrency = cmp.Or(c.Concurrency, 1)
	c.StopTimeout = cmp.Or(c.StopTimeout, 30*time.Second)
	c.PollInterval = cmp.Or(c.PollInterval, time.Second)
	c.LivenessInterval = cmp.Or(c.LivenessInterval, 10*time.Second)
	c.MinBackoff = cmp.Or(c.MinBackoff, 100*time.Millisecond)
	c.MaxBackoff = max(cmp.Or(c.MaxBackoff, 10*time.Second), c.MinBackoff)
	if c.HTTPClient == nil {
		c.HTTPClient = http.DefaultClient
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return c, nil
}

// backoff is an exponential wait with full jitter between min and max.
type backoff struct {
	min, max time.Duration
	n        int
}

// next returns the next wait: a random duration in [d/2, d] where d doubles
// from min up to max.
func (b *backoff) next() time.Duration {
	d := b.min << min(b.n, 20)
	if d > b.max || d <= 0 {
		d = b.max
	}
	b.n++
	return d/2 + rand.N(d/2+1)
}

func (b *backoff) reset() { b.n = 0 }

// sleep waits d or until ctx ends; it reports whether the full wait passed.
func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}
