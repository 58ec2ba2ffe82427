package db_test

// The set-based transitions of migrations/00012_batch.sql: one row per item
// in input order, a refused item answers for itself while its batch-mates
// go through, and batches lock in key order, not input order.

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/jackc/pgx/v5"

	"github.com/pullwake/pullwake/db"
)

// claimed3 spawns /chat/a, /chat/b and /chat/c, sends to each and claims
// them (r1), in that order.
func claimed3(f *fixture) []claimed {
	f.t.Helper()
	var out []claimed
	for _, u := range []string{"/chat/a", "/chat/b", "/chat/c"} {
		f.spawn(u)
		f.send(u, at(0))
	}
	for range 3 {
		out = append(out, f.claim("r1", 30*sec, at(sec)))
	}
	return out
}

func ackJSON(stream string, n int) string {
	return fmt.Sprintf(`[{"stream": %q, "offset": %q}]`, stream, off(n))
}

func TestReleaseClaimsPerItemOutcomes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cs := claimed3(f)
	byURL := map[string]claimed{}
	for _, c := range cs {
		byURL[c.EntityURL] = c
	}
	a, b, c := byURL["/chat/a"], byURL["/chat/b"], byURL["/chat/c"]
	// /chat/c is being stopped: its release still succeeds and stops it.
	if s := f.stop("/chat/c", at(2*sec)); s != "stopping" {
		t.Fatalf("stop /chat/c: %s", s)
	}
	now := at(3 * sec)
	rows, err := db.New().ReleaseClaims(f.ctx, f.pool, db.ReleaseClaimsParams{
		ConsumerIds: []string{c.ConsumerID, b.ConsumerID, "no-such-claim", a.ConsumerID, b.ConsumerID, a.ConsumerID},
		Epochs:      []int64{c.Epoch, b.Epoch + 7, 1, a.Epoch, b.Epoch, a.Epoch},
		Acks: []string{"[]", "[]", "[]", ackJSON(a.StreamPath, 1), `[{"stream": "x", "offset": "bad"}]`,
			"[]"},
		Now: &now, TenantID: "default", Notify: false,
	})
	if err != nil {
		t.Fatalf("release_claims: %v", err)
	}
	if len(rows) != 6 {
		t.Fatalf("want 6 rows, got %d: %+v", len(rows), rows)
	}
	for i, r := range rows {
		if int(r.Ord) != i+1 {
			t.Fatalf("row %d has ord %d: rows not in input order", i, r.Ord)
		}
	}
	// 1: the stopping entity's claim is released and the entity stopped.
	if r := rows[0]; r.ErrCode != "" || !r.Released || !r.EntityCleared || r.EntityStatus != "stopped" || r.EntityUrl != "/chat/c" {
		t.Fatalf("item 1 (stopping entity): %+v", r)
	}
	// 2: a stale epoch is an unknown claim (PW006), and touches nothing.
	if r := rows[1]; r.ErrCode != "PW006" || r.Released || r.ErrMessage == "" {
		t.Fatalf("item 2 (stale epoch): %+v", r)
	}
	// 3: an unknown consumer.
	if r := rows[2]; r.ErrCode != "PW006" {
		t.Fatalf("item 3 (unknown consumer): %+v", r)
	}
	// 4: released with its ack.
	if r := rows[3]; r.ErrCode != "" || !r.Released || !r.EntityCleared || r.EntityStatus != "idle" || r.AckedOffset != off(1) {
		t.Fatalf("item 4: %+v", r)
	}
	// 5: a malformed ack fails this item only (PW008): b stays active.
	if r := rows[4]; r.ErrCode != "PW008" || r.Released {
		t.Fatalf("item 5 (bad ack): %+v", r)
	}
	if cr := f.claimRow(b.ConsumerID, b.Epoch); cr.Status != "active" {
		t.Fatalf("claim b after its item failed: %s", cr.Status)
	}
	f.wantSlot("/chat/b", b.ConsumerID, b.Epoch)
	// 6: a repeat of item 4 in the same batch is the idempotent answer.
	if r := rows[5]; r.ErrCode != "" || r.Released || r.ClaimStatus != "released" {
		t.Fatalf("item 6 (repeat): %+v", r)
	}
	f.wantSlot("/chat/a", "", 0)
	f.wantSlot("/chat/c", "", 0)
	if s := f.entityStatus("/chat/a"); s != "idle" {
		t.Fatalf("/chat/a: %s", s)
	}

	// The claim-token check is per item too: a wrong hash is PW013 for
	// its item alone.
	again, err := db.New().ReleaseClaims(f.ctx, f.pool, db.ReleaseClaimsParams{
		ConsumerIds: []string{b.ConsumerID, b.ConsumerID}, Epochs: []int64{b.Epoch, b.Epoch},
		Acks: []string{"[]", "[]"}, Now: &now, TenantID: "default",
		ClaimTokenHashes: [][]byte{[]byte("wrong"), nil},
	})
	if err != nil {
		t.Fatal(err)
	}
	if again[0].ErrCode != "PW013" || again[1].ErrCode != "" || !again[1].Released {
		t.Fatalf("token per item: %+v", again)
	}
}

func TestReleaseClaimsRefusesMismatchedArrays(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := db.New().ReleaseClaims(f.ctx, f.pool, db.ReleaseClaimsParams{
		ConsumerIds: []string{"a", "b"}, Epochs: []int64{1}, Acks: []string{"[]", "[]"}, TenantID: "default"})
	f.wantCode(err, "PW008", "arrays of different lengths")
}

func TestClaimNextWakesPerItemOutcomes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`INSERT INTO runners (id, token_hash, admin_status) VALUES ('r-off', '\x00', 'disabled')`)
	for _, u := range []string{"/chat/a", "/chat/b", "/chat/s"} {
		f.spawn(u)
		f.send(u, at(0))
	}
	// /chat/s is stopped with its wake queued: a claim supersedes that wake
	// rather than handing it out.
	f.exec(`UPDATE entities SET status = 'stopped' WHERE url = '/chat/s'`)
	now := at(sec)
	rows, err := db.New().ClaimNextWakes(f.ctx, f.pool, db.ClaimNextWakesParams{
		RunnerIds:  []string{"r2", "ghost", "r-off", "r1", "r1", "r1"},
		LeaseTtlMs: []int32{30000, 30000, 30000, 30000, 0, 30000},
		Now:        &now, TenantID: "default",
	})
	if err != nil {
		t.Fatalf("claim_next_wakes: %v", err)
	}
	if len(rows) != 6 {
		t.Fatalf("want 6 rows, got %+v", rows)
	}
	for i, r := range rows {
		if int(r.Ord) != i+1 {
			t.Fatalf("row %d has ord %d", i, r.Ord)
		}
	}
	if rows[1].ErrCode != "PW004" || rows[2].ErrCode != "PW005" || rows[4].ErrCode != "PW008" {
		t.Fatalf("refused items: %+v / %+v / %+v", rows[1], rows[2], rows[4])
	}
	// Runners are served in key order: r1's items (4, 6) before r2's (1);
	// two wakes for three takers.
	got := map[string]bool{}
	for _, i := range []int{3, 5} {
		r := rows[i]
		if r.ErrCode != "" || !r.HasClaim || r.Epoch != 1 || r.ClaimToken == "" || !r.LeaseExpiresAt.Equal(at(31*sec)) {
			t.Fatalf("item %d: %+v", i+1, r)
		}
		got[r.EntityUrl] = true
		f.wantSlot(r.EntityUrl, r.ConsumerID, 1)
	}
	if !got["/chat/a"] || !got["/chat/b"] {
		t.Fatalf("claimed %v, want /chat/a and /chat/b", got)
	}
	if r := rows[0]; r.ErrCode != "" || r.HasClaim {
		t.Fatalf("item 1 (no work left): %+v", r)
	}
	if s := f.entityStatus("/chat/s"); s != "stopped" {
		t.Fatalf("/chat/s: %s", s)
	}
	if q := f.queued("/chat/s"); len(q) != 0 {
		t.Fatalf("stopped entity's wake still queued: %v", q)
	}
}

func TestStreamWritesPerItemOutcomes(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/a")
	f.spawn("/chat/s")
	f.stop("/chat/s", at(sec))
	a, s := "/v1/stream/chat/a/main", "/v1/stream/chat/s/main"
	rows, err := db.New().StreamWrites(f.ctx, f.pool, db.StreamWritesParams{
		TenantID:      "default",
		Paths:         []string{a, s, "/v1/stream/nope", a, a},
		ContentTypes:  []string{"application/json", "application/json", "application/json", "text/plain", "application/json"},
		EntityWriters: []bool{true, true, true, true, true},
		Counts:        []int32{2, 1, 1, 1, 1},
		Data:          [][]byte{[]byte(`{"m":1}`), []byte(`{"m":2}`), []byte(`{"s":1}`), []byte(`{"n":1}`), []byte(`x`), []byte(`{"m":3}`)},
	})
	if err != nil {
		t.Fatalf("pw_stream_writes: %v", err)
	}
	want := []struct {
		status string
		tail   int64
	}{{"appended", 2}, {"entity_stopped", 0}, {"not_found", 0}, {"content_type", 0}, {"appended", 3}}
	if len(rows) != len(want) {
		t.Fatalf("rows: %+v", rows)
	}
	for i, r := range rows {
		if int(r.Ord) != i+1 || r.ErrCode != "" || r.Status != want[i].status || (want[i].tail > 0 && r.TailSeq != want[i].tail) {
			t.Fatalf("item %d: %+v, want %+v", i+1, r, want[i])
		}
	}
	var msgs []string
	r, err := f.pool.Query(f.ctx, `SELECT convert_from(data, 'UTF8') FROM stream_messages WHERE path = $1 ORDER BY seq`, a)
	if err != nil {
		t.Fatal(err)
	}
	if msgs, err = pgx.CollectRows(r, pgx.RowTo[string]); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(msgs) != `[{"m": 1} {"m": 2} {"m": 3}]` && fmt.Sprint(msgs) != `[{"m":1} {"m":2} {"m":3}]` {
		t.Fatalf("messages of %s in this order: %v", a, msgs)
	}
}

// A batch visits its items in key order, whatever their input order: with
// /chat/a's dispatch row held by another transaction, a batch given [b, a]
// waits on a without having locked b.
func TestReleaseClaimsLockInKeyOrder(t *testing.T) {
	t.Parallel()
	f := setup(t)
	cs := claimed3(f)
	byURL := map[string]claimed{}
	for _, c := range cs {
		byURL[c.EntityURL] = c
	}
	a, b := byURL["/chat/a"], byURL["/chat/b"]

	holder, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Rollback(context.WithoutCancel(f.ctx))
	if _, err := holder.Exec(f.ctx, `SELECT 1 FROM entity_dispatch_state WHERE entity_url = '/chat/a' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}

	conn, err := f.pool.Acquire(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	pid := conn.Conn().PgConn().PID()
	type result struct {
		rows []db.ReleaseClaimsRow
		err  error
	}
	done := make(chan result, 1)
	now := at(2 * sec)
	go func() {
		rows, err := db.New().ReleaseClaims(f.ctx, conn, db.ReleaseClaimsParams{
			ConsumerIds: []string{b.ConsumerID, a.ConsumerID}, Epochs: []int64{b.Epoch, a.Epoch},
			Acks: []string{"[]", "[]"}, Now: &now, TenantID: "default"})
		done <- result{rows, err}
	}()
	f.waitBlocked(pid)
	// b is free: the batch went to a first.
	probe, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, perr := probe.Exec(f.ctx, `SELECT 1 FROM entity_dispatch_state WHERE entity_url = '/chat/b' FOR UPDATE NOWAIT`)
	_ = probe.Rollback(f.ctx)
	if perr != nil {
		t.Fatalf("the batch locked /chat/b before /chat/a (input order, not key order): %v", perr)
	}
	if err := holder.Commit(f.ctx); err != nil {
		t.Fatal(err)
	}
	res := <-done
	if res.err != nil || len(res.rows) != 2 || !res.rows[0].Released || !res.rows[1].Released ||
		res.rows[0].EntityUrl != "/chat/b" || res.rows[1].EntityUrl != "/chat/a" {
		t.Fatalf("batch: %+v %v", res.rows, res.err)
	}
}

// Two batches over the same claims in opposite input orders, many times
// over: neither deadlocks, and each claim is released exactly once.
func TestReleaseClaimsOppositeOrdersDoNotDeadlock(t *testing.T) {
	t.Parallel()
	f := setup(t)
	const n = 12
	for round := range 5 {
		var cs []claimed
		for i := range n {
			u := fmt.Sprintf("/chat/r%d-%02d", round, i)
			f.spawn(u)
			f.send(u, at(0))
		}
		for range n {
			cs = append(cs, f.claim("r1", 30*sec, at(sec)))
		}
		params := func(reverse bool) db.ReleaseClaimsParams {
			p := db.ReleaseClaimsParams{TenantID: "default"}
			for i := range n {
				c := cs[i]
				if reverse {
					c = cs[n-1-i]
				}
				p.ConsumerIds = append(p.ConsumerIds, c.ConsumerID)
				p.Epochs = append(p.Epochs, c.Epoch)
				p.Acks = append(p.Acks, "[]")
			}
			return p
		}
		var wg sync.WaitGroup
		results := make([][]db.ReleaseClaimsRow, 2)
		errs := make([]error, 2)
		for k := range 2 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				results[k], errs[k] = db.New().ReleaseClaims(f.ctx, f.pool, params(k == 1))
			}()
		}
		wg.Wait()
		released := map[string]int{}
		for k := range 2 {
			if errs[k] != nil {
				t.Fatalf("round %d batch %d: %v", round, k, errs[k])
			}
			for _, r := range results[k] {
				if r.ErrCode != "" {
					t.Fatalf("round %d batch %d: item failed: %s %s", round, k, r.ErrCode, r.ErrMessage)
				}
				if r.Released {
					released[r.EntityUrl]++
				}
			}
		}
		if len(released) != n {
			t.Fatalf("round %d: released %d claims, want %d", round, len(released), n)
		}
		for u, k := range released {
			if k != 1 {
				t.Fatalf("round %d: %s released %d times", round, u, k)
			}
		}
	}
	if err := context.Cause(f.ctx); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}
