// Package pglisten keeps one dedicated PostgreSQL connection LISTENing on a
// set of channels, and knows whether that connection still hears anything.
//
// The LISTEN loop itself is github.com/jackc/pgxlisten (connect, LISTEN each
// channel, dispatch, reconnect). This package adds what pgxlisten leaves to
// its caller and pullwake cannot do without:
//
//   - Connection parameters: the listener connects with pgx.Connect, which
//     refuses the pgxpool-only parameters (pool_max_conns, ...) a
//     DATABASE_URL may carry for the pool; they are stripped here, so the
//     listener works with whatever URL the pool accepts.
//   - Liveness: a half-open connection (the backend frozen, a network path
//     that drops packets without a reset) blocks WaitForNotification
//     forever and looks healthy. Every PingInterval the listener sends a
//     NOTIFY to itself through another connection (the pool); when none
//     arrives for SilentAfter, the session is torn down and reconnected,
//     and Status reports the silence meanwhile (the server's /readyz).
//   - Connect hooks: notifications sent while the connection was away are
//     lost, so after every (re)connection, once every channel is LISTENed,
//     the hooks re-read the state those notifications would have announced.
//
// It never runs a lifecycle step itself.
package pglisten

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgxlisten"
)

// PingChannel is the channel of the listeners' self-NOTIFY; payloads name
// the listener instance, so listeners sharing a database ignore each other's.
const PingChannel = "pullwake_listener_ping"

// ApplicationName marks the LISTEN connection in pg_stat_activity.
const ApplicationName = "pullwake-listener"

// Execer sends the liveness NOTIFY; a *pgxpool.Pool is one.
type Execer interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
}

// Config configures a Listener; zero values get defaults.
type Config struct {
	ConnString string // may carry pgxpool-only parameters: they are ignored
	Logger     *slog.Logger
	// Pinger sends the self-NOTIFY that proves the connection alive. Nil
	// disables the liveness check (Status then only knows connected or not).
	Pinger         Execer
	PingInterval   time.Duration // 1s
	SilentAfter    time.Duration // 3s: no ping heard for this long = dead, reconnect
	ReconnectDelay time.Duration // 500ms between failed connection attempts
	ConnectTimeout time.Duration // 5s
}

// Listener is one LISTEN connection. Configure it (Handle, OnConnect) before Start.
type Listener struct {
	cfg       Config
	id        string // this listener's ping payload prefix
	handlers  map[string]func(payload string)
	onConnect []func(ctx context.Context)

	cancel    context.CancelFunc
	done      chan struct{}
	connected chan struct{} // closed after the first successful LISTEN
	once      sync.Once

	mu        sync.Mutex
	conn      *pgx.Conn // of the session being set up or running
	listened  int       // channels LISTENed on conn so far
	up        bool      // every channel LISTENed, hooks run
	pid       uint32
	lastHeard time.Time // last own ping heard (or the session start)
	lastErr   error
	started   time.Time
}

// New returns a listener for cfg.
func New(cfg Config) *Listener {
	cfg.PingInterval = cmp.Or(cfg.PingInterval, time.Second)
	cfg.SilentAfter = cmp.Or(cfg.SilentAfter, 3*time.Second)
	cfg.ReconnectDelay = cmp.Or(cfg.ReconnectDelay, 500*time.Millisecond)
	cfg.ConnectTimeout = cmp.Or(cfg.ConnectTimeout, 5*time.Second)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	var b [8]byte
	_, _ = rand.Read(b[:])
	return &Listener{
		cfg:       cfg,
		id:        hex.EncodeToString(b[:]),
		handlers:  map[string]func(string){},
		connected: make(chan struct{}),
	}
}

// Handle routes notifications on channel to fn (called on the listener's goroutine).
func (l *Listener) Handle(channel string, fn func(payload string)) { l.handlers[channel] = fn }

// OnConnect registers fn to run after every (re)connection, once LISTEN is in
// place on every channel: the place to re-check state whose notifications
// may have been missed.
func (l *Listener) OnConnect(fn func(ctx context.Context)) { l.onConnect = append(l.onConnect, fn) }

// Connected is closed once the listener has LISTENed for the first time.
func (l *Listener) Connected() <-chan struct{} { return l.connected }

// BackendPID is the server process id of the current LISTEN connection
// (0 when not connected); tests use it to terminate the connection.
func (l *Listener) BackendPID() uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.up {
		return 0
	}
	return l.pid
}

// Status reports whether the listener is connected and, with a Pinger,
// heard its own ping within SilentAfter; otherwise why not.
func (l *Listener) Status() (ok bool, reason string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.up {
		if l.lastErr != nil {
			return false, "listener not connected: " + l.lastErr.Error()
		}
		return false, "listener not connected yet"
	}
	if l.cfg.Pinger != nil {
		if silent := time.Since(l.lastHeard); silent > l.cfg.SilentAfter {
			return false, fmt.Sprintf("listener silent for %s (no self-notification heard)", silent.Round(time.Millisecond))
		}
	}
	return true, ""
}

// ConnConfig parses connString for a single connection: the pgxpool-only
// parameters (pool_max_conns, pool_min_conns, pool_max_conn_lifetime, ...)
// that pgx.ParseConfig refuses are dropped, and application_name is set.
func ConnConfig(connString string) (*pgx.ConnConfig, error) {
	pc, err := pgxpool.ParseConfig(connString) // strips every pool_* parameter it knows
	if err != nil {
		return nil, err
	}
	cc := pc.ConnConfig.Copy()
	if cc.RuntimeParams == nil {
		cc.RuntimeParams = map[string]string{}
	}
	cc.RuntimeParams["application_name"] = ApplicationName
	return cc, nil
}

// Start runs the listener until Stop or ctx ends.
func (l *Listener) Start(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	l.cancel = cancel
	l.done = make(chan struct{})
	l.mu.Lock()
	l.started = time.Now()
	l.mu.Unlock()
	go func() {
		defer close(l.done)
		l.run(ctx)
	}()
}

// Stop ends the listener and waits for it.
func (l *Listener) Stop() {
	if l.cancel == nil {
		return
	}
	l.cancel()
	<-l.done
}

// run supervises pgxlisten: it pings, and restarts the LISTEN loop when the
// connection stays silent.
func (l *Listener) run(ctx context.Context) {
	cc, err := ConnConfig(l.cfg.ConnString)
	if err != nil {
		l.setErr(fmt.Errorf("connection string: %w", err))
		l.cfg.Logger.Error("listener: bad connection string; not listening", "err", err)
		<-ctx.Done()
		return
	}
	pl := &pgxlisten.Listener{
		Connect: func(ctx context.Context) (*pgx.Conn, error) {
			cctx, cancel := context.WithTimeout(ctx, l.cfg.ConnectTimeout)
			defer cancel()
			conn, err := pgx.ConnectConfig(cctx, cc)
			if err != nil {
				return nil, err
			}
			l.mu.Lock()
			l.conn, l.listened, l.up = conn, 0, false
			l.mu.Unlock()
			return conn, nil
		},
		LogError: func(ctx context.Context, err error) {
			if ctx.Err() != nil {
				return
			}
			if msg := err.Error(); strings.HasPrefix(msg, "handle ") || strings.HasPrefix(msg, "missing handler") {
				l.cfg.Logger.Warn("listener: notification not handled", "err", err) // the session goes on
				return
			}
			l.setErr(err)
			l.cfg.Logger.Warn("listener connection lost; reconnecting", "err", err, "delay", l.cfg.ReconnectDelay)
		},
		ReconnectDelay: l.cfg.ReconnectDelay,
	}
	for ch, fn := range l.handlers {
		pl.Handle(ch, handler{l: l, fn: fn})
	}
	if l.cfg.Pinger != nil {
		pl.Handle(PingChannel, handler{l: l, fn: l.heard})
	}
	for ctx.Err() == nil {
		sctx, stop := context.WithCancel(ctx)
		errc := make(chan error, 1)
		go func() { errc <- pl.Listen(sctx) }()
		ended := l.supervise(ctx, errc)
		stop()
		if !ended {
			<-errc // Listen returns once sctx is cancelled
		}
		l.mu.Lock()
		l.up, l.pid, l.conn = false, 0, nil
		l.mu.Unlock()
	}
}

// supervise pings until ctx ends, Listen returns, or the connection has
// been silent for SilentAfter (then it returns so run reconnects). It
// reports whether it took Listen's result from errc: the caller must not
// wait for it again.
func (l *Listener) supervise(ctx context.Context, errc <-chan error) (ended bool) {
	if l.cfg.Pinger == nil {
		select {
		case <-ctx.Done():
			return false
		case <-errc:
			return true
		}
	}
	t := time.NewTicker(l.cfg.PingInterval)
	defer t.Stop()
	var seq int64
	for {
		select {
		case <-ctx.Done():
			return false
		case err := <-errc:
			l.setErr(err)
			return true
		case <-t.C:
		}
		l.mu.Lock()
		up, silent := l.up, time.Since(l.lastHeard)
		l.mu.Unlock()
		if !up {
			continue // connecting: pgxlisten retries by itself
		}
		if silent > l.cfg.SilentAfter {
			// The reason keeps the word "silent" after the session is torn
			// down, until a reconnect attempt reports its own error.
			err := fmt.Errorf("silent for %s (no self-notification heard)", silent.Round(time.Millisecond))
			l.setErr(err)
			l.cfg.Logger.Warn("listener connection silent; reconnecting", "err", err)
			return false
		}
		seq++
		pctx, cancel := context.WithTimeout(ctx, l.cfg.PingInterval)
		_, err := l.cfg.Pinger.Exec(pctx, "SELECT pg_notify($1, $2)", PingChannel, l.id+":"+strconv.FormatInt(seq, 10))
		cancel()
		if err != nil && ctx.Err() == nil {
			l.cfg.Logger.Debug("listener ping not sent", "err", err)
		}
	}
}

// heard records this listener's own ping.
func (l *Listener) heard(payload string) {
	if !strings.HasPrefix(payload, l.id+":") {
		return
	}
	l.mu.Lock()
	l.lastHeard = time.Now()
	l.mu.Unlock()
}

func (l *Listener) setErr(err error) {
	l.mu.Lock()
	l.lastErr = err
	l.up = false
	l.mu.Unlock()
}

// established runs once every channel of the session on conn is LISTENed.
func (l *Listener) established(ctx context.Context, conn *pgx.Conn) {
	l.mu.Lock()
	if conn != l.conn || l.up {
		l.mu.Unlock()
		return
	}
	l.listened++
	if l.listened < len(l.handlers)+btoi(l.cfg.Pinger != nil) {
		l.mu.Unlock()
		return
	}
	l.up, l.pid, l.lastHeard, l.lastErr = true, conn.PgConn().PID(), time.Now(), nil
	l.mu.Unlock()
	for _, fn := range l.onConnect {
		fn(ctx)
	}
	l.once.Do(func() { close(l.connected) })
	l.cfg.Logger.Debug("listener connected", "pid", conn.PgConn().PID())
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// handler adapts a payload function to pgxlisten; its backlog hook counts
// the channels LISTENed so the connect hooks run after the last one.
type handler struct {
	l  *Listener
	fn func(string)
}

func (h handler) HandleNotification(_ context.Context, n *pgconn.Notification, _ *pgx.Conn) error {
	h.fn(n.Payload)
	return nil
}

func (h handler) HandleBacklog(ctx context.Context, _ string, conn *pgx.Conn) error {
	h.l.established(ctx, conn)
	return nil
}
