package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"time"
)

// maxLongPoll bounds one read of the wake stream.
const maxLongPoll = 3 * time.Minute

// errNoWakeStream means the server has no wake stream for this runner (a
// server that predates it): the runner polls the claim route instead.
var errNoWakeStream = errors.New("no wake stream")

// wakes feeds the dispatcher until ctx ends: batches of wake events from
// the runner's wake stream, and an empty batch (a probe: "claim until there
// is no work") at start, after every long-poll that ended without events,
// and after a reconnect. A server without a wake stream is polled instead,
// one probe every PollInterval. It returns only a fatal error (the runner
// token refused) or nil when ctx ends.
func (r *Runner) wakes(ctx context.Context, bell chan<- []json.RawMessage) error {
	ring := func(evs []json.RawMessage) bool {
		select {
		case bell <- evs:
			return true
		case <-ctx.Done():
			return false
		}
	}
	path := "/runners/" + r.cfg.RunnerID + "/wake"
	bo := r.newBackoff()

	// The tail first, then a probe: a wake queued after the tail was read
	// has its event past it, one queued before is found by the probe.
	var offset, cursor string
	for {
		a, err := r.readWakes(ctx, path, "now", "", false)
		if err == nil {
			offset = a.next
			break
		}
		switch {
		case errors.Is(err, errNoWakeStream):
			r.log.Warn("the server has no wake stream for this runner; polling the claim route",
				"poll_interval", r.cfg.PollInterval.String())
			return r.poll(ctx, ring)
		case errors.Is(err, ErrRunnerTokenRefused):
			return err
		}
		r.log.Warn("wake stream unreachable; retrying", "err", err)
		if !sleep(ctx, bo.next()) {
			return nil
		}
	}
	bo.reset()
	if !ring(nil) {
		return nil
	}
	failed := false
	for {
		a, err := r.readWakes(ctx, path, offset, cursor, true)
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, ErrRunnerTokenRefused) {
				return err
			}
			r.log.Warn("wake stream read failed; reconnecting", "err", err, "offset", offset)
			failed = true
			if !sleep(ctx, bo.next()) {
				return nil
			}
			continue
		}
		bo.reset()
		if a.next != "" {
			offset = a.next
		}
		cursor = a.cursor
		var evs []json.RawMessage
		for _, ev := range a.events {
			if isWakeEvent(ev) {
				evs = append(evs, ev)
			}
		}
		// After a failure, probe as well: the stream has every event, but a
		// probe costs one claim and covers any doubt.
		if len(evs) == 0 || failed {
			if !ring(nil) {
				return nil
			}
			failed = false
		}
		if len(evs) > 0 && !ring(evs) {
			return nil
		}
	}
}

func isWakeEvent(ev json.RawMessage) bool {
	var e struct {
		Type string `json:"type"`
	}
	return json.Unmarshal(ev, &e) == nil && e.Type == "wake"
}

// wakeRead is one answer of the wake stream.
type wakeRead struct {
	events []json.RawMessage
	next   string
	cursor string
}

// readWakes reads the wake stream once: a catch-up read, or a long-poll
// that answers at the first event or at the server's long-poll timeout.
func (r *Runner) readWakes(ctx context.Context, path, offset, cursor string, live bool) (wakeRead, error) {
	q := url.Values{"offset": {offset}}
	if live {
		q.Set("live", "long-poll")
		if cursor != "" {
			q.Set("cursor", cursor)
		}
	}
	// A live read waits up to the server's long-poll timeout (30 s by
	// default); past maxLongPoll the connection is taken for dead.
	ctx, cancel := context.WithTimeout(ctx, maxLongPoll)
	defer cancel()
	a, err := r.c.do(ctx, http.MethodGet, path+"?"+q.Encode(), r.token, nil)
	if err != nil {
		return wakeRead{}, fmt.Errorf("read wake stream: %w", err)
	}
	out := wakeRead{next: a.header.Get("Stream-Next-Offset"), cursor: a.header.Get("Stream-Cursor")}
	switch a.status {
	case http.StatusOK:
		if err := json.Unmarshal(a.body, &out.events); err != nil {
			return wakeRead{}, fmt.Errorf("read wake stream: the answer is not a JSON array: %w", err)
		}
	case http.StatusNoContent:
	case http.StatusNotFound:
		return wakeRead{}, errNoWakeStream
	case http.StatusUnauthorized, http.StatusForbidden:
		return wakeRead{}, fmt.Errorf("%w: %w", ErrRunnerTokenRefused, a.apiError("read wake stream"))
	default:
		return wakeRead{}, a.apiError("read wake stream")
	}
	if out.next == "" {
		return wakeRead{}, errors.New("read wake stream: answer without Stream-Next-Offset")
	}
	return out, nil
}

// poll rings a probe every PollInterval: the fallback for a server without
// a wake stream.
func (r *Runner) poll(ctx context.Context, ring func([]json.RawMessage) bool) error {
	t := time.NewTicker(r.cfg.PollInterval)
	defer t.Stop()
	for {
		if !ring(nil) {
			return nil
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
