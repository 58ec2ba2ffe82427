package db_test

// The one path that ends a claim (pw_end_claim, 00007), the claim pick that
// finds a claimable wake however many wakes ahead of it cannot be taken, and
// claim_request, which decides a restart's re-mint on the database clock.

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// SPEC §3.2: the pick must find a claimable wake whenever one exists. 80
// older queued wakes cannot be taken (40 entities whose dispatch rows
// another transaction holds, 40 whose live claims hold them); the 81st can.
// The pick used to give up after 64 skipped wakes.
func TestClaimPickFindsWakeBehindManyUnclaimable(t *testing.T) {
	t.Parallel()
	f := setup(t)
	n := 0
	next := func() time.Time { n++; return at(time.Duration(n) * time.Millisecond) }
	for i := range 40 {
		// Held: a live claim, plus a queued wake (as psql may insert one).
		u := fmt.Sprintf("/held/%d", i)
		f.spawn(u)
		f.send(u, at(0))
	}
	for range 40 {
		f.claim("r1", time.Hour, at(0))
	}
	for i := range 40 {
		f.exec(`INSERT INTO wakes (wake_id, entity_url, status, created_at) VALUES ($1, $2, 'queued', $3)`,
			fmt.Sprintf("wake-held-%d", i), fmt.Sprintf("/held/%d", i), next())
	}
	for i := range 40 {
		u := fmt.Sprintf("/busy/%d", i)
		f.spawn(u)
		f.send(u, next())
	}
	f.spawn("/free/1")
	_, want := f.send("/free/1", next())

	// Another transaction holds the busy entities' dispatch rows.
	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(f.ctx)) //nolint:errcheck
	if _, err := tx.Exec(f.ctx, `SELECT 1 FROM entity_dispatch_state WHERE entity_url LIKE '/busy/%' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	c := f.claim("r2", 30*sec, at(sec))
	if c.WakeID != want || c.EntityURL != "/free/1" {
		t.Fatalf("claimed %s of %s, want %s of /free/1", c.WakeID, c.EntityURL, want)
	}
	// Nothing else is claimable now.
	f.noClaim("r2", at(sec))
	if err := tx.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	// The busy ones are, once their rows are free; the held ones are not.
	for range 40 {
		if c := f.claim("r2", 30*sec, at(2*sec)); c.EntityURL[:6] != "/busy/" {
			t.Fatalf("claimed %s", c.EntityURL)
		}
	}
	f.noClaim("r2", at(2*sec))
}

// pw_end_claim serves the takeover too: the lapsed claim ends as an expiry
// does (slot cleared, wake expired, last_released_at set), then the new
// claim fills the slot; acked_offset is left as it was.
func TestTakeoverEndsTheLapsedClaimLikeExpiry(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	old := f.claim("r1", 10*sec, at(0))
	f.release(old.ConsumerID, old.Epoch, []ack{{Stream: old.StreamPath, Offset: off(1)}}, at(sec))
	f.send("/chat/1", at(2*sec))
	old = f.claim("r1", 10*sec, at(2*sec))
	_, w := f.send("/chat/1", at(20*sec)) // the lease lapsed at 12s
	nw := f.claim("r2", 30*sec, at(21*sec))
	if nw.WakeID != w || nw.Epoch != old.Epoch+1 || nw.AckedOffset != off(1) {
		t.Fatalf("takeover: %+v", nw)
	}
	if s := f.claimRow(old.ConsumerID, old.Epoch).Status; s != "expired" {
		t.Fatalf("old claim: %s", s)
	}
	if s := f.wakeStatus(old.WakeID); s != "expired" {
		t.Fatalf("old wake: %s", s)
	}
	d := f.dispatch("/chat/1")
	if d.LastReleasedAt == nil || !d.LastReleasedAt.Equal(at(21*sec)) || d.AckedOffset != 1 ||
		d.LastCompletedAt == nil || !d.LastCompletedAt.Equal(at(sec)) || str(d.OutstandingWake) != w {
		t.Fatalf("dispatch after takeover: %+v", d)
	}
	f.wantSlot("/chat/1", nw.ConsumerID, nw.Epoch)
	if s := f.entityStatus("/chat/1"); s != "running" {
		t.Fatalf("entity: %s", s)
	}
}

// An expiry that was waiting while a takeover re-used the entity's slot
// does not touch the newer claim; neither does a later expiry pass.
func TestExpireAfterSlotReuseLeavesNewerClaim(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	old := f.claim("r1", 10*sec, at(0))
	f.send("/chat/1", at(20*sec))

	// The takeover, uncommitted, holds the dispatch row.
	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(f.ctx)) //nolint:errcheck
	var nwID string
	var nwEpoch int64
	if err := tx.QueryRow(f.ctx, `SELECT consumer_id, epoch FROM claim_next_wake('r2', 30000, $1)`, at(21*sec)).Scan(&nwID, &nwEpoch); err != nil {
		t.Fatal(err)
	}

	// The sweep sees the old claim lapsed and waits for the row.
	conn, err := f.pool.Acquire(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	done := make(chan error, 1)
	var n int
	go func() { done <- conn.QueryRow(f.ctx, `SELECT count(*) FROM expire_claims($1)`, at(22*sec)).Scan(&n) }()
	f.waitBlocked(pid)
	if err := tx.Commit(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || n != 0 {
		t.Fatalf("waiting expiry: expired %d, err %v; want nothing", n, err)
	}
	for _, now := range []time.Time{at(22 * sec), at(50 * sec)} {
		if got := f.expire(now); len(got) != 0 {
			t.Fatalf("expire at %v: %+v; the newer claim's lease is live", now, got)
		}
	}
	f.wantSlot("/chat/1", nwID, nwEpoch)
	if s := f.claimRow(nwID, nwEpoch).Status; s != "active" {
		t.Fatalf("newer claim: %s", s)
	}
	if s := f.claimRow(old.ConsumerID, old.Epoch).Status; s != "expired" {
		t.Fatalf("old claim: %s", s)
	}
	if s := f.entityStatus("/chat/1"); s != "running" {
		t.Fatalf("entity: %s", s)
	}
}

// Lock order: a release takes the entity's dispatch row first, even for a
// claim that no longer holds the slot (a leak being cleaned up). It used to
// lock the claim, the entity and the wake without it, the reverse of every
// holder of the dispatch row.
func TestReleaseOfLeakedClaimLocksDispatchFirst(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(0))
	// A leak, as psql could make one: the slot no longer names the claim.
	f.exec(`UPDATE entity_dispatch_state SET active_consumer_id = NULL, active_epoch = NULL, active_runner_id = NULL,
	               active_claimed_at = NULL, active_lease_expires_at = NULL WHERE entity_url = '/chat/1'`)
	f.exec(`UPDATE entities SET status = 'idle' WHERE url = '/chat/1'`)

	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(f.ctx)) //nolint:errcheck
	if _, err := tx.Exec(f.ctx, `SELECT 1 FROM entity_dispatch_state WHERE entity_url = '/chat/1' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	conn, err := f.pool.Acquire(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	done := make(chan error, 1)
	var released, cleared bool
	go func() {
		done <- conn.QueryRow(f.ctx, `SELECT released, entity_cleared FROM release_claim($1, $2, '[]', $3)`,
			c.ConsumerID, c.Epoch, at(sec)).Scan(&released, &cleared)
	}()
	if !f.blockedBefore(pid, done) {
		t.Fatal("the release of a leaked claim did not wait for the entity's dispatch row")
	}
	if err := tx.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil || !released || cleared {
		t.Fatalf("release: released %v cleared %v err %v", released, cleared, err)
	}
	if s := f.wakeStatus(c.WakeID); s != "completed" {
		t.Fatalf("wake: %s", s)
	}
}

// blockedBefore polls until backend pid waits for a lock (true) or done
// delivers first (false; the value is put back). Deadline 10s.
func (f *fixture) blockedBefore(pid uint32, done chan error) bool {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			done <- err
			return false
		default:
		}
		var waiting bool
		err := f.pool.QueryRow(f.ctx, `SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1`, int32(pid)).Scan(&waiting)
		if err != nil {
			f.t.Fatal(err)
		}
		if waiting {
			return true
		}
		time.Sleep(2 * time.Millisecond) // poll interval, bounded by the deadline
	}
	f.t.Fatalf("backend %d neither blocked nor finished", pid)
	return false
}

type claimReq struct {
	Active     bool
	Reason     *string
	EntityURL  string
	StreamPath string
	RunnerID   string
	Lease      time.Time
}

func (f *fixture) claimRequest(consumer string, epoch int64, wake *string, hash []byte, now time.Time) (claimReq, error) {
	var r claimReq
	err := f.pool.QueryRow(f.ctx, `SELECT * FROM claim_request($1, $2, $3, $4, $5)`, consumer, epoch, wake, hash, now).
		Scan(&r.Active, &r.Reason, &r.EntityURL, &r.StreamPath, &r.RunnerID, &r.Lease)
	return r, err
}

// SPEC §3.8: a restart's claim request re-mints only for the entity's active
// claim with a live lease, decided by claim_request on the database clock
// (p_now pins it here); it checks the claim token's hash and the wake, and
// changes nothing.
func TestClaimRequest(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 10*sec, at(0))
	good := sha256.Sum256([]byte(c.ClaimToken))
	bad := sha256.Sum256([]byte(c.ClaimToken + "x"))
	wake := c.WakeID
	other := "wake-other"
	before := f.dump()

	want := func(what string, r claimReq, err error, active bool, reason string) {
		t.Helper()
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if r.Active != active || (reason == "" && r.Reason != nil) || (reason != "" && str(r.Reason) != reason) {
			t.Fatalf("%s: active %v reason %s, want %v %q", what, r.Active, str(r.Reason), active, reason)
		}
	}
	r, err := f.claimRequest(c.ConsumerID, c.Epoch, &wake, good[:], at(5*sec))
	want("live claim", r, err, true, "")
	if r.EntityURL != "/chat/1" || r.StreamPath != c.StreamPath || r.RunnerID != "r1" || !r.Lease.Equal(at(10*sec)) {
		t.Fatalf("live claim: %+v", r)
	}
	r, err = f.claimRequest(c.ConsumerID, c.Epoch, nil, nil, at(5*sec))
	want("without wake and token (psql)", r, err, true, "")
	r, err = f.claimRequest(c.ConsumerID, c.Epoch, &other, good[:], at(5*sec))
	want("another wake", r, err, false, "wrong_wake")
	r, err = f.claimRequest(c.ConsumerID, c.Epoch, &wake, good[:], at(10*sec))
	want("lease passed, not swept yet", r, err, false, "lease_passed")
	_, err = f.claimRequest(c.ConsumerID, c.Epoch, &wake, bad[:], at(5*sec))
	f.wantCode(err, "PW013", "wrong claim token")
	_, err = f.claimRequest(c.ConsumerID, c.Epoch+1, &wake, good[:], at(5*sec))
	f.wantCode(err, "PW006", "unknown epoch")
	f.wantUnchanged(before, "claim requests")

	// A claim the slot no longer names (a leak), then an ended one.
	f.exec(`UPDATE entity_dispatch_state SET active_epoch = active_epoch + 100 WHERE entity_url = '/chat/1'`)
	r, err = f.claimRequest(c.ConsumerID, c.Epoch, &wake, good[:], at(5*sec))
	want("not in the slot", r, err, false, "not_in_slot")
	f.exec(`UPDATE entity_dispatch_state SET active_epoch = active_epoch - 100 WHERE entity_url = '/chat/1'`)
	f.release(c.ConsumerID, c.Epoch, nil, at(6*sec))
	r, err = f.claimRequest(c.ConsumerID, c.Epoch, &wake, good[:], at(6*sec))
	want("released", r, err, false, "not_active")

	// Without p_now the database clock decides: a claim taken an hour ago
	// with a one-second lease is refused, whatever the caller's clock says.
	f.send("/chat/1", time.Now().Add(-time.Hour))
	var cons string
	var ep int64
	if err := f.pool.QueryRow(f.ctx, `SELECT consumer_id, epoch FROM claim_next_wake('r1', 1000, now() - interval '1 hour')`).Scan(&cons, &ep); err != nil {
		t.Fatal(err)
	}
	var active bool
	if err := f.pool.QueryRow(f.ctx, `SELECT active FROM claim_request($1, $2)`, cons, ep).Scan(&active); err != nil || active {
		t.Fatalf("lapsed claim on the database clock: active %v err %v", active, err)
	}
}

// Every function signature of the lifecycle keeps working from psql.
func TestLifecycleSignaturesFromPsql(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.spawn("/chat/2")
	f.exec(`SELECT * FROM send_to_entity('/chat/1', '{}')`)
	f.exec(`SELECT * FROM send_to_entity('/chat/2', '{}')`)
	var c1, c2 string
	var e1, e2 int64
	if err := f.pool.QueryRow(f.ctx, `SELECT consumer_id, epoch FROM claim_next_wake('r1')`).Scan(&c1, &e1); err != nil {
		t.Fatal(err)
	}
	if err := f.pool.QueryRow(f.ctx, `SELECT consumer_id, epoch FROM claim_next_wake('r1', 30000)`).Scan(&c2, &e2); err != nil {
		t.Fatal(err)
	}
	f.exec(fmt.Sprintf(`SELECT * FROM heartbeat_claim('%s', %d)`, c1, e1))
	f.exec(fmt.Sprintf(`SELECT * FROM claim_request('%s', %d)`, c1, e1))
	var released bool
	if err := f.pool.QueryRow(f.ctx, fmt.Sprintf(`SELECT released FROM release_claim('%s', %d)`, c1, e1)).Scan(&released); err != nil || !released {
		t.Fatalf("release_claim(consumer, epoch): %v %v", released, err)
	}
	if err := f.pool.QueryRow(f.ctx, fmt.Sprintf(`SELECT released FROM release_and_claim_next('%s', %d)`, c2, e2)).Scan(&released); err != nil || !released {
		t.Fatalf("release_and_claim_next(consumer, epoch): %v %v", released, err)
	}
	f.exec(`SELECT * FROM expire_claims()`)
	f.exec(`SELECT * FROM sweep_claims()`)
	f.exec(`SELECT * FROM stop_entity('/chat/1')`)
	if _, err := f.pool.Exec(f.ctx, `SELECT * FROM pw_end_claim('default', 'nope', 1, 'released', '[]', now())`); pgCode(err) != "PW006" {
		t.Fatalf("pw_end_claim of an unknown claim: %v", err)
	}
	if _, err := f.pool.Exec(f.ctx, fmt.Sprintf(`SELECT * FROM pw_end_claim('default', '%s', %d, 'failed', '[]', now())`, c1, e1)); pgCode(err) != "PW008" {
		t.Fatalf("pw_end_claim as failed: %v", err)
	}
	if err := f.pool.QueryRow(f.ctx, `SELECT 1 FROM pg_proc WHERE proname = 'pw_clear_slot'`).Scan(new(int)); !errors.Is(err, pgx.ErrNoRows) {
		t.Fatalf("pw_clear_slot, the second copy of the end of a claim, still exists (%v)", err)
	}
}
