package server_test

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/sweeper"
)

// The first expiry pass runs at Start: a claim that lapsed while no server
// was sweeping ends without waiting a whole interval (an hour here).
func TestSweeperFirstPassAtStart(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	for _, q := range []string{
		`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`,
		`SELECT * FROM spawn_entity('/chat/1')`,
		`SELECT * FROM send_to_entity('/chat/1', '{}', NULL, now() - interval '1 hour')`,
		`SELECT * FROM claim_next_wake('r1', 1000, now() - interval '1 hour')`,
	} {
		if _, err := d.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	b := startOn(t, d, func(o *options) { o.sweep = time.Hour })
	eventually(t, 10*time.Second, "the lapsed claim expires at start", func() bool {
		return b.claimStatus("wake-1", 1) == "expired"
	})
	if s := b.entity("/chat/1")["status"]; s != "idle" {
		t.Fatalf("entity after the first sweep: %v", s)
	}
}

// Housekeeping runs only where the housekeeping lock is held; expiry does
// not take that lock, so a long housekeeping pass never holds it up.
func TestHousekeepingOnlyUnderItsLock(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	seedSweeperHistory(t, d, 10)
	sw := sweeper.New(sweeper.Config{Pool: d.Pool, Retention: time.Hour, Logger: sweeperTestLog()})

	// Another instance holds the lock: this one does nothing.
	other, err := d.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Release()
	if _, err := other.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('pullwake.housekeeping.default', 0))`); err != nil {
		t.Fatal(err)
	}
	res, err := sw.Housekeep(ctx, nil)
	if err != nil || res.Locked || res.Vacuumed || res.ClaimsDeleted != 0 {
		t.Fatalf("housekeeping beside the lock holder: %+v %v", res, err)
	}
	// Expiry is not held up by it.
	if _, err := sw.RunOnce(ctx, nil); err != nil {
		t.Fatal(err)
	}
	if n := sweeperCountRows(t, d, `SELECT count(*) FROM consumer_claims WHERE status = 'active'`); n != 0 {
		t.Fatalf("%d lapsed claims left after an expiry pass while housekeeping was locked elsewhere", n)
	}

	// Once it is free, this instance takes it, does the work and lets it go.
	if _, err := other.Exec(ctx, `SELECT pg_advisory_unlock(hashtextextended('pullwake.housekeeping.default', 0))`); err != nil {
		t.Fatal(err)
	}
	res, err = sw.Housekeep(ctx, nil)
	if err != nil || !res.Locked || !res.Vacuumed || res.ClaimsDeleted != 10 || res.WakesDeleted != 10 || res.BudgetSpent {
		t.Fatalf("housekeeping with the lock: %+v %v", res, err)
	}
	var free bool
	if err := other.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended('pullwake.housekeeping.default', 0))`).Scan(&free); err != nil || !free {
		t.Fatalf("the housekeeping lock was not released: %v %v", free, err)
	}
}

// The purge stops when the housekeeping budget is spent and goes on in the
// next pass. Batches of one row take a round trip each; 300 of them take
// far more than the 1 ms budget.
func TestHousekeepingPurgeWithinBudget(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	seedSweeperHistory(t, d, 300)
	sw := sweeper.New(sweeper.Config{Pool: d.Pool, Retention: time.Hour, Batch: 1,
		HousekeepingBudget: time.Millisecond, Logger: sweeperTestLog()})
	res, err := sw.Housekeep(ctx, nil)
	if err != nil || !res.Locked || !res.BudgetSpent || res.ClaimsDeleted >= 300 {
		t.Fatalf("first pass: %+v %v; want the budget spent before 300 one-row batches", res, err)
	}
	all := sweeper.New(sweeper.Config{Pool: d.Pool, Retention: time.Hour, Logger: sweeperTestLog()})
	res, err = all.Housekeep(ctx, nil)
	if err != nil || res.BudgetSpent {
		t.Fatalf("second pass: %+v %v", res, err)
	}
	if n := sweeperCountRows(t, d, `SELECT count(*) FROM consumer_claims WHERE status <> 'active'`); n != 0 {
		t.Fatalf("%d ended claims left", n)
	}
}

// seedSweeperHistory makes n entities with one claim each, taken two hours ago: the
// claims are released (history past a one-hour retention) except that every
// entity also gets a second, lapsed claim left active for the sweeper.
func seedSweeperHistory(t *testing.T, d *testdb.DB, n int) {
	t.Helper()
	ctx := t.Context()
	for _, q := range []string{
		`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`,
		fmt.Sprintf(`SELECT count(*) FROM generate_series(1, %d) g, LATERAL spawn_entity('/h/' || g)`, n),
		fmt.Sprintf(`SELECT count(*) FROM generate_series(1, %d) g, LATERAL send_to_entity('/h/' || g, '{}'::jsonb, NULL, now() - interval '3 hours')`, n),
		fmt.Sprintf(`SELECT count(*) FROM generate_series(1, %d) g, LATERAL claim_next_wake('r1', 1000 + 0 * g, now() - interval '3 hours') c,
		                    LATERAL release_claim(c.consumer_id, c.epoch, '[]', now() - interval '2 hours')`, n),
		// Nothing acked: the releases re-queued a wake for every entity.
		fmt.Sprintf(`SELECT count(*) FROM generate_series(1, %d) g, LATERAL claim_next_wake('r1', 1000 + 0 * g, now() - interval '1 minute')`, n),
	} {
		if _, err := d.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	if got := sweeperCountRows(t, d, `SELECT count(*) FROM consumer_claims WHERE status = 'active'`); got != int64(n) {
		t.Fatalf("seed: %d active claims, want %d", got, n)
	}
}

func sweeperCountRows(t *testing.T, d *testdb.DB, q string) int64 {
	t.Helper()
	var n int64
	if err := d.Pool.QueryRow(t.Context(), q).Scan(&n); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
	return n
}

func sweeperTestLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// A force release names a claim by its exact epoch: a signed spelling
// ("+1") is a 400, the epoch after the active one a 404; neither changes
// anything.
func TestForceReleaseEpochIsExact(t *testing.T) {
	t.Parallel()
	b := setup(t)
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 0)
	path := func(epoch string) string {
		return fmt.Sprintf("/_electric/claims/%s/%s/release", w.ConsumerID, epoch)
	}
	for epoch, want := range map[string]struct {
		status int
		code   string
	}{
		"+1":                           {http.StatusBadRequest, "INVALID_REQUEST"},
		"%2B1":                         {http.StatusBadRequest, "INVALID_REQUEST"},
		"-1":                           {http.StatusBadRequest, "INVALID_REQUEST"},
		"99999999999999999999":         {http.StatusBadRequest, "INVALID_REQUEST"},
		fmt.Sprint(w.Epoch + 1):        {http.StatusNotFound, "CLAIM_NOT_FOUND"},
		fmt.Sprint(w.Epoch + 1000000):  {http.StatusNotFound, "CLAIM_NOT_FOUND"},
		"0" + fmt.Sprint(w.Epoch+1000): {http.StatusNotFound, "CLAIM_NOT_FOUND"},
	} {
		r := b.do("POST", path(epoch), b.admin, nil)
		if r.status != want.status || r.errorCode(t) != want.code {
			t.Fatalf("force release at epoch %q: %d %s, want %d %s", epoch, r.status, r.body, want.status, want.code)
		}
	}
	if s := b.claimStatus(w.ConsumerID, w.Epoch); s != "active" {
		t.Fatalf("claim after refused force releases: %s", s)
	}
	r := b.must(200, b.do("POST", path(fmt.Sprint(w.Epoch)), b.admin, nil)).json(t)
	if r["released"] != true || r["entity_cleared"] != true {
		t.Fatalf("force release at the exact epoch: %v", r)
	}
}
