package pgnotify_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/pgnotify"
	"github.com/pullwake/pullwake/internal/testdb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// listening gives a test its own database, a publisher on it (not started)
// and a session that LISTENs on channel.
func listening(t *testing.T, channel string) (context.Context, *pgxpool.Conn, *pgnotify.Publisher) {
	t.Helper()
	d := testdb.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	conn, err := d.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(conn.Release)
	if _, err := conn.Exec(ctx, "LISTEN "+channel); err != nil {
		t.Fatal(err)
	}
	return ctx, conn, pgnotify.New(d.Pool, slog.New(slog.NewTextHandler(io.Discard, nil)))
}

// Every published notification arrives, duplicates within a batch once,
// and Stop sends what is still queued.
func TestPublishDelivers(t *testing.T) {
	t.Parallel()
	ctx, conn, p := listening(t, "pw_pub")
	p.Start(ctx)
	const n = 1200 // more than one batch
	for i := range n {
		p.Publish("pw_pub", fmt.Sprint(i))
	}
	p.Publish("pw_pub", "last")
	p.Stop()

	got := map[string]int{}
	for len(got) < n+1 {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := conn.Conn().WaitForNotification(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("after %d distinct notifications: %v", len(got), err)
		}
		got[msg.Payload]++
	}
	for k, c := range got {
		if c != 1 {
			t.Errorf("payload %s arrived %d times", k, c)
		}
	}
	if got["last"] != 1 || got["0"] != 1 || got[fmt.Sprint(n-1)] != 1 {
		t.Fatalf("missing payloads: %d distinct", len(got))
	}
}

// Notifications published while the publisher lingers go out together: with
// a linger longer than the test, nothing is sent until Stop, and then one
// statement carries all of them.
func TestLingerGathersOneSend(t *testing.T) {
	t.Parallel()
	ctx, conn, p := listening(t, "pw_linger")
	p.Linger = time.Hour
	p.Start(ctx)
	const n = 100
	p.Publish("pw_linger", "0")
	// Without a linger the first notification would be sent at once; give
	// the publisher ample time to (wrongly) do so. Correct code cannot fail
	// here however slow the machine is.
	time.Sleep(100 * time.Millisecond)
	if got := p.Sends(); got != 0 {
		t.Fatalf("sent %d statements while lingering, want 0", got)
	}
	for i := 1; i < n; i++ {
		p.Publish("pw_linger", fmt.Sprint(i))
	}
	p.Stop()
	if got := p.Sends(); got != 1 {
		t.Fatalf("sent %d statements for %d notifications, want 1", got, n)
	}
	for i := range n {
		wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
		msg, err := conn.Conn().WaitForNotification(wctx)
		wcancel()
		if err != nil {
			t.Fatalf("after %d notifications: %v", i, err)
		}
		if msg.Payload != fmt.Sprint(i) {
			t.Fatalf("notification %d: payload %q, want %d (in publish order)", i, msg.Payload, i)
		}
	}
}

// failing is an Execer whose first calls fail, as a database that drops a
// connection would.
type failing struct {
	pgnotify.Execer
	failures atomic.Int32
	calls    atomic.Int32
}

func (f *failing) Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error) {
	f.calls.Add(1)
	if f.failures.Add(-1) >= 0 {
		return pgconn.CommandTag{}, errors.New("connection reset by peer")
	}
	return f.Execer.Exec(ctx, sql, args...)
}

// A send that fails is retried: the notification arrives, once.
func TestFailedPublishRetried(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := d.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if _, err := conn.Exec(ctx, "LISTEN pw_retry"); err != nil {
		t.Fatal(err)
	}
	f := &failing{Execer: d.Pool}
	f.failures.Store(2)
	p := pgnotify.New(f, slog.New(slog.NewTextHandler(io.Discard, nil)))
	p.Start(ctx)
	defer p.Stop()
	p.Publish("pw_retry", "released")
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	msg, err := conn.Conn().WaitForNotification(wctx)
	wcancel()
	if err != nil {
		t.Fatalf("notification never arrived after %d send attempts: %v", f.calls.Load(), err)
	}
	if msg.Payload != "released" || f.calls.Load() != 3 {
		t.Fatalf("payload %q after %d attempts, want \"released\" after 3", msg.Payload, f.calls.Load())
	}
	if n := p.Pending(); n != 0 {
		t.Fatalf("%d notifications still pending", n)
	}
}
