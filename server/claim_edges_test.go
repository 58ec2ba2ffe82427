package server_test

// Two edges of the wake-callback: an epoch older than the entity's newest
// claim is 409 CLAIM_SUPERSEDED (an unknown one stays 404), and a done's
// acks are checked (400) before anything changes. Both through the
// group-commit path (the server tests' default) and single calls.

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// state is a digest of every table, as the fuzz test takes it.
func (b *bundle) state(t *testing.T) string {
	t.Helper()
	// The publisher writes the wake events of earlier commits at its own
	// time: the digest is taken with none left to write.
	waitPublished(t, b.db.Pool)
	var d string
	if err := b.db.Pool.QueryRow(context.Background(), digestSQL(t, b), time.Now()).Scan(&d); err != nil {
		t.Fatal(err)
	}
	return d
}

func wantError(t *testing.T, what string, r resp, status int, code, inMessage string) {
	t.Helper()
	if r.status != status {
		t.Fatalf("%s: status %d, want %d: %s", what, r.status, status, r.body)
	}
	if got := r.errorCode(t); got != code {
		t.Fatalf("%s: code %s, want %s: %s", what, got, code, r.body)
	}
	msg := r.json(t)["error"].(map[string]any)["message"].(string)
	if !strings.Contains(msg, inMessage) || strings.HasPrefix(msg, "PW") {
		t.Fatalf("%s: message %q, want one containing %q and no SQLSTATE", what, msg, inMessage)
	}
}

func eachCommitMode(t *testing.T, test func(t *testing.T, b *bundle)) {
	for _, m := range []struct {
		name string
		opt  func(*options)
	}{
		{"group commit", func(*options) {}},
		{"single calls", func(o *options) { o.singleCalls = true }},
	} {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			test(t, setup(t, m.opt))
		})
	}
}

func TestCallbackSupersededEpochIs409(t *testing.T) {
	t.Parallel()
	eachCommitMode(t, func(t *testing.T, b *bundle) {
		rt := b.registerRunner("r1")
		b.spawn("/chat/1")
		b.send("/chat/1", "hi")
		w1 := b.mustClaim("r1", rt, 0)
		b.must(200, b.done(w1)) // no ack: the message is queued again
		w2 := b.mustClaim("r1", rt, 0)
		if w1.Epoch != 1 || w2.Epoch != 2 {
			t.Fatalf("epochs %d, %d", w1.Epoch, w2.Epoch)
		}
		before := b.state(t)

		// w2's consumer with epoch 1: superseded, for every kind of callback.
		old := w2
		old.Epoch = 1
		for _, c := range []struct {
			kind string
			body map[string]any
		}{
			{"done", map[string]any{"epoch": 1, "done": true}},
			{"done with claim_next", map[string]any{"epoch": 1, "done": true, "claim_next": true}},
			{"heartbeat", map[string]any{"epoch": 1}},
			{"claim request", map[string]any{"epoch": 1, "wake_id": w2.WakeID}},
		} {
			r := b.callback(old, w2.ClaimToken, c.body)
			wantError(t, c.kind, r, http.StatusConflict, "CLAIM_SUPERSEDED",
				fmt.Sprintf("claim %s/1 is superseded: the newest claim of /chat/1 has epoch 2", w2.ConsumerID))
		}
		// An operator's release (no claim token) is told the same.
		r := b.do("POST", fmt.Sprintf("/_electric/claims/%s/1/release", w2.ConsumerID), b.admin, nil)
		wantError(t, "force release", r, http.StatusConflict, "CLAIM_SUPERSEDED", "has epoch 2")
		// The token must be one of that consumer's claims.
		r = b.callback(old, w1.ClaimToken, map[string]any{"epoch": 1, "done": true})
		wantError(t, "superseded epoch, another claim's token", r, http.StatusUnauthorized, "UNAUTHORIZED", "wrong claim token")
		if r.header.Get("WWW-Authenticate") != "Bearer" {
			t.Fatalf("401 without WWW-Authenticate: %v", r.header)
		}
		// An epoch newer than any claim is unknown.
		r = b.callback(w2, w2.ClaimToken, map[string]any{"epoch": 3, "done": true})
		wantError(t, "newer epoch", r, http.StatusNotFound, "CLAIM_NOT_FOUND", fmt.Sprintf("claim %s/3 not found", w2.ConsumerID))
		// w1 exists and ended: a late done is 200 released=false, a
		// heartbeat 409 CLAIM_NOT_ACTIVE, as before.
		late := b.must(200, b.done(w1)).json(t)
		if late["released"] != false || late["claim_status"] != "released" {
			t.Fatalf("late done: %v", late)
		}
		r = b.callback(w1, w1.ClaimToken, map[string]any{"epoch": w1.Epoch})
		wantError(t, "heartbeat of an ended claim", r, http.StatusConflict, "CLAIM_NOT_ACTIVE", "is not active")

		if after := b.state(t); after != before {
			t.Fatal("refused callbacks changed the database")
		}
		if st := b.claimStatus(w2.ConsumerID, w2.Epoch); st != "active" {
			t.Fatalf("claim 2 is %s, want active", st)
		}
		b.must(204, b.appendMain(w2, w2.WriteToken, map[string]any{"still": "mine"}))
	})
}

func TestCallbackBadAcksAre400(t *testing.T) {
	t.Parallel()
	eachCommitMode(t, func(t *testing.T, b *bundle) {
		rt := b.registerRunner("r1")
		b.spawn("/chat/1")
		b.spawn("/chat/2")
		b.send("/chat/1", "hi") // the main stream's tail is 0000000000000001
		w := b.mustClaim("r1", rt, 0)
		main := w.StreamPath
		before := b.state(t)

		ack := func(stream, offset string) map[string]any { return map[string]any{"stream": stream, "offset": offset} }
		for _, c := range []struct {
			name string
			body map[string]any
			msg  string
		}{
			{"another entity's stream", map[string]any{"epoch": w.Epoch, "done": true,
				"acks": []any{ack(main, "0000000000000001"), ack("/v1/stream/chat/2/main", "0000000000000000")}},
				"owns stream /v1/stream/chat/1/main, not '/v1/stream/chat/2/main' (acks[1])"},
			{"a plain stream", map[string]any{"epoch": w.Epoch, "done": true, "acks": []any{ack("/v1/stream/elsewhere", "0000000000000001")}},
				"not '/v1/stream/elsewhere' (acks[0])"},
			{"offset -1", map[string]any{"epoch": w.Epoch, "done": true, "acks": []any{ack(main, "-1")}},
				"offset -1 acks nothing"},
			{"past the tail", map[string]any{"epoch": w.Epoch, "done": true, "acks": []any{ack(main, "0000000000000002")}},
				"offset 0000000000000002 is beyond the tail 0000000000000001 of /v1/stream/chat/1/main (acks[0])"},
			{"past the tail, with claim_next", map[string]any{"epoch": w.Epoch, "done": true, "claim_next": true,
				"acks": []any{ack(main, "0000000000000009")}}, "beyond the tail"},
			{"acks on a heartbeat", map[string]any{"epoch": w.Epoch, "acks": []any{ack(main, "0000000000000001")}},
				"acks are accepted only with done"},
			{"acks on a claim request", map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID, "acks": []any{ack(main, "0000000000000001")}},
				"acks are accepted only with done"},
		} {
			r := b.callback(w, w.ClaimToken, c.body)
			wantError(t, c.name, r, http.StatusBadRequest, "INVALID_REQUEST", c.msg)
		}
		if after := b.state(t); after != before {
			t.Fatal("refused acks changed the database")
		}
		if st := b.claimStatus(w.ConsumerID, w.Epoch); st != "active" {
			t.Fatalf("claim is %s after refused dones, want active", st)
		}

		// The tail itself, spelled without the /v1/stream prefix: released;
		// the same done again: 200, released false.
		good := map[string]any{"path": "/chat/1/main", "offset": "0000000000000001"}
		first := b.must(200, b.done(w, good)).json(t)
		if first["released"] != true || first["acked_offset"] != "0000000000000001" {
			t.Fatalf("done: %v", first)
		}
		again := b.must(200, b.done(w, good)).json(t)
		if again["released"] != false || again["claim_status"] != "released" {
			t.Fatalf("retried done: %v", again)
		}
	})
}
