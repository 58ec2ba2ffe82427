package bench

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// leanSchema is mode 11's schema and functions (lean.sql): the claim rules
// on the smallest schema that keeps them, the yardstick for modes 1 and 2.
//
//go:embed lean.sql
var leanSchema string

// runLeanMode runs mode 11: each runner on a connection of its own calls
// pw_lean.claim, pw_lean.append and pw_lean.release, three commits a
// cycle as in mode 2, on as many entities with one queued wake each.
func runLeanMode(ctx context.Context, cfg *Config, pool *pgxpool.Pool, m Mode) (ModeResult, error) {
	n := cfg.entitiesFor(m)
	fmt.Fprintf(cfg.Log, "mode %d: creating the lean schema with %d entities with queued wakes\n", m, n)
	if err := createLean(ctx, pool, cfg.Runners, n); err != nil {
		return ModeResult{}, err
	}
	if !cfg.Keep {
		defer func() {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
			defer cancel()
			_, _ = pool.Exec(ctx, `DROP SCHEMA IF EXISTS pw_lean CASCADE`)
		}()
	}
	if err := settle(ctx, pool, !cfg.NoCheckpoint); err != nil {
		return ModeResult{}, err
	}
	stop := vacuumEvery(ctx, pool, sweepInterval, `VACUUM pw_lean.wakes`)
	defer stop()
	res, err := drive(ctx, cfg, pool, m, cfg.Runners, func(ctx context.Context, i int) (cycleFunc, func(), error) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("acquire connection: %w", err)
		}
		w := &leanRunner{conn: conn, runner: fmt.Sprintf("r%d", i+1), leaseMs: cfg.LeaseMs, msg: message(fmt.Sprint(i))}
		return w.cycle, conn.Release, nil
	})
	res.Entities = n
	res.Note = "lean schema (internal/bench/lean.sql): the same claim rules without wake events, tags, stop, push, history"
	return res, err
}

// createLean makes the pw_lean schema afresh with runners r1..rN and
// entities /lean/1..n, each with its stream, one sent message and one
// queued wake for any runner.
func createLean(ctx context.Context, pool *pgxpool.Pool, runners, n int) error {
	if _, err := pool.Exec(ctx, `DROP SCHEMA IF EXISTS pw_lean CASCADE`); err != nil {
		return fmt.Errorf("drop lean schema: %w", err)
	}
	if _, err := pool.Exec(ctx, leanSchema); err != nil {
		return fmt.Errorf("create lean schema: %w", err)
	}
	for _, q := range []string{
		`INSERT INTO pw_lean.runners (id) SELECT 'r' || i FROM generate_series(1, $1::int) i`,
		`INSERT INTO pw_lean.entities (url, stream, sent) SELECT '/lean/' || i, '/v1/stream/lean/' || i || '/main', 1 FROM generate_series(1, $1::int) i`,
		`INSERT INTO pw_lean.streams (path, tail) SELECT '/v1/stream/lean/' || i || '/main', 1 FROM generate_series(1, $1::int) i`,
		`INSERT INTO pw_lean.messages (path, seq, data) SELECT '/v1/stream/lean/' || i || '/main', 1, '\x7b7d' FROM generate_series(1, $1::int) i`,
		`INSERT INTO pw_lean.wakes (id, url, created_at) SELECT nextval('pw_lean.wake_seq'), '/lean/' || i, now() + i * interval '1 microsecond' FROM generate_series(1, $1::int) i`,
	} {
		arg := n
		if q[len("INSERT INTO pw_lean."):][:7] == "runners" {
			arg = runners
		}
		if _, err := pool.Exec(ctx, q, arg); err != nil {
			return fmt.Errorf("fill lean schema: %w", err)
		}
	}
	if _, err := pool.Exec(ctx, `ANALYZE pw_lean.runners, pw_lean.entities, pw_lean.streams, pw_lean.messages, pw_lean.wakes, pw_lean.claims`); err != nil {
		return fmt.Errorf("analyze lean schema: %w", err)
	}
	return nil
}

// vacuumEvery runs stmt every interval until stopped (best effort), as
// vacuumQueueEvery does for wake_queue.
func vacuumEvery(ctx context.Context, pool *pgxpool.Pool, every time.Duration, stmt string) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				_, _ = pool.Exec(ctx, stmt)
			}
		}
	}()
	return func() { cancel(); <-done }
}

// leanRunner is one runner of mode 11.
type leanRunner struct {
	conn    *pgxpool.Conn
	runner  string
	leaseMs int32
	msg     []byte
}

func (w *leanRunner) cycle(ctx context.Context, rec *recorder) error {
	var (
		url, stream, token *string
		epoch              *int64
	)
	err := rec.time(0, func() error {
		return w.conn.QueryRow(ctx, `SELECT url, epoch, stream, token FROM pw_lean.claim($1, $2)`,
			w.runner, w.leaseMs).Scan(&url, &epoch, &stream, &token)
	})
	if errors.Is(err, pgx.ErrNoRows) || (err == nil && url == nil) {
		return errNoWork
	}
	if err != nil {
		return fmt.Errorf("lean claim: %w", err)
	}
	var tail int64
	if err := rec.time(1, func() error {
		return w.conn.QueryRow(ctx, `SELECT pw_lean.append($1, $2)`, *stream, w.msg).Scan(&tail)
	}); err != nil {
		return fmt.Errorf("lean append: %w", err)
	}
	return rec.time(2, func() error {
		var ok bool
		if err := w.conn.QueryRow(ctx, `SELECT pw_lean.release($1, $2, $3, $4, $5)`,
			*url, *epoch, *token, *stream, tail).Scan(&ok); err != nil {
			return fmt.Errorf("lean release: %w", err)
		}
		if !ok {
			return fmt.Errorf("lean release %s/%d: not released", *url, *epoch)
		}
		return nil
	})
}
