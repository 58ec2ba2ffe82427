package db_test

// Shared fixture for the SQL-level tests: each test gets its own migrated
// database (internal/testdb) and calls the lifecycle functions the way an
// operator in psql would, with time pinned through p_now.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/testdb"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// t0 is the pinned start of every test's clock; at(d) is t0 + d.
var t0 = time.Date(2030, 1, 2, 3, 0, 0, 0, time.UTC)

func at(d time.Duration) time.Time { return t0.Add(d) }

const sec = time.Second

type fixture struct {
	t    *testing.T
	ctx  context.Context
	pool *pgxpool.Pool
	url  string
	// published: after each call that may queue a wake (or log a forced
	// event) commits, the wake-event log is published, as the server's
	// publisher does after its own commits (wake-event tests).
	published bool
}

// committed publishes the wake-event log when the fixture does so after
// every commit.
func (f *fixture) committed() {
	f.t.Helper()
	if f.published {
		f.publish()
	}
}

// setup gives t its own database with enabled runners r1, r2 and r3.
func setup(t *testing.T) *fixture {
	t.Helper()
	tdb := testdb.New(t)
	f := &fixture{t: t, ctx: t.Context(), pool: tdb.Pool, url: tdb.URL}
	f.exec(`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00'), ('r2', '\x00'), ('r3', '\x00')`)
	return f
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(f.ctx, sql, args...); err != nil {
		f.t.Fatalf("exec %q: %v", sql, err)
	}
	f.committed()
}

// pgCode is the SQLSTATE of err, or "" when err is not a PostgreSQL error.
func pgCode(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

func (f *fixture) wantCode(err error, code, what string) {
	f.t.Helper()
	if got := pgCode(err); got != code {
		f.t.Fatalf("%s: want SQLSTATE %s, got err %v", what, code, err)
	}
}

// wantMessage checks the PostgreSQL message of err, which starts with its
// SQLSTATE.
func (f *fixture) wantMessage(err error, msg string) {
	f.t.Helper()
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Message != msg {
		f.t.Fatalf("want message %q, got err %v", msg, err)
	}
}

func (f *fixture) spawn(url string) {
	f.t.Helper()
	f.exec(`SELECT * FROM spawn_entity($1, NULL, $2)`, url, t0)
}

// send sends a message to url at now; wake is the queued wake or "".
func (f *fixture) send(url string, now time.Time) (offset, wake string) {
	f.t.Helper()
	var w *string
	err := f.pool.QueryRow(f.ctx, `SELECT msg_offset, wake_id FROM send_to_entity($1, '{"n":1}', NULL, $2)`, url, now).Scan(&offset, &w)
	if err != nil {
		f.t.Fatalf("send %s: %v", url, err)
	}
	f.committed()
	if w != nil {
		wake = *w
	}
	return offset, wake
}

func (f *fixture) sendErr(url string, now time.Time) error {
	_, err := f.pool.Exec(f.ctx, `SELECT * FROM send_to_entity($1, '{"n":1}', NULL, $2)`, url, now)
	return err
}

type claimed struct {
	WakeID, ConsumerID string
	Epoch              int64
	EntityURL          string
	StreamPath         string
	AckedOffset        string
	ClaimToken         string
	LeaseExpiresAt     time.Time
	LeaseTTLms         int32
}

// claimNext calls claim_next_wake; ok is false when it returned no row.
func (f *fixture) claimNext(runner string, ttl time.Duration, now time.Time) (c claimed, ok bool, err error) {
	err = f.pool.QueryRow(f.ctx, `SELECT * FROM claim_next_wake($1, $2, $3)`, runner, int32(ttl/time.Millisecond), now).
		Scan(&c.WakeID, &c.ConsumerID, &c.Epoch, &c.EntityURL, &c.StreamPath, &c.AckedOffset,
			&c.ClaimToken, &c.LeaseExpiresAt, &c.LeaseTTLms)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, false, nil
	}
	if err == nil {
		f.committed() // a takeover ends a claim, which may log an event
	}
	return c, err == nil, err
}

func (f *fixture) claim(runner string, ttl time.Duration, now time.Time) claimed {
	f.t.Helper()
	c, ok, err := f.claimNext(runner, ttl, now)
	if err != nil || !ok {
		f.t.Fatalf("claim by %s at %v: ok=%v err=%v", runner, now, ok, err)
	}
	return c
}

func (f *fixture) noClaim(runner string, now time.Time) {
	f.t.Helper()
	c, ok, err := f.claimNext(runner, 30*sec, now)
	if err != nil || ok {
		f.t.Fatalf("claim by %s: want no work, got %+v err=%v", runner, c, err)
	}
}

type released struct {
	Released, EntityCleared bool
	ClaimStatus             string
	EntityURL, StreamPath   string
	EntityStatus            string
	AckedOffset             string
	QueuedWakeID            *string
}

type ack struct {
	Stream string `json:"stream"`
	Offset string `json:"offset"`
}

func (f *fixture) releaseErr(consumer string, epoch int64, acks any, now time.Time) (r released, err error) {
	b, err := json.Marshal(acks)
	if err != nil {
		f.t.Fatal(err)
	}
	if string(b) == "null" {
		b = []byte("[]")
	}
	err = f.pool.QueryRow(f.ctx, `SELECT * FROM release_claim($1, $2, $3, $4)`, consumer, epoch, string(b), now).
		Scan(&r.Released, &r.EntityCleared, &r.ClaimStatus, &r.EntityURL, &r.StreamPath,
			&r.EntityStatus, &r.AckedOffset, &r.QueuedWakeID)
	if err == nil {
		f.committed()
	}
	return r, err
}

func (f *fixture) release(consumer string, epoch int64, acks any, now time.Time) released {
	f.t.Helper()
	r, err := f.releaseErr(consumer, epoch, acks, now)
	if err != nil {
		f.t.Fatalf("release %s/%d: %v", consumer, epoch, err)
	}
	return r
}

func (f *fixture) heartbeat(consumer string, epoch int64, now time.Time) (time.Time, error) {
	var lease time.Time
	err := f.pool.QueryRow(f.ctx, `SELECT lease_expires_at FROM heartbeat_claim($1, $2, NULL, $3)`, consumer, epoch, now).Scan(&lease)
	return lease, err
}

type expired struct {
	ConsumerID    string
	Epoch         int64
	EntityURL     string
	StreamPath    string
	EntityCleared bool
	EntityStatus  *string
	QueuedWakeID  *string
}

func (f *fixture) expire(now time.Time) []expired {
	f.t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT * FROM expire_claims($1)`, now)
	if err != nil {
		f.t.Fatalf("expire_claims: %v", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (expired, error) {
		var e expired
		err := r.Scan(&e.ConsumerID, &e.Epoch, &e.EntityURL, &e.StreamPath, &e.EntityCleared, &e.EntityStatus, &e.QueuedWakeID)
		return e, err
	})
	if err != nil {
		f.t.Fatalf("expire_claims: %v", err)
	}
	f.committed()
	return out
}

func (f *fixture) stop(url string, now time.Time) string {
	f.t.Helper()
	var status string
	if err := f.pool.QueryRow(f.ctx, `SELECT status FROM stop_entity($1, $2)`, url, now).Scan(&status); err != nil {
		f.t.Fatalf("stop %s: %v", url, err)
	}
	return status
}

func (f *fixture) entityStatus(url string) string {
	f.t.Helper()
	var s string
	if err := f.pool.QueryRow(f.ctx, `SELECT status FROM entities WHERE url = $1`, url).Scan(&s); err != nil {
		f.t.Fatalf("entity %s: %v", url, err)
	}
	return s
}

type dispatch struct {
	ActiveConsumerID *string
	ActiveEpoch      *int64
	ActiveRunnerID   *string
	ActiveLease      *time.Time
	OutstandingWake  *string
	Epoch            int64
	AckedOffset      int64
	LastSentOffset   int64
	LastReleasedAt   *time.Time
	LastCompletedAt  *time.Time
}

func (f *fixture) dispatch(url string) dispatch {
	f.t.Helper()
	var d dispatch
	err := f.pool.QueryRow(f.ctx, `
		SELECT active_consumer_id, active_epoch, active_runner_id, active_lease_expires_at,
		       outstanding_wake_id, epoch, acked_offset, last_sent_offset, last_released_at, last_completed_at
		  FROM entity_dispatch_state WHERE entity_url = $1`, url).
		Scan(&d.ActiveConsumerID, &d.ActiveEpoch, &d.ActiveRunnerID, &d.ActiveLease, &d.OutstandingWake,
			&d.Epoch, &d.AckedOffset, &d.LastSentOffset, &d.LastReleasedAt, &d.LastCompletedAt)
	if err != nil {
		f.t.Fatalf("dispatch %s: %v", url, err)
	}
	return d
}

// wantSlot checks that url's dispatch slot names (consumer, epoch), or is
// empty when consumer is "".
func (f *fixture) wantSlot(url, consumer string, epoch int64) {
	f.t.Helper()
	d := f.dispatch(url)
	if consumer == "" {
		if d.ActiveConsumerID != nil || d.ActiveEpoch != nil || d.ActiveRunnerID != nil || d.ActiveLease != nil {
			f.t.Fatalf("%s: want empty slot, got %v/%v runner %v lease %v", url,
				str(d.ActiveConsumerID), i64(d.ActiveEpoch), str(d.ActiveRunnerID), d.ActiveLease)
		}
		return
	}
	if str(d.ActiveConsumerID) != consumer || i64(d.ActiveEpoch) != epoch {
		f.t.Fatalf("%s: want slot %s/%d, got %s/%d", url, consumer, epoch, str(d.ActiveConsumerID), i64(d.ActiveEpoch))
	}
}

type claimRow struct {
	Status          string
	RunnerID        string
	LeaseExpiresAt  *time.Time
	LastHeartbeatAt *time.Time
	ReleasedAt      *time.Time
	AckedStreams    []byte
}

func (f *fixture) claimRow(consumer string, epoch int64) claimRow {
	f.t.Helper()
	var c claimRow
	err := f.pool.QueryRow(f.ctx, `
		SELECT status, runner_id, lease_expires_at, last_heartbeat_at, released_at, acked_streams
		  FROM consumer_claims WHERE consumer_id = $1 AND epoch = $2`, consumer, epoch).
		Scan(&c.Status, &c.RunnerID, &c.LeaseExpiresAt, &c.LastHeartbeatAt, &c.ReleasedAt, &c.AckedStreams)
	if err != nil {
		f.t.Fatalf("claim %s/%d: %v", consumer, epoch, err)
	}
	return c
}

func (f *fixture) wakeStatus(wakeID string) string {
	f.t.Helper()
	var s string
	if err := f.pool.QueryRow(f.ctx, `SELECT status FROM wakes WHERE wake_id = $1`, wakeID).Scan(&s); err != nil {
		f.t.Fatalf("wake %s: %v", wakeID, err)
	}
	return s
}

// queued lists the queued wakes of url.
func (f *fixture) queued(url string) []string {
	f.t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT wake_id FROM wakes WHERE entity_url = $1 AND status = 'queued' ORDER BY wake_id`, url)
	if err != nil {
		f.t.Fatal(err)
	}
	ids, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		f.t.Fatal(err)
	}
	return ids
}

// dump is every lifecycle row of the database as text, to prove that a
// call changed nothing.
func (f *fixture) dump() string {
	f.t.Helper()
	var s string
	err := f.pool.QueryRow(f.ctx, `
		SELECT json_build_object(
		  'entities', (SELECT json_agg(x ORDER BY x.tenant_id, x.url) FROM entities x),
		  'dispatch', (SELECT json_agg(x ORDER BY x.tenant_id, x.entity_url) FROM entity_dispatch_state x),
		  'claims',   (SELECT json_agg(x ORDER BY x.tenant_id, x.consumer_id, x.epoch) FROM consumer_claims x),
		  'wakes',    (SELECT json_agg(x ORDER BY x.tenant_id, x.wake_id) FROM wakes x),
		  'streams',  (SELECT json_agg(x ORDER BY x.tenant_id, x.path) FROM streams x),
		  'messages', (SELECT json_agg(x ORDER BY x.tenant_id, x.path, x.seq) FROM stream_messages x),
		  'runners',  (SELECT json_agg(x ORDER BY x.tenant_id, x.id) FROM runners x))::text`).Scan(&s)
	if err != nil {
		f.t.Fatalf("dump: %v", err)
	}
	return s
}

func (f *fixture) wantUnchanged(before, what string) {
	f.t.Helper()
	if after := f.dump(); after != before {
		f.t.Fatalf("%s changed the database:\nbefore %s\nafter  %s", what, before, after)
	}
}

func str(p *string) string {
	if p == nil {
		return "<nil>"
	}
	return *p
}

func i64(p *int64) int64 {
	if p == nil {
		return -1
	}
	return *p
}

// off is the stream offset of message n, as pw_offset spells it.
func off(n int) string { return fmt.Sprintf("%016d", n) }
