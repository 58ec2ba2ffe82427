package db_test

// One test per lifecycle rule of SPEC §3, each calling the plpgsql functions
// directly with a pinned clock. Every test would fail if its rule were
// removed from the SQL.

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"slices"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// SPEC §3.4: a release clears the slot, sets idle, completes the wake and
// stores the release on the claim row.
func TestClaimThenReleaseClearsSlot(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	_, wake := f.send("/chat/1", at(0))
	if wake == "" {
		t.Fatal("send to an idle entity queued no wake")
	}

	c := f.claim("r1", 30*sec, at(1*sec))
	if c.WakeID != wake || c.ConsumerID != wake || c.Epoch != 1 || c.EntityURL != "/chat/1" ||
		c.StreamPath != "/v1/stream/chat/1/main" || c.AckedOffset != off(0) || len(c.ClaimToken) < 32 ||
		!c.LeaseExpiresAt.Equal(at(31*sec)) {
		t.Fatalf("claim: %+v", c)
	}
	if s := f.entityStatus("/chat/1"); s != "running" {
		t.Fatalf("entity after claim: %s", s)
	}
	f.wantSlot("/chat/1", c.ConsumerID, 1)
	if w := f.wakeStatus(wake); w != "claimed" {
		t.Fatalf("wake after claim: %s", w)
	}

	acks := []ack{{Stream: c.StreamPath, Offset: off(1)}}
	r := f.release(c.ConsumerID, c.Epoch, acks, at(2*sec))
	if !r.Released || !r.EntityCleared || r.ClaimStatus != "released" || r.EntityStatus != "idle" ||
		r.EntityURL != "/chat/1" || r.StreamPath != c.StreamPath || r.AckedOffset != off(1) || r.QueuedWakeID != nil {
		t.Fatalf("release: %+v", r)
	}
	f.wantSlot("/chat/1", "", 0)
	d := f.dispatch("/chat/1")
	if d.OutstandingWake != nil || d.AckedOffset != 1 || d.LastReleasedAt == nil || !d.LastReleasedAt.Equal(at(2*sec)) ||
		d.LastCompletedAt == nil || !d.LastCompletedAt.Equal(at(2*sec)) {
		t.Fatalf("dispatch after release: %+v", d)
	}
	if s := f.entityStatus("/chat/1"); s != "idle" {
		t.Fatalf("entity after release: %s", s)
	}
	if w := f.wakeStatus(wake); w != "completed" {
		t.Fatalf("wake after release: %s", w)
	}
	cr := f.claimRow(c.ConsumerID, c.Epoch)
	if cr.Status != "released" || cr.ReleasedAt == nil || !cr.ReleasedAt.Equal(at(2*sec)) {
		t.Fatalf("claim row after release: %+v", cr)
	}
	var stored []ack
	if err := json.Unmarshal(cr.AckedStreams, &stored); err != nil || !slices.Equal(stored, acks) {
		t.Fatalf("acked_streams: %s (%v)", cr.AckedStreams, err)
	}
	if q := f.queued("/chat/1"); len(q) != 0 {
		t.Fatalf("everything acked, yet wakes queued: %v", q)
	}
}

// SPEC §3.4 idempotence: a repeated done changes nothing and reports
// released = false with the claim's current status.
func TestSecondReleaseIsNoop(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(0))
	first := f.release(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(1)}}, at(1*sec))
	if !first.Released || !first.EntityCleared {
		t.Fatalf("first release: %+v", first)
	}
	// A second message arrives and a new claim takes the entity: the repeated
	// done of the old claim must not touch it.
	f.send("/chat/1", at(2*sec))
	c2 := f.claim("r2", 30*sec, at(2*sec))

	before := f.dump()
	for _, acks := range [][]ack{nil, {{Stream: c.StreamPath, Offset: off(2)}}} {
		r := f.release(c.ConsumerID, c.Epoch, acks, at(3*sec))
		if r.Released || r.EntityCleared || r.ClaimStatus != "released" || r.EntityStatus != "running" || r.QueuedWakeID != nil {
			t.Fatalf("repeated release: %+v", r)
		}
		f.wantUnchanged(before, "a repeated release")
	}
	f.wantSlot("/chat/1", c2.ConsumerID, c2.Epoch)
}

// SPEC §3.1 takeover + §3.4 + §6 "a stale token never clears a newer claim":
// a late done of the epoch that lost its lease reports entity_cleared =
// false and leaves the newer claim running.
func TestLateReleaseAfterTakeover(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	old := f.claim("r1", 10*sec, at(0))

	// While the lease is live nothing can take over.
	if _, w := f.send("/chat/1", at(5*sec)); w != "" {
		t.Fatalf("send during a live lease queued %s", w)
	}
	f.noClaim("r2", at(9*sec))

	// The lease lapses (no sweep ran): a new message queues a wake and a
	// claim takes over, expiring the old claim in the same statement.
	_, w := f.send("/chat/1", at(20*sec))
	if w == "" {
		t.Fatal("send after the lease lapsed queued no wake")
	}
	nw := f.claim("r2", 30*sec, at(21*sec))
	if nw.Epoch != old.Epoch+1 || nw.EntityURL != "/chat/1" {
		t.Fatalf("takeover claim: %+v", nw)
	}
	if s := f.claimRow(old.ConsumerID, old.Epoch).Status; s != "expired" {
		t.Fatalf("old claim after takeover: %s, want expired", s)
	}
	if s := f.wakeStatus(old.WakeID); s != "expired" {
		t.Fatalf("old wake after takeover: %s, want expired", s)
	}

	before := f.dump()
	r := f.release(old.ConsumerID, old.Epoch, []ack{{Stream: old.StreamPath, Offset: off(3)}}, at(22*sec))
	if r.Released || r.EntityCleared || r.ClaimStatus != "expired" || r.EntityStatus != "running" {
		t.Fatalf("late release: %+v", r)
	}
	f.wantUnchanged(before, "a late release")
	f.wantSlot("/chat/1", nw.ConsumerID, nw.Epoch)
	if s := f.claimRow(nw.ConsumerID, nw.Epoch).Status; s != "active" {
		t.Fatalf("newer claim: %s", s)
	}
	if s := f.entityStatus("/chat/1"); s != "running" {
		t.Fatalf("entity: %s", s)
	}
	// The newer claim still works.
	if _, err := f.heartbeat(nw.ConsumerID, nw.Epoch, at(23*sec)); err != nil {
		t.Fatalf("heartbeat of the newer claim: %v", err)
	}
}

// SPEC §3.4 acks: acked_offset follows the main-stream ack, never goes back,
// and a sent message past it is never left without a wake. An ack of
// another stream, of -1 or past the tail is refused before anything changes.
func TestReleaseAcks(t *testing.T) {
	t.Parallel()

	// newClaim spawns /chat/1, sends n messages and claims the wake.
	newClaim := func(t *testing.T, n int) (*fixture, claimed) {
		f := setup(t)
		f.spawn("/chat/1")
		for range n {
			f.send("/chat/1", at(0))
		}
		return f, f.claim("r1", 30*sec, at(1*sec))
	}

	t.Run("partial ack advances and re-queues", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 3)
		r := f.release(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(2)}}, at(2*sec))
		if !r.EntityCleared || r.AckedOffset != off(2) || r.EntityStatus != "idle" || r.QueuedWakeID == nil {
			t.Fatalf("release: %+v", r)
		}
		if q := f.queued("/chat/1"); !slices.Equal(q, []string{*r.QueuedWakeID}) {
			t.Fatalf("queued wakes %v, want [%s]", q, *r.QueuedWakeID)
		}
		if d := f.dispatch("/chat/1"); d.AckedOffset != 2 || str(d.OutstandingWake) != *r.QueuedWakeID {
			t.Fatalf("dispatch: %+v", d)
		}
		// The next claim resumes at the ack.
		if c2 := f.claim("r2", 30*sec, at(3*sec)); c2.AckedOffset != off(2) || c2.WakeID != *r.QueuedWakeID {
			t.Fatalf("next claim: %+v", c2)
		}
	})

	t.Run("never backwards", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 3)
		f.release(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(2)}}, at(2*sec))
		c2 := f.claim("r1", 30*sec, at(3*sec))
		r := f.release(c2.ConsumerID, c2.Epoch, []ack{{Stream: c2.StreamPath, Offset: off(1)}}, at(4*sec))
		if r.AckedOffset != off(2) || r.QueuedWakeID == nil {
			t.Fatalf("lower ack: %+v", r)
		}
		if d := f.dispatch("/chat/1"); d.AckedOffset != 2 {
			t.Fatalf("acked_offset went back to %d", d.AckedOffset)
		}
		// No ack at all also leaves it where it was.
		c3 := f.claim("r1", 30*sec, at(5*sec))
		if r := f.release(c3.ConsumerID, c3.Epoch, nil, at(6*sec)); r.AckedOffset != off(2) || r.QueuedWakeID == nil {
			t.Fatalf("release without acks: %+v", r)
		}
	})

	t.Run("full ack queues nothing", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 3)
		// "path" spelling, path without the /v1/stream prefix.
		acks := []map[string]string{{"path": "/chat/1/main", "offset": off(3)}}
		r := f.release(c.ConsumerID, c.Epoch, acks, at(2*sec))
		if r.AckedOffset != off(3) || r.QueuedWakeID != nil || r.EntityStatus != "idle" {
			t.Fatalf("release: %+v", r)
		}
		if q := f.queued("/chat/1"); len(q) != 0 {
			t.Fatalf("queued %v though everything was acked", q)
		}
		if d := f.dispatch("/chat/1"); d.OutstandingWake != nil {
			t.Fatalf("outstanding wake %s with nothing to do", *d.OutstandingWake)
		}
	})

	t.Run("ack of another stream is refused", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 2)
		f.spawn("/chat/2")
		before := f.dump()
		for _, s := range []string{"/v1/stream/other", "/v1/stream/chat/2/main", "/chat/2/main", "chat/1/main"} {
			// The main stream's ack first: one foreign ack refuses the whole done.
			_, err := f.releaseErr(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(1)}, {Stream: s, Offset: off(1)}}, at(2*sec))
			f.wantCode(err, "PW008", "ack of "+s)
			f.wantMessage(err, "PW008: claim "+c.ConsumerID+"/1 owns stream /v1/stream/chat/1/main, not '"+s+"' (acks[1])")
			f.wantUnchanged(before, "a done acking "+s)
		}
	})

	t.Run("ack past the tail is refused", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 3)
		before := f.dump()
		_, err := f.releaseErr(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(4)}}, at(2*sec))
		f.wantCode(err, "PW008", "ack past the tail")
		f.wantMessage(err, "PW008: offset 0000000000000004 is beyond the tail 0000000000000003 of /v1/stream/chat/1/main (acks[0])")
		f.wantUnchanged(before, "a done acking past the tail")
		// The tail itself is fine, and a retry with the same acks, after
		// the stream grew, answers released = false.
		acks := []ack{{Stream: c.StreamPath, Offset: off(3)}}
		if r := f.release(c.ConsumerID, c.Epoch, acks, at(3*sec)); !r.Released || r.AckedOffset != off(3) || r.QueuedWakeID != nil {
			t.Fatalf("ack of the tail: %+v", r)
		}
		f.send("/chat/1", at(4*sec))
		if r := f.release(c.ConsumerID, c.Epoch, acks, at(5*sec)); r.Released || r.ClaimStatus != "released" || r.AckedOffset != off(3) {
			t.Fatalf("retried done: %+v", r)
		}
	})

	t.Run("retried done is idempotent", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 2)
		acks := []map[string]string{{"path": "/chat/1/main", "offset": off(2)}}
		if r := f.release(c.ConsumerID, c.Epoch, acks, at(2*sec)); !r.Released || !r.EntityCleared || r.AckedOffset != off(2) {
			t.Fatalf("done: %+v", r)
		}
		before := f.dump()
		for i := range 3 {
			r := f.release(c.ConsumerID, c.Epoch, acks, at(time.Duration(3+i)*sec))
			if r.Released || r.EntityCleared || r.ClaimStatus != "released" || r.AckedOffset != off(2) {
				t.Fatalf("retry %d: %+v", i, r)
			}
		}
		f.wantUnchanged(before, "retried dones")
	})

	t.Run("invalid offset changes nothing", func(t *testing.T) {
		t.Parallel()
		f, c := newClaim(t, 1)
		before := f.dump()
		for _, acks := range []any{
			[]ack{{Stream: c.StreamPath, Offset: "abc"}},
			[]ack{{Stream: c.StreamPath, Offset: "12"}},
			[]ack{{Stream: "/v1/stream/other", Offset: "x"}},
			[]ack{{Stream: c.StreamPath, Offset: "-1"}},
			[]ack{{Stream: c.StreamPath, Offset: "-0000000000000001"}},
			[]map[string]any{{"stream": c.StreamPath, "offset": nil}},
			[]map[string]any{{"stream": c.StreamPath, "offset": 1}},
			[]map[string]any{{"stream": c.StreamPath}},
			[]map[string]any{{"stream": 7, "offset": off(1)}},
			[]map[string]any{{"offset": off(1)}},
			[]any{"x"},
			[]any{[]string{c.StreamPath, off(1)}},
			map[string]string{"stream": c.StreamPath},
		} {
			_, err := f.releaseErr(c.ConsumerID, c.Epoch, acks, at(2*sec))
			f.wantCode(err, "PW008", "release with acks "+mustJSON(acks))
			f.wantUnchanged(before, "a rejected release")
		}
		_, err := f.releaseErr(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: "-1"}}, at(2*sec))
		f.wantMessage(err, "PW008: offset -1 acks nothing: ack the offset read up to, or send no ack (acks[0])")
		// The claim is intact and a valid done still works.
		if r := f.release(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(0)}}, at(3*sec)); !r.Released || !r.EntityCleared || r.AckedOffset != off(0) {
			t.Fatalf("valid release after rejections: %+v", r)
		}
	})
}

func mustJSON(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// SPEC §3.1 single flight and §3.7 status guards on claim.
func TestClaimSingleFlight(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.spawn("/chat/2")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(0))

	// A send during the live claim queues no wake; nobody can claim.
	if _, w := f.send("/chat/1", at(1*sec)); w != "" {
		t.Fatalf("send during a live claim queued %s", w)
	}
	if q := f.queued("/chat/1"); len(q) != 0 {
		t.Fatalf("queued %v during a live claim", q)
	}
	f.noClaim("r2", at(2*sec))
	f.noClaim("r1", at(2*sec))

	// Another entity's work is still handed out.
	f.send("/chat/2", at(2*sec))
	if c2 := f.claim("r2", 30*sec, at(3*sec)); c2.EntityURL != "/chat/2" {
		t.Fatalf("claim got %s, want /chat/2", c2.EntityURL)
	}

	// Even a wake that is queued for the entity (inserted by an operator)
	// is not handed out while the lease is live.
	f.exec(`INSERT INTO wakes (wake_id, entity_url, status, created_at) VALUES ('wake-manual', '/chat/1', 'queued', $1)`, at(0))
	f.noClaim("r3", at(4*sec))
	if s := f.wakeStatus("wake-manual"); s != "queued" {
		t.Fatalf("skipped wake became %s", s)
	}
	var active int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM consumer_claims WHERE entity_url = '/chat/1' AND status = 'active'`).Scan(&active); err != nil || active != 1 {
		t.Fatalf("active claims on /chat/1: %d (%v)", active, err)
	}

	// Release re-queues for the message sent during the claim; a second
	// runner then gets it with the next epoch.
	f.exec(`UPDATE wakes SET status = 'superseded' WHERE wake_id = 'wake-manual'`)
	r := f.release(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(1)}}, at(5*sec))
	if r.QueuedWakeID == nil {
		t.Fatalf("release left message 2 without a wake: %+v", r)
	}
	if c3 := f.claim("r2", 30*sec, at(6*sec)); c3.EntityURL != "/chat/1" || c3.Epoch != 2 || c3.AckedOffset != off(1) {
		t.Fatalf("claim after release: %+v", c3)
	}
}

// SPEC §3.7: claims never start for stopping/stopped entities; stop of an
// idle entity is immediate; stop of a running one waits for its claim.
func TestStopEntity(t *testing.T) {
	t.Parallel()

	t.Run("idle stops at once and its wake is superseded", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.spawn("/chat/1")
		_, w := f.send("/chat/1", at(0))
		if s := f.stop("/chat/1", at(1*sec)); s != "stopped" {
			t.Fatalf("stop idle: %s", s)
		}
		if s := f.wakeStatus(w); s != "superseded" {
			t.Fatalf("queued wake after stop: %s", s)
		}
		if d := f.dispatch("/chat/1"); d.OutstandingWake != nil {
			t.Fatalf("outstanding wake after stop: %s", *d.OutstandingWake)
		}
		f.noClaim("r1", at(2*sec))
		f.wantCode(f.sendErr("/chat/1", at(3*sec)), "PW003", "send to stopped")
		// Stopping again is harmless.
		if s := f.stop("/chat/1", at(4*sec)); s != "stopped" {
			t.Fatalf("second stop: %s", s)
		}
	})

	t.Run("running goes stopping, release makes it stopped", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.spawn("/chat/1")
		f.send("/chat/1", at(0))
		c := f.claim("r1", 30*sec, at(0))
		if s := f.stop("/chat/1", at(1*sec)); s != "stopping" {
			t.Fatalf("stop running: %s", s)
		}
		f.wantSlot("/chat/1", c.ConsumerID, c.Epoch)
		before := f.dump()
		f.wantCode(f.sendErr("/chat/1", at(2*sec)), "PW003", "send to stopping")
		f.wantUnchanged(before, "a refused send")
		// Nothing acked: a running entity would get a new wake, a stopping one
		// must not.
		r := f.release(c.ConsumerID, c.Epoch, nil, at(3*sec))
		if !r.EntityCleared || r.EntityStatus != "stopped" || r.QueuedWakeID != nil {
			t.Fatalf("release of stopping: %+v", r)
		}
		if s := f.entityStatus("/chat/1"); s != "stopped" {
			t.Fatalf("entity after release: %s", s)
		}
		if q := f.queued("/chat/1"); len(q) != 0 {
			t.Fatalf("stopped entity has queued wakes %v", q)
		}
		f.noClaim("r1", at(4*sec))
		// A repeated done leaves it stopped.
		if r := f.release(c.ConsumerID, c.Epoch, nil, at(5*sec)); r.Released || r.EntityStatus != "stopped" {
			t.Fatalf("repeated release: %+v", r)
		}
	})

	t.Run("expiry of a stopping entity makes it stopped", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.spawn("/chat/1")
		f.send("/chat/1", at(0))
		c := f.claim("r1", 10*sec, at(0))
		f.stop("/chat/1", at(1*sec))
		ex := f.expire(at(11 * sec))
		if len(ex) != 1 || ex[0].ConsumerID != c.ConsumerID || !ex[0].EntityCleared || str(ex[0].EntityStatus) != "stopped" || ex[0].QueuedWakeID != nil {
			t.Fatalf("expire: %+v", ex)
		}
		if s := f.entityStatus("/chat/1"); s != "stopped" {
			t.Fatalf("entity: %s", s)
		}
		if q := f.queued("/chat/1"); len(q) != 0 {
			t.Fatalf("queued %v", q)
		}
	})

	t.Run("done never turns stopped into idle", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.spawn("/chat/1")
		f.send("/chat/1", at(0))
		c := f.claim("r1", 30*sec, at(0))
		// An operator forces the entity to stopped while its claim runs.
		f.exec(`UPDATE entities SET status = 'stopped' WHERE url = '/chat/1'`)
		r := f.release(c.ConsumerID, c.Epoch, []ack{{Stream: c.StreamPath, Offset: off(1)}}, at(1*sec))
		if !r.Released || !r.EntityCleared || r.EntityStatus != "stopped" {
			t.Fatalf("release: %+v", r)
		}
		if s := f.entityStatus("/chat/1"); s != "stopped" {
			t.Fatalf("entity: %s", s)
		}
	})

	t.Run("a queued wake of a stopped entity is never claimed", func(t *testing.T) {
		t.Parallel()
		f := setup(t)
		f.spawn("/chat/1")
		f.spawn("/chat/2")
		f.stop("/chat/1", at(0))
		// /chat/3 is stopping and its claim's lease has lapsed at 2s: a
		// takeover must not start a claim for it either.
		f.spawn("/chat/3")
		f.send("/chat/3", at(0))
		c3 := f.claim("r1", 1*sec, at(0))
		f.stop("/chat/3", at(0))
		// Operator-inserted wakes, older than any other work.
		f.exec(`INSERT INTO wakes (wake_id, entity_url, status, created_at)
		        VALUES ('wake-s1', '/chat/1', 'queued', $1), ('wake-s3', '/chat/3', 'queued', $1)`, at(-time.Hour))
		f.send("/chat/2", at(1*sec))
		c := f.claim("r2", 30*sec, at(2*sec))
		if c.EntityURL != "/chat/2" {
			t.Fatalf("claimed %s, want /chat/2", c.EntityURL)
		}
		for _, w := range []string{"wake-s1", "wake-s3"} {
			if s := f.wakeStatus(w); s != "superseded" {
				t.Fatalf("%s: %s, want superseded", w, s)
			}
		}
		if s := f.entityStatus("/chat/1"); s != "stopped" {
			t.Fatalf("/chat/1: %s", s)
		}
		if s := f.entityStatus("/chat/3"); s != "stopping" {
			t.Fatalf("/chat/3: %s", s)
		}
		if s := f.claimRow(c3.ConsumerID, c3.Epoch).Status; s != "active" {
			t.Fatalf("/chat/3 claim: %s (left for the sweeper)", s)
		}
		f.wantSlot("/chat/3", c3.ConsumerID, c3.Epoch)
	})
}

// SPEC §3.3: heartbeat extends the lease by the TTL and cannot revive an
// ended or lapsed claim.
func TestHeartbeat(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, u := range []string{"/chat/1", "/chat/2", "/chat/3"} {
		f.spawn(u)
		f.send(u, at(0))
	}
	c1 := f.claim("r1", 10*sec, at(0))
	c2 := f.claim("r1", 10*sec, at(0))
	c3 := f.claim("r1", 10*sec, at(0))

	lease, err := f.heartbeat(c1.ConsumerID, c1.Epoch, at(4*sec))
	if err != nil || !lease.Equal(at(14*sec)) {
		t.Fatalf("heartbeat: lease %v err %v, want %v", lease, err, at(14*sec))
	}
	cr := f.claimRow(c1.ConsumerID, c1.Epoch)
	if !cr.LeaseExpiresAt.Equal(at(14*sec)) || !cr.LastHeartbeatAt.Equal(at(4*sec)) {
		t.Fatalf("claim row: %+v", cr)
	}
	if d := f.dispatch(c1.EntityURL); !d.ActiveLease.Equal(at(14 * sec)) {
		t.Fatalf("dispatch lease %v", d.ActiveLease)
	}
	// Heartbeats keep it alive well past the first TTL.
	for i := 1; i <= 5; i++ {
		if _, err := f.heartbeat(c1.ConsumerID, c1.Epoch, at(time.Duration(4+8*i)*sec)); err != nil {
			t.Fatalf("heartbeat %d: %v", i, err)
		}
	}
	if ex := f.expire(at(50 * sec)); len(ex) != 2 {
		t.Fatalf("expire at 50s: %+v, want c2 and c3 only", ex)
	}
	if s := f.claimRow(c1.ConsumerID, c1.Epoch).Status; s != "active" {
		t.Fatalf("heartbeated claim: %s", s)
	}

	// Expired claim.
	_, err = f.heartbeat(c2.ConsumerID, c2.Epoch, at(5*sec))
	f.wantCode(err, "PW007", "heartbeat of an expired claim")

	// Released claim.
	f.send(c3.EntityURL, at(51*sec))
	c3b := f.claim("r1", 10*sec, at(51*sec))
	f.release(c3b.ConsumerID, c3b.Epoch, nil, at(52*sec))
	_, err = f.heartbeat(c3b.ConsumerID, c3b.Epoch, at(52*sec))
	f.wantCode(err, "PW007", "heartbeat of a released claim")

	// Lease passed but no sweep yet: the claim is still 'active' in the row,
	// yet cannot be revived, and the failed heartbeat changes nothing.
	before := f.dump()
	_, err = f.heartbeat(c1.ConsumerID, c1.Epoch, at(200*sec))
	f.wantCode(err, "PW007", "heartbeat after the lease passed")
	f.wantUnchanged(before, "a refused heartbeat")
	// Exactly at the lease end counts as passed.
	last := *f.claimRow(c1.ConsumerID, c1.Epoch).LeaseExpiresAt
	_, err = f.heartbeat(c1.ConsumerID, c1.Epoch, last)
	f.wantCode(err, "PW007", "heartbeat at the lease end")

	_, err = f.heartbeat("wake-nope", 1, at(0))
	f.wantCode(err, "PW006", "heartbeat of an unknown claim")
}

// SPEC §3.5: expire_claims ends exactly the lapsed claims and frees their
// entities as a release would, re-queueing unacked sent messages.
func TestExpireClaims(t *testing.T) {
	t.Parallel()
	f := setup(t)
	urls := []string{"/chat/a", "/chat/b", "/chat/c", "/chat/d"}
	for _, u := range urls {
		f.spawn(u)
		f.send(u, at(0))
	}
	ca := f.claim("r1", 10*sec, at(0)) // lapses at 10s
	cb := f.claim("r1", 20*sec, at(0)) // lapses at 20s
	cc := f.claim("r1", 10*sec, at(0)) // heartbeated to 19s
	cd := f.claim("r1", 10*sec, at(0)) // stopping, lapses at 10s
	if _, err := f.heartbeat(cc.ConsumerID, cc.Epoch, at(9*sec)); err != nil {
		t.Fatal(err)
	}
	f.stop(cd.EntityURL, at(1*sec))
	f.send(ca.EntityURL, at(2*sec)) // message 2 during the claim: no wake yet

	if ex := f.expire(at(9 * sec)); len(ex) != 0 {
		t.Fatalf("expire before any lease passed: %+v", ex)
	}
	ex := f.expire(at(15 * sec))
	got := map[string]expired{}
	for _, e := range ex {
		got[e.ConsumerID] = e
	}
	if len(ex) != 2 {
		t.Fatalf("expired %+v, want %s and %s", ex, ca.ConsumerID, cd.ConsumerID)
	}
	ea, ed := got[ca.ConsumerID], got[cd.ConsumerID]
	if !ea.EntityCleared || str(ea.EntityStatus) != "idle" || ea.QueuedWakeID == nil || ea.Epoch != ca.Epoch {
		t.Fatalf("expiry of a: %+v", ea)
	}
	if !ed.EntityCleared || str(ed.EntityStatus) != "stopped" || ed.QueuedWakeID != nil {
		t.Fatalf("expiry of d: %+v", ed)
	}
	for _, c := range []claimed{ca, cd} {
		if s := f.claimRow(c.ConsumerID, c.Epoch).Status; s != "expired" {
			t.Fatalf("%s: claim %s", c.EntityURL, s)
		}
		if s := f.wakeStatus(c.WakeID); s != "expired" {
			t.Fatalf("%s: wake %s", c.EntityURL, s)
		}
		f.wantSlot(c.EntityURL, "", 0)
	}
	for _, c := range []claimed{cb, cc} {
		if s := f.claimRow(c.ConsumerID, c.Epoch).Status; s != "active" {
			t.Fatalf("%s: live claim became %s", c.EntityURL, s)
		}
		f.wantSlot(c.EntityURL, c.ConsumerID, c.Epoch)
	}
	if s := f.entityStatus(ca.EntityURL); s != "idle" {
		t.Fatalf("a: %s", s)
	}
	if q := f.queued(ca.EntityURL); !slices.Equal(q, []string{*ea.QueuedWakeID}) {
		t.Fatalf("a queued %v", q)
	}
	if d := f.dispatch(ca.EntityURL); d.AckedOffset != 0 || d.LastCompletedAt != nil {
		t.Fatalf("a dispatch after expiry: %+v", d)
	}
	// A second pass at the same time finds nothing.
	if ex := f.expire(at(15 * sec)); len(ex) != 0 {
		t.Fatalf("second pass: %+v", ex)
	}
	// The re-queued wake goes to the next claim, from offset 0 again.
	if n := f.claim("r2", 10*sec, at(16*sec)); n.EntityURL != ca.EntityURL || n.Epoch != ca.Epoch+1 || n.AckedOffset != off(0) {
		t.Fatalf("claim after expiry: %+v", n)
	}
	// A late done of the expired claim changes nothing.
	before := f.dump()
	if r := f.release(ca.ConsumerID, ca.Epoch, nil, at(17*sec)); r.Released || r.ClaimStatus != "expired" || r.EntityStatus != "running" {
		t.Fatalf("late done: %+v", r)
	}
	f.wantUnchanged(before, "a late done after expiry")
}

// SPEC §3.5 / STYLE: the expiry UPDATE repeats its condition, so a heartbeat
// that commits while expire_claims waits for the lock wins.
func TestExpireRechecksAfterHeartbeat(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 10*sec, at(0))

	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(f.ctx)) //nolint:errcheck
	var lease time.Time
	if err := tx.QueryRow(f.ctx, `SELECT lease_expires_at FROM heartbeat_claim($1, $2, NULL, $3)`, c.ConsumerID, c.Epoch, at(9*sec)).Scan(&lease); err != nil {
		t.Fatal(err)
	}

	// The sweep at 15s sees the committed lease (10s) and picks the claim,
	// then blocks on the dispatch row the heartbeat holds.
	type result struct {
		rows []expired
		err  error
	}
	done := make(chan result, 1)
	conn, err := f.pool.Acquire(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	go func() {
		rows, err := conn.Query(f.ctx, `SELECT consumer_id, epoch FROM expire_claims($1)`, at(15*sec))
		var res result
		if err == nil {
			res.rows, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (expired, error) {
				var e expired
				return e, r.Scan(&e.ConsumerID, &e.Epoch)
			})
		}
		res.err = err
		done <- res
	}()
	f.waitBlocked(pid)
	if err := tx.Commit(f.ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || len(res.rows) != 0 {
		t.Fatalf("expire racing a heartbeat: %+v err %v; the heartbeat committed first and must win", res.rows, res.err)
	}
	cr := f.claimRow(c.ConsumerID, c.Epoch)
	if cr.Status != "active" || !cr.LeaseExpiresAt.Equal(at(19*sec)) {
		t.Fatalf("claim after the race: %+v", cr)
	}
	f.wantSlot("/chat/1", c.ConsumerID, c.Epoch)
	if s := f.entityStatus("/chat/1"); s != "running" {
		t.Fatalf("entity: %s", s)
	}
}

// The other order: the sweep holds the lock, the heartbeat waits and loses
// cleanly with CLAIM_NOT_ACTIVE.
func TestHeartbeatLosesToExpiry(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 10*sec, at(0))

	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(f.ctx)) //nolint:errcheck
	var n int
	if err := tx.QueryRow(f.ctx, `SELECT count(*) FROM expire_claims($1)`, at(15*sec)).Scan(&n); err != nil || n != 1 {
		t.Fatalf("expire in tx: %d %v", n, err)
	}
	conn, err := f.pool.Acquire(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	done := make(chan error, 1)
	go func() {
		_, err := conn.Exec(f.ctx, `SELECT * FROM heartbeat_claim($1, $2, NULL, $3)`, c.ConsumerID, c.Epoch, at(9*sec))
		done <- err
	}()
	f.waitBlocked(pid)
	if err := tx.Commit(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.wantCode(<-done, "PW007", "heartbeat that waited for an expiry")
	if cr := f.claimRow(c.ConsumerID, c.Epoch); cr.Status != "expired" || !cr.LeaseExpiresAt.Equal(at(10*sec)) {
		t.Fatalf("claim: %+v", cr)
	}
	f.wantSlot("/chat/1", "", 0)
}

// waitBlocked polls until backend pid waits for a lock (deadline 10s).
func (f *fixture) waitBlocked(pid uint32) {
	f.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		var waiting bool
		err := f.pool.QueryRow(f.ctx, `SELECT coalesce(bool_or(wait_event_type = 'Lock'), false) FROM pg_stat_activity WHERE pid = $1`, int32(pid)).Scan(&waiting)
		if err != nil {
			f.t.Fatal(err)
		}
		if waiting {
			return
		}
		time.Sleep(2 * time.Millisecond) // poll interval, bounded by the deadline
	}
	f.t.Fatalf("backend %d never blocked on a lock", pid)
}

// SPEC §4 error codes of the functions; every refusal changes nothing.
func TestErrors(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`INSERT INTO runners (id, token_hash, admin_status) VALUES ('r-off', '\x00', 'disabled')`)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	before := f.dump()

	_, _, err := f.claimNext("r-off", 30*sec, at(1*sec))
	f.wantCode(err, "PW005", "claim by a disabled runner")
	_, _, err = f.claimNext("r-unknown", 30*sec, at(1*sec))
	f.wantCode(err, "PW004", "claim by an unknown runner")
	_, _, err = f.claimNext("r1", 0, at(1*sec))
	f.wantCode(err, "PW008", "claim with a zero lease")
	_, err = f.releaseErr("wake-nope", 1, nil, at(1*sec))
	f.wantCode(err, "PW006", "release of an unknown claim")
	_, err = f.releaseErr("wake-nope", 1, map[string]string{}, at(1*sec))
	f.wantCode(err, "PW008", "release with acks that are not an array")
	f.wantCode(f.sendErr("/chat/nope", at(1*sec)), "PW001", "send to an unknown entity")
	_, err = f.pool.Exec(f.ctx, `SELECT * FROM stop_entity('/chat/nope', $1)`, at(1*sec))
	f.wantCode(err, "PW001", "stop of an unknown entity")
	_, err = f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity('/chat/1', NULL, $1)`, at(1*sec))
	f.wantCode(err, "PW002", "spawn of an existing entity")
	f.wantUnchanged(before, "refused calls")

	// Re-enabled, the runner gets the work; known claim, wrong epoch: 404.
	f.exec(`UPDATE runners SET admin_status = 'enabled' WHERE id = 'r-off'`)
	c := f.claim("r-off", 30*sec, at(2*sec))
	_, err = f.releaseErr(c.ConsumerID, c.Epoch+1, nil, at(3*sec))
	f.wantCode(err, "PW006", "release of a wrong epoch")
}

// SPEC §3.6: release and expiry notify pullwake_claims at commit; refused or
// repeated calls notify nothing.
func TestClaimNotifications(t *testing.T) {
	t.Parallel()
	f := setup(t)
	listener, err := pgx.Connect(f.ctx, f.url)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close(context.WithoutCancel(f.ctx))
	if _, err := listener.Exec(f.ctx, "LISTEN pullwake_claims"); err != nil {
		t.Fatal(err)
	}

	type note struct {
		TenantID   string `json:"tenant_id"`
		ConsumerID string `json:"consumer_id"`
		Epoch      int64  `json:"epoch"`
		StreamPath string `json:"stream_path"`
		Status     string `json:"status"`
	}
	next := func(what string) note {
		t.Helper()
		ctx, cancel := context.WithTimeout(f.ctx, 5*time.Second)
		defer cancel()
		n, err := listener.WaitForNotification(ctx)
		if err != nil {
			t.Fatalf("%s: no notification: %v", what, err)
		}
		if n.Channel != "pullwake_claims" {
			t.Fatalf("%s: channel %q", what, n.Channel)
		}
		var x note
		if err := json.Unmarshal([]byte(n.Payload), &x); err != nil {
			t.Fatalf("%s: payload %q: %v", what, n.Payload, err)
		}
		return x
	}

	f.spawn("/chat/1")
	f.spawn("/chat/2")
	f.send("/chat/1", at(0))
	f.send("/chat/2", at(0))
	c1 := f.claim("r1", 30*sec, at(0))
	c2 := f.claim("r1", 10*sec, at(0))

	f.release(c1.ConsumerID, c1.Epoch, nil, at(1*sec))
	if n := next("release"); n != (note{"default", c1.ConsumerID, c1.Epoch, c1.StreamPath, "released"}) {
		t.Fatalf("release notification: %+v", n)
	}

	// A repeated release and a refused release send nothing: the next
	// notification is the expiry's.
	f.release(c1.ConsumerID, c1.Epoch, nil, at(2*sec))
	_, err = f.releaseErr(c2.ConsumerID, c2.Epoch, []ack{{Stream: c2.StreamPath, Offset: "bad"}}, at(2*sec))
	f.wantCode(err, "PW008", "bad ack")
	f.expire(at(11 * sec))
	if n := next("expire"); n != (note{"default", c2.ConsumerID, c2.Epoch, c2.StreamPath, "expired"}) {
		t.Fatalf("expiry notification: %+v", n)
	}

	// Takeover expires the old claim: notified too.
	c3 := f.claim("r1", 10*sec, at(12*sec)) // /chat/1's re-queued wake (1s)
	c4 := f.claim("r1", 30*sec, at(12*sec)) // /chat/2's re-queued wake (11s)
	if c3.EntityURL != "/chat/1" || c4.EntityURL != "/chat/2" {
		t.Fatalf("claims %s %s", c3.EntityURL, c4.EntityURL)
	}
	f.send(c3.EntityURL, at(30*sec))
	f.claim("r2", 10*sec, at(30*sec))
	if n := next("takeover"); n != (note{"default", c3.ConsumerID, c3.Epoch, c3.StreamPath, "expired"}) {
		t.Fatalf("takeover notification: %+v", n)
	}

	// Nothing is delivered before commit.
	tx, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec(f.ctx, `SELECT * FROM release_claim($1, $2, '[]', $3)`, c4.ConsumerID, c4.Epoch, at(32*sec)); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	f.release(c4.ConsumerID, c4.Epoch, nil, at(33*sec))
	if n := next("release after a rolled-back release"); n.ConsumerID != c4.ConsumerID || n.Status != "released" {
		t.Fatalf("notification: %+v", n)
	}
	ctx, cancel := context.WithTimeout(f.ctx, 200*time.Millisecond)
	defer cancel()
	if n, err := listener.WaitForNotification(ctx); err == nil {
		t.Fatalf("unexpected extra notification %+v", n)
	}
}

// The server hands release_claim and heartbeat_claim the SHA-256 of the
// claim token a runner presented: a mismatch is PW013 and changes nothing;
// the right hash works; without a hash (psql, operators) no check is made.
func TestClaimTokenHashCheck(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(0))
	good := sha256.Sum256([]byte(c.ClaimToken))
	bad := sha256.Sum256([]byte(c.ClaimToken + "x"))
	before := f.dump()

	_, err := f.pool.Exec(f.ctx, `SELECT * FROM heartbeat_claim($1, $2, NULL, $3, 'default', $4)`, c.ConsumerID, c.Epoch, at(sec), bad[:])
	f.wantCode(err, "PW013", "heartbeat with a wrong token hash")
	_, err = f.pool.Exec(f.ctx, `SELECT * FROM release_claim($1, $2, '[]', $3, 'default', $4)`, c.ConsumerID, c.Epoch, at(sec), bad[:])
	f.wantCode(err, "PW013", "release with a wrong token hash")
	f.wantUnchanged(before, "wrong token hashes")

	if _, err := f.pool.Exec(f.ctx, `SELECT * FROM heartbeat_claim($1, $2, NULL, $3, 'default', $4)`, c.ConsumerID, c.Epoch, at(sec), good[:]); err != nil {
		t.Fatalf("heartbeat with the right hash: %v", err)
	}
	var released bool
	if err := f.pool.QueryRow(f.ctx, `SELECT released FROM release_claim($1, $2, '[]', $3, 'default', $4)`, c.ConsumerID, c.Epoch, at(2*sec), good[:]).Scan(&released); err != nil || !released {
		t.Fatalf("release with the right hash: released %v, err %v", released, err)
	}
}

// The claim queue (wake_queue) holds exactly the queued wakes, whoever
// changes them: the lifecycle functions, or psql writing wakes directly.
func TestWakeQueueMirrorsQueuedWakes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	want := func(step string, wakes ...string) {
		t.Helper()
		var got []string
		rows, err := f.pool.Query(f.ctx, `SELECT wake_id FROM wake_queue ORDER BY created_at, wake_id`)
		if err == nil {
			got, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		var queued []string
		rows, err = f.pool.Query(f.ctx, `SELECT wake_id FROM wakes WHERE status = 'queued' ORDER BY created_at, wake_id`)
		if err == nil {
			queued, err = pgx.CollectRows(rows, pgx.RowTo[string])
		}
		if err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		if !slices.Equal(got, wakes) || !slices.Equal(queued, wakes) {
			t.Fatalf("%s: wake_queue %v, queued wakes %v, want %v", step, got, queued, wakes)
		}
	}
	f.spawn("/chat/1")
	f.spawn("/chat/2")
	_, w1 := f.send("/chat/1", at(0))
	_, w2 := f.send("/chat/2", at(1*sec))
	want("after two sends", w1, w2)

	c := f.claim("r1", 30*sec, at(2*sec))
	want("after a claim", w2)
	_, w3 := f.send("/chat/1", at(3*sec)) // claim live: no new wake
	if w3 != "" {
		t.Fatalf("send under a live claim queued %s", w3)
	}
	r := f.release(c.ConsumerID, c.Epoch, []ack{}, at(4*sec)) // unacked message: re-queued
	if r.QueuedWakeID == nil {
		t.Fatal("release with an unacked message queued nothing")
	}
	want("after a release that re-queues", w2, *r.QueuedWakeID)

	f.stop("/chat/2", at(5*sec)) // supersedes its queued wake
	want("after stop", *r.QueuedWakeID)

	f.exec(`UPDATE wakes SET status = 'queued', finished_at = NULL WHERE wake_id = $1`, w2)
	want("after psql re-queued a superseded wake", w2, *r.QueuedWakeID)
	f.exec(`DELETE FROM wakes WHERE wake_id = $1`, w2)
	want("after psql deleted a queued wake", *r.QueuedWakeID)
	f.exec(`INSERT INTO wakes (wake_id, entity_url, status, created_at) VALUES ('wake-manual', '/chat/2', 'queued', $1)`, at(0))
	want("after psql inserted a wake", "wake-manual", *r.QueuedWakeID)
}
