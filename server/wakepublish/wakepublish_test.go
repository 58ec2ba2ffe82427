package wakepublish_test

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/syncbuf"
	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/wakepublish"
)

// seed registers runner r1 and spawns the entities for it.
func seed(t *testing.T, d *testdb.DB, urls ...string) {
	t.Helper()
	qs := []string{`SELECT count(*) FROM register_runner('r1', NULL, NULL, '\x01')`}
	for _, u := range urls {
		qs = append(qs, `SELECT count(*) FROM spawn_entity('`+u+`', 'r1')`)
	}
	for _, q := range qs {
		if _, err := d.Pool.Exec(t.Context(), q); err != nil {
			t.Fatal(err)
		}
	}
}

// wakeEvents counts the events in r1's wake stream.
func wakeEvents(t *testing.T, d *testdb.DB) int {
	t.Helper()
	var n int
	if err := d.Pool.QueryRow(t.Context(), `SELECT count(*) FROM stream_messages WHERE path = pw_wake_stream('r1')`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The publisher writes the events of a wake queued from SQL on its timer,
// without a kick, and of one queued after a kick at once (the timer set
// far off), and reports what it wrote.
func TestPublisherTimerAndKick(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	seed(t, d, "/chat/1", "/chat/2")
	events := func() int { return wakeEvents(t, d) }
	published := make(chan int, 16)
	run := func(interval time.Duration) (kick, stop func()) {
		p := wakepublish.New(wakepublish.Config{Pool: d.Pool, Interval: interval, Published: func(n int) { published <- n }})
		pctx, cancel := context.WithCancel(ctx)
		p.Start(pctx)
		stop = func() { cancel(); p.Stop() }
		t.Cleanup(stop)
		return p.Kick, stop
	}
	wait := func(what string) int {
		t.Helper()
		select {
		case n := <-published:
			return n
		case <-time.After(time.Minute): // not a latency bound: the fence may wait for other work
			t.Fatalf("%s: nothing published within a minute", what)
			return 0
		}
	}

	// The timer alone.
	_, stopTimer := run(20 * time.Millisecond)
	if _, err := d.Pool.Exec(ctx, `SELECT * FROM send_to_entity('/chat/1', '1')`); err != nil {
		t.Fatal(err)
	}
	total := 0
	for total < 1 {
		total += wait("timer")
	}
	if got := events(); got != 1 {
		t.Fatalf("after the timer: %d events in r1's wake stream, want 1", got)
	}

	stopTimer()
	// A kick, with a timer that never fires during the test. A kick
	// publishes what is behind the snapshot fence when it runs: the test
	// kicks once the send's transaction is (another transaction on the
	// cluster may hold the fence for a while).
	kick, _ := run(time.Hour)
	var xid string
	if err := d.Pool.QueryRow(ctx, `SELECT pg_current_xact_id()::text FROM send_to_entity('/chat/2', '1')`).Scan(&xid); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(2 * time.Millisecond) {
		var fenced bool
		if err := d.Pool.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::xid8`, xid).Scan(&fenced); err != nil {
			t.Fatal(err)
		}
		if fenced {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the send's transaction not behind the fence within a minute")
		}
	}
	kick()
	for total < 2 {
		total += wait("kick")
	}
	if got := events(); got != 2 {
		t.Fatalf("after the kick: %d events, want 2", got)
	}
}

// A transaction left open holds a later send's wake event behind the
// snapshot fence: HeldFor grows, one warning names the oldest writing
// transaction, and once it ends the event is published and HeldFor is
// zero again.
func TestPublisherReportsAHeldFence(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	seed(t, d, "/chat/1")
	var logs syncbuf.Buffer
	p := wakepublish.New(wakepublish.Config{Pool: d.Pool, Interval: 10 * time.Millisecond,
		HeldCheck: 10 * time.Millisecond, HeldWarnAfter: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	pctx, cancel := context.WithCancel(ctx)
	p.Start(pctx)
	t.Cleanup(func() { cancel(); p.Stop() })

	until := func(what string, cond func() bool) {
		t.Helper()
		for deadline := time.Now().Add(time.Minute); !cond(); time.Sleep(10 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatalf("not within a minute: %s (held for %s; log:\n%s)", what, p.HeldFor(), logs.String())
			}
		}
	}
	// The registration's back-fill row published first: published later,
	// it would write the send's event itself (a back-fill reads the queue).
	until("the registration's log row published", func() bool {
		var n int
		if err := d.Pool.QueryRow(ctx, `SELECT count(*) FROM wake_event_log`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n == 0
	})
	// Other tests' transactions on the cluster may have held those rows
	// long enough for a warning already: only what comes after counts.
	mark := len(logs.String())
	since := func() string { return logs.String()[mark:] }

	blocker, err := d.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = blocker.Rollback(context.Background()) }()
	if _, err := blocker.Exec(ctx, `SELECT pg_current_xact_id()`); err != nil {
		t.Fatal(err)
	}
	if _, err := d.Pool.Exec(ctx, `SELECT * FROM send_to_entity('/chat/1', '1')`); err != nil {
		t.Fatal(err)
	}
	until("the warning", func() bool { return strings.Contains(since(), "wake events held back") })
	if held := p.HeldFor(); held < 200*time.Millisecond {
		t.Fatalf("warned with the oldest row held for %s, under HeldWarnAfter", held)
	}
	if out := since(); !strings.Contains(out, "oldest_tx_pid=") || strings.Count(out, "wake events held back") != 1 {
		t.Fatalf("want one warning naming the oldest transaction:\n%s", out)
	}
	if n := wakeEvents(t, d); n != 0 {
		t.Fatalf("an event published through the fence: %d", n)
	}

	if err := blocker.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	until("the event published and the log drained", func() bool { return wakeEvents(t, d) == 1 && p.HeldFor() == 0 })
}
