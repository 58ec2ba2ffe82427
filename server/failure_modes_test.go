package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// The three ways the system pullwake is modelled on leaked claims (SPEC
// introduction). Each test fails on a server that gates the release on its
// in-memory token map.

// Failure mode 1: the server restarts between mint and done. A new instance
// (empty token map, same database) must still release the claim.
func TestRestartBetweenMintAndDone(t *testing.T) {
	t.Parallel()
	a := setup(t)
	rt := a.registerRunner("r1")
	a.spawn("/chat/1")
	sent := a.send("/chat/1", "hello")
	w := a.mustClaim("r1", rt, 0)
	a.must(204, a.appendMain(w, w.WriteToken, map[string]any{"reply": 1}))

	b := startOn(t, a.db) // the restarted server: nothing in memory
	if n := b.srv.Tokens().Len(); n != 0 {
		t.Fatalf("new instance holds %d tokens", n)
	}
	// Its memory never saw the token, but the claim row vouches for it:
	// the live claim's writes go on with no new callback.
	b.must(204, b.appendMain(w, w.WriteToken, map[string]any{"late": true}))
	if n := b.srv.Tokens().Len(); n != 1 {
		t.Fatalf("new instance holds %d tokens after the append, want the adopted one", n)
	}
	r := b.must(200, b.done(w, map[string]any{"stream": w.StreamPath, "offset": "0000000000000003"})).json(t)
	if r["released"] != true || r["entity_cleared"] != true || r["entity_status"] != "idle" || r["claim_status"] != "released" {
		t.Fatalf("done after restart: %v", r)
	}
	e := b.entity("/chat/1")
	if e["status"] != "idle" {
		t.Fatalf("entity %v, want idle", e["status"])
	}
	// The claim ended: the instance that served the done refuses its token.
	if r := b.appendMain(w, w.WriteToken, map[string]any{"after": "done"}); r.status != 401 {
		t.Fatalf("append after done: %d, want 401", r.status)
	}
	d := e["dispatch"].(map[string]any)
	if d["active_consumer_id"] != nil || d["acked_offset"].(string) < sent {
		t.Fatalf("dispatch after done: %v", d)
	}
	if n := activeCount(b.health("r1", rt)); n != 0 {
		t.Fatalf("health shows %v active claims, want 0", n)
	}
}

// After a restart a runner with a live claim recovers its write token with a
// claim request, authenticated by its claim token.
func TestRestartClaimRequestRemints(t *testing.T) {
	t.Parallel()
	a := setup(t)
	rt := a.registerRunner("r1")
	a.spawn("/chat/1")
	a.send("/chat/1", "hello")
	w := a.mustClaim("r1", rt, 0)

	b := startOn(t, a.db)
	if r := b.callback(w, "wrong-token", map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID}); r.status != 401 {
		t.Fatalf("claim request with a wrong claim token: %d", r.status)
	}
	if r := b.callback(w, w.WriteToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID}); r.status != 401 {
		t.Fatalf("claim request with the write token: %d", r.status)
	}
	r := b.must(200, b.callback(w, w.ClaimToken, map[string]any{"generation": w.Epoch, "wakeId": w.WakeID})).json(t)
	tok, _ := r["write_token"].(string)
	// The claim's write token is derived from its claim token: a re-mint
	// hands back the same token, valid on every instance.
	if r["ok"] != true || tok != w.WriteToken || r["writeToken"] != tok {
		t.Fatalf("claim request: %v", r)
	}
	b.must(204, b.appendMain(w, tok, map[string]any{"after": "restart"}))
	b.must(200, b.done(w))
	// The claim ended: its token is gone and a new claim request is refused.
	if r := b.appendMain(w, tok, map[string]any{"x": 1}); r.status != 401 {
		t.Fatalf("append after done: %d, want 401", r.status)
	}
	r2 := b.callback(w, w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID})
	if r2.status != 409 || r2.errorCode(t) != "CLAIM_NOT_ACTIVE" {
		t.Fatalf("claim request after done: %d %s", r2.status, r2.body)
	}
}

// Failure mode 2: a newer claim evicts the token. The late done of the old
// claim must not clear the entity or the newer token.
func TestNewerClaimEvictsToken(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "one")
	old := b.mustClaim("r1", rt, 1000)

	// Let the old lease lapse (no sweeper runs here), then send again: the
	// lapsed claim no longer holds the entity, so a wake is queued and a
	// new claim takes over.
	eventually(t, 5*time.Second, "old lease lapses", func() bool {
		var lapsed bool
		_ = b.db.Pool.QueryRow(context.Background(),
			"SELECT lease_expires_at <= now() FROM consumer_claims WHERE consumer_id = $1", old.ConsumerID).Scan(&lapsed)
		return lapsed
	})
	b.send("/chat/1", "two")
	newer := b.mustClaim("r1", rt, 30000)
	if newer.Epoch <= old.Epoch {
		t.Fatalf("newer epoch %d not above %d", newer.Epoch, old.Epoch)
	}
	if st := b.claimStatus(old.ConsumerID, old.Epoch); st != "expired" {
		t.Fatalf("taken-over claim is %s, want expired", st)
	}
	if r := b.appendMain(old, old.WriteToken, map[string]any{"stale": true}); r.status != 401 {
		t.Fatalf("evicted token appends: %d", r.status)
	}

	r := b.must(200, b.done(old, map[string]any{"stream": old.StreamPath, "offset": "0000000000000002"})).json(t)
	if r["entity_cleared"] != false || r["released"] != false || r["claim_status"] != "expired" {
		t.Fatalf("late done: %v", r)
	}
	e := b.entity("/chat/1")
	d := e["dispatch"].(map[string]any)
	if e["status"] != "running" || d["active_consumer_id"] != newer.ConsumerID || d["active_epoch"].(float64) != float64(newer.Epoch) {
		t.Fatalf("late done disturbed the newer claim: %v", e)
	}
	if d["acked_offset"] != "0000000000000000" {
		t.Fatalf("late done moved acked_offset: %v", d["acked_offset"])
	}
	b.must(204, b.appendMain(newer, newer.WriteToken, map[string]any{"newer": true}))
	if st := b.claimStatus(newer.ConsumerID, newer.Epoch); st != "active" {
		t.Fatalf("newer claim is %s", st)
	}
}

// Failure mode 3: a done is retried after the release step failed. The
// failed attempt changes nothing; the retry does it all.
func TestRetriedDoneAfterFailure(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "hello")
	w := b.mustClaim("r1", rt, 0)

	// Fail the entity update inside release_claim, once.
	_, err := b.db.Pool.Exec(context.Background(), `
		CREATE TABLE fail_once (armed boolean);
		INSERT INTO fail_once VALUES (true);
		CREATE FUNCTION fail_entity_update() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN
			IF NEW.status = 'idle' AND EXISTS (SELECT 1 FROM fail_once WHERE armed) THEN
				UPDATE fail_once SET armed = false;
				RAISE EXCEPTION 'injected failure on entity update';
			END IF;
			RETURN NEW;
		END $$;
		CREATE TRIGGER fail_entity_update BEFORE UPDATE ON entities
			FOR EACH ROW EXECUTE FUNCTION fail_entity_update();`)
	if err != nil {
		t.Fatal(err)
	}
	first := b.done(w, map[string]any{"stream": w.StreamPath, "offset": "0000000000000001"})
	if first.status < 500 {
		t.Fatalf("first done: %d %s, want 5xx", first.status, first.body)
	}
	// The failure rolled the whole release back (the disarm included).
	if st := b.claimStatus(w.ConsumerID, w.Epoch); st != "active" {
		t.Fatalf("claim after failed done: %s, want active", st)
	}
	if e := b.entity("/chat/1"); e["status"] != "running" {
		t.Fatalf("entity after failed done: %v, want running", e["status"])
	}
	// Make the next attempt pass, as a transient failure would.
	if _, err := b.db.Pool.Exec(context.Background(), "UPDATE fail_once SET armed = false"); err != nil {
		t.Fatal(err)
	}
	r := b.must(200, b.done(w, map[string]any{"stream": w.StreamPath, "offset": "0000000000000001"})).json(t)
	if r["released"] != true || r["entity_cleared"] != true || r["entity_status"] != "idle" {
		t.Fatalf("retried done: %v", r)
	}
	// And a third (client retry after a lost answer) is a no-op.
	r3 := b.must(200, b.done(w)).json(t)
	if r3["released"] != false || r3["claim_status"] != "released" || r3["entity_status"] != "idle" {
		t.Fatalf("repeated done: %v", r3)
	}
	if n := activeCount(b.health("r1", rt)); n != 0 {
		t.Fatalf("active claims after retry: %v", n)
	}
}

// The write-token gate answers from memory: with an admin token configured
// a refused append never touches the database (in dev mode its one write
// statement refuses it), and an accepted one costs the append's own round
// trip.
func TestAppendGate(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.adminToken = "admin-secret"; o.noPublisher = true })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.spawn("/chat/2")
	b.send("/chat/1", "a")
	b.send("/chat/2", "b")
	w1 := b.mustClaim("r1", rt, 0)
	w2 := b.mustClaim("r1", rt, 0)
	if w1.StreamPath == w2.StreamPath {
		t.Fatal("two claims on one entity")
	}

	before := b.acquires.Load()
	for name, hdr := range map[string][]string{
		"no token":          nil,
		"wrong token":       {"Authorization", "Bearer nope"},
		"other claim token": {"Authorization", "Bearer " + w2.WriteToken},
		"claim token":       {"Authorization", "Bearer " + w1.ClaimToken},
		"wrong header form": {"electric-claim-token", "Bearer " + w1.WriteToken},
		// Signed tokens the memory does not hold: their signature fails
		// before any query (another claim named, the tag altered).
		"other claim named": {"Authorization", "Bearer " + strings.Replace(w1.WriteToken, ".1.", ".2.", 1)},
		"tag altered":       {"Authorization", "Bearer " + w1.WriteToken[:len(w1.WriteToken)-2] + "AA"},
	} {
		r := b.do("POST", w1.StreamPath, "", map[string]any{"x": 1}, hdr...)
		if r.status != http.StatusUnauthorized || r.errorCode(t) != "UNAUTHORIZED" {
			t.Errorf("%s: %d %s, want 401 UNAUTHORIZED", name, r.status, r.body)
		}
	}
	if n := b.acquires.Load() - before; n != 0 {
		t.Fatalf("refused appends acquired %d database connections, want 0", n)
	}

	before = b.acquires.Load()
	b.must(204, b.do("POST", w1.StreamPath, "", map[string]any{"ok": "bearer"}, "Authorization", "Bearer "+w1.WriteToken))
	b.must(204, b.do("POST", w1.StreamPath, "", map[string]any{"ok": "electric"}, "electric-claim-token", w1.WriteToken))
	if n := b.acquires.Load() - before; n != 2 {
		t.Fatalf("two accepted appends acquired %d connections, want 2", n)
	}
	r := b.must(200, b.do("GET", w1.StreamPath+"?offset=-1", "", nil))
	var msgs []map[string]any
	if err := jsonUnmarshal(r.body, &msgs); err != nil || len(msgs) != 3 {
		t.Fatalf("main stream holds %d messages (%v): %s", len(msgs), err, r.body)
	}
	if msgs[1]["ok"] != "bearer" || msgs[2]["ok"] != "electric" || msgs[0]["type"] != "inbox" {
		t.Fatalf("stream content: %s", r.body)
	}
	// The entity owns its main stream.
	if r := b.do("PUT", w1.StreamPath, b.admin, nil); r.status != 403 {
		t.Fatalf("PUT main stream: %d", r.status)
	}
	if r := b.do("DELETE", w1.StreamPath, b.admin, nil); r.status != 403 {
		t.Fatalf("DELETE main stream: %d", r.status)
	}
}
