package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/wakepublish"
)

// The send modes (12, 13, 14) measure what a send costs now that its wake
// event is written after the commit: N senders (--runners), each on a
// session of its own, send one message to entities of their own, each
// entity fresh (no wake queued), so every send queues a wake and logs its
// event. A publisher runs as in the server (after each send's commit and
// every 50 ms, server/wakepublish), and a follower reads the wake streams
// after each publish: the "publish" step is the time from a send's commit
// to its event's being read from its runner's wake stream.
//
//	12 send-1r      the entities are all for one runner
//	13 send-nr      sender i's entities are for runner i
//	14 send-queued  as 13, with --queued wakes queued first (set-based)

// runSendMode runs modes 12, 13 and 14 in a fresh tenant.
func runSendMode(ctx context.Context, cfg *Config, pool *pgxpool.Pool, m Mode) (ModeResult, error) {
	tenant := fmt.Sprintf("bench-%s-m%d", cfg.RunID, m)
	prefix := fmt.Sprintf("%s-m%d", cfg.RunID, m)
	runners, err := createRunners(ctx, pool, tenant, prefix, cfg.Runners)
	if err != nil {
		return ModeResult{}, err
	}
	defer func() {
		if ferr := removeTenant(ctx, pool, tenant); ferr != nil {
			fmt.Fprintf(cfg.Log, "mode %d: %v\n", m, ferr)
		}
	}()
	if _, err := pool.Exec(ctx, `INSERT INTO streams (tenant_id, path, content_type)
		SELECT $1, pw_wake_stream(id), 'application/json' FROM unnest($2::text[]) AS id`, tenant, runners); err != nil {
		return ModeResult{}, fmt.Errorf("create wake streams: %w", err)
	}
	senders := cfg.Runners
	per := cfg.entitiesFor(m)/senders + 1
	fmt.Fprintf(cfg.Log, "mode %d: spawning %d entities (%d per sender) in tenant %s\n", m, per*senders, per, tenant)
	target := make([]string, senders) // sender i's runner
	for i := range target {
		target[i] = runners[i]
		if m == ModeSendOneRunner {
			target[i] = runners[0]
		}
	}
	if err := spawnSendEntities(ctx, pool, tenant, prefix, target, per); err != nil {
		return ModeResult{}, err
	}
	if m == ModeSendQueued {
		start := time.Now()
		if err := queueWakes(ctx, pool, tenant, prefix, runners, cfg.Queued); err != nil {
			return ModeResult{}, err
		}
		fmt.Fprintf(cfg.Log, "mode %d: queued %d wakes and published their events in %s\n", m, cfg.Queued, time.Since(start).Round(time.Millisecond))
	}
	if err := settle(ctx, pool, !cfg.NoCheckpoint); err != nil {
		return ModeResult{}, err
	}
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) wake_queue, wake_events`); err != nil {
		return ModeResult{}, fmt.Errorf("analyze after setup: %w", err)
	}
	stopVacuum := vacuumQueueEvery(ctx, pool, sweepInterval)
	defer stopVacuum()

	// A database migrated only up to 00021 writes the events at commit
	// (no publisher): the same modes then measure that design.
	var hasLog bool
	if err := pool.QueryRow(ctx, `SELECT to_regprocedure('pw_publish_wake_events(integer)') IS NOT NULL`).Scan(&hasLog); err != nil {
		return ModeResult{}, err
	}
	fol := newFollower(pool, tenant, runners)
	if err := fol.start(ctx); err != nil {
		return ModeResult{}, fmt.Errorf("wake stream tails: %w", err)
	}
	pub := wakepublish.New(wakepublish.Config{Pool: pool, Published: func(int) { fol.kick() }})
	pctx, stopBackground := context.WithCancel(ctx)
	if hasLog {
		pub.Start(pctx)
	}
	folDone := make(chan struct{})
	go func() { defer close(folDone); fol.run(pctx) }()

	q := db.New()
	payload := json.RawMessage(`{"bench": true}`)
	from := "bench"
	res, err := drive(ctx, cfg, pool, m, senders, func(ctx context.Context, i int) (cycleFunc, func(), error) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("acquire connection: %w", err)
		}
		k := 0
		return func(ctx context.Context, rec *recorder) error {
			if k >= per {
				return errNoWork
			}
			k++
			url := fmt.Sprintf("/bench/%s-s%d-%d", prefix, i, k)
			var row db.SendToEntityRow
			err := rec.time(0, func() (err error) {
				row, err = q.SendToEntity(ctx, conn, db.SendToEntityParams{Url: url, Payload: payload, FromName: &from, TenantID: tenant})
				return err
			})
			if err != nil {
				return fmt.Errorf("send to %s: %w", url, err)
			}
			if row.WakeID == "" {
				return fmt.Errorf("send to %s queued no wake", url)
			}
			fol.committed("/v1/stream"+url+"/main", time.Now())
			if hasLog {
				pub.Kick()
			} else {
				fol.kick()
			}
			return nil
		}, conn.Release, nil
	})
	// The events of the last sends are published before the latencies are
	// summarised (at most 10 s: the fence may wait for other work).
	waitUntil := time.Now().Add(10 * time.Second)
	for fol.pending() > 0 && time.Now().Before(waitUntil) && ctx.Err() == nil {
		pub.Kick()
		time.Sleep(5 * time.Millisecond)
	}
	stopBackground()
	pub.Stop()
	<-folDone
	res.Entities = per * senders
	res.Steps = append(res.Steps, fol.stats())
	if n := fol.pending(); n > 0 {
		res.Note = fmt.Sprintf("%d events not read within 10 s of the end", n)
	}
	if fol.err != nil && res.FirstErr == "" {
		res.FirstErr = fol.err.Error()
	}
	what := "one runner"
	if m != ModeSendOneRunner {
		what = "one runner each"
	}
	res.Note = joinNote(res.Note, fmt.Sprintf("%d senders to entities of %s", senders, what))
	if !hasLog {
		res.Note = joinNote(res.Note, "no wake-event log in this database: events written at commit")
	}
	if m == ModeSendQueued {
		res.Note = joinNote(res.Note, fmt.Sprintf("%d other wakes queued", cfg.Queued))
	}
	return res, err
}

func joinNote(a, b string) string {
	if a == "" {
		return b
	}
	return a + "; " + b
}

// spawnSendEntities spawns per entities /bench/{prefix}-s{i}-{k} for each
// sender i, for runner target[i], one sender's batch at a time with
// ANALYZE between (plans cached on empty tables would make it quadratic).
func spawnSendEntities(ctx context.Context, pool *pgxpool.Pool, tenant, prefix string, target []string, per int) error {
	for i, runner := range target {
		if i > 0 {
			if _, err := pool.Exec(ctx, `ANALYZE entities, entity_dispatch_state, streams`); err != nil {
				return fmt.Errorf("analyze during setup: %w", err)
			}
		}
		_, err := pool.Exec(ctx, `
			SELECT count(*) FROM generate_series(1, $1::int) k,
			       LATERAL spawn_entity('/bench/' || $2::text || '-s' || $3::int || '-' || k, $4::text, NULL, $5::text)`,
			per, prefix, i, runner, tenant)
		if err != nil {
			return fmt.Errorf("spawn entities of sender %d: %w", i, err)
		}
	}
	return nil
}

// queueWakes queues n wakes in tenant, set-based: entities
// /bench/{prefix}-q-{g} (round-robin over runners), their dispatch rows and
// main streams with one sent message, and their queued wakes, whose
// triggers fill the claim queue and log their events; then it publishes
// the events (pw_publish_wake_events, large batches).
func queueWakes(ctx context.Context, pool *pgxpool.Pool, tenant, prefix string, runners []string, n int) error {
	if n <= 0 {
		return nil
	}
	base := "/bench/" + prefix + "-q-"
	for _, s := range []string{
		`INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, created_at, updated_at)
		 SELECT $1, $2 || g, 'idle', '/v1/stream' || $2 || g || '/main', ($3::text[])[(g - 1) % cardinality($3::text[]) + 1], now(), now()
		   FROM generate_series(1, $4::int) g`,
		`INSERT INTO entity_dispatch_state (tenant_id, entity_url, last_sent_offset, outstanding_wake_id, updated_at)
		 SELECT $1, $2 || g, 1, 'bq-' || $2 || g, now() FROM generate_series(1, $4::int) g`,
		`INSERT INTO streams (tenant_id, path, content_type, tail_seq, entity_url, created_at, updated_at)
		 SELECT $1, '/v1/stream' || $2 || g || '/main', 'application/json', 1, $2 || g, now(), now()
		   FROM generate_series(1, $4::int) g`,
		`INSERT INTO stream_messages (tenant_id, path, seq, data)
		 SELECT $1, '/v1/stream' || $2 || g || '/main', 1, convert_to('{"type":"inbox","bench":true}', 'UTF8')
		   FROM generate_series(1, $4::int) g`,
		`INSERT INTO wakes (tenant_id, wake_id, entity_url, runner_id, status, created_at, updated_at)
		 SELECT $1, 'bq-' || $2 || g, $2 || g, ($3::text[])[(g - 1) % cardinality($3::text[]) + 1], 'queued',
		        now() - interval '1 hour' + g * interval '1 ms', now()
		   FROM generate_series(1, $4::int) g`,
	} {
		args := []any{tenant, base}
		if strings.Contains(s, "$3") {
			args = append(args, runners)
		} else {
			s = strings.ReplaceAll(s, "$4", "$3")
		}
		args = append(args, n)
		if _, err := pool.Exec(ctx, s, args...); err != nil {
			return fmt.Errorf("queue %d wakes: %w", n, err)
		}
	}
	if _, err := pool.Exec(ctx, `ANALYZE entities, entity_dispatch_state, streams, wakes, wake_queue`); err != nil {
		return fmt.Errorf("analyze queued wakes: %w", err)
	}
	return publishLog(ctx, pool)
}

// follower reads the wake streams of a send mode after each publish and
// records, for each event of a send it knows, the time from the send's
// commit to the read.
type follower struct {
	pool    *pgxpool.Pool
	tenant  string
	paths   []string
	after   []int64
	kickCh  chan struct{}
	mu      sync.Mutex
	commits map[string]time.Time // main stream -> commit time of its send
	seen    map[string]time.Time // main stream -> when its event was read before its send returned
	lat     samples
	err     error
}

func newFollower(pool *pgxpool.Pool, tenant string, runners []string) *follower {
	f := &follower{pool: pool, tenant: tenant, kickCh: make(chan struct{}, 1),
		commits: map[string]time.Time{}, seen: map[string]time.Time{}}
	for _, r := range runners {
		f.paths = append(f.paths, "/v1/stream/runners/"+r+"/wake")
		f.after = append(f.after, 0)
	}
	return f
}

// start begins reading at the streams' tails (events written before the
// mode's sends are not followed).
func (f *follower) start(ctx context.Context) error {
	return f.pool.QueryRow(ctx, `SELECT array_agg(coalesce(s.tail_seq, 0) ORDER BY c.i)
		FROM unnest($2::text[]) WITH ORDINALITY AS c(path, i)
		LEFT JOIN streams s ON s.tenant_id = $1 AND s.path = c.path`, f.tenant, f.paths).Scan(&f.after)
}

// committed records that the send queueing stream's wake returned (its
// commit) at at. An event read before that counts as read at once.
func (f *follower) committed(stream string, at time.Time) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, ok := f.seen[stream]; ok {
		delete(f.seen, stream)
		f.lat = append(f.lat, 0)
		return
	}
	f.commits[stream] = at
}

func (f *follower) pending() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.commits)
}

func (f *follower) kick() {
	select {
	case f.kickCh <- struct{}{}:
	default:
	}
}

// run reads after each kick, and every 100 ms, until ctx ends.
func (f *follower) run(ctx context.Context) {
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-f.kickCh:
		case <-t.C:
		}
		if err := f.readOnce(ctx); err != nil && ctx.Err() == nil && f.err == nil {
			f.err = fmt.Errorf("follow wake streams: %w", err)
		}
	}
}

func (f *follower) readOnce(ctx context.Context) error {
	rows, err := f.pool.Query(ctx, `
		SELECT c.i, m.seq, convert_from(m.data, 'UTF8')::jsonb ->> 'stream'
		  FROM unnest($2::text[], $3::bigint[]) WITH ORDINALITY AS c(path, after, i)
		 CROSS JOIN LATERAL (SELECT m.seq, m.data FROM stream_messages m
		                      WHERE m.tenant_id = $1 AND m.path = c.path AND m.seq > c.after
		                      ORDER BY m.seq) m`, f.tenant, f.paths, f.after)
	if err != nil {
		return err
	}
	defer rows.Close()
	now := time.Now()
	for rows.Next() {
		var i, seq int64
		var stream string
		if err := rows.Scan(&i, &seq, &stream); err != nil {
			return err
		}
		f.after[i-1] = max(f.after[i-1], seq)
		f.mu.Lock()
		if at, ok := f.commits[stream]; ok {
			f.lat = append(f.lat, now.Sub(at))
			delete(f.commits, stream)
		} else {
			f.seen[stream] = now
		}
		f.mu.Unlock()
	}
	return rows.Err()
}

func (f *follower) stats() StepStats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return summarise("publish", []samples{f.lat})
}

// removeTenant deletes a send mode's tenant (its own: every row of it is
// the mode's). Foreign-key checks are skipped when the role may do so
// (session_replication_role): every referencing row goes too, and
// deleting 100,000 entities otherwise checks wakes for each one without
// an index on the entity. Without that right it deletes as dataset.remove
// does, in the same order, only slower.
func removeTenant(ctx context.Context, pool *pgxpool.Pool, tenant string) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Minute)
	defer cancel()
	tx, err := pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("remove bench data: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	replica := true
	if _, err := tx.Exec(ctx, `SAVEPOINT r`); err != nil {
		return fmt.Errorf("remove bench data: %w", err)
	}
	if _, err := tx.Exec(ctx, `SET LOCAL session_replication_role = replica`); err != nil {
		replica = false
		if _, err := tx.Exec(ctx, `ROLLBACK TO SAVEPOINT r`); err != nil {
			return fmt.Errorf("remove bench data: %w", err)
		}
	}
	for _, t := range []string{"wake_event_log", "wake_events", "wake_queue", "consumer_claims", "wakes",
		"entity_dispatch_state", "stream_messages", "streams", "entities", "runners"} {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, t).Scan(&exists); err != nil {
			return fmt.Errorf("remove bench data: %w", err)
		}
		if !exists { // a database before the wake-event log
			continue
		}
		if _, err := tx.Exec(ctx, `DELETE FROM `+t+` WHERE tenant_id = $1`, tenant); err != nil {
			return fmt.Errorf("remove bench data (%s, fk checks skipped %t): %w", t, replica, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("remove bench data: %w", err)
	}
	return nil
}
