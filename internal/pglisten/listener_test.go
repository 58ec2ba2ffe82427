package pglisten_test

import (
	"context"
	"io"
	"log/slog"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/pglisten"
	"github.com/pullwake/pullwake/internal/testdb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A terminated LISTEN connection comes back by itself, runs its connect
// hooks again, and delivers later notifications.
func TestReconnectAfterTerminate(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	l := pglisten.New(d.URL, slog.New(slog.NewTextHandler(io.Discard, nil)))
	got := make(chan string, 16)
	var connects atomic.Int32
	l.Handle("pw_test", func(p string) { got <- p })
	l.OnConnect(func(context.Context) { connects.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l.Start(ctx)
	defer l.Stop()
	<-l.Connected()

	notify := func(p string) {
		t.Helper()
		if _, err := d.Pool.Exec(ctx, "SELECT pg_notify('pw_test', $1)", p); err != nil {
			t.Fatal(err)
		}
	}
	wait := func(want string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case p := <-got:
				if p == want {
					return
				}
			case <-deadline:
				t.Fatalf("notification %q not delivered", want)
			}
		}
	}
	notify("one")
	wait("one")

	pid := l.BackendPID()
	if pid == 0 {
		t.Fatal("no backend pid")
	}
	if _, err := d.Pool.Exec(ctx, "SELECT pg_terminate_backend($1)", int32(pid)); err != nil {
		t.Fatal(err)
	}
	// Notify until the new connection hears one: those sent while it was
	// away are lost, which is why the connect hooks exist.
	deadline := time.Now().Add(10 * time.Second)
	for l.BackendPID() == 0 || l.BackendPID() == pid {
		if time.Now().After(deadline) {
			t.Fatal("listener did not reconnect")
		}
		time.Sleep(10 * time.Millisecond)
	}
	notify("two")
	wait("two")
	if n := connects.Load(); n < 2 {
		t.Fatalf("connect hooks ran %d times, want at least 2", n)
	}
}
