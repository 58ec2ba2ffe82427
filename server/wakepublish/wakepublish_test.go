package wakepublish_test

import (
	"context"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/wakepublish"
)

// The publisher writes the events of a wake queued from SQL on its timer,
// without a kick, and of one queued after a kick at once (the timer set
// far off), and reports what it wrote.
func TestPublisherTimerAndKick(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	for _, q := range []string{
		`SELECT count(*) FROM register_runner('r1', NULL, NULL, '\x01')`,
		`SELECT count(*) FROM spawn_entity('/chat/1', 'r1')`,
		`SELECT count(*) FROM spawn_entity('/chat/2', 'r1')`,
	} {
		if _, err := d.Pool.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	events := func() int {
		var n int
		if err := d.Pool.QueryRow(ctx, `SELECT count(*) FROM stream_messages WHERE path = pw_wake_stream('r1')`).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
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
