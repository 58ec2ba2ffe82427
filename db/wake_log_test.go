package db_test

// The wake-event log (00022_wake_event_log): a queueing transaction logs
// its wakes, pw_publish_wake_events publishes the log to the wake streams
// behind a snapshot fence.

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// Senders queue wakes from many sessions (autocommit sends; transactions
// that send, wait and commit late; transactions that send and roll back)
// while several publishers run at once with small batches and readers
// follow every wake stream by offset. At the end:
//   - every committed wake has exactly one event, in its runner's stream;
//     a rolled-back send's entity has neither wake nor event;
//   - each reader saw its stream's messages at consecutive offsets, and
//     they are the whole final stream: no event appeared behind the offset
//     a reader had read up to, none twice, offsets strictly increase;
//   - each stream's events are in the order of their queueing
//     transactions' ids (the fence publishes the log as a prefix in that
//     order); every event has its wake_events row at its offset.
//
// Without the fence (pw_publish_wake_events with v_fence taken from
// pg_snapshot_xmax instead of pg_snapshot_xmin, so committed rows of
// transactions newer than a still-open one are published, and the position
// moves past the open one's id) this test fails: the rows of the
// transactions that committed late lie behind the position and are never
// published ("N committed wakes without exactly one event"), or, when
// none was passed over, a stream is out of transaction order. Checked by
// making that one-word change in the function (twice, both failed).
func TestWakeEventLogFenceUnderConcurrency(t *testing.T) {
	t.Parallel()
	runners := []string{"r1", "r2", "r3"}
	f := wakeSetup(t, runners...)
	ctx := f.ctx
	const (
		senders    = 6
		publishers = 3
		entities   = 1500 // each committed send takes a fresh one: one wake each
		rollbacks  = 600
	)
	// Entities /w/{i} for runner r{i%3+1}; /rb/{i} only ever get sends that
	// roll back.
	f.exec(`SELECT count(*) FROM generate_series(0, $1 - 1) g,
		LATERAL spawn_entity('/w/' || g, 'r' || (g % 3 + 1), $2)`, entities, t0)
	f.exec(`SELECT count(*) FROM generate_series(0, $1 - 1) g,
		LATERAL spawn_entity('/rb/' || g, 'r' || (g % 3 + 1), $2)`, rollbacks, t0)

	cfg, err := pgxpool.ParseConfig(f.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = senders + publishers + int32(len(runners)) + 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 10 {
			t.Errorf(format, args...)
		}
	}
	var next, nextRB atomic.Int64
	var mu sync.Mutex
	xidOf := map[string]uint64{} // committed: main stream -> its queueing transaction's id
	var committed, longCommitted, rolledBack atomic.Int64

	send := func(q interface {
		QueryRow(context.Context, string, ...any) pgx.Row
	}, url string) (uint64, error) {
		var wake *string
		var xid uint64
		err := q.QueryRow(ctx, `SELECT s.wake_id, pg_current_xact_id()::text::bigint FROM send_to_entity($1, '{"n":1}') s`, url).Scan(&wake, &xid)
		if err == nil && wake == nil {
			err = fmt.Errorf("send to %s queued no wake", url)
		}
		return xid, err
	}
	deadline := time.Now().Add(1500 * time.Millisecond)
	var sendWG sync.WaitGroup
	for w := range senders {
		sendWG.Add(1)
		go func() {
			defer sendWG.Done()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			for time.Now().Before(deadline) && ctx.Err() == nil {
				switch p := rng.IntN(100); {
				case p < 65: // autocommit
					i := next.Add(1) - 1
					if i >= entities {
						return
					}
					url := fmt.Sprintf("/w/%d", i)
					xid, err := send(pool, url)
					if err != nil {
						fail("send %s: %v", url, err)
						continue
					}
					mu.Lock()
					xidOf["/v1/stream"+url+"/main"] = xid
					mu.Unlock()
					committed.Add(1)
				case p < 85: // a long transaction that commits late
					i := next.Add(2) - 2
					if i+1 >= entities {
						return
					}
					tx, err := pool.Begin(ctx)
					if err != nil {
						fail("begin: %v", err)
						continue
					}
					urls := []string{fmt.Sprintf("/w/%d", i), fmt.Sprintf("/w/%d", i+1)}
					var xid uint64
					for _, url := range urls {
						if xid, err = send(tx, url); err != nil {
							break
						}
						time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond) // others commit meanwhile
					}
					if err == nil {
						err = tx.Commit(ctx)
					}
					if err != nil {
						_ = tx.Rollback(ctx)
						fail("long transaction: %v", err)
						continue
					}
					mu.Lock()
					for _, url := range urls {
						xidOf["/v1/stream"+url+"/main"] = xid
					}
					mu.Unlock()
					longCommitted.Add(1)
				default: // sends that roll back
					i := nextRB.Add(1) - 1
					if i >= rollbacks {
						continue
					}
					tx, err := pool.Begin(ctx)
					if err != nil {
						fail("begin: %v", err)
						continue
					}
					if _, err := send(tx, fmt.Sprintf("/rb/%d", i)); err != nil {
						fail("send before rollback: %v", err)
					}
					time.Sleep(time.Duration(rng.IntN(50)) * time.Millisecond)
					if err := tx.Rollback(ctx); err != nil {
						fail("rollback: %v", err)
					}
					rolledBack.Add(1)
				}
			}
		}()
	}

	// Publishers, concurrently, with small batches (positions inside a
	// transaction's rows).
	stop := make(chan struct{})
	var bgWG sync.WaitGroup
	var published atomic.Int64
	for p := range publishers {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			rng := rand.New(rand.NewPCG(uint64(100+p), uint64(time.Now().UnixNano())))
			for {
				select {
				case <-stop:
					return
				default:
				}
				var n int
				if err := pool.QueryRow(ctx, `SELECT pw_publish_wake_events($1)`, 1+rng.IntN(20)).Scan(&n); err != nil {
					fail("publish: %v", err)
					return
				}
				published.Add(int64(n))
			}
		}()
	}

	// Readers: one per runner, following its wake stream by offset.
	type seen struct {
		seq  int64
		data string
	}
	read := make([][]seen, len(runners))
	readOnce := func(i int) int {
		var after int64
		if n := len(read[i]); n > 0 {
			after = read[i][n-1].seq
		}
		rows, err := pool.Query(ctx, `SELECT m.seq, convert_from(m.data, 'UTF8') FROM stream_messages m
			WHERE m.path = pw_wake_stream($1) AND m.seq > $2 ORDER BY m.seq`, runners[i], after)
		if err != nil {
			fail("read %s: %v", runners[i], err)
			return 0
		}
		got, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seen, error) {
			var s seen
			err := r.Scan(&s.seq, &s.data)
			return s, err
		})
		if err != nil {
			fail("read %s: %v", runners[i], err)
			return 0
		}
		read[i] = append(read[i], got...)
		return len(got)
	}
	for i := range runners {
		bgWG.Add(1)
		go func() {
			defer bgWG.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if readOnce(i) == 0 {
					time.Sleep(time.Millisecond)
				}
			}
		}()
	}

	sendWG.Wait()
	close(stop)
	bgWG.Wait()
	// Publish the rest: until the log is empty, or until what is left lies
	// at or behind the publisher's position (rows passed over: the checks
	// below name their wakes).
	for deadline := time.Now().Add(time.Minute); ; {
		var left, ahead int
		if err := pool.QueryRow(ctx, `SELECT pw_publish_wake_events(100000), (SELECT count(*) FROM wake_event_log),
			(SELECT count(*) FROM wake_event_log l, wake_event_publisher p WHERE (l.xid, l.id) > (p.pos_xid, p.pos_id))`).
			Scan(new(int), &left, &ahead); err != nil {
			t.Fatal(err)
		}
		if left == 0 || ahead == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d log rows not published within a minute", left)
		}
		time.Sleep(2 * time.Millisecond)
	}
	for i := range runners {
		readOnce(i) // the readers catch up with what was published last
	}
	if t.Failed() {
		t.FailNow()
	}

	// Every reader saw consecutive offsets from the first, and the whole
	// stream as it is now.
	for i, r := range runners {
		rows, err := pool.Query(ctx, `SELECT m.seq, convert_from(m.data, 'UTF8') FROM stream_messages m
			WHERE m.path = pw_wake_stream($1) ORDER BY m.seq`, r)
		if err != nil {
			t.Fatal(err)
		}
		final, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (seen, error) {
			var s seen
			err := r.Scan(&s.seq, &s.data)
			return s, err
		})
		if err != nil {
			t.Fatal(err)
		}
		for k, s := range read[i] {
			if s.seq != int64(k+1) {
				t.Fatalf("%s: reader saw offset %d at position %d (offsets must follow each other)", r, s.seq, k)
			}
		}
		if len(final) != len(read[i]) {
			t.Fatalf("%s: stream holds %d events, its reader saw %d: an event appeared behind an offset the reader had passed", r, len(final), len(read[i]))
		}
		for k := range final {
			if final[k] != read[i][k] {
				t.Fatalf("%s: offset %d is %q now, the reader saw %q", r, final[k].seq, final[k].data, read[i][k].data)
			}
		}
	}

	// One event per committed wake, in its runner's stream, in transaction
	// order; none for the rolled-back sends.
	perStream := map[string]int{}
	for i, r := range runners {
		var lastXid uint64
		for _, s := range read[i] {
			var e wakeEvent
			if err := json.Unmarshal([]byte(s.data), &e); err != nil {
				t.Fatal(err)
			}
			if e.Type != "wake" || e.SubscriptionID != "runner:"+r || e.Generation != 1 || e.TS <= 0 {
				t.Fatalf("%s: malformed event %s", r, s.data)
			}
			perStream[e.Stream]++
			xid, ok := xidOf[e.Stream]
			if !ok {
				t.Fatalf("%s: event at %d for %s, which no committed send queued", r, s.seq, e.Stream)
			}
			if xid < lastXid {
				t.Fatalf("%s: event at %d is of transaction %d, after one of transaction %d: not in log order", r, s.seq, xid, lastXid)
			}
			lastXid = xid
		}
	}
	var wrong []string
	for stream := range xidOf {
		if perStream[stream] != 1 {
			wrong = append(wrong, fmt.Sprintf("%s: %d events", stream, perStream[stream]))
		}
	}
	sort.Strings(wrong)
	if len(wrong) > 0 {
		t.Fatalf("%d committed wakes without exactly one event (of %d): %s", len(wrong), len(xidOf), strings.Join(wrong[:min(len(wrong), 10)], "; "))
	}
	var wakes, rbWakes, eventRows, eventRowsRight int
	if err := pool.QueryRow(ctx, `SELECT count(*) FILTER (WHERE entity_url LIKE '/w/%'), count(*) FILTER (WHERE entity_url LIKE '/rb/%')
		FROM wakes`).Scan(&wakes, &rbWakes); err != nil {
		t.Fatal(err)
	}
	if wakes != len(xidOf) || rbWakes != 0 {
		t.Fatalf("%d wakes of committed sends (want %d), %d of rolled-back ones (want 0)", wakes, len(xidOf), rbWakes)
	}
	if err := pool.QueryRow(ctx, `SELECT count(*), count(*) FILTER (WHERE convert_from(m.data, 'UTF8')::jsonb ->> 'stream' = e.main_stream)
		FROM wake_events v JOIN wakes w ON w.wake_id = v.wake_id JOIN entities e ON e.url = w.entity_url
		JOIN stream_messages m ON m.path = pw_wake_stream(v.runner_id) AND m.seq = v.seq`).Scan(&eventRows, &eventRowsRight); err != nil {
		t.Fatal(err)
	}
	if eventRows != len(xidOf) || eventRowsRight != eventRows {
		t.Fatalf("wake_events: %d rows, %d pointing at their event; want %d", eventRows, eventRowsRight, len(xidOf))
	}
	var logLeft int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM wake_event_log`).Scan(&logLeft); err != nil || logLeft != 0 {
		t.Fatalf("wake_event_log keeps %d rows after the publish (%v)", logLeft, err)
	}
	t.Logf("%d wakes committed (%d autocommit sends, %d late-committing transactions of 2), %d sends rolled back; %d events published while they ran",
		len(xidOf), committed.Load(), longCommitted.Load(), rolledBack.Load(), published.Load())
	if longCommitted.Load() == 0 || rolledBack.Load() == 0 {
		t.Fatal("the load ran no late commit or no rollback: nothing was tested")
	}
}
