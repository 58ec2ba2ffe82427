package streams

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// longPoller runs long-poll readers against one test server with enough
// idle connections that every reader keeps its own.
type longPoller struct {
	b      *bundle
	path   string
	client *http.Client
}

func newLongPoller(t *testing.T, b *bundle, path string, readers int) *longPoller {
	tr := &http.Transport{MaxIdleConns: readers + 10, MaxIdleConnsPerHost: readers + 10}
	t.Cleanup(tr.CloseIdleConnections)
	return &longPoller{b: b, path: path, client: &http.Client{Transport: tr}}
}

// poll sends one long-poll from offset and returns its answer.
func (lp *longPoller) poll(ctx context.Context, offset string) (resp, error) {
	req, err := http.NewRequestWithContext(ctx, "GET", lp.b.url+lp.path+"?offset="+offset+"&live=long-poll", nil)
	if err != nil {
		return resp{}, err
	}
	res, err := lp.client.Do(req)
	if err != nil {
		return resp{}, err
	}
	defer res.Body.Close()
	body, err := io.ReadAll(res.Body)
	return resp{status: res.StatusCode, header: res.Header, body: string(body)}, err
}

// The long-poll readers an append wakes share their wake-up read, and when
// each comes back at the offset its response gave it, they share that
// first read too: one append to a stream with N long-poll readers costs a
// few queries, not N.
func TestLongPollRepollsShareReads(t *testing.T) {
	t.Parallel()
	const n = 200
	b := setup(t, setupOpts{maxLive: n + 10})
	p := "/v1/stream/repoll"
	tail := b.must(t, 201, "PUT", p, "", "Content-Type", "text/plain").header.Get("Stream-Next-Offset")
	lp := newLongPoller(t, b, p, n)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	var (
		answered atomic.Int64 // readers that got the appended data
		wg       sync.WaitGroup
		errMu    sync.Mutex
		errs     []string
	)
	fail := func(f string, a ...any) {
		errMu.Lock()
		defer errMu.Unlock()
		errs = append(errs, fmt.Sprintf(f, a...))
	}
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			off := tail
			for {
				r, err := lp.poll(ctx, off)
				if err != nil {
					if ctx.Err() == nil {
						fail("long-poll: %v", err)
					}
					return
				}
				switch r.status {
				case http.StatusOK:
					if r.body != "hello" || r.header.Get("Stream-Up-To-Date") != "true" || r.header.Get("Stream-Cursor") == "" {
						fail("reader got %q %v", r.body, r.header)
					}
					off = r.header.Get("Stream-Next-Offset")
					answered.Add(1)
				case http.StatusNoContent: // timed out: poll again
				default:
					fail("long-poll answered %d %s", r.status, r.body)
					return
				}
			}
		}()
	}
	waitFor(t, "all readers parked", func() bool { return b.h.n.parkedOn(p) == n })
	before := b.queries.n.Load()
	start := time.Now()
	b.must(t, 204, "POST", p, "hello", "Content-Type", "text/plain")
	waitFor(t, "every reader answered and parked again", func() bool {
		return answered.Load() == n && b.h.n.parkedOn(p) == n
	})
	q := b.queries.n.Load() - before
	took := time.Since(start)
	cancel()
	wg.Wait()
	for _, e := range errs {
		t.Error(e)
	}
	t.Logf("%d long-poll readers: the append, the wake-up and the re-polls cost %d queries; all back in %v", n, q, took)
	// The append, one wake-up read, one shared first read at the new offset
	// (a second when the re-polls spread past shareWindow).
	if q > 5 {
		t.Fatalf("one append with %d re-polling long-poll readers cost %d queries, want at most 5", n, q)
	}
}

// jsonMsg is a message of the correctness test: its index and padding.
type jsonMsg struct {
	I   int    `json:"i"`
	Pad string `json:"pad,omitempty"`
}

// Long-poll readers at different offsets, many per offset, all reading at
// once in every round, each get exactly the response a catch-up read from
// their own offset gives: the same messages, byte limit, Stream-Next-Offset,
// Stream-Up-To-Date, Stream-Closed and ETag. Messages of 300 kB make chunks
// stop at the byte limit; readers at the tail park and are woken by the
// round's append.
func TestSharedLongPollsKeepEachReaderToItsOffset(t *testing.T) {
	t.Parallel()
	const (
		perOffset = 6
		initial   = 8
		rounds    = 5
	)
	b := setup(t, setupOpts{})
	p := "/v1/stream/offsets"
	offs := []string{b.must(t, 201, "PUT", p, "", "Content-Type", jsonCT).header.Get("Stream-Next-Offset")}
	appendMsg := func(i int) {
		pad := ""
		if i%3 != 2 {
			pad = strings.Repeat(string(rune('a'+i%26)), 300_000)
		}
		m, _ := json.Marshal(jsonMsg{I: i, Pad: pad})
		offs = append(offs, b.must(t, 204, "POST", p, string(m), "Content-Type", jsonCT).header.Get("Stream-Next-Offset"))
	}
	for i := 1; i <= initial; i++ {
		appendMsg(i)
	}
	// perOffset readers at every offset, twice as many at the tail.
	var start []string
	for _, o := range offs {
		for range perOffset {
			start = append(start, o)
		}
	}
	for range perOffset {
		start = append(start, offs[len(offs)-1])
	}
	lp := newLongPoller(t, b, p, len(start))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	// oracle answers a catch-up read from each offset (the stream is still).
	oracle := func(from []string) map[string]resp {
		o := map[string]resp{}
		for _, f := range from {
			if _, ok := o[f]; !ok {
				o[f] = b.must(t, 200, "GET", p+"?offset="+f, "")
			}
		}
		return o
	}
	check := func(round int, from string, got, want resp) {
		t.Helper()
		if got.status != http.StatusOK || got.body != want.body {
			t.Fatalf("round %d, reader at %s: %d, %d bytes; a catch-up read gives %d bytes", round, from, got.status, len(got.body), len(want.body))
		}
		for _, h := range []string{"Stream-Next-Offset", "Stream-Up-To-Date", "Stream-Closed", "ETag", "Content-Type"} {
			if got.header.Get(h) != want.header.Get(h) {
				t.Fatalf("round %d, reader at %s: %s %q, a catch-up read gives %q", round, from, h, got.header.Get(h), want.header.Get(h))
			}
		}
		if got.header.Get("Stream-Cursor") == "" {
			t.Fatalf("round %d, reader at %s: no Stream-Cursor", round, from)
		}
		var msgs []jsonMsg
		if err := json.Unmarshal([]byte(got.body), &msgs); err != nil || len(msgs) == 0 {
			t.Fatalf("round %d, reader at %s: body %.80s: %v", round, from, got.body, err)
		}
		size := 0
		for k, m := range msgs { // the messages right after the offset, in order
			if k == 0 && offs[m.I-1] != from || k > 0 && m.I != msgs[k-1].I+1 {
				t.Fatalf("round %d, reader at %s: message %d at position %d", round, from, m.I, k)
			}
			if k > 0 && size >= readMaxBytes {
				t.Fatalf("round %d, reader at %s: message %d past the byte limit", round, from, m.I)
			}
			raw, _ := json.Marshal(m)
			size += len(raw)
		}
		if got.header.Get("Stream-Next-Offset") != offs[msgs[len(msgs)-1].I] {
			t.Fatalf("round %d, reader at %s: Stream-Next-Offset %s after message %d", round, from, got.header.Get("Stream-Next-Offset"), msgs[len(msgs)-1].I)
		}
	}

	cur := append([]string(nil), start...)
	for round := range rounds {
		tail := offs[len(offs)-1]
		before := oracle(cur)
		got := make([]resp, len(cur))
		var (
			wg       sync.WaitGroup
			answered atomic.Int64
		)
		errs := make(chan error, len(cur))
		gate := make(chan struct{})
		for i, from := range cur {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-gate
				r, err := lp.poll(ctx, from)
				if err == nil && r.status != http.StatusOK {
					err = fmt.Errorf("long-poll from %s: %d %s", from, r.status, r.body)
				}
				if err != nil {
					errs <- err
					cancel()
				}
				got[i] = r
				answered.Add(1)
			}()
		}
		atTail := 0
		for _, from := range cur {
			if from == tail {
				atTail++
			}
		}
		close(gate) // every reader at once
		waitFor(t, "readers behind answered, readers at the tail parked", func() bool {
			return len(errs) > 0 || int(answered.Load()) == len(cur)-atTail && b.h.n.parkedOn(p) == atTail
		})
		if len(errs) > 0 {
			wg.Wait()
			t.Fatal(<-errs)
		}
		appendMsg(initial + round + 1)
		wg.Wait()
		if len(errs) > 0 {
			t.Fatal(<-errs)
		}
		after := oracle([]string{tail})
		for i, from := range cur {
			want := before[from]
			if from == tail {
				want = after[from]
			}
			check(round, from, got[i], want)
			cur[i] = got[i].header.Get("Stream-Next-Offset")
		}
	}
}

// The reuse rules of a reader's first read: a read that started before the
// reader asked is taken only when it answered "ok", is at most shareWindow
// old and the stream's expiry time has not passed; a read that started
// after the reader asked is always taken.
func TestFirstReadReuseRules(t *testing.T) {
	t.Parallel()
	now := time.Now()
	ok := &chunk{}
	ok.Status, ok.ExpiresAtUs = "ok", -1
	expiring := &chunk{}
	expiring.Status, expiring.ExpiresAtUs = "ok", now.Add(time.Second).UnixMicro()
	bad := &chunk{}
	bad.Status = "bad_offset"
	for _, tc := range []struct {
		name  string
		sr    sharedRead
		since time.Time
		at    time.Time
		want  bool
	}{
		{"ok, started before, fresh", sharedRead{start: now, c: ok}, now.Add(time.Millisecond), now.Add(time.Millisecond), true},
		{"ok, started before, too old", sharedRead{start: now, c: ok}, now.Add(time.Millisecond), now.Add(shareWindow + time.Millisecond), false},
		{"bad offset, started before", sharedRead{start: now, c: bad}, now.Add(time.Millisecond), now.Add(time.Millisecond), false},
		{"bad offset, started after", sharedRead{start: now, c: bad}, now, now.Add(time.Millisecond), true},
		{"ok, old, started after", sharedRead{start: now, c: ok}, now.Add(-time.Millisecond), now.Add(time.Hour), true},
		{"expiry not yet passed", sharedRead{start: now, c: expiring}, now.Add(time.Millisecond), now.Add(time.Millisecond), true},
		{"expiry passed", sharedRead{start: now, c: expiring}, now.Add(time.Millisecond), now.Add(time.Second), false},
		{"failed, started before", sharedRead{start: now, err: errors.New("x")}, now.Add(time.Millisecond), now.Add(time.Millisecond), true},
	} {
		if got := tc.sr.takes(tc.since, tc.at); got != tc.want {
			t.Errorf("%s: takes = %v, want %v", tc.name, got, tc.want)
		}
	}

	// Through shared: a stale answer is dropped and the reader reads afresh;
	// the fresh read is left for the next reader, who takes it.
	n := newNotifier()
	sub := n.subscribe("/v1/stream/x")
	defer sub.release()
	g := sub.gen()
	key := readKey{after: 3, touch: true}
	var reads atomic.Int64
	read := func() (*chunk, error) { reads.Add(1); return ok, nil }
	g.reads = map[readKey]*sharedRead{key: {start: now.Add(-time.Hour), done: closedChan(), c: ok}}
	if _, err := sub.shared(g, key, true, nil, read); err != nil || reads.Load() != 1 {
		t.Fatalf("stale answer: err %v, %d reads, want 1", err, reads.Load())
	}
	if _, err := sub.shared(g, key, true, nil, read); err != nil || reads.Load() != 1 {
		t.Fatalf("fresh answer: err %v, %d reads, want it shared", err, reads.Load())
	}
	// A woken reader takes whatever read its generation has.
	g.reads[readKey{after: 3}] = &sharedRead{start: now.Add(-time.Hour), done: closedChan(), c: bad}
	if c, _ := sub.shared(g, readKey{after: 3}, false, nil, read); c != bad || reads.Load() != 1 {
		t.Fatalf("woken reader: %v, %d reads", c, reads.Load())
	}
	// An arrival's read is forgotten after shareWindow.
	waitFor(t, "the arrival's read forgotten", func() bool {
		n.mu.Lock()
		defer n.mu.Unlock()
		return g.reads[key] == nil
	})
}

func closedChan() chan struct{} {
	c := make(chan struct{})
	close(c)
	return c
}
