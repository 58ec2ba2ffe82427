package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestChaos drives 8 runner goroutines over 40 entities while 200 messages
// are sent, and meanwhile SIGKILLs and restarts the server three times and
// restarts PostgreSQL (a private cluster the test owns) once. Runners claim,
// read the main stream from the notification's offset, append one reply,
// and finish with a done acking the Stream-Next-Offset they read up to; on
// 401 they re-mint the write token with a claim request, on 409
// CLAIM_NOT_ACTIVE they drop the claim (it expires). At the end:
//   - no claim is active and every entity is idle;
//   - every sent message lies at or below its entity's acked offset;
//   - every append that got a 2xx is in its stream;
//   - no 5xx but 503, and 503s and connection errors only while (or just
//     after) a process was down.
func TestChaos(t *testing.T) {
	t.Parallel()
	const (
		nRunners  = 8
		nEntities = 40
		nSends    = 200
		lease     = 2 * time.Second
		sweep     = 250 * time.Millisecond
		sendEvery = 110 * time.Millisecond // 200 sends over about 22 s
		// grace after a disruption ends during which a 503 or a connection
		// error still counts as caused by it (stale pooled connections).
		grace = 5 * time.Second
	)
	began := time.Now()
	pg := startCluster(t)
	// Group commit on (it is off by default): the chaos also covers batched
	// claims, dones and appends.
	srv := startServer(t, serverConfig{DatabaseURL: pg.URL, SweepInterval: sweep, DefaultLease: lease,
		Env: []string{"PULLWAKE_GROUP_COMMIT=true"}})
	c := srv.Client()

	ch := &chaos{c: c, lease: lease, sent: map[string][]string{}, appended: map[string][]string{}}
	runners := make([]runnerCreds, nRunners)
	for i := range runners {
		runners[i] = c.registerRunner(t, fmt.Sprintf("chaos-%d", i))
	}
	ents := make([]string, nEntities)
	for i := range ents {
		ents[i] = fmt.Sprintf("/chat/c%02d", i)
		c.spawn(t, ents[i])
	}

	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, run := range runners {
		wg.Add(1)
		go func() { defer wg.Done(); ch.runner(run, stop) }()
	}
	sendsDone := make(chan struct{})
	go func() {
		defer close(sendsDone)
		start := time.Now()
		for i := range nSends {
			ch.send(ents[rand.IntN(nEntities)], i)
			if d := time.Until(start.Add(time.Duration(i+1) * sendEvery)); d > 0 {
				time.Sleep(d)
			}
		}
	}()

	// The disruptions, spread over the sending period.
	start := time.Now()
	at := func(d time.Duration) { time.Sleep(time.Until(start.Add(d))) }
	kill := func(down time.Duration) {
		i := ch.begin("server SIGKILL")
		srv.Kill()
		time.Sleep(down) // runners meet refused connections meanwhile
		srv.Start()
		ch.end(i)
	}
	at(4 * time.Second)
	kill(300 * time.Millisecond)
	at(9 * time.Second)
	kill(lease + 500*time.Millisecond) // longer than a lease: claims in hand expire
	at(13 * time.Second)
	i := ch.begin("postgres restart")
	pg.Restart()
	ch.end(i)
	at(18 * time.Second)
	kill(300 * time.Millisecond)
	<-sendsDone
	sendsEnded := time.Now()

	// Let the runners drain: every entity idle, its sent messages acked.
	drained := eventually(t, 40*time.Second, 100*time.Millisecond, "runners drained the work", func() (bool, string) {
		return ch.quiescent(t)
	})
	close(stop)
	wg.Wait()

	// Nothing may stay active longer than its lease plus one sweep.
	eventually(t, lease+sweep+slack, 50*time.Millisecond, "no active claim", func() (bool, string) {
		n := len(c.claims(t, "status=active&limit=10000"))
		return n == 0, fmt.Sprintf("%d active claims", n)
	})

	// Final state.
	var list []entity
	if err := c.must(t, "GET", "/entities", "", nil, http.StatusOK).decode(&list); err != nil {
		t.Fatal(err)
	}
	if len(list) != nEntities {
		t.Fatalf("%d entities listed, want %d", len(list), nEntities)
	}
	byURL := map[string]entity{}
	for _, e := range list {
		byURL[e.URL] = e
		if e.Status != "idle" || e.Dispatch.ActiveConsumerID != nil {
			t.Errorf("entity %s: status %s, active consumer %v; want idle, no claim", e.URL, e.Status, e.Dispatch.ActiveConsumerID)
		}
		if e.Dispatch.AckedOffset < e.Dispatch.LastSentOffset {
			t.Errorf("entity %s: acked %s < last sent %s", e.URL, e.Dispatch.AckedOffset, e.Dispatch.LastSentOffset)
		}
	}
	sentOK := 0
	for url, offs := range ch.sent {
		for _, off := range offs {
			sentOK++
			if acked := byURL[url].Dispatch.AckedOffset; off > acked {
				t.Errorf("entity %s: sent message %s lies past the acked offset %s", url, off, acked)
			}
		}
	}
	if sentOK != nSends {
		t.Errorf("%d sends answered 202, want %d", sentOK, nSends)
	}
	appendsOK, missing := 0, 0
	for _, url := range ents {
		stream := "/v1/stream" + url + "/main"
		msgs, _, err := c.readStream(context.Background(), stream, "-1")
		if err != nil {
			t.Fatalf("read %s: %v", stream, err)
		}
		have := map[string]bool{}
		for _, m := range msgs {
			var v struct {
				Type string `json:"type"`
				Key  string `json:"key"`
			}
			if json.Unmarshal(m, &v) == nil && v.Type == "reply" {
				have[v.Key] = true
			}
		}
		for _, key := range ch.appended[stream] {
			appendsOK++
			if !have[key] {
				missing++
				t.Errorf("stream %s: append %s got a 2xx but is not in the stream", stream, key)
			}
		}
	}
	for _, run := range runners {
		if n := runnerHealth(t, c, run); n != 0 {
			t.Errorf("runner %s: health lists %d active claims", run.ID, n)
		}
	}
	for _, v := range ch.violations {
		t.Errorf("violation: %s", v)
	}
	late := ch.outsideWindows(grace)
	for _, e := range late {
		t.Errorf("outside any disruption: %s", e)
	}

	expired := len(c.claims(t, "status=expired&limit=10000"))
	released := len(c.claims(t, "status=released&limit=10000"))
	all := c.claims(t, "limit=10000")
	summary := fmt.Sprintf("chaos: %d runners, %d entities; sends %d ok (%d retried after 503/connection errors); "+
		"claims received %d, in the database %d (released %d, expired %d); appends %d ok, %d of them in their streams; "+
		"401 on append %d, re-mints %d, dropped on 409 %d; dones %d (released and cleared %d, released=false %d, released not cleared %d), abandoned %d, crashed runners %d; "+
		"503s %d, connection errors %d, outside windows %d; server SIGKILLs 3, postgres restarts 1; "+
		"sends took %s, drained %s after, total %s",
		nRunners, nEntities, sentOK, ch.sendRetries.Load(),
		ch.claims.Load(), len(all), released, expired, appendsOK, appendsOK-missing,
		ch.append401.Load(), ch.remints.Load(), ch.dropped.Load(),
		ch.dones.Load(), ch.doneCleared.Load(), ch.doneStale.Load(), ch.doneNotCleared.Load(), ch.abandoned.Load(), ch.crashed.Load(),
		ch.n503.Load(), ch.connErrs.Load(), len(late),
		sendsEnded.Sub(start).Round(time.Millisecond), drained.Round(time.Millisecond), time.Since(began).Round(time.Millisecond))
	t.Log(summary)
	if testing.Verbose() {
		fmt.Println(summary)
	}
	// Every claim ended one way or the other. The database may hold more
	// claims than the runners received: a claim whose answer was lost to a
	// SIGKILL is committed but never heard of; it must have expired.
	if len(all) != released+expired || int64(len(all)) < ch.claims.Load() {
		t.Errorf("%d claims in the database (released %d, expired %d), %d received by runners",
			len(all), released, expired, ch.claims.Load())
	}
}

// chaos is the shared state of the chaos test's goroutines.
type chaos struct {
	c     *client
	lease time.Duration

	mu         sync.Mutex
	sent       map[string][]string // entity url -> offsets answered 202
	appended   map[string][]string // stream -> keys of replies answered 2xx
	violations []string
	windows    []window
	downs      []downEvent

	claims, sendRetries, append401, remints, dropped                                  atomic.Int64
	dones, doneCleared, doneStale, doneNotCleared, abandoned, crashed, n503, connErrs atomic.Int64
	seq                                                                               atomic.Int64
}

type window struct {
	what       string
	start, end time.Time // end zero: ongoing
}

type downEvent struct {
	at   time.Time
	what string
}

func (ch *chaos) begin(what string) int {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.windows = append(ch.windows, window{what: what, start: time.Now()})
	return len(ch.windows) - 1
}

func (ch *chaos) end(i int) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.windows[i].end = time.Now()
}

func (ch *chaos) violate(format string, args ...any) {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	ch.violations = append(ch.violations, fmt.Sprintf(format, args...))
}

// outsideWindows lists the 503s and connection errors that no disruption
// (widened by grace at its end) explains.
func (ch *chaos) outsideWindows(grace time.Duration) []string {
	ch.mu.Lock()
	defer ch.mu.Unlock()
	var out []string
	for _, d := range ch.downs {
		ok := false
		for _, w := range ch.windows {
			if !d.at.Before(w.start) && (w.end.IsZero() || d.at.Before(w.end.Add(grace))) {
				ok = true
				break
			}
		}
		if !ok {
			out = append(out, d.at.Format("15:04:05.000")+" "+d.what)
		}
	}
	return out
}

// answered classifies the outcome of a request: false means "no answer
// because a process is down" (a connection error or a 503, recorded; the
// caller retries). A 5xx other than 503 is a violation and also false.
func (ch *chaos) answered(op string, r *response, err error) bool {
	now := time.Now()
	switch {
	case err != nil:
		ch.connErrs.Add(1)
		ch.mu.Lock()
		ch.downs = append(ch.downs, downEvent{now, op + ": " + err.Error()})
		ch.mu.Unlock()
		return false
	case r.Status == http.StatusServiceUnavailable:
		ch.n503.Add(1)
		ch.mu.Lock()
		ch.downs = append(ch.downs, downEvent{now, op + ": " + r.String()})
		ch.mu.Unlock()
		return false
	case r.Status >= 500:
		ch.violate("%s: %s", op, r)
		return false
	}
	return true
}

func pause(d time.Duration) { time.Sleep(d + rand.N(d)) }

// send posts message i to url until it is answered.
func (ch *chaos) send(url string, i int) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		r, err := ch.c.do(context.Background(), "POST", "/entities"+url, "", map[string]any{"payload": map[string]any{"n": i}})
		if !ch.answered("send", r, err) {
			ch.sendRetries.Add(1)
			pause(50 * time.Millisecond)
			continue
		}
		var out struct {
			Offset string `json:"offset"`
		}
		if r.Status != http.StatusAccepted || r.decode(&out) != nil || out.Offset == "" {
			ch.violate("send %d to %s: %s", i, url, r)
			return
		}
		ch.mu.Lock()
		ch.sent[url] = append(ch.sent[url], out.Offset)
		ch.mu.Unlock()
		return
	}
	ch.violate("send %d to %s: no answer within 30s", i, url)
}

// runner claims and works until stop is closed (finishing the claim in hand).
func (ch *chaos) runner(run runnerCreds, stop <-chan struct{}) {
	for {
		select {
		case <-stop:
			return
		default:
		}
		r, err := ch.c.do(context.Background(), "POST", "/_electric/runners/"+run.ID+"/claim", run.Token,
			map[string]any{"lease_ttl_ms": ch.lease.Milliseconds()})
		if !ch.answered("claim", r, err) {
			pause(50 * time.Millisecond)
			continue
		}
		switch r.Status {
		case http.StatusNoContent:
			pause(40 * time.Millisecond)
		case http.StatusOK:
			var w wake
			if err := r.decode(&w); err != nil {
				ch.violate("claim: %v", err)
				continue
			}
			if n := ch.claims.Add(1); n%25 == 0 {
				// A runner crash: the claim is never heard of again and
				// must expire, its wake queued for another runner.
				ch.crashed.Add(1)
				continue
			}
			ch.work(run, &w)
		default:
			ch.violate("claim by %s: %s", run.ID, r)
			pause(50 * time.Millisecond)
		}
	}
}

// work reads, appends one reply and sends the done. Transient failures are
// retried until a budget runs out; then the claim is abandoned (it expires).
func (ch *chaos) work(run runnerCreds, w *wake) {
	ctx := context.Background()
	budget := time.Now().Add(15 * time.Second)
	retry := func(op string) bool {
		if time.Now().After(budget) {
			ch.abandoned.Add(1)
			return false
		}
		pause(50 * time.Millisecond)
		return true
	}

	// Read the main stream from where the runners' acks got to.
	var tail string
	for {
		_, next, err := ch.c.readStream(ctx, w.StreamPath, w.Streams[0].Offset)
		if err == nil {
			tail = next
			break
		}
		if st := httpStatus(err); st != 0 && st != http.StatusServiceUnavailable {
			ch.violate("read %s by %s: %v", w.StreamPath, run.ID, err)
			return
		}
		ch.answered("read", nil, err)
		if !retry("read") {
			return
		}
	}

	// "Process" the messages for a moment, so that kills land mid-claim.
	pause(150 * time.Millisecond)

	// Append one reply; re-mint on 401, drop the claim on 409.
	key := fmt.Sprintf("%s/%s/%d", run.ID, w.ConsumerID, ch.seq.Add(1))
	token := w.WriteToken
	for appended := false; !appended; {
		r, err := ch.c.appendMsg(ctx, w.StreamPath, token, map[string]any{"type": "reply", "key": key, "epoch": w.Epoch})
		if !ch.answered("append", r, err) {
			if !retry("append") {
				return
			}
			continue
		}
		switch {
		case r.Status/100 == 2:
			ch.mu.Lock()
			ch.appended[w.StreamPath] = append(ch.appended[w.StreamPath], key)
			ch.mu.Unlock()
			appended = true
		case r.Status == http.StatusUnauthorized:
			ch.append401.Add(1)
			for {
				rr, err := ch.c.remint(ctx, w)
				if !ch.answered("re-mint", rr, err) {
					if !retry("re-mint") {
						return
					}
					continue
				}
				var out struct {
					WriteToken string `json:"write_token"`
				}
				switch {
				case rr.Status == http.StatusOK && rr.decode(&out) == nil && out.WriteToken != "":
					ch.remints.Add(1)
					token = out.WriteToken
				case rr.Status == http.StatusConflict && rr.Code() == "CLAIM_NOT_ACTIVE":
					ch.dropped.Add(1)
					return
				default:
					ch.violate("re-mint %s/%d: %s", w.ConsumerID, w.Epoch, rr)
					return
				}
				break
			}
		default:
			ch.violate("append to %s by %s: %s", w.StreamPath, run.ID, r)
			return
		}
	}

	pause(50 * time.Millisecond)

	// Done, acking the tail read.
	for {
		r, err := ch.c.doCallback(ctx, w, map[string]any{"epoch": w.Epoch, "done": true,
			"acks": []ack{{Stream: w.StreamPath, Offset: tail}}})
		if !ch.answered("done", r, err) {
			if !retry("done") {
				return
			}
			continue
		}
		var res doneResult
		if r.Status != http.StatusOK || r.decode(&res) != nil {
			ch.violate("done %s/%d: %s", w.ConsumerID, w.Epoch, r)
			return
		}
		ch.dones.Add(1)
		switch {
		case res.Released && res.EntityCleared:
			ch.doneCleared.Add(1)
		case !res.Released:
			// A retry of a done whose answer was lost, or a done after
			// the claim expired: idempotent, changes nothing.
			ch.doneStale.Add(1)
		default:
			ch.doneNotCleared.Add(1) // released, but the slot named another claim

		}
		return
	}
}

// quiescent reports whether every entity is idle with its sent messages
// acked and no claim is active.
func (ch *chaos) quiescent(t testing.TB) (bool, string) {
	r, err := ch.c.do(context.Background(), "GET", "/entities", "", nil)
	if err != nil || r.Status != http.StatusOK {
		return false, fmt.Sprintf("list entities: %v %v", r, err)
	}
	var list []entity
	if err := r.decode(&list); err != nil {
		return false, err.Error()
	}
	var busy []string
	for _, e := range list {
		if e.Status != "idle" || e.Dispatch.AckedOffset < e.Dispatch.LastSentOffset {
			busy = append(busy, fmt.Sprintf("%s %s acked %s sent %s", e.URL, e.Status, e.Dispatch.AckedOffset, e.Dispatch.LastSentOffset))
		}
	}
	sort.Strings(busy)
	if len(busy) > 0 {
		return false, fmt.Sprintf("%d entities not done: %s", len(busy), strings.Join(busy, "; "))
	}
	return true, ""
}
