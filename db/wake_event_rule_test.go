package db_test

// The wake-event rule (00017_wake_event_rule): a runner that claims exactly
// once per wake event it reads, and never otherwise, eventually claims every
// queued wake addressed to it.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// claimEvent calls claim_wake_for_event; ok is false when it returned no row.
func (f *fixture) claimEvent(runner, stream string, now time.Time) (c claimed, ok bool) {
	f.t.Helper()
	err := f.pool.QueryRow(f.ctx, `SELECT * FROM claim_wake_for_event($1, $2, 30000, $3)`, runner, stream, now).
		Scan(&c.WakeID, &c.ConsumerID, &c.Epoch, &c.EntityURL, &c.StreamPath, &c.AckedOffset,
			&c.ClaimToken, &c.LeaseExpiresAt, &c.LeaseTTLms)
	if errors.Is(err, pgx.ErrNoRows) {
		return c, false
	}
	if err != nil {
		f.t.Fatalf("claim_wake_for_event(%s, %s): %v", runner, stream, err)
	}
	f.committed()
	return c, true
}

// An event claims the wake of the entity it names, never another one, even
// when an older wake is claimable.
func TestEventClaimTakesOnlyItsEntity(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1", "r2")
	for _, u := range []string{"/chat/1", "/chat/2", "/chat/3"} {
		f.exec(`SELECT * FROM spawn_entity($1, NULL, $2)`, u, t0)
	}
	f.exec(`SELECT * FROM spawn_entity('/chat/4', 'r2', $1)`, t0)
	f.send("/chat/1", at(0))
	f.send("/chat/2", at(sec))
	f.send("/chat/4", at(sec))

	c, ok := f.claimEvent("r1", "/v1/stream/chat/2/main", at(2*sec))
	if !ok || c.EntityURL != "/chat/2" {
		t.Fatalf("event for /chat/2 claimed %+v (ok=%v), want /chat/2 although /chat/1 is older", c, ok)
	}
	// Its wake is claimed: a second event for it (r2's copy) claims nothing.
	if c, ok := f.claimEvent("r2", "/v1/stream/chat/2/main", at(2*sec)); ok {
		t.Fatalf("second event of a claimed wake claimed %+v", c)
	}
	// An entity with nothing queued, an unknown entity, a stream that is
	// not a main stream, another runner's wake: nothing.
	for _, s := range []string{"/v1/stream/chat/3/main", "/v1/stream/chat/9/main", "/v1/stream/chat/1/other",
		"/v1/stream/chat/4/main"} {
		if c, ok := f.claimEvent("r1", s, at(3*sec)); ok {
			t.Fatalf("event naming %s claimed %+v", s, c)
		}
	}
	if got := f.queued("/chat/1"); len(got) != 1 {
		t.Fatalf("/chat/1 queued wakes %v, want its one wake untouched", got)
	}
}

// An event claim waits for its entity's dispatch lock instead of skipping
// the entity: a send holding the lock does not turn a claimable wake into
// "no work".
func TestEventClaimWaitsForTheDispatchLock(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1")
	f.exec(`SELECT * FROM spawn_entity('/chat/1', NULL, $1)`, t0)
	f.send("/chat/1", at(0))

	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.Background())
	if _, err := tx.Exec(f.ctx, `SELECT * FROM send_to_entity('/chat/1', '{"n":2}', NULL, $1)`, at(sec)); err != nil {
		t.Fatal(err)
	}
	type result struct {
		c  claimed
		ok bool
	}
	done := make(chan result, 1)
	go func() {
		c, ok := f.claimEvent("r1", "/v1/stream/chat/1/main", at(2*sec))
		done <- result{c, ok}
	}()
	select {
	case r := <-done:
		t.Fatalf("event claim answered while a send held the dispatch lock: %+v", r)
	case <-time.After(300 * time.Millisecond):
	}
	if err := tx.Commit(f.ctx); err != nil {
		t.Fatal(err)
	}
	r := <-done
	if !r.ok || r.c.EntityURL != "/chat/1" {
		t.Fatalf("event claim after the send committed: %+v, want the claim of /chat/1", r)
	}
}

// A wake that waited behind a claim gets a new event when that claim
// ends, whichever way it ends: its earlier events may all have been
// answered "no work" while it was blocked.
func TestClaimEndWritesEventForBlockedWake(t *testing.T) {
	t.Parallel()
	main := "/v1/stream/chat/1/main"
	for _, end := range []string{"release", "expire", "takeover", "operator"} {
		t.Run(end, func(t *testing.T) {
			t.Parallel()
			f := wakeSetup(t, "r1")
			f.exec(`SELECT * FROM spawn_entity('/chat/1', NULL, $1)`, t0)
			f.send("/chat/1", at(0))
			c, ok := f.claimEvent("r1", main, at(sec))
			if !ok {
				t.Fatal("no claim")
			}
			// The lease lapses; a send queues a wake behind the claim.
			f.send("/chat/1", at(40*sec))
			f.wantEvents("r1", main, main)
			// Before the lapsed claim is ended, an event claim of the new
			// wake by another route is blocked: emulate with a heartbeat
			// that revives nothing, and check the wake is still queued.
			if len(f.queued("/chat/1")) != 1 {
				t.Fatal("no queued wake behind the claim")
			}
			switch end {
			case "release":
				f.release(c.ConsumerID, c.Epoch, []ack{{Stream: main, Offset: off(1)}}, at(41*sec))
			case "operator":
				f.exec(`SELECT * FROM release_claim($1, $2)`, c.ConsumerID, c.Epoch)
			case "expire":
				f.expire(at(41 * sec))
			case "takeover":
				c2, ok := f.claimEvent("r1", main, at(41*sec))
				if !ok || c2.Epoch != c.Epoch+1 {
					t.Fatalf("takeover: %+v ok=%v", c2, ok)
				}
				// The takeover claimed the wake: no new event is needed
				// (nor written: the wake is not queued at commit).
				f.wantEvents("r1", main, main)
				return
			}
			ev := f.wantEvents("r1", main, main, main)
			if ev[2].seq <= ev[1].seq {
				t.Fatalf("new event %+v not after %+v", ev[2], ev[1])
			}
			if c2, ok := f.claimEvent("r1", main, at(42*sec)); !ok || c2.Epoch != c.Epoch+1 {
				t.Fatalf("claim of the new event: %+v ok=%v", c2, ok)
			}
		})
	}
}

// The backstop: a claimable wake whose events its runner reported reading
// past without claiming it gets a new event once its last event is older
// than the bound; not before, not while an event is unread, not for a
// runner that is offline or never reported.
func TestSweepWakeEventsBackstop(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1", "r2")
	main := "/v1/stream/chat/1/main"
	f.exec(`SELECT * FROM spawn_entity('/chat/1', 'r1', $1)`, t0)
	f.send("/chat/1", at(0))
	ev := f.wantEvents("r1", main)
	now := at(time.Minute)
	sweep := func() int {
		t.Helper()
		var n int
		if err := f.pool.QueryRow(f.ctx, `SELECT sweep_wake_events('5 seconds', 1000, $1)`, now).Scan(&n); err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Never reported a read position: nothing.
	f.exec(`UPDATE runners SET liveness_lease_expires_at = $1 WHERE id = 'r1'`, now.Add(time.Minute))
	if n := sweep(); n != 0 {
		t.Fatalf("backstop without a read position wrote %d", n)
	}
	// Reported a position before the event: the event is unread.
	f.exec(`UPDATE runners SET wake_stream_read_seq = $1 WHERE id = 'r1'`, ev[0].seq-1)
	if n := sweep(); n != 0 {
		t.Fatalf("backstop with the event unread wrote %d", n)
	}
	// Read past it and not claimed: a new event.
	f.exec(`UPDATE runners SET wake_stream_read_seq = $1 WHERE id = 'r1'`, ev[0].seq)
	if n := sweep(); n != 1 {
		t.Fatalf("backstop with the event read and unclaimed wrote %d, want 1", n)
	}
	ev = f.wantEvents("r1", main, main)
	// Its new event is unread and young: nothing more.
	if n := sweep(); n != 0 {
		t.Fatalf("second pass wrote %d", n)
	}
	// Read past the new one too, but it is younger than the bound: nothing.
	f.exec(`UPDATE runners SET wake_stream_read_seq = $1 WHERE id = 'r1'`, ev[1].seq)
	if n := sweep(); n != 0 {
		t.Fatalf("pass within the bound of the last event wrote %d", n)
	}
	// Offline runner: nothing, whatever it read.
	now = now.Add(10 * time.Second)
	f.exec(`UPDATE runners SET liveness_lease_expires_at = $1 WHERE id = 'r1'`, now.Add(-time.Second))
	if n := sweep(); n != 0 {
		t.Fatalf("backstop for an offline runner wrote %d", n)
	}
	// A live claim holds the entity: nothing.
	f.exec(`UPDATE runners SET liveness_lease_expires_at = $1 WHERE id = 'r1'`, now.Add(time.Minute))
	c, ok := f.claimEvent("r1", main, now)
	if !ok {
		t.Fatal("no claim")
	}
	f.send("/chat/1", now.Add(31*time.Second)) // lease lapsed: a wake queues behind it
	now = now.Add(40 * time.Second)
	f.exec(`UPDATE runners SET wake_stream_read_seq = 1000000, liveness_lease_expires_at = $1 WHERE id = 'r1'`, now.Add(time.Minute))
	f.exec(`UPDATE consumer_claims SET lease_expires_at = $1 WHERE consumer_id = $2`, now.Add(time.Minute), c.ConsumerID)
	f.exec(`UPDATE entity_dispatch_state SET active_lease_expires_at = $1 WHERE entity_url = '/chat/1'`, now.Add(time.Minute))
	before := len(f.events("r1"))
	if n := sweep(); n != 0 {
		t.Fatalf("backstop for a wake blocked by a live claim wrote %d", n)
	}
	if len(f.events("r1")) != before {
		t.Fatal("events written for a blocked wake")
	}
}

// The claim row keeps the hash of its write token's secret, derived from
// the claim token; never the token.
func TestClaimKeepsWriteTokenHash(t *testing.T) {
	t.Parallel()
	f := wakeSetup(t, "r1")
	f.exec(`SELECT * FROM spawn_entity('/chat/1', NULL, $1)`, t0)
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(sec))
	var stored []byte
	if err := f.pool.QueryRow(f.ctx, `SELECT write_token_hash FROM consumer_claims WHERE consumer_id = $1 AND epoch = $2`,
		c.ConsumerID, c.Epoch).Scan(&stored); err != nil {
		t.Fatal(err)
	}
	sec := sha256.Sum256([]byte("write:" + c.ClaimToken))
	want := sha256.Sum256([]byte(hex.EncodeToString(sec[:])))
	if hex.EncodeToString(stored) != hex.EncodeToString(want[:]) {
		t.Fatalf("write_token_hash %x, want %x", stored, want)
	}
	var k1, k2 []byte
	if err := f.pool.QueryRow(f.ctx, `SELECT pw_token_key(), pw_token_key()`).Scan(&k1, &k2); err != nil {
		t.Fatal(err)
	}
	if len(k1) != 32 || string(k1) != string(k2) {
		t.Fatalf("token key %x then %x: want one 32-byte key", k1, k2)
	}
}
