// Package pglisten keeps one dedicated PostgreSQL connection LISTENing on a
// set of channels and hands each notification to its channel's handler.
//
// When the connection drops it reconnects with backoff and calls the
// reconnect hooks, because notifications sent while it was away are lost:
// a hook re-reads whatever state the notifications would have told it about.
// It never runs a lifecycle step itself.
package pglisten

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listener is one LISTEN connection. Configure it (Handle, OnConnect) before Start.
type Listener struct {
	connString string
	logger     *slog.Logger
	handlers   map[string]func(payload string)
	onConnect  []func(ctx context.Context)

	mu        sync.Mutex
	cancel    context.CancelFunc
	done      chan struct{}
	connected chan struct{} // closed after the first successful LISTEN
	once      sync.Once
	pid       uint32
}

// New returns a listener that connects with connString.
func New(connString string, logger *slog.Logger) *Listener {
	return &Listener{
		connString: connString,
		logger:     logger,
		handlers:   map[string]func(string){},
		connected:  make(chan struct{}),
	}
}

// Handle routes notifications on channel to fn (called on the listener's goroutine).
func (l *Listener) Handle(channel string, fn func(payload string)) { l.handlers[channel] = fn }

// OnConnect registers fn to run after every (re)connection, once LISTEN is in
// place: the place to re-check state whose notifications may have been missed.
func (l *Listener) OnConnect(fn func(ctx context.Context)) { l.onConnect = append(l.onConnect, fn) }

// Connected is closed once the listener has LISTENed for the first time.
func (l *Listener) Connected() <-chan struct{} { return l.connected }

// BackendPID is the server process id of the current LISTEN connection
// (0 when not connected); tests use it to terminate the connection.
func (l *Listener) BackendPID() uint32 {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.pid
}

// Start runs the listener until Stop or ctx ends.
func (l *Listener) Start(ctx context.Context) {
	ctx, cancel := context.WithCancel(ctx)
	l.cancel = cancel
	l.done = make(chan struct{})
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

func (l *Listener) run(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := l.session(ctx)
		if ctx.Err() != nil {
			return
		}
		l.logger.Warn("listener connection lost; reconnecting", "err", err, "backoff", backoff)
		select {
		case <-ctx.Done():
			return
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// session connects, LISTENs, runs the connect hooks and delivers
// notifications until the connection fails.
func (l *Listener) session(ctx context.Context) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	conn, err := pgx.Connect(cctx, l.connString)
	cancel()
	if err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		conn.Close(cctx)
		l.mu.Lock()
		l.pid = 0
		l.mu.Unlock()
	}()
	for ch := range l.handlers {
		if _, err := conn.Exec(ctx, "LISTEN "+pgx.Identifier{ch}.Sanitize()); err != nil {
			return fmt.Errorf("listen %s: %w", ch, err)
		}
	}
	l.mu.Lock()
	l.pid = conn.PgConn().PID()
	l.mu.Unlock()
	for _, fn := range l.onConnect {
		fn(ctx)
	}
	l.once.Do(func() { close(l.connected) })
	l.logger.Debug("listener connected", "pid", conn.PgConn().PID())
	for {
		n, err := conn.WaitForNotification(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return err
			}
			return fmt.Errorf("wait for notification: %w", err)
		}
		if fn, ok := l.handlers[n.Channel]; ok {
			fn(n.Payload)
		}
	}
}
