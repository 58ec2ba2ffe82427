package e2e

// No lost messages (SPEC §6) with clients that behave like Electric's runner
// runtime (SPEC §7, reference/electric-runtime.md): three runtime models,
// one per runner id, each reading its wake stream with long-poll, claiming
// exactly once per wake event it reads (and never otherwise), handling one
// wake at a time, fetching its write token once through the callback claim
// request, appending one reply per inbox message, acking what it read, and
// never retrying a failed claim, callback or append. Messages are sent in
// concurrent bursts to 21 entities (some pinned to a runner, some to any
// runner); after each wave of bursts the traffic stops until everything is
// answered (bounded by lease + sweep + 5 s without progress), so every wave
// ends like a run: a wake stranded by a spent event is seen there instead of
// being rescued by the next burst's events. One variant SIGKILLs the server
// halfway, while a handler holds its write token, and restarts it on the
// same address and database. At the end every message must have its reply
// (duplicates are reported), no wake may be left queued, and every entity
// must be idle with its messages acked and no claim active.

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// nolostConfig is the size of one run.
type nolostConfig struct {
	entities int
	messages int
	burst    int           // messages a burst sends
	wave     int           // bursts between two waits for the end state
	pause    time.Duration // between bursts of one wave
	kill     bool          // SIGKILL and restart the server after half the messages
	settle   time.Duration // hard cap on one wait for the end state
}

const (
	nolostRunners = 3
	nolostLease   = 5 * time.Second
	nolostSweep   = time.Second
	// nolostHandler is the handler's own work per wake (an agent thinks
	// before it answers): it keeps claims live while sends arrive.
	nolostHandler = 50 * time.Millisecond
	// nolostSlowHandler is the work of a wake claimed just before the
	// kill: the handler still holds its write token when the server is
	// back, and appends with it.
	nolostSlowHandler = 1500 * time.Millisecond
)

// TestNoMessageLost: 200 messages in 8 bursts of 25, each burst a wave.
func TestNoMessageLost(t *testing.T) {
	t.Parallel()
	// The variants run one after the other: each server's pool (32
	// connections under this load) beside the package's other tests.
	for _, kill := range []bool{false, true} {
		name := "no_fault"
		if kill {
			name = "server_killed"
		}
		t.Run(name, func(t *testing.T) {
			runNoMessageLost(t, nolostConfig{entities: 21, messages: 200, burst: 25, wave: 1, pause: 50 * time.Millisecond,
				kill: kill, settle: 40 * time.Second})
		})
	}
}

// TestNoMessageLostLong is the same with 10,000 messages (400 bursts, each
// a wave). It runs when
// PULLWAKE_LONG_TESTS=1 or when -run names it (its name contains "Long").
func TestNoMessageLostLong(t *testing.T) {
	run := ""
	if f := flag.Lookup("test.run"); f != nil {
		run = f.Value.String()
	}
	if os.Getenv("PULLWAKE_LONG_TESTS") != "1" && !strings.Contains(run, "Long") {
		t.Skip("10,000-message run: set PULLWAKE_LONG_TESTS=1 or use -run TestNoMessageLostLong")
	}
	t.Parallel()
	for _, kill := range []bool{false, true} {
		name := "no_fault"
		if kill {
			name = "server_killed"
		}
		t.Run(name, func(t *testing.T) {
			runNoMessageLost(t, nolostConfig{entities: 21, messages: 10000, burst: 25, wave: 1, pause: 50 * time.Millisecond,
				kill: kill, settle: 5 * time.Minute})
		})
	}
}

// ---- the runtime model ----

// replyLog records, per message payload id, when its first reply append was
// answered 200 (test instrumentation, invisible to the server).
type replyLog struct {
	mu    sync.Mutex
	first map[string]time.Time
	n     atomic.Int64 // successful reply appends, duplicates included
}

func (l *replyLog) add(pid string) {
	l.n.Add(1)
	l.mu.Lock()
	defer l.mu.Unlock()
	if _, ok := l.first[pid]; !ok {
		l.first[pid] = time.Now()
	}
}

func (l *replyLog) at(pid string) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	at, ok := l.first[pid]
	return at, ok
}

// runtimeModel is one runtime process serving one runner id. Unlike
// runtimeSim it never stops on an error: a failed call is counted and the
// wake's handling ends there, as in the runtime.
type runtimeModel struct {
	sim     *runtimeSim // registration, runner token, requests, main-stream reads
	replies *replyLog
	slow    *atomic.Bool // think nolostSlowHandler instead of nolostHandler
	working atomic.Int64 // wakes with a write token in hand (0 or 1)

	mu      sync.Mutex
	offset  string     // wake stream offset read up to
	current *modelWake // the wake in hand, for callback heartbeats
	lastErr map[string]string

	events, claimed, skipped, otherEntity, wakesDone, appended, notReleased atomic.Int64
	failClaim, failToken, failRead, failAppend, failDone                    atomic.Int64
	failCallbackHB, failRunnerHB, wakeReadErrors                            atomic.Int64
}

// modelWake is what the runtime keeps of a claimed wake.
type modelWake struct {
	callback   string
	claimToken string
	epoch      int64
}

func newRuntimeModel(t testing.TB, base, id string, replies *replyLog, slow *atomic.Bool) *runtimeModel {
	t.Helper()
	sim := registerSim(t, base, id, http.StatusCreated)
	return &runtimeModel{sim: sim, replies: replies, slow: slow, offset: sim.offset, lastErr: map[string]string{}}
}

func (m *runtimeModel) note(kind string, counter *atomic.Int64, r *response, err error) {
	counter.Add(1)
	msg := ""
	switch {
	case err != nil:
		msg = err.Error()
	case r != nil:
		msg = r.String()
	}
	if len(msg) > 300 {
		msg = msg[:300] + "..."
	}
	m.mu.Lock()
	m.lastErr[kind] = msg
	m.mu.Unlock()
}

func (m *runtimeModel) readOffset() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.offset
}

func (m *runtimeModel) setCurrent(w *modelWake) {
	m.mu.Lock()
	m.current = w
	m.mu.Unlock()
}

func sleepCtx(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// start runs the wake-stream loop and the heartbeats until stop is called.
func (m *runtimeModel) start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); m.run(ctx) }()
	go func() { defer wg.Done(); m.heartbeats(ctx) }()
	var once sync.Once
	return func() { once.Do(func() { cancel(); wg.Wait() }) }
}

// heartbeats sends, every second, the runner heartbeat with the wake stream
// offset read up to and, while a wake is in hand, the callback heartbeat.
func (m *runtimeModel) heartbeats(ctx context.Context) {
	s := m.sim
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		body := fmt.Sprintf(`{"lease_ms":30000,"wake_stream_offset":%q,"diagnostics":{"running":true,"events_received":%d}}`,
			m.readOffset(), m.events.Load())
		r, err := s.request(ctx, "POST", s.base+"/_electric/runners/"+s.runnerID+"/heartbeat", []byte(body), s.auth()...)
		if ctx.Err() != nil {
			return
		}
		if err != nil || r.Status != http.StatusOK {
			m.note("runner heartbeat", &m.failRunnerHB, r, err)
		}
		m.mu.Lock()
		w := m.current
		m.mu.Unlock()
		if w != nil {
			r, err := s.request(ctx, "POST", w.callback, []byte(fmt.Sprintf(`{"epoch":%d}`, w.epoch)),
				"Authorization", "Bearer "+w.claimToken, "electric-runner-id", s.runnerID)
			if ctx.Err() != nil {
				return
			}
			if err != nil || r.Status != http.StatusOK {
				m.note("callback heartbeat", &m.failCallbackHB, r, err)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

// run reads the wake stream (catch-up, then long-poll) and handles each wake
// event in turn; a failed read is retried from the same offset after a
// short pause (the runtime's stream client reconnects).
func (m *runtimeModel) run(ctx context.Context) {
	s := m.sim
	wakeURL := s.base + "/runners/" + s.runnerID + "/wake"
	live := ""
	for ctx.Err() == nil {
		offset := m.readOffset()
		r, err := s.request(ctx, "GET", wakeURL+"?offset="+offset+live, nil, s.auth()...)
		if ctx.Err() != nil {
			return
		}
		if err != nil || (r.Status != http.StatusOK && r.Status != http.StatusNoContent) {
			m.note("wake stream read", &m.wakeReadErrors, r, err)
			sleepCtx(ctx, 200*time.Millisecond)
			continue
		}
		var events []json.RawMessage
		if r.Status == http.StatusOK && len(bytes.TrimSpace(r.Body)) > 0 {
			if err := json.Unmarshal(r.Body, &events); err != nil {
				m.note("wake stream read", &m.wakeReadErrors, r, err)
				sleepCtx(ctx, 200*time.Millisecond)
				continue
			}
		}
		for _, ev := range events {
			var e struct {
				Type   string `json:"type"`
				Stream string `json:"stream"`
			}
			if json.Unmarshal(ev, &e) != nil || e.Type != "wake" {
				continue
			}
			m.events.Add(1)
			m.handle(ctx, ev, e.Stream)
			if ctx.Err() != nil {
				return
			}
		}
		if next := r.Header.Get("Stream-Next-Offset"); next != "" {
			m.mu.Lock()
			m.offset = next
			m.mu.Unlock()
		}
		if r.Header.Get("Stream-Up-To-Date") == "true" || r.Status == http.StatusNoContent {
			live = "&live=long-poll"
		}
	}
}

// handle posts the event verbatim to claim and, when it gets a wake,
// processes it once: token, read, one reply per inbox message, done.
func (m *runtimeModel) handle(ctx context.Context, event []byte, eventStream string) {
	s := m.sim
	r, err := s.request(ctx, "POST", s.base+"/_electric/runners/"+s.runnerID+"/claim", event, s.auth()...)
	if ctx.Err() != nil {
		return
	}
	switch {
	case err != nil:
		m.note("claim", &m.failClaim, r, err)
		return
	case r.Status == http.StatusNoContent,
		r.Status == http.StatusConflict && (bytes.Contains(r.Body, []byte("ALREADY_CLAIMED")) || bytes.Contains(r.Body, []byte("NO_PENDING_WORK"))):
		m.skipped.Add(1)
		return
	case r.Status != http.StatusOK:
		m.note("claim", &m.failClaim, r, err)
		return
	}
	var n runtimeNotification // only what the runtime reads
	if err := r.decode(&n); err != nil || n.Entity.Type == "" || n.Entity.URL == "" || n.WakeID == "" ||
		n.StreamPath == "" || n.ClaimToken == "" || n.Callback == "" {
		// The runtime ignores such a wake ("missing entity type").
		m.note("claim", &m.failClaim, r, err)
		return
	}
	m.claimed.Add(1)
	if n.StreamPath != eventStream {
		m.otherEntity.Add(1)
	}
	offset := "-1"
	for _, st := range n.Streams {
		if st.Path == n.StreamPath {
			offset = st.Offset
		}
	}
	m.setCurrent(&modelWake{callback: n.Callback, claimToken: n.ClaimToken, epoch: n.Epoch})
	defer m.setCurrent(nil)
	claimHdr := []string{"Authorization", "Bearer " + n.ClaimToken, "electric-runner-id", s.runnerID}

	// The write token, once, through the callback claim request.
	cr, err := s.request(ctx, "POST", n.Callback, []byte(fmt.Sprintf(`{"epoch":%d,"wakeId":%q}`, n.Epoch, n.WakeID)), claimHdr...)
	if ctx.Err() != nil {
		return
	}
	var ans struct {
		WriteToken string `json:"writeToken"`
	}
	if err != nil || cr.Status != http.StatusOK || cr.decode(&ans) != nil || ans.WriteToken == "" {
		m.note("write token", &m.failToken, cr, err)
		return
	}
	m.working.Add(1)
	defer m.working.Add(-1)
	if m.slow.Load() {
		sleepCtx(ctx, nolostSlowHandler)
	} else {
		sleepCtx(ctx, nolostHandler)
	}

	// Read the main stream from the start, as the runtime does at every
	// wake, and keep the events placed after the notification's offset by
	// their headers.offset (an event without one counts as new); reply to
	// every inbox message, read again until no new inbox message came. A
	// failed append ends the handler, and the runtime still posts done
	// with the offset it read (a failed handler counts as handled): a
	// refused write token loses the message unless pullwake takes the
	// token.
	claimOffset, from := offset, "-1"
	seq := 0
read:
	for {
		msgs, next, err := s.readAll(ctx, n.StreamPath, from)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			m.note("main stream read", &m.failRead, nil, err)
			return
		}
		offset, from = next, next
		replied := 0
		for _, msg := range msgs {
			var ev struct {
				Type  string `json:"type"`
				Key   string `json:"key"`
				Value struct {
					Payload struct {
						ID string `json:"id"`
					} `json:"payload"`
				} `json:"value"`
				Headers struct {
					Offset string `json:"offset"`
				} `json:"headers"`
			}
			if json.Unmarshal(msg, &ev) != nil || ev.Type != "inbox" {
				continue
			}
			if claimOffset != "-1" && ev.Headers.Offset != "" && ev.Headers.Offset <= claimOffset {
				continue // handled in an earlier session: the claim acked it
			}
			reply := fmt.Sprintf(`[{"type":"reply","key":"reply-%s","value":{"text":"ok","inbox_key":%q,"payload_id":%q},"headers":{"txid":"tx-%d-%d","from":%q,"operation":"insert"}}]`,
				ev.Key, ev.Key, ev.Value.Payload.ID, n.Epoch, seq, n.Entity.URL)
			ar, err := s.request(ctx, "POST", s.base+n.StreamPath, []byte(reply),
				"Authorization", "Bearer "+ans.WriteToken, "Producer-Id", "entity-"+n.Entity.URL,
				"Producer-Epoch", fmt.Sprint(n.Epoch), "Producer-Seq", fmt.Sprint(seq))
			if ctx.Err() != nil {
				return
			}
			if err != nil || ar.Status != http.StatusOK {
				m.note("append", &m.failAppend, ar, err)
				break read
			}
			m.appended.Add(1)
			m.replies.add(ev.Value.Payload.ID)
			seq++
			replied++
		}
		if replied == 0 {
			break
		}
	}
	done := fmt.Sprintf(`{"epoch":%d,"acks":[{"path":%q,"offset":%q}],"done":true}`, n.Epoch, n.StreamPath, offset)
	dr, err := s.request(ctx, "POST", n.Callback, []byte(done), claimHdr...)
	if ctx.Err() != nil {
		return
	}
	if err != nil || dr.Status != http.StatusOK {
		m.note("done", &m.failDone, dr, err)
		return
	}
	if !bytes.Contains(dr.Body, []byte(`"released":true`)) {
		m.note("done not released", &m.notReleased, dr, nil)
	}
	m.wakesDone.Add(1)
}

func (m *runtimeModel) String() string {
	m.mu.Lock()
	var errs []string
	for k, v := range m.lastErr {
		errs = append(errs, fmt.Sprintf("\n      last %s error: %s", k, v))
	}
	m.mu.Unlock()
	sort.Strings(errs)
	return fmt.Sprintf("runtime %s: events %d, claimed %d (%d for another stream than the event's), skipped(204/409) %d, "+
		"wakes done %d, replies %d, done not released %d; failed: claim %d, write token %d, main read %d, append %d, done %d, "+
		"callback heartbeat %d, runner heartbeat %d, wake stream reads %d%s",
		m.sim.runnerID, m.events.Load(), m.claimed.Load(), m.otherEntity.Load(), m.skipped.Load(),
		m.wakesDone.Load(), m.appended.Load(), m.notReleased.Load(), m.failClaim.Load(), m.failToken.Load(),
		m.failRead.Load(), m.failAppend.Load(), m.failDone.Load(), m.failCallbackHB.Load(), m.failRunnerHB.Load(),
		m.wakeReadErrors.Load(), strings.Join(errs, ""))
}

// ---- the driver ----

// sentMsg is one message the test sent and got 202 for.
type sentMsg struct {
	pid        string
	url        string
	offset     string
	at         time.Time
	beforeKill bool
}

type nolostRun struct {
	t      *testing.T
	cfg    nolostConfig
	db     *testdb.DB
	urls   []string
	pin    map[string]string // url -> runner id ("" = any runner)
	models []*runtimeModel
	log    *replyLog

	cmu    sync.Mutex
	c      *client // replaced after the restart (fresh connections)
	sentMu sync.Mutex
	sent   []sentMsg
	killed bool
	nextID atomic.Int64

	hotBursts, hotActive atomic.Int64
	slow                 atomic.Bool
}

func (r *nolostRun) client() *client {
	r.cmu.Lock()
	defer r.cmu.Unlock()
	return r.c
}

// send posts one message with a unique payload id and records it.
func (r *nolostRun) send(url string) {
	i := r.nextID.Add(1)
	pid := fmt.Sprintf("m-%05d", i)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	resp, err := r.client().do(ctx, "POST", "/entities"+url, "", map[string]any{"payload": map[string]any{"id": pid, "text": "hello " + pid}})
	var out struct {
		Offset string `json:"offset"`
	}
	if err != nil || resp.Status != http.StatusAccepted || resp.decode(&out) != nil || out.Offset == "" {
		r.t.Errorf("send %s to %s: %v %v", pid, url, resp, err)
		return
	}
	r.sentMu.Lock()
	r.sent = append(r.sent, sentMsg{pid: pid, url: url, offset: out.Offset, at: time.Now(), beforeKill: !r.killed})
	r.sentMu.Unlock()
}

// activeClaim reports whether url's dispatch names an active claim.
func (r *nolostRun) activeClaim(url string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := r.client().do(ctx, "GET", "/entities"+url, "", nil)
	if err != nil || resp.Status != http.StatusOK {
		return false
	}
	var e entity
	return resp.decode(&e) == nil && e.Dispatch.ActiveConsumerID != nil
}

// burst sends n messages: one to a hot entity, then (once its claim is
// active, or after 1 s) all at once: four more to it, four to an entity
// pinned to each runner and four to one any runner may serve (those are
// likely idle: the first send queues a wake the others race with), and the
// rest to random entities.
func (r *nolostRun) burst(b, n int) {
	hot := r.urls[(b*8)%len(r.urls)]
	byRunner := map[string][]string{} // runner id ("" = any) -> entities but hot
	for _, u := range r.urls {
		if u != hot {
			byRunner[r.pin[u]] = append(byRunner[r.pin[u]], u)
		}
	}
	targets := []string{hot, hot, hot, hot}
	groups := []string{""}
	for _, m := range r.models {
		groups = append(groups, m.sim.runnerID)
	}
	for _, g := range groups {
		if us := byRunner[g]; len(us) > 0 {
			u := us[b%len(us)]
			targets = append(targets, u, u, u, u)
		}
	}
	for len(targets) < n-1 {
		targets = append(targets, r.urls[rand.IntN(len(r.urls))])
	}
	targets = targets[:n-1]

	r.send(hot)
	r.hotBursts.Add(1)
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if r.activeClaim(hot) {
			r.hotActive.Add(1)
			break
		}
	}
	var wg sync.WaitGroup
	for _, url := range targets {
		wg.Add(1)
		go func() { defer wg.Done(); r.send(url) }()
	}
	wg.Wait()
}

func (r *nolostRun) sqlCount(q string) (int, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var n int
	err := r.db.Pool.QueryRow(ctx, q).Scan(&n)
	return n, err
}

// sqlRows renders the rows of q, one line each.
func (r *nolostRun) sqlRows(q string) []string {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	rows, err := r.db.Pool.Query(ctx, q)
	if err != nil {
		return []string{"query: " + err.Error()}
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			return append(out, "row: "+err.Error())
		}
		parts := make([]string, len(vals))
		for i, v := range vals {
			if tm, ok := v.(time.Time); ok {
				parts[i] = tm.Format("15:04:05.000")
			} else {
				parts[i] = fmt.Sprint(v)
			}
		}
		out = append(out, strings.Join(parts, " | "))
	}
	if err := rows.Err(); err != nil {
		out = append(out, "rows: "+err.Error())
	}
	return out
}

// lastSent is the newest send offset per entity.
func (r *nolostRun) lastSent() map[string]string {
	r.sentMu.Lock()
	defer r.sentMu.Unlock()
	last := map[string]string{}
	for _, s := range r.sent {
		if s.offset > last[s.url] {
			last[s.url] = s.offset
		}
	}
	return last
}

// settled reports whether the server has nothing left to do: no queued wake,
// no active claim, every entity idle with its last sent message acked.
func (r *nolostRun) settled() (bool, string) {
	if n, err := r.sqlCount(`SELECT count(*) FROM wakes WHERE status = 'queued'`); err != nil || n != 0 {
		return false, fmt.Sprintf("%d queued wakes (%v)", n, err)
	}
	if n, err := r.sqlCount(`SELECT count(*) FROM consumer_claims WHERE status = 'active'`); err != nil || n != 0 {
		return false, fmt.Sprintf("%d active claims (%v)", n, err)
	}
	last := r.lastSent()
	for _, u := range r.urls {
		e, err := r.getEntity(u)
		if err != nil {
			return false, err.Error()
		}
		d := e.Dispatch
		if e.Status != "idle" || d.ActiveConsumerID != nil || d.OutstandingWakeID != nil || d.AckedOffset < last[u] {
			return false, fmt.Sprintf("%s: %s", u, describeEntity(e))
		}
	}
	return true, ""
}

func (r *nolostRun) getEntity(u string) (entity, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var e entity
	resp, err := r.client().do(ctx, "GET", "/entities"+u, "", nil)
	if err != nil || resp.Status != http.StatusOK {
		return e, fmt.Errorf("get %s: %v %v", u, resp, err)
	}
	return e, resp.decode(&e)
}

func describeEntity(e entity) string {
	d := e.Dispatch
	str := func(p *string) string {
		if p == nil {
			return "-"
		}
		return *p
	}
	ep := "-"
	if d.ActiveEpoch != nil {
		ep = fmt.Sprint(*d.ActiveEpoch)
	}
	return fmt.Sprintf("status %s, active claim %s/%s, outstanding wake %s, acked %s, last sent %s",
		e.Status, str(d.ActiveConsumerID), ep, str(d.OutstandingWakeID), d.AckedOffset, d.LastSentOffset)
}

// progress is a figure that grows while the runtimes work.
func (r *nolostRun) progress() int64 {
	var p int64
	for _, m := range r.models {
		p += m.claimed.Load() + m.skipped.Load() + m.appended.Load() + m.wakesDone.Load()
	}
	return p
}

// waitSettled polls until settled. The wait ends lease + sweep + 5 s after
// the runtimes last made progress, and at cfg.settle at the latest; it
// returns how long it waited and the last reason it was not settled ("" when
// settled).
func (r *nolostRun) waitSettled() (time.Duration, string) {
	start := time.Now()
	quiet := nolostLease + nolostSweep + 5*time.Second
	deadline := start.Add(quiet)
	hard := start.Add(r.cfg.settle)
	last := r.progress()
	for {
		ok, why := r.settled()
		if ok {
			return time.Since(start), ""
		}
		now := time.Now()
		if p := r.progress(); p != last {
			last = p
			deadline = now.Add(quiet)
		}
		if now.After(deadline) || now.After(hard) {
			return time.Since(start), why
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// streamState is what an entity's main stream holds at the end.
type streamState struct {
	inboxOf map[string]string // payload id -> inbox key
	replies map[string]int    // inbox key -> replies
	err     error
}

func (r *nolostRun) readMain(u string) streamState {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	st := streamState{inboxOf: map[string]string{}, replies: map[string]int{}}
	msgs, _, err := r.client().readStream(ctx, "/v1/stream"+u+"/main", "-1")
	if err != nil {
		st.err = err
		return st
	}
	for _, m := range msgs {
		var ev struct {
			Type  string `json:"type"`
			Key   string `json:"key"`
			Value struct {
				InboxKey string `json:"inbox_key"`
				Payload  struct {
					ID string `json:"id"`
				} `json:"payload"`
			} `json:"value"`
		}
		if json.Unmarshal(m, &ev) != nil {
			continue
		}
		switch ev.Type {
		case "inbox":
			st.inboxOf[ev.Value.Payload.ID] = ev.Key
		case "reply":
			k := ev.Value.InboxKey
			if k == "" {
				k = strings.TrimPrefix(ev.Key, "reply-")
			}
			st.replies[k]++
		}
	}
	return st
}

func runNoMessageLost(t *testing.T, cfg nolostConfig) {
	began := time.Now()
	db := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: db.URL, AdminToken: e2eAdmin, SweepInterval: nolostSweep,
		DefaultLease: nolostLease, LongPoll: 2 * time.Second})
	r := &nolostRun{t: t, cfg: cfg, db: db, c: srv.Client(), pin: map[string]string{},
		log: &replyLog{first: map[string]time.Time{}}}

	for i := range nolostRunners {
		r.models = append(r.models, newRuntimeModel(t, srv.URL(), fmt.Sprintf("nl-%d", i), r.log, &r.slow))
	}
	var stops []func()
	for _, m := range r.models {
		stops = append(stops, m.start())
	}
	stopModels := func() {
		for _, stop := range stops {
			stop()
		}
	}
	t.Cleanup(stopModels)

	// 4 of every 7 entities pinned to a runner, the others to any runner.
	for i := range cfg.entities {
		u := fmt.Sprintf("/chat/nl-%02d", i)
		body := map[string]any{}
		if i%7 < 4 {
			r.pin[u] = r.models[i%nolostRunners].sim.runnerID
			body["runner_id"] = r.pin[u]
		}
		r.c.must(t, "PUT", "/entities"+u, "", body, http.StatusCreated)
		r.urls = append(r.urls, u)
	}

	nBursts := (cfg.messages + cfg.burst - 1) / cfg.burst
	var killAt, restartAt time.Time
	liveAtKill := map[string]bool{} // entity url -> had an active claim at the kill
	repliedBeforeKill := map[string]bool{}
	type stall struct {
		wave    int
		why     string
		pending []string // payload ids without a reply when the wait ended
		queued  []string // the queued wakes then
	}
	var stalls []stall
	settledWaves := 0
	var waited time.Duration
	var notSettled string
	sendStart := time.Now()
	for b := range nBursts {
		n := min(cfg.burst, cfg.messages-b*cfg.burst)
		killNow := cfg.kill && b == nBursts/2-1
		// The wakes claimed around the kill take longer: their handlers
		// hold write tokens across the restart.
		r.slow.Store(killNow)
		r.burst(b, n)
		if killNow {
			// Kill while a handler holds a write token (wait briefly for one).
			for deadline := time.Now().Add(3 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				working := int64(0)
				for _, m := range r.models {
					working += m.working.Load()
				}
				if working > 0 {
					break
				}
			}
			killAt = time.Now()
			srv.Kill()
			// The server is gone: the database holds the state at the kill.
			for _, row := range r.sqlRows(`SELECT entity_url FROM consumer_claims WHERE status = 'active' AND lease_expires_at > now()`) {
				liveAtKill[row] = true
			}
			r.log.mu.Lock()
			for pid, at := range r.log.first {
				if at.Before(killAt) {
					repliedBeforeKill[pid] = true
				}
			}
			r.log.mu.Unlock()
			srv.Start()
			restartAt = time.Now()
			r.cmu.Lock()
			r.c = srv.Client() // fresh connections
			r.cmu.Unlock()
			r.sentMu.Lock()
			r.killed = true
			r.sentMu.Unlock()
			r.slow.Store(false)
			t.Logf("SIGKILL after %d messages; %d entities had a live claim; server back in %s",
				len(r.sent), len(liveAtKill), restartAt.Sub(killAt).Round(time.Millisecond))
		}
		// After each wave, the traffic stops until everything is answered:
		// every wave's end is an end of the run. (After two waves that did
		// not settle, only the last wait remains: the run has failed, and
		// goes on to count what is lost.)
		if b == nBursts-1 || ((b+1)%cfg.wave == 0 && len(stalls) < 2) {
			waited, notSettled = r.waitSettled()
			settledWaves++
			if notSettled != "" && b != nBursts-1 {
				st := stall{wave: b / cfg.wave, why: notSettled,
					queued: r.sqlRows(`SELECT wake_id, entity_url, coalesce(runner_id, 'any'), updated_at FROM wakes WHERE status = 'queued' ORDER BY updated_at LIMIT 20`)}
				r.sentMu.Lock()
				for _, m := range r.sent {
					if _, ok := r.log.at(m.pid); !ok {
						st.pending = append(st.pending, m.pid)
					}
				}
				r.sentMu.Unlock()
				stalls = append(stalls, st)
				t.Errorf("wave %d (after %d messages) not settled within lease+sweep+5s of the last progress (waited %s): %s; %d messages without a reply",
					st.wave, len(r.sent), waited.Round(time.Millisecond), notSettled, len(st.pending))
			}
		}
		if (b+1)%cfg.wave != 0 {
			time.Sleep(cfg.pause)
		}
	}
	sendsTook := time.Since(sendStart)
	stopModels()

	// ---- the end state ----
	r.sentMu.Lock()
	sent := append([]sentMsg(nil), r.sent...)
	r.sentMu.Unlock()
	streams := map[string]streamState{}
	ents := map[string]entity{}
	for _, u := range r.urls {
		streams[u] = r.readMain(u)
		if streams[u].err != nil {
			t.Errorf("read %s: %v", u, streams[u].err)
		}
		e, err := r.getEntity(u)
		if err != nil {
			t.Errorf("%v", err)
		}
		ents[u] = e
	}
	type perEntity struct{ sent, replied, lost, dup int }
	per := map[string]*perEntity{}
	for _, u := range r.urls {
		per[u] = &perEntity{}
	}
	var lost []string
	noInbox, lostAcked, dups := 0, 0, 0
	for _, s := range sent {
		st, pe := streams[s.url], per[s.url]
		pe.sent++
		key, ok := st.inboxOf[s.pid]
		if !ok {
			noInbox++
			pe.lost++
			lost = append(lost, fmt.Sprintf("%s to %s (send offset %s, before kill %v): no inbox event on the main stream", s.pid, s.url, s.offset, s.beforeKill))
			continue
		}
		switch n := st.replies[key]; {
		case n == 0:
			pe.lost++
			acked := ents[s.url].Dispatch.AckedOffset >= s.offset
			if acked {
				lostAcked++
			}
			_, replyLogged := r.log.at(s.pid)
			lost = append(lost, fmt.Sprintf("%s to %s (pinned to %q, send offset %s, sent %s after start, before kill %v, inbox %s): no reply; acked %v (entity acked %s); reply append answered 200: %v",
				s.pid, s.url, r.pin[s.url], s.offset, s.at.Sub(sendStart).Round(time.Millisecond), s.beforeKill, key, acked, ents[s.url].Dispatch.AckedOffset, replyLogged))
		default:
			pe.replied++
			if n > 1 {
				pe.dup += n - 1
				dups += n - 1
			}
		}
	}

	t.Logf("%d messages sent in %d bursts over %s to %d entities, %d waits for the end state; %d of %d hot bursts sent while the hot entity's claim was active",
		len(sent), nBursts, sendsTook.Round(time.Millisecond), len(r.urls), settledWaves, r.hotActive.Load(), r.hotBursts.Load())
	for _, st := range stalls {
		var later, never []string
		for _, pid := range st.pending {
			if _, ok := r.log.at(pid); ok {
				later = append(later, pid)
			} else {
				never = append(never, pid)
			}
		}
		t.Logf("wave %d stalled (%s): %d messages without a reply; answered later, once other traffic came: %v; never: %v; queued wakes then (wake | entity | runner | queued at): %s",
			st.wave, st.why, len(st.pending), later, never, strings.Join(st.queued, "; "))
	}
	t.Logf("replied %d, lost %d (no inbox event %d, acked without reply %d), duplicate replies %d (%d reply appends answered 200); waited %s for the end state",
		len(sent)-len(lost), len(lost), noInbox, lostAcked, dups, r.log.n.Load(), waited.Round(time.Millisecond))
	if dups > 0 && !cfg.kill {
		// Without a fault every message is answered once: a session is
		// handed only what came after the ack (headers.offset).
		t.Errorf("%d duplicate replies without a fault", dups)
	} else if dups > 0 {
		t.Logf("duplicate replies (allowed after a kill, reported): %d", dups)
		for _, u := range r.urls {
			if per[u].dup > 0 {
				t.Logf("  %s: %d duplicate replies", u, per[u].dup)
			}
		}
	}
	if len(sent) != cfg.messages {
		t.Errorf("%d of %d sends got 202", len(sent), cfg.messages)
	}
	if notSettled != "" {
		t.Errorf("not settled at the end within lease+sweep+5s of the last progress (waited %s): %s", waited.Round(time.Millisecond), notSettled)
	}
	if len(lost) > 0 {
		t.Errorf("%d of %d messages lost (no reply on the main stream)", len(lost), len(sent))
		for i, l := range lost {
			if i == 60 {
				t.Logf("  ... and %d more", len(lost)-i)
				break
			}
			t.Logf("  lost: %s", l)
		}
	}

	// No queued wake, no active claim, every entity idle and acked.
	if n, err := r.sqlCount(`SELECT count(*) FROM wakes WHERE status = 'queued'`); err != nil || n != 0 {
		t.Errorf("SELECT count(*) FROM wakes WHERE status='queued': %d (%v), want 0", n, err)
	}
	if n, err := r.sqlCount(`SELECT count(*) FROM consumer_claims WHERE status = 'active'`); err != nil || n != 0 {
		t.Errorf("active claims: %d (%v), want 0", n, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	if resp, err := r.client().do(ctx, "GET", "/_electric/claims?status=active", "", nil); err != nil || resp.Status != http.StatusOK {
		t.Errorf("GET /_electric/claims?status=active: %v %v", resp, err)
	} else if bytes.Contains(resp.Body, []byte("consumer_id")) {
		t.Errorf("GET /_electric/claims?status=active lists claims: %s", resp.Body)
	}
	cancel()
	last := r.lastSent()
	for _, u := range r.urls {
		e, d := ents[u], ents[u].Dispatch
		if e.Status != "idle" || d.ActiveConsumerID != nil || d.OutstandingWakeID != nil || d.AckedOffset < last[u] {
			t.Errorf("%s not settled: %s; newest message sent at %s", u, describeEntity(e), last[u])
		}
	}

	// After the restart: messages sent before the kill to an entity whose
	// claim was live, and not answered yet, are answered within lease + 5 s.
	if cfg.kill {
		bound := nolostLease + 5*time.Second
		var worst time.Duration
		var late []string
		checked, unanswered := 0, 0
		for _, s := range sent {
			if !s.beforeKill || repliedBeforeKill[s.pid] {
				continue
			}
			at, ok := r.log.at(s.pid)
			if !ok {
				unanswered++
			}
			if !liveAtKill[s.url] {
				if ok && at.Sub(restartAt) > worst {
					worst = at.Sub(restartAt)
				}
				continue
			}
			checked++
			switch {
			case !ok:
				late = append(late, fmt.Sprintf("%s to %s: never answered", s.pid, s.url))
			case at.Sub(restartAt) > bound:
				late = append(late, fmt.Sprintf("%s to %s: answered %s after the restart", s.pid, s.url, at.Sub(restartAt).Round(time.Millisecond)))
			}
			if ok && at.Sub(restartAt) > worst {
				worst = at.Sub(restartAt)
			}
		}
		t.Logf("after the restart: %d messages sent before the kill to entities with a live claim were unanswered at the kill; "+
			"slowest answer of any pre-kill message %s after the restart (bound for live claims %s); %d pre-kill messages never answered",
			checked, worst.Round(time.Millisecond), bound, unanswered)
		if checked == 0 {
			t.Logf("no pre-kill message of a live claim was unanswered at the kill: the bound was not exercised this run")
		}
		if len(late) > 0 {
			t.Errorf("%d of %d pre-kill messages of live claims not answered within %s of the restart", len(late), checked, bound)
			for i, l := range late {
				if i == 30 {
					t.Logf("  ... and %d more", len(late)-i)
					break
				}
				t.Logf("  late: %s", l)
			}
		}
	}

	for _, m := range r.models {
		t.Logf("%s", m)
	}
	if t.Failed() {
		for _, u := range r.urls {
			pe := per[u]
			pin := r.pin[u]
			if pin == "" {
				pin = "any"
			}
			t.Logf("  entity %s (runner %s): sent %d, replied %d, lost %d, dup %d; %s", u, pin, pe.sent, pe.replied, pe.lost, pe.dup, describeEntity(ents[u]))
		}
		t.Logf("queued wakes (wake_id | entity | runner | created):")
		for _, row := range r.sqlRows(`SELECT wake_id, entity_url, coalesce(runner_id, '-'), created_at FROM wakes WHERE status = 'queued' ORDER BY created_at LIMIT 40`) {
			t.Logf("  %s", row)
		}
		t.Logf("wakes by status: %s", strings.Join(r.sqlRows(`SELECT status, count(*) FROM wakes GROUP BY status ORDER BY status`), "; "))
		t.Logf("claims by status: %s", strings.Join(r.sqlRows(`SELECT status, count(*) FROM consumer_claims GROUP BY status ORDER BY status`), "; "))
	}
	t.Logf("run took %s", time.Since(began).Round(time.Millisecond))
}
