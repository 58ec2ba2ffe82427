package db_test

// Wake streams (00008_electric_runtime): every queued wake has exactly one
// event in the wake stream of each runner it targets, appended in the
// transaction that queued it, whichever function queued it.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"regexp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/testdb"
)

// wakeSetup gives t a database with runners registered through
// register_runner (so they have wake streams).
func wakeSetup(t *testing.T, runners ...string) *fixture {
	t.Helper()
	tdb := testdb.New(t)
	f := &fixture{t: t, ctx: t.Context(), pool: tdb.Pool, url: tdb.URL, published: true}
	for _, r := range runners {
		f.register(r)
	}
	return f
}

// register calls register_runner; it reports whether the runner was new.
func (f *fixture) register(id string) (created bool, stream, offset string) {
	f.t.Helper()
	err := f.pool.QueryRow(f.ctx, `SELECT created, wake_stream, wake_stream_offset FROM register_runner($1, NULL, NULL, $2)`,
		id, []byte("hash-"+id+fmt.Sprint(time.Now().UnixNano()))).Scan(&created, &stream, &offset)
	if err != nil {
		f.t.Fatalf("register %s: %v", id, err)
	}
	f.committed()
	return created, stream, offset
}

type wakeEvent struct {
	Type           string `json:"type"`
	SubscriptionID string `json:"subscription_id"`
	Stream         string `json:"stream"`
	Generation     int64  `json:"generation"`
	TS             int64  `json:"ts"`
	seq            int64
}

// publish publishes the wake-event log (pw_publish_wake_events) until no
// committed row is left: the fence may hold rows back while a transaction
// anywhere on the cluster is still open, so it calls again until then.
func (f *fixture) publish() {
	f.t.Helper()
	publishAll(f.t, f.ctx, f.pool)
}

// publishAll publishes the wake-event log of pool's database until no
// committed row is left (or fails t after a minute).
func publishAll(t testing.TB, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var left bool
		err := pool.QueryRow(ctx, `SELECT pw_publish_wake_events(100000) >= 0 AND EXISTS (SELECT 1 FROM wake_event_log)`).Scan(&left)
		if err != nil {
			t.Fatalf("publish wake events: %v", err)
		}
		if !left {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("wake-event log not published within a minute (a transaction held the fence)")
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// events publishes the wake-event log, then reads runner's wake stream, in
// order.
func (f *fixture) events(runner string) []wakeEvent {
	f.t.Helper()
	f.publish()
	rows, err := f.pool.Query(f.ctx, `SELECT m.seq, convert_from(m.data, 'UTF8') FROM stream_messages m
		WHERE m.path = '/v1/stream/runners/' || $1 || '/wake' ORDER BY m.seq`, runner)
	if err != nil {
		f.t.Fatal(err)
	}
	var out []wakeEvent
	for rows.Next() {
		var seq int64
		var data string
		if err := rows.Scan(&seq, &data); err != nil {
			f.t.Fatal(err)
		}
		var e wakeEvent
		if err := json.Unmarshal([]byte(data), &e); err != nil {
			f.t.Fatalf("event %q: %v", data, err)
		}
		e.seq = seq
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) wantEvents(runner string, want ...string) []wakeEvent {
	f.t.Helper()
	ev := f.events(runner)
	var got []string
	for _, e := range ev {
		if e.Type != "wake" || e.SubscriptionID != "runner:"+runner || e.TS <= 0 {
			f.t.Fatalf("%s: malformed event %+v", runner, e)
		}
		got = append(got, e.Stream)
	}
	if !slices.Equal(got, want) {
		f.t.Fatalf("%s: wake events for %v, want %v", runner, got, want)
	}
	return ev
}

// Every path that queues a wake appends its event: send, the re-queue of a
// release that leaves a sent message unacked, the re-queue of an expiry,
// and a wake set back to queued by a plain UPDATE from psql.
func TestWakeEventOnEveryQueueingPath(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1")
	f.exec(`SELECT * FROM spawn_entity('/chat/1', 'r1', $1)`, t0)
	main := "/v1/stream/chat/1/main"

	f.send("/chat/1", at(0))
	ev := f.wantEvents("r1", main)
	if ev[0].Generation != 1 || ev[0].TS != at(0).UnixMilli() {
		t.Fatalf("first event: %+v", ev[0])
	}
	// A second send while the wake is queued queues nothing: no event.
	f.send("/chat/1", at(time.Second))
	f.wantEvents("r1", main)

	// Release with only the first message acked: re-queued, one event,
	// generation 2 (the claim of that wake gets epoch 2).
	c := f.claim("r1", 30*sec, at(2*sec))
	f.send("/chat/1", at(3*sec)) // live lease: no wake, no event
	f.wantEvents("r1", main)
	r := f.release(c.ConsumerID, c.Epoch, []ack{{Stream: main, Offset: off(1)}}, at(4*sec))
	if r.QueuedWakeID == nil {
		t.Fatal("release with unacked messages queued no wake")
	}
	ev = f.wantEvents("r1", main, main)
	if ev[1].Generation != 2 {
		t.Fatalf("event of the re-queued wake: generation %d, want 2", ev[1].Generation)
	}

	// Expiry with unacked messages re-queues: one more event.
	c = f.claim("r1", 30*sec, at(5*sec))
	if c.Epoch != 2 {
		t.Fatalf("claim epoch %d, want the event's generation 2", c.Epoch)
	}
	if ex := f.expire(at(60 * sec)); len(ex) != 1 || ex[0].QueuedWakeID == nil {
		t.Fatalf("expire: %+v", ex)
	}
	ev = f.wantEvents("r1", main, main, main)
	if ev[2].Generation != 3 {
		t.Fatalf("event after expiry: generation %d, want 3", ev[2].Generation)
	}

	// A finished wake set back to queued by hand gets an event too.
	c = f.claim("r1", 30*sec, at(61*sec))
	f.release(c.ConsumerID, c.Epoch, []ack{{Stream: main, Offset: off(3)}}, at(62*sec))
	f.exec(`UPDATE wakes SET status = 'queued', finished_at = NULL WHERE wake_id = $1`, c.WakeID)
	ev = f.wantEvents("r1", main, main, main, main)
	if ev[3].Generation != 4 {
		t.Fatalf("event of the hand re-queued wake: generation %d, want 4", ev[3].Generation)
	}

	// One wake_events row per event, pointing at its message.
	var rows, matched int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*), count(m.seq) FROM wake_events v
		LEFT JOIN stream_messages m ON m.path = '/v1/stream/runners/r1/wake' AND m.seq = v.seq`).Scan(&rows, &matched); err != nil {
		t.Fatal(err)
	}
	if rows != 4 || matched != 4 {
		t.Fatalf("wake_events: %d rows, %d with their message; want 4, 4", rows, matched)
	}
}

// A wake for an entity with no runner goes to every enabled runner; a
// disabled runner gets it when enabled again, a runner registered later at
// registration; a wake queued and claimed in one transaction gets none.
func TestWakeEventTargets(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1", "r2", "r3")
	f.exec(`SELECT * FROM set_runner_admin_status('r3', 'disabled')`)
	f.spawn("/chat/any")
	f.exec(`SELECT * FROM spawn_entity('/chat/mine', 'r2', $1)`, t0)
	f.exec(`SELECT * FROM spawn_entity('/chat/later', 'r9', $1)`, t0)
	f.send("/chat/any", at(0))
	f.send("/chat/mine", at(sec))
	f.send("/chat/later", at(2*sec))

	anyS, mineS, laterS := "/v1/stream/chat/any/main", "/v1/stream/chat/mine/main", "/v1/stream/chat/later/main"
	f.wantEvents("r1", anyS)
	f.wantEvents("r2", anyS, mineS)
	f.wantEvents("r3")
	f.exec(`SELECT * FROM set_runner_admin_status('r3', 'enabled')`)
	f.wantEvents("r3", anyS)
	// Enabled again: a new event for each wake queued for it, since the
	// runner may have read (and spent) the ones it had.
	f.exec(`SELECT * FROM set_runner_admin_status('r3', 'enabled')`)
	f.wantEvents("r3", anyS, anyS)
	f.wantEvents("r1", anyS) // the others get none

	created, stream, offset := f.register("r9")
	if !created || stream != "/v1/stream/runners/r9/wake" || offset != off(0) {
		t.Fatalf("register r9: created %v stream %s offset %s", created, stream, offset)
	}
	f.wantEvents("r9", anyS, laterS)

	// Queued and claimed in one transaction: never claimable by another
	// runner, no event.
	f.spawn("/chat/quick")
	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(f.ctx, `SELECT * FROM send_to_entity('/chat/quick', '1', NULL, $1)`, at(3*sec)); err != nil {
		t.Fatal(err)
	}
	for range 3 { // the pick takes the oldest first
		if _, err := tx.Exec(f.ctx, `SELECT * FROM claim_next_wake('r1', 30000, $1)`, at(4*sec)); err != nil {
			t.Fatal(err)
		}
	}
	if err := tx.Commit(f.ctx); err != nil {
		t.Fatal(err)
	}
	var quick int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM wakes WHERE entity_url = '/chat/quick' AND status = 'claimed'`).Scan(&quick); err != nil || quick != 1 {
		t.Fatalf("quick wake not claimed in its transaction: %d %v", quick, err)
	}
	f.wantEvents("r1", anyS)
}

// A second registration of an id rotates its token and keeps its claims,
// admin status and wake stream; its offset is where the events of the
// wakes still queued for it start.
func TestRegisterRunnerRestart(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1")
	f.exec(`SELECT * FROM spawn_entity('/chat/1', 'r1', $1)`, t0)
	f.exec(`SELECT * FROM spawn_entity('/chat/2', 'r1', $1)`, t0)
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(sec))
	f.send("/chat/2", at(2*sec))
	f.exec(`SELECT * FROM set_runner_admin_status('r1', 'disabled')`)

	var before []byte
	if err := f.pool.QueryRow(f.ctx, `SELECT token_hash FROM runners WHERE id = 'r1'`).Scan(&before); err != nil {
		t.Fatal(err)
	}
	created, stream, offset := f.register("r1")
	if created || stream != "/v1/stream/runners/r1/wake" {
		t.Fatalf("restart: created %v stream %s", created, stream)
	}
	// Event 1 (chat/1) was claimed; event 2 (chat/2) is queued: read from 1.
	if offset != off(1) {
		t.Fatalf("wake_stream_offset %s, want %s", offset, off(1))
	}
	var after []byte
	var status string
	if err := f.pool.QueryRow(f.ctx, `SELECT token_hash, admin_status FROM runners WHERE id = 'r1'`).Scan(&after, &status); err != nil {
		t.Fatal(err)
	}
	if string(after) == string(before) || status != "disabled" {
		t.Fatalf("restart: token hash changed %v, admin status %s (want kept)", string(after) != string(before), status)
	}
	if cr := f.claimRow(c.ConsumerID, c.Epoch); cr.Status != "active" {
		t.Fatalf("claim after restart: %s", cr.Status)
	}
	// The restart writes the queued wake a new event (the runtime that
	// restarted may have read and spent the first).
	f.wantEvents("r1", "/v1/stream/chat/1/main", "/v1/stream/chat/2/main", "/v1/stream/chat/2/main")

	for _, bad := range []string{"", "a b", strings.Repeat("x", 129), "r/1"} {
		_, err := f.pool.Exec(f.ctx, `SELECT * FROM register_runner($1, NULL, NULL, '\x00')`, bad)
		f.wantCode(err, "PW008", "register "+bad)
	}
	// A non-JSON stream in the wake stream's place is refused.
	f.exec(`INSERT INTO streams (path, content_type) VALUES ('/v1/stream/runners/rx/wake', 'text/plain')`)
	_, err := f.pool.Exec(f.ctx, `SELECT * FROM register_runner('rx', NULL, NULL, '\x00')`)
	f.wantCode(err, "PW011", "register over a text stream")
}

// spawn_entity checks the URL itself, and takes the runner of the type's
// default dispatch policy when the spawn names none.
func TestSpawnEntityURLAndTypeRunner(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t)
	for _, bad := range []string{"chat/1", "/Chat/1", "/chat", "/chat/1/2", "/chat/", "/chat/a b",
		"/" + strings.Repeat("a", 65) + "/1", "/chat/" + strings.Repeat("a", 129), "/chat/1';--", "/1chat/x"} {
		_, err := f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity($1)`, bad)
		f.wantCode(err, "PW008", "spawn "+bad)
	}
	f.exec(`INSERT INTO entity_types (name, default_dispatch_policy) VALUES
		('chat', '{"targets": [{"type": "webhook", "url": "x"}, {"type": "runner", "runnerId": "r-7"}, {"type": "runner", "runnerId": "r-8"}]}'),
		('mail', '{"targets": [{"type": "runner", "runner_id": "r-5"}]}'),
		('odd', '{"targets": "nope"}')`)
	for url, want := range map[string]string{"/chat/1": "r-7", "/mail/1": "r-5", "/odd/1": "<nil>", "/none/1": "<nil>"} {
		var runner *string
		if err := f.pool.QueryRow(f.ctx, `SELECT runner_id FROM spawn_entity($1)`, url).Scan(&runner); err != nil {
			t.Fatalf("spawn %s: %v", url, err)
		}
		if str(runner) != want {
			t.Fatalf("spawn %s: runner %s, want %s", url, str(runner), want)
		}
	}
	var runner *string
	if err := f.pool.QueryRow(f.ctx, `SELECT runner_id FROM spawn_entity('/chat/2', 'mine')`).Scan(&runner); err != nil || str(runner) != "mine" {
		t.Fatalf("spawn naming its runner: %s %v", str(runner), err)
	}
}

// Inbox keys are msg-in-<unix ms>-<random> and sort by time.
func TestInboxKeysSortByTime(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t)
	f.spawn("/chat/1")
	times := []time.Time{at(0), at(999 * time.Millisecond), at(10 * sec), at(100 * sec)}
	for _, tm := range times {
		f.send("/chat/1", tm)
	}
	rows, err := f.pool.Query(f.ctx, `SELECT convert_from(data, 'UTF8')::jsonb ->> 'key' FROM stream_messages
		WHERE path = '/v1/stream/chat/1/main' ORDER BY seq`)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`^msg-in-(\d+)-[0-9a-f]{12}$`)
	for i, k := range keys {
		m := re.FindStringSubmatch(k)
		if m == nil || m[1] != fmt.Sprint(times[i].UnixMilli()) {
			t.Fatalf("key %q: want msg-in-%d-<random>", k, times[i].UnixMilli())
		}
	}
	if !slices.IsSorted(keys) {
		t.Fatalf("keys do not sort by time: %v", keys)
	}
}

// Retention deletes the events of finished wakes past the age, never the
// event of a queued wake nor a stream's newest message, and offsets go on.
func TestPurgeWakeEvents(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1")
	f.exec(`SELECT * FROM spawn_entity('/chat/1', 'r1', $1)`, t0)
	f.exec(`SELECT * FROM spawn_entity('/chat/2', 'r1', $1)`, t0)
	main1 := "/v1/stream/chat/1/main"
	for i := range 3 { // three finished wakes of chat/1
		f.send("/chat/1", at(time.Duration(i)*10*sec))
		c := f.claim("r1", 30*sec, at(time.Duration(i)*10*sec+sec))
		f.release(c.ConsumerID, c.Epoch, []ack{{Stream: main1, Offset: off(i + 1)}}, at(time.Duration(i)*10*sec+2*sec))
	}
	f.send("/chat/2", at(30*sec)) // queued
	f.wantEvents("r1", main1, main1, main1, "/v1/stream/chat/2/main")

	purge := func(age time.Duration, now time.Time) int {
		var n int
		if err := f.pool.QueryRow(f.ctx, `SELECT purge_wake_events($1, 1000, $2)`, age, now).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	if n := purge(time.Hour, at(time.Hour)); n != 0 {
		t.Fatalf("purged %d events younger than the age", n)
	}
	if n := purge(time.Hour, at(3*time.Hour)); n != 3 {
		t.Fatalf("purged %d, want the 3 events of finished wakes", n)
	}
	ev := f.wantEvents("r1", "/v1/stream/chat/2/main")
	if ev[0].seq != 4 {
		t.Fatalf("kept event at seq %d, want 4", ev[0].seq)
	}
	// The queued wake finishes; its event is the stream's newest: kept.
	c := f.claim("r1", 30*sec, at(3*time.Hour))
	f.release(c.ConsumerID, c.Epoch, []ack{{Stream: "/v1/stream/chat/2/main", Offset: off(1)}}, at(3*time.Hour))
	if n := purge(time.Hour, at(9*time.Hour)); n != 0 {
		t.Fatalf("purged the newest event of the stream (%d)", n)
	}
	f.send("/chat/1", at(9*time.Hour))
	if n := purge(time.Hour, at(20*time.Hour)); n != 1 {
		t.Fatalf("purged %d, want the one no longer newest", n)
	}
	ev = f.wantEvents("r1", main1)
	if ev[0].seq != 5 {
		t.Fatalf("new event at seq %d, want 5 (offsets never reused)", ev[0].seq)
	}
	_, err := f.pool.Exec(f.ctx, `SELECT purge_wake_events('-1 hour', 10)`)
	f.wantCode(err, "PW008", "negative age")
}

// Concurrent sends, claims (by event, as Electric's runtime claims, and
// by polling), releases, expiries and runner enable/disable from many
// sessions, with a publisher running: no deadlock, and at every check each
// queued wake has an event in the stream of each enabled runner it
// targets or one still to be published (its row in the log), and once the
// log is published none is missing; every event row has its
// message and every message of a wake stream its row. Then the wake-event
// rule: runners that claim exactly once per event they read, and never
// otherwise, drain every queued wake.
func TestWakeEventsUnderConcurrency(t *testing.T) {
	t.Parallel()
	runners := []string{"r1", "r2", "r3"}
	f := wakeSetup(t, runners...)
	ctx := f.ctx
	cfg, err := pgxpool.ParseConfig(f.url)
	if err != nil {
		t.Fatal(err)
	}
	const workers = 8
	cfg.MaxConns = workers + 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var urls []string
	for i := range 12 {
		u := fmt.Sprintf("/chat/%d", i)
		var runner *string
		if i%3 == 1 {
			runner = &runners[i%len(runners)]
		}
		if _, err := pool.Exec(ctx, `SELECT * FROM spawn_entity($1, $2)`, u, runner); err != nil {
			t.Fatal(err)
		}
		urls = append(urls, u)
	}

	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	ok := func(op string, err error, allowed ...string) bool {
		if err == nil {
			return true
		}
		if errors.Is(err, pgx.ErrNoRows) || slices.Contains(allowed, pgCode(err)) {
			return false
		}
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			fail("%s: %v (%s) %s", op, err, pe.Detail, pe.Where)
		} else {
			fail("%s: %v", op, err)
		}
		return false
	}
	type held struct {
		consumer string
		epoch    int64
		path     string
	}
	// Each event is read once, by one session, as a runtime reads its wake
	// stream: the cursors are the runners' read positions.
	var cursorMu sync.Mutex
	cursors := map[string]int64{}
	nextEvent := func(runner string) (stream string, ok bool) {
		cursorMu.Lock()
		defer cursorMu.Unlock()
		var seq int64
		err := pool.QueryRow(ctx, `SELECT m.seq, convert_from(m.data, 'UTF8')::jsonb->>'stream' FROM stream_messages m
			WHERE m.path = pw_wake_stream($1) AND m.seq > $2 ORDER BY m.seq LIMIT 1`, runner, cursors[runner]).Scan(&seq, &stream)
		if err != nil {
			return "", false
		}
		cursors[runner] = seq
		return stream, true
	}
	var ops atomic.Int64
	deadline := time.Now().Add(3 * time.Second)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			var mine []held
			for time.Now().Before(deadline) && ctx.Err() == nil {
				ops.Add(1)
				switch p := rng.IntN(100); {
				case p < 35:
					_, err := pool.Exec(ctx, `SELECT * FROM send_to_entity($1, '{"x":1}')`, urls[rng.IntN(len(urls))])
					ok("send", err)
				case p < 48:
					var h held
					err := pool.QueryRow(ctx, `SELECT consumer_id, epoch, stream_path FROM claim_next_wake($1, $2)`,
						runners[rng.IntN(len(runners))], 200+rng.IntN(800)).Scan(&h.consumer, &h.epoch, &h.path)
					if ok("claim", err, "PW005") {
						mine = append(mine, h)
					}
				case p < 60:
					runner := runners[rng.IntN(len(runners))]
					stream, found := nextEvent(runner)
					if !found {
						continue
					}
					var h held
					err := pool.QueryRow(ctx, `SELECT consumer_id, epoch, stream_path FROM claim_wake_for_event($1, $2, $3)`,
						runner, stream, 200+rng.IntN(800)).Scan(&h.consumer, &h.epoch, &h.path)
					if ok("event claim", err, "PW005") {
						mine = append(mine, h)
					}
				case p < 85:
					if len(mine) == 0 {
						continue
					}
					i := rng.IntN(len(mine))
					h := mine[i]
					mine = slices.Delete(mine, i, i+1)
					acks := "[]"
					if rng.IntN(2) == 0 { // ack everything sent so far
						var tail int64
						if err := pool.QueryRow(ctx, `SELECT tail_seq FROM streams WHERE path = $1`, h.path).Scan(&tail); ok("tail", err) {
							acks = fmt.Sprintf(`[{"stream": %q, "offset": "%016d"}]`, h.path, tail)
						}
					}
					_, err := pool.Exec(ctx, `SELECT * FROM release_claim($1, $2, $3)`, h.consumer, h.epoch, acks)
					ok("release", err)
				case p < 95:
					_, err := pool.Exec(ctx, `SELECT * FROM sweep_claims(now() + $1::interval)`,
						fmt.Sprintf("%d milliseconds", rng.IntN(1500)))
					ok("sweep", err)
				default:
					status := []string{"enabled", "disabled"}[rng.IntN(2)]
					_, err := pool.Exec(ctx, `SELECT * FROM set_runner_admin_status($1, $2)`, runners[rng.IntN(len(runners))], status)
					ok("admin status", err)
				}
			}
			for _, h := range mine { // the load ends: its runners finish their work
				_, err := pool.Exec(ctx, `SELECT * FROM release_claim($1, $2)`, h.consumer, h.epoch)
				ok("final release", err)
			}
		}()
	}
	// The publisher runs as a server's does, here back to back.
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for time.Now().Before(deadline) && ctx.Err() == nil {
			_, err := pool.Exec(ctx, `SELECT pw_publish_wake_events()`)
			ok("publish", err)
		}
	}()
	checks := 0
	for time.Now().Before(deadline) {
		checkWakeEvents(t, ctx, pool)
		checks++
	}
	wg.Wait()
	<-pubDone
	checkWakeEvents(t, ctx, pool)
	publishAll(t, ctx, pool)
	checkWakeEvents(t, ctx, pool)

	// Drain: every runner enabled, each claims exactly once per event it
	// reads (a claim is done at once, acking its whole stream), until no
	// event is unread. Every wake must have been claimed.
	for _, r := range runners {
		if _, err := pool.Exec(ctx, `SELECT * FROM set_runner_admin_status($1, 'enabled')`, r); err != nil {
			t.Fatal(err)
		}
	}
	var drained int
	for read := true; read; {
		read = false
		publishAll(t, ctx, pool) // the releases below may have logged events
		for _, r := range runners {
			stream, found := nextEvent(r)
			if !found {
				continue
			}
			read = true
			var consumer string
			var epoch int64
			err := pool.QueryRow(ctx, `SELECT consumer_id, epoch FROM claim_wake_for_event($1, $2, 30000)`, r, stream).Scan(&consumer, &epoch)
			if errors.Is(err, pgx.ErrNoRows) {
				continue
			}
			if err != nil {
				t.Fatal(err)
			}
			drained++
			if _, err := pool.Exec(ctx, `SELECT * FROM release_claim($1, $2,
				jsonb_build_array(jsonb_build_object('stream', $3::text, 'offset',
					(SELECT pw_offset(s.tail_seq) FROM streams s WHERE s.path = $3::text))))`, consumer, epoch, stream); err != nil {
				t.Fatal(err)
			}
		}
	}
	var left []string
	rows, err := pool.Query(ctx, `SELECT w.wake_id || ' of ' || w.entity_url || ' for ' || coalesce(w.runner_id, 'any runner')
		FROM wakes w WHERE w.status = 'queued' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	if left, err = pgx.CollectRows(rows, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if len(left) > 0 {
		t.Fatalf("after every event was read and claimed once, %d wakes are still queued: %v", len(left), left)
	}
	t.Logf("drain: %d wakes claimed from their events", drained)
	var events int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM wake_events`).Scan(&events); err != nil {
		t.Fatal(err)
	}
	t.Logf("%d operations, %d wake events, %d checks while running", ops.Load(), events, checks)
	if events < 10 {
		t.Fatalf("only %d wake events: the load did not queue wakes", events)
	}
}

// checkWakeEvents checks the wake-event invariants in one snapshot.
func checkWakeEvents(t *testing.T, ctx context.Context, pool *pgxpool.Pool) {
	t.Helper()
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{IsoLevel: pgx.RepeatableRead, AccessMode: pgx.ReadOnly})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx) //nolint:errcheck
	var bad []string
	rows, err := tx.Query(ctx, `
		WITH targets AS (
		    SELECT w.wake_id, r.id AS runner_id, r.admin_status, d.epoch + 1 AS generation, e.main_stream
		      FROM wakes w
		      JOIN entities e ON e.url = w.entity_url
		      JOIN entity_dispatch_state d ON d.entity_url = w.entity_url
		      JOIN runners r ON r.id = w.runner_id OR w.runner_id IS NULL
		     WHERE w.status = 'queued'
		)
		SELECT t.wake_id || ' -> ' || t.runner_id || ' (' || t.admin_status || '): '
		       || count(v.seq) || ' events, ' || count(m.seq) FILTER (WHERE
		              convert_from(m.data, 'UTF8')::jsonb = jsonb_build_object('type', 'wake',
		                  'subscription_id', 'runner:' || t.runner_id, 'stream', t.main_stream,
		                  'generation', t.generation, 'ts', convert_from(m.data, 'UTF8')::jsonb -> 'ts'))
		       || ' right'
		  FROM targets t
		  LEFT JOIN wake_events v ON v.wake_id = t.wake_id AND v.runner_id = t.runner_id
		  LEFT JOIN stream_messages m ON m.path = pw_wake_stream(t.runner_id) AND m.seq = v.seq
		 GROUP BY t.wake_id, t.runner_id, t.admin_status
		HAVING count(m.seq) <> count(v.seq)
		    OR t.admin_status = 'enabled' AND count(m.seq) FILTER (WHERE
		              convert_from(m.data, 'UTF8')::jsonb = jsonb_build_object('type', 'wake',
		                  'subscription_id', 'runner:' || t.runner_id, 'stream', t.main_stream,
		                  'generation', t.generation, 'ts', convert_from(m.data, 'UTF8')::jsonb -> 'ts')) < 1
		       -- not yet published: the wake's row, or its runner's back-fill, is in the log
		       AND NOT EXISTS (SELECT 1 FROM wake_event_log l
		                        WHERE l.wake_id = t.wake_id AND (l.runner_id IS NULL OR l.runner_id = t.runner_id)
		                           OR l.wake_id IS NULL AND l.runner_id = t.runner_id)
		UNION ALL
		SELECT 'event row without message: ' || v.wake_id || ' ' || v.runner_id || ' seq ' || v.seq
		  FROM wake_events v
		 WHERE NOT EXISTS (SELECT 1 FROM stream_messages m WHERE m.path = pw_wake_stream(v.runner_id) AND m.seq = v.seq)
		UNION ALL
		SELECT 'message without event row: ' || m.path || ' seq ' || m.seq
		  FROM stream_messages m
		 WHERE m.path LIKE '/v1/stream/runners/%/wake'
		   AND NOT EXISTS (SELECT 1 FROM wake_events v WHERE pw_wake_stream(v.runner_id) = m.path AND v.seq = m.seq)`)
	if err != nil {
		t.Fatal(err)
	}
	bad, err = pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		t.Fatal(err)
	}
	if len(bad) > 0 {
		t.Fatalf("wake events wrong (%d):\n%s", len(bad), strings.Join(bad[:min(len(bad), 20)], "\n"))
	}
}

// Deleting a runner deletes its wake stream and event rows.
func TestRunnerDeleteRemovesWakeStream(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1", "r2")
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	f.exec(`DELETE FROM runners WHERE id = 'r1'`)
	var streams, events, msgs int
	if err := f.pool.QueryRow(f.ctx, `SELECT
		(SELECT count(*) FROM streams WHERE path LIKE '/v1/stream/runners/%'),
		(SELECT count(*) FROM wake_events WHERE runner_id = 'r1'),
		(SELECT count(*) FROM stream_messages WHERE path = '/v1/stream/runners/r1/wake')`).Scan(&streams, &events, &msgs); err != nil {
		t.Fatal(err)
	}
	if streams != 1 || events != 0 || msgs != 0 {
		t.Fatalf("after deleting r1: %d wake streams (want r2's), %d event rows, %d messages of r1", streams, events, msgs)
	}
	f.wantEvents("r2", "/v1/stream/chat/1/main")
}
