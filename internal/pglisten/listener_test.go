package pglisten_test

import (
	"context"
	"io"
	"log/slog"
	"net/url"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/freezeproxy"
	"github.com/pullwake/pullwake/internal/pglisten"
	"github.com/pullwake/pullwake/internal/testdb"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// A terminated LISTEN connection comes back by itself, runs its connect
// hooks again, and delivers later notifications.
func TestReconnectAfterTerminate(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	l := pglisten.New(pglisten.Config{ConnString: d.URL, Logger: quiet()})
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

func quiet() *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// A connection string carrying pgxpool-only parameters (which pgx.Connect
// refuses) still gives a working LISTEN connection.
func TestPoolOnlyParametersIgnored(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	u := d.URL + "&pool_max_conns=7&pool_min_conns=1&pool_max_conn_lifetime=1h&pool_max_conn_idle_time=1m&pool_health_check_period=10s&pool_max_conn_lifetime_jitter=1s"
	if !strings.Contains(d.URL, "?") {
		u = strings.Replace(u, "&", "?", 1)
	}
	l := pglisten.New(pglisten.Config{ConnString: u, Logger: quiet(), Pinger: d.Pool})
	got := make(chan string, 4)
	l.Handle("pw_test", func(p string) { got <- p })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l.Start(ctx)
	defer l.Stop()
	select {
	case <-l.Connected():
	case <-time.After(10 * time.Second):
		ok, why := l.Status()
		t.Fatalf("listener did not connect with pool parameters in the URL: %v %s", ok, why)
	}
	if _, err := d.Pool.Exec(ctx, "SELECT pg_notify('pw_test', 'x')"); err != nil {
		t.Fatal(err)
	}
	select {
	case <-got:
	case <-time.After(10 * time.Second):
		t.Fatal("notification not delivered")
	}
	var app string
	if err := d.Pool.QueryRow(ctx, "SELECT application_name FROM pg_stat_activity WHERE pid = $1", int32(l.BackendPID())).Scan(&app); err != nil {
		t.Fatal(err)
	}
	if app != pglisten.ApplicationName {
		t.Fatalf("listener application_name %q, want %q", app, pglisten.ApplicationName)
	}
}

// A half-open connection (nothing flows, nothing resets) is noticed by the
// self-ping: Status reports it, the session is replaced, and connect hooks
// run again once traffic flows.
func TestSilentConnectionDetected(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	pu, err := url.Parse(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := freezeproxy.Start(t, pu.Host)
	pu.Host = px.Addr()
	l := pglisten.New(pglisten.Config{ConnString: pu.String(), Logger: quiet(), Pinger: d.Pool,
		PingInterval: 100 * time.Millisecond, SilentAfter: 500 * time.Millisecond, ConnectTimeout: time.Second})
	var connects atomic.Int32
	l.Handle("pw_test", func(string) {})
	l.OnConnect(func(context.Context) { connects.Add(1) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	l.Start(ctx)
	defer l.Stop()
	<-l.Connected()
	if ok, why := l.Status(); !ok {
		t.Fatalf("status after connect: %s", why)
	}
	px.Freeze()
	poll(t, 10*time.Second, "status reports the silent listener", func() bool {
		ok, why := l.Status()
		return !ok && strings.Contains(why, "silent")
	})
	poll(t, 10*time.Second, "silent session torn down", func() bool { return l.BackendPID() == 0 })
	px.Thaw()
	poll(t, 10*time.Second, "listener back after thaw", func() bool {
		ok, _ := l.Status()
		return ok && connects.Load() >= 2
	})
}

func poll(t *testing.T, within time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(within)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("not within %s: %s", within, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// slowPinger sends no ping: each call outlasts its context by a little, so
// when the listener stops, its LISTEN loop has usually returned by the
// time the supervisor looks again, and both are ready at once.
type slowPinger struct{}

func (slowPinger) Exec(ctx context.Context, _ string, _ ...any) (pgconn.CommandTag, error) {
	<-ctx.Done()
	time.Sleep(20 * time.Millisecond)
	return pgconn.CommandTag{}, ctx.Err()
}

// Stop returns whichever the supervisor sees first when the listener
// stops: its context's end or the LISTEN loop's return (it once took the
// loop's result and then waited for it again, forever).
func TestStopReturnsWhenListenEndsFirst(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	for i := 0; i < 20; i++ {
		l := pglisten.New(pglisten.Config{ConnString: d.URL, Logger: quiet(), Pinger: slowPinger{},
			PingInterval: time.Millisecond, SilentAfter: time.Hour})
		l.Handle("pw_test", func(string) {})
		l.Start(context.Background())
		<-l.Connected()
		time.Sleep(25 * time.Millisecond) // the supervisor is pinging
		stopped := make(chan struct{})
		go func() { l.Stop(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Stop did not return", i)
		}
	}
}
