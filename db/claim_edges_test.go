package db_test

// The edges of a callback's (consumer, epoch) (migrations/00013): an epoch
// older than the newest claim of the consumer's entity is CLAIM_SUPERSEDED
// (PW014), an unknown one CLAIM_NOT_FOUND (PW006), an ended claim
// CLAIM_NOT_ACTIVE (PW007) for a heartbeat and released = false for a done.
// And every message of every function starts with its SQLSTATE.

import (
	"crypto/sha256"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pullwake/pullwake/db"
)

// twoClaims gives /chat/1 two claims: c1 (epoch 1, released without an
// ack, so its message is queued again) and c2 (epoch 2, active).
func twoClaims(f *fixture) (c1, c2 claimed) {
	f.t.Helper()
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c1 = f.claim("r1", 30*sec, at(sec))
	if r := f.release(c1.ConsumerID, c1.Epoch, nil, at(2*sec)); r.QueuedWakeID == nil {
		f.t.Fatalf("release of c1 queued nothing: %+v", r)
	}
	c2 = f.claim("r1", 30*sec, at(3*sec))
	if c1.Epoch != 1 || c2.Epoch != 2 || c2.ConsumerID == c1.ConsumerID {
		f.t.Fatalf("claims %+v, %+v", c1, c2)
	}
	return c1, c2
}

func hashOf(token string) []byte {
	h := sha256.Sum256([]byte(token))
	return h[:]
}

// callbacks runs release_claim, heartbeat_claim and claim_request for
// (consumer, epoch) with the token hash (nil: psql, no token) and returns
// each one's error by name.
func (f *fixture) callbacks(consumer string, epoch int64, hash []byte) map[string]error {
	now := at(4 * sec)
	out := map[string]error{}
	_, out["release_claim"] = f.pool.Exec(f.ctx, `SELECT * FROM release_claim($1, $2, '[]', $3, 'default', $4)`, consumer, epoch, now, hash)
	_, out["heartbeat_claim"] = f.pool.Exec(f.ctx, `SELECT * FROM heartbeat_claim($1, $2, NULL, $3, 'default', $4)`, consumer, epoch, now, hash)
	_, out["claim_request"] = f.pool.Exec(f.ctx, `SELECT * FROM claim_request($1, $2, NULL, $3, $4)`, consumer, epoch, hash, now)
	return out
}

func TestClaimSupersededNotFoundNotActive(t *testing.T) {
	t.Parallel()
	f := setup(t)
	c1, c2 := twoClaims(f)
	before := f.dump()

	// c2's consumer asking with an epoch older than its entity's newest
	// claim is superseded (the epoch need not be a claim of its own); the
	// token, when given, must be a claim's of that consumer.

	for _, tc := range []struct {
		name     string
		consumer string
		epoch    int64
		hash     []byte
		code     string
		msg      string
	}{
		{"older epoch, the consumer's token", c2.ConsumerID, 1, hashOf(c2.ClaimToken), "PW014",
			"PW014: claim " + c2.ConsumerID + "/1 is superseded: the newest claim of /chat/1 has epoch 2"},
		{"epoch 0", c2.ConsumerID, 0, hashOf(c2.ClaimToken), "PW014", ""},
		{"older epoch from psql (no token)", c2.ConsumerID, 1, nil, "PW014", ""},
		{"older epoch, a wrong token", c2.ConsumerID, 1, hashOf("nope"), "PW013",
			"PW013: wrong claim token for claim " + c2.ConsumerID + "/1"},
		{"older epoch, another consumer's token", c2.ConsumerID, 1, hashOf(c1.ClaimToken), "PW013", ""},
		{"newer epoch", c2.ConsumerID, 3, hashOf(c2.ClaimToken), "PW006",
			"PW006: claim " + c2.ConsumerID + "/3 not found"},
		{"unknown consumer", "wake-999", 1, nil, "PW006", "PW006: claim wake-999/1 not found"},
		{"unknown consumer, a claim's token", "wake-999", 1, hashOf(c2.ClaimToken), "PW006", ""},
	} {
		for fn, err := range f.callbacks(tc.consumer, tc.epoch, tc.hash) {
			f.wantCode(err, tc.code, fn+": "+tc.name)
			if tc.msg != "" {
				f.wantMessage(err, tc.msg)
			}
			if got := db.DomainError(err); got == nil || strings.HasPrefix(got.Message, "PW") {
				t.Fatalf("%s: %s: domain error %+v keeps its SQLSTATE in the message", fn, tc.name, got)
			}
		}
		f.wantUnchanged(before, tc.name)
	}
	if de := db.DomainError(f.callbacks(c2.ConsumerID, 1, nil)["heartbeat_claim"]); de.Code != "CLAIM_SUPERSEDED" {
		t.Fatalf("PW014 maps to %+v", de)
	}

	// c1 exists and has ended: a late done is released = false, a
	// heartbeat CLAIM_NOT_ACTIVE, a claim request not active; none of them
	// is superseded, though a newer claim holds the entity.
	errs := f.callbacks(c1.ConsumerID, c1.Epoch, hashOf(c1.ClaimToken))
	if err := errs["release_claim"]; err != nil {
		t.Fatalf("late done of an ended claim: %v", err)
	}
	if err := errs["claim_request"]; err != nil {
		t.Fatalf("claim request of an ended claim: %v", err)
	}
	f.wantCode(errs["heartbeat_claim"], "PW007", "heartbeat of an ended claim")
	f.wantMessage(errs["heartbeat_claim"], "PW007: claim "+c1.ConsumerID+"/1 is not active")
	r := f.release(c1.ConsumerID, c1.Epoch, nil, at(5*sec))
	if r.Released || r.ClaimStatus != "released" || r.EntityCleared {
		t.Fatalf("late done: %+v", r)
	}
	f.wantSlot("/chat/1", c2.ConsumerID, c2.Epoch)
	f.wantUnchanged(before, "callbacks of an ended claim")
}

// A release_claims batch reports PW014 and the refused acks' PW008 per item;
// its other items go through.
func TestReleaseClaimsItemSupersededAndBadAcks(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, c2 := twoClaims(f)
	f.spawn("/chat/2")
	f.send("/chat/2", at(0))
	d := f.claim("r1", 30*sec, at(3*sec))
	now := at(4 * sec)
	rows, err := db.New().ReleaseClaims(f.ctx, f.pool, db.ReleaseClaimsParams{
		ConsumerIds: []string{c2.ConsumerID, c2.ConsumerID, d.ConsumerID},
		Epochs:      []int64{1, c2.Epoch, d.Epoch},
		Acks:        []string{"[]", ackJSON(c2.StreamPath, 2), ackJSON(d.StreamPath, 1)},
		Now:         &now, TenantID: "default",
		ClaimTokenHashes: [][]byte{hashOf(c2.ClaimToken), hashOf(c2.ClaimToken), hashOf(d.ClaimToken)},
	})
	if err != nil || len(rows) != 3 {
		t.Fatalf("release_claims: %d rows, %v", len(rows), err)
	}
	if r := rows[0]; r.ErrCode != "PW014" || !strings.HasPrefix(r.ErrMessage, "PW014: ") || r.Released {
		t.Fatalf("superseded item: %+v", r)
	}
	if r := rows[1]; r.ErrCode != "PW008" || !strings.Contains(r.ErrMessage, "beyond the tail") || r.Released {
		t.Fatalf("item acking past the tail: %+v", r)
	}
	if r := rows[2]; r.ErrCode != "" || !r.Released || r.AckedOffset != off(1) {
		t.Fatalf("good item: %+v", r)
	}
	f.wantSlot("/chat/1", c2.ConsumerID, c2.Epoch)
	if cr := f.claimRow(c2.ConsumerID, c2.Epoch); cr.Status != "active" {
		t.Fatalf("c2 after its refused items: %s", cr.Status)
	}
}

// Every RAISE EXCEPTION of every function starts its message with the
// SQLSTATE it raises: read from the catalog, so a function added later is
// held to it too.
func TestEveryRaiseNamesItsCode(t *testing.T) {
	t.Parallel()
	f := setup(t)
	rows, err := f.pool.Query(f.ctx, `SELECT p.proname, p.prosrc FROM pg_proc p
	                                   JOIN pg_namespace n ON n.oid = p.pronamespace
	                                  WHERE n.nspname = 'public' AND p.prolang = (SELECT oid FROM pg_language WHERE lanname = 'plpgsql')`)
	if err != nil {
		t.Fatal(err)
	}
	raise := regexp.MustCompile(`(?is)RAISE\s+EXCEPTION\s+'((?:[^']|'')*)'([^;]*);`)
	errcode := regexp.MustCompile(`(?i)ERRCODE\s*=\s*'([0-9A-Z]{5})'`)
	seen := 0
	for rows.Next() {
		var name, src string
		if err := rows.Scan(&name, &src); err != nil {
			t.Fatal(err)
		}
		for _, m := range raise.FindAllStringSubmatch(src, -1) {
			seen++
			c := errcode.FindStringSubmatch(m[2])
			if c == nil {
				t.Errorf("%s: RAISE EXCEPTION '%s' has no ERRCODE", name, m[1])
				continue
			}
			if !strings.HasPrefix(m[1], c[1]+": ") {
				t.Errorf("%s: RAISE EXCEPTION '%s' (ERRCODE %s) does not start with %q", name, m[1], c[1], c[1]+": ")
			}
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if seen < 45 {
		t.Fatalf("found %d RAISE EXCEPTION statements, want the lifecycle's 45 or more", seen)
	}
}

// Each function called with a bad input raises a message that starts with
// the SQLSTATE it carries, as psql shows it at its default verbosity.
func TestErrorMessagesStartWithTheirCode(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.send("/chat/1", at(0))
	c := f.claim("r1", 30*sec, at(sec))
	f.exec(`INSERT INTO runners (id, token_hash, admin_status) VALUES ('r9', '\x00', 'disabled')`)
	for _, tc := range []struct{ code, sql string }{
		{"PW008", `SELECT pw_parse_offset('x')`},
		{"PW009", `SELECT * FROM pw_stream_append('default', '/nope', ARRAY['x'::bytea], now())`},
		{"PW008", `SELECT * FROM pw_end_claim('default', 'wake-1', 1, 'gone', '[]', now())`},
		{"PW006", `SELECT * FROM pw_end_claim('default', 'wake-999', 1, 'released', '[]', now())`},
		{"PW001", `SELECT * FROM stop_entity('/chat/404')`},
		{"PW006", `SELECT * FROM heartbeat_claim('wake-999', 1)`},
		{"PW008", `SELECT * FROM purge_history('-1 day')`},
		{"PW008", `SELECT * FROM purge_history('1 day', 0)`},
		{"PW008", `SELECT * FROM release_and_claim_next('wake-999', 1, '[]', NULL, 0)`},
		{"PW008", `SELECT * FROM release_claim('wake-999', 1, '{}')`},
		{"PW006", `SELECT * FROM release_claim('wake-999', 1)`},
		{"PW013", `SELECT * FROM release_claim('` + c.ConsumerID + `', 1, '[]', NULL, 'default', '\x00')`},
		{"PW008", `SELECT * FROM release_claim('` + c.ConsumerID + `', 1, '[{"stream": "/x", "offset": "0000000000000001"}]')`},
		{"PW008", `SELECT * FROM claim_next_wake('r1', 0)`},
		{"PW004", `SELECT * FROM claim_next_wake('nobody')`},
		{"PW005", `SELECT * FROM claim_next_wake('r9')`},
		{"PW006", `SELECT * FROM claim_request('wake-999', 1)`},
		{"PW014", `SELECT * FROM claim_request('` + c.ConsumerID + `', 0)`},
		{"PW008", `SELECT * FROM register_runner('bad id!', NULL, NULL, '\x00')`},
		{"PW008", `SELECT * FROM register_runner('r5', NULL, NULL, NULL)`},
		{"PW008", `SELECT * FROM set_runner_admin_status('r1', 'maybe')`},
		{"PW004", `SELECT * FROM set_runner_admin_status('nobody', 'enabled')`},
		{"PW008", `SELECT * FROM purge_wake_events('-1 day')`},
		{"PW008", `SELECT * FROM purge_wake_events('1 day', 0)`},
		{"PW008", `SELECT pw_check_entity_url('chat')`},
		{"PW002", `SELECT * FROM spawn_entity('/chat/1')`},
		{"PW001", `SELECT * FROM send_to_entity('/chat/404', '{}')`},
		{"PW008", `SELECT * FROM release_claims(ARRAY['a'], ARRAY[]::bigint[], ARRAY[]::jsonb[])`},
		{"PW008", `SELECT * FROM claim_next_wakes(ARRAY['r1'], ARRAY[]::integer[])`},
		{"PW008", `SELECT * FROM pw_stream_writes('default', ARRAY['/a'], ARRAY[]::text[], ARRAY[]::boolean[], ARRAY[]::integer[], ARRAY[]::bytea[], now())`},
	} {
		_, err := f.pool.Exec(f.ctx, tc.sql)
		var pe *pgconn.PgError
		if !errors.As(err, &pe) || pe.Code != tc.code {
			t.Errorf("%s: want SQLSTATE %s, got %v", tc.sql, tc.code, err)
			continue
		}
		if !strings.HasPrefix(pe.Message, pe.Code+": ") {
			t.Errorf("%s: message %q does not start with %s", tc.sql, pe.Message, pe.Code)
		}
	}
}
