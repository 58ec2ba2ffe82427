package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/sweeper"
)

var jsonType = "application/json"

// runSQLMode runs modes 2, 3, 4 and 6: each runner on a connection of its
// own, in a fresh tenant.
func runSQLMode(ctx context.Context, cfg *Config, pool *pgxpool.Pool, m Mode) (ModeResult, error) {
	tenant := fmt.Sprintf("bench-%s-m%d", cfg.RunID, m)
	prefix := fmt.Sprintf("%s-m%d", cfg.RunID, m)
	runners, err := createRunners(ctx, pool, tenant, prefix, cfg.Runners)
	if err != nil {
		return ModeResult{}, err
	}
	ds := dataset{tenant: tenant, prefix: prefix, entities: cfg.entitiesFor(m)}
	if cfg.PinEntities {
		ds.runners = runners
	}
	if ds.entities > 0 {
		fmt.Fprintf(cfg.Log, "mode %d: creating %d entities with queued wakes in tenant %s\n", m, ds.entities, tenant)
		setupStart := time.Now()
		if err := ds.create(ctx, pool, !cfg.NoCheckpoint); err != nil {
			return ModeResult{}, err
		}
		fmt.Fprintf(cfg.Log, "mode %d: set up in %s\n", m, time.Since(setupStart).Round(100*time.Millisecond))
	} else if err := settle(ctx, pool, !cfg.NoCheckpoint); err != nil {
		return ModeResult{}, err
	}
	if m == ModeSQLBacklog {
		if err := queueBacklog(ctx, cfg, pool, tenant, prefix, m); err != nil {
			return ModeResult{}, err
		}
	}
	q := db.New()
	if m == ModeSQL || m == ModeSQLSplit || m == ModeSQLNext || m == ModeSQLBatch || m == ModeSQLBacklog {
		stop := vacuumQueueEvery(ctx, pool, sweepInterval)
		defer stop()
	}
	workers := cfg.Runners
	if m == ModeSQLBatch {
		workers = 1 // one session runs every runner's cycle, batch by batch
	}
	res, err := drive(ctx, cfg, pool, m, workers, func(ctx context.Context, i int) (cycleFunc, func(), error) {
		conn, err := pool.Acquire(ctx)
		if err != nil {
			return nil, nil, fmt.Errorf("acquire connection: %w", err)
		}
		w := &sqlRunner{q: q, conn: conn, tenant: tenant, runner: runners[i], leaseMs: cfg.LeaseMs, msg: message(runners[i])}
		var c cycleFunc
		switch m {
		case ModeSQL, ModeSQLBacklog:
			c = w.cycle
		case ModeSQLSplit:
			c = w.cycleSplit
		case ModeCommit:
			c = w.commit
		case ModeSQLNext:
			c = w.cycleNext
		case ModeSQLInsert:
			w.stream = fmt.Sprintf("/v1/stream/bench/%s-%d/main", prefix, i+1)
			w.seq = 1000
			c = w.insert
		case ModeSQLBatch:
			b := &batchRunner{sqlRunner: w, runners: runners}
			c = b.cycle
		}
		return c, func() { w.releaseHeld(ctx); conn.Release() }, nil
	})
	res.Entities = ds.entities
	if ferr := finishMode(ctx, cfg, pool, ds, m, true); ferr != nil && res.FirstErr == "" {
		res.FirstErr = ferr.Error()
	}
	if m == ModeSQLBatch {
		res.Runners = cfg.Runners
		res.Note = fmt.Sprintf("one session, batches of %d: each cycle's step latency is its batch's", cfg.Runners)
	}
	if m == ModeSQLSplit {
		res.Note = "release as 4 statements leaves wakes 'claimed', as the modelled system does"
	}
	return res, err
}

// sweepInterval is the server's default sweep interval.
const sweepInterval = 5 * time.Second

// vacuumQueueEvery vacuums wake_queue every interval until stopped, as a
// server's sweeper does after each pass (sweeper.Sweeper.VacuumQueue): the
// SQL modes run without a server, and without it the pick would walk the
// dead entries of every wake claimed since the mode began.
func vacuumQueueEvery(ctx context.Context, pool *pgxpool.Pool, every time.Duration) (stop func()) {
	sw := sweeper.New(sweeper.Config{Pool: pool, Interval: every})
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
				_ = sw.VacuumQueue(ctx) // best effort, as in the server
			}
		}
	}()
	return func() { cancel(); <-done }
}

// sqlRunner is one runner of a SQL mode.
type sqlRunner struct {
	q       *db.Queries
	conn    *pgxpool.Conn
	tenant  string
	runner  string
	leaseMs int32
	msg     []byte
	// next is the claim handed over by the previous done (mode 6).
	next *claim
	// stream and seq are mode 8's target: its own stream, its next seq.
	stream string
	seq    int64
}

// insert is mode 8: the append's row written by a plain single-row INSERT
// (no tail update, no notify), the floor an append through HTTP is
// compared with.
func (w *sqlRunner) insert(ctx context.Context, rec *recorder) error {
	w.seq++
	return rec.time(0, func() error {
		_, err := w.conn.Exec(ctx, `INSERT INTO stream_messages (tenant_id, path, seq, data) VALUES ($1, $2, $3, $4)`,
			w.tenant, w.stream, w.seq, w.msg)
		return err
	})
}

// claim is the part of a wake notification a cycle uses.
type claim struct {
	consumer string
	epoch    int64
	entity   string
	stream   string
}

func (w *sqlRunner) claim(ctx context.Context, rec *recorder) (*claim, error) {
	var row db.ClaimNextWakeRow
	err := rec.time(0, func() (err error) {
		row, err = w.q.ClaimNextWake(ctx, w.conn, db.ClaimNextWakeParams{
			RunnerID: w.runner, LeaseTtlMs: w.leaseMs, TenantID: w.tenant})
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, errNoWork
	}
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return &claim{consumer: row.ConsumerID, epoch: row.Epoch, entity: row.EntityUrl, stream: row.StreamPath}, nil
}

// appendMsg appends the runner's message as the server's append handler
// does (one pw_stream_write call) and returns the new tail offset.
func (w *sqlRunner) appendMsg(ctx context.Context, rec *recorder, c *claim) (int64, error) {
	var tail int64
	err := rec.time(1, func() error {
		row, err := w.q.StreamWrite(ctx, w.conn, db.StreamWriteParams{
			TenantID: w.tenant, Path: c.stream, ContentType: &jsonType, Data: [][]byte{w.msg}})
		if err != nil {
			return err
		}
		if row.Status != "appended" {
			return fmt.Errorf("status %s", row.Status)
		}
		tail = row.TailSeq
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("append to %s: %w", c.stream, err)
	}
	return tail, nil
}

func acks(stream string, tail int64) json.RawMessage {
	b, _ := json.Marshal([]map[string]string{{"stream": stream, "offset": fmt.Sprintf("%016d", tail)}})
	return b
}

// claimAndAppend is the first two steps of modes 2 and 3: the claim and the
// append of one message to the claimed entity's stream (its new tail).
func (w *sqlRunner) claimAndAppend(ctx context.Context, rec *recorder) (*claim, int64, error) {
	c, err := w.claim(ctx, rec)
	if err != nil {
		return nil, 0, err
	}
	tail, err := w.appendMsg(ctx, rec, c)
	return c, tail, err
}

// cycle is mode 2: three calls, three commits.
func (w *sqlRunner) cycle(ctx context.Context, rec *recorder) error {
	c, tail, err := w.claimAndAppend(ctx, rec)
	if err != nil {
		return err
	}
	return rec.time(2, func() error {
		r, err := w.q.ReleaseClaim(ctx, w.conn, db.ReleaseClaimParams{
			ConsumerID: c.consumer, Epoch: c.epoch, Acks: acks(c.stream, tail), TenantID: w.tenant})
		if err != nil {
			return fmt.Errorf("release %s/%d: %w", c.consumer, c.epoch, err)
		}
		if !r.Released || !r.EntityCleared {
			return fmt.Errorf("release %s/%d: released=%t entity_cleared=%t", c.consumer, c.epoch, r.Released, r.EntityCleared)
		}
		return nil
	})
}

// The release of mode 3, as the system pullwake is modelled on does it:
// separate autocommit statements, each its own transaction.
const (
	splitReleaseClaim = `UPDATE consumer_claims
   SET status = 'released', released_at = now(), acked_streams = $4, updated_at = now()
 WHERE tenant_id = $1 AND consumer_id = $2 AND epoch = $3 AND status = 'active'`
	splitClearSlot = `UPDATE entity_dispatch_state
   SET active_consumer_id = NULL, active_epoch = NULL, active_runner_id = NULL,
       active_claimed_at = NULL, active_lease_expires_at = NULL, outstanding_wake_id = NULL,
       acked_offset = greatest(acked_offset, $5), last_released_at = now(), updated_at = now()
 WHERE tenant_id = $1 AND entity_url = $2 AND active_consumer_id = $3 AND active_epoch = $4`
	splitSelectEntity = `SELECT status FROM entities WHERE tenant_id = $1 AND url = $2`
	splitEntityIdle   = `UPDATE entities SET status = 'idle', updated_at = now()
 WHERE tenant_id = $1 AND url = $2 AND status = 'running'`
)

// cycleSplit is mode 3: claim and append as mode 2, release as four
// statements (three of them commits).
func (w *sqlRunner) cycleSplit(ctx context.Context, rec *recorder) error {
	c, tail, err := w.claimAndAppend(ctx, rec)
	if err != nil {
		return err
	}
	return rec.time(2, func() error {
		if _, err := w.conn.Exec(ctx, splitReleaseClaim, w.tenant, c.consumer, c.epoch, acks(c.stream, tail)); err != nil {
			return fmt.Errorf("split release: update claim: %w", err)
		}
		if _, err := w.conn.Exec(ctx, splitClearSlot, w.tenant, c.entity, c.consumer, c.epoch, tail); err != nil {
			return fmt.Errorf("split release: clear slot: %w", err)
		}
		var status string
		if err := w.conn.QueryRow(ctx, splitSelectEntity, w.tenant, c.entity).Scan(&status); err != nil {
			return fmt.Errorf("split release: select entity: %w", err)
		}
		if status == "running" {
			if _, err := w.conn.Exec(ctx, splitEntityIdle, w.tenant, c.entity); err != nil {
				return fmt.Errorf("split release: entity idle: %w", err)
			}
		}
		return nil
	})
}

// commit is mode 4: one one-row UPDATE, one commit. Each runner updates
// its own row, so no two wait on one lock.
func (w *sqlRunner) commit(ctx context.Context, rec *recorder) error {
	return rec.time(0, func() error {
		_, err := w.conn.Exec(ctx, `UPDATE runners SET updated_at = now() WHERE tenant_id = $1 AND id = $2`, w.tenant, w.runner)
		return err
	})
}

// cycleNext is mode 6: append, then one release_and_claim_next that hands
// the next claim over; two commits per steady-state cycle.
func (w *sqlRunner) cycleNext(ctx context.Context, rec *recorder) error {
	c := w.next
	if c == nil {
		var err error
		if c, err = w.claim(ctx, rec); err != nil {
			return err
		}
	}
	w.next = nil
	tail, err := w.appendMsg(ctx, rec, c)
	if err != nil {
		return err
	}
	return rec.time(2, func() error {
		r, err := w.q.ReleaseAndClaimNext(ctx, w.conn, db.ReleaseAndClaimNextParams{
			ConsumerID: c.consumer, Epoch: c.epoch, Acks: acks(c.stream, tail),
			RunnerID: &w.runner, LeaseTtlMs: w.leaseMs, TenantID: w.tenant})
		if err != nil {
			return fmt.Errorf("release and claim next %s/%d: %w", c.consumer, c.epoch, err)
		}
		if !r.Released || !r.EntityCleared {
			return fmt.Errorf("release %s/%d: released=%t entity_cleared=%t", c.consumer, c.epoch, r.Released, r.EntityCleared)
		}
		if r.HasNext {
			w.next = &claim{consumer: r.NextConsumerID, epoch: r.NextEpoch, entity: r.NextEntityUrl, stream: r.NextStreamPath}
		}
		return nil
	})
}

// releaseHeld ends the claim a runner of mode 6 still holds when the time
// is up, so the bench leaves no active claim behind. Not timed.
func (w *sqlRunner) releaseHeld(ctx context.Context) {
	c := w.next
	if c == nil {
		return
	}
	w.next = nil
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, _ = w.q.ReleaseClaim(ctx, w.conn, db.ReleaseClaimParams{
		ConsumerID: c.consumer, Epoch: c.epoch, Acks: json.RawMessage(`[]`), TenantID: w.tenant})
}

// batchRunner is mode 10: every runner's claim in one claim_next_wakes
// call, every append in one pw_stream_writes, every release in one
// release_claims: three statements, three commits for N cycles. The schema's
// ceiling for group commit.
type batchRunner struct {
	*sqlRunner
	runners []string
}

func (b *batchRunner) cycle(ctx context.Context, rec *recorder) error {
	n := len(b.runners)
	ttls := make([]int32, n)
	for i := range ttls {
		ttls[i] = b.leaseMs
	}
	var claims []db.ClaimNextWakesRow
	err := rec.time(0, func() (err error) {
		claims, err = b.q.ClaimNextWakes(ctx, b.conn, db.ClaimNextWakesParams{RunnerIds: b.runners, LeaseTtlMs: ttls, TenantID: b.tenant})
		return err
	})
	if err != nil {
		return fmt.Errorf("claim batch: %w", err)
	}
	var held []db.ClaimNextWakesRow
	for _, c := range claims {
		if c.ErrCode != "" {
			return fmt.Errorf("claim for a runner: %s %s", c.ErrCode, c.ErrMessage)
		}
		if c.HasClaim {
			held = append(held, c)
		}
	}
	if len(held) == 0 {
		return errNoWork
	}
	wr := db.StreamWritesParams{TenantID: b.tenant}
	for _, c := range held {
		wr.Paths = append(wr.Paths, c.StreamPath)
		wr.ContentTypes = append(wr.ContentTypes, jsonType)
		wr.EntityWriters = append(wr.EntityWriters, true)
		wr.Counts = append(wr.Counts, 1)
		wr.Data = append(wr.Data, b.msg)
	}
	var writes []db.StreamWritesRow
	err = rec.time(1, func() (err error) {
		writes, err = b.q.StreamWrites(ctx, b.conn, wr)
		return err
	})
	if err != nil {
		return fmt.Errorf("append batch: %w", err)
	}
	rel := db.ReleaseClaimsParams{TenantID: b.tenant}
	for i, c := range held {
		if w := writes[i]; w.ErrCode != "" || w.Status != "appended" {
			return fmt.Errorf("append to %s: %s %s %s", c.StreamPath, w.Status, w.ErrCode, w.ErrMessage)
		}
		rel.ConsumerIds = append(rel.ConsumerIds, c.ConsumerID)
		rel.Epochs = append(rel.Epochs, c.Epoch)
		rel.Acks = append(rel.Acks, string(acks(c.StreamPath, writes[i].TailSeq)))
	}
	var released []db.ReleaseClaimsRow
	err = rec.time(2, func() (err error) {
		released, err = b.q.ReleaseClaims(ctx, b.conn, rel)
		return err
	})
	if err != nil {
		return fmt.Errorf("release batch: %w", err)
	}
	for i, r := range released {
		if r.ErrCode != "" || !r.Released || !r.EntityCleared {
			return fmt.Errorf("release %s/%d: %s %s released=%t entity_cleared=%t", rel.ConsumerIds[i], rel.Epochs[i],
				r.ErrCode, r.ErrMessage, r.Released, r.EntityCleared)
		}
	}
	rec.batch = int64(len(held))
	return nil
}
