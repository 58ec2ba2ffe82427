package server

// The server's batchers on a real database: a batch made of a good item
// and bad ones (stale epoch, unknown consumer, stopping entity, disabled
// runner) answers each item for itself.

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/testdb"
)

type batchFixture struct {
	t     *testing.T
	pool  *pgxpool.Pool
	b     *batchers
	mu    sync.Mutex
	sizes []string
}

func newBatchFixture(t *testing.T) *batchFixture {
	tdb := testdb.New(t)
	f := &batchFixture{t: t, pool: tdb.Pool}
	f.exec(`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`)
	f.exec(`INSERT INTO runners (id, token_hash, admin_status) VALUES ('r-off', '\x00', 'disabled')`)
	f.b = newBatchers(tdb.Pool, db.New(), "default", false, 1, func(name string, n int) {
		f.mu.Lock()
		f.sizes = append(f.sizes, name+":"+itoa(int64(n)))
		f.mu.Unlock()
	})
	f.b.start(t.Context())
	t.Cleanup(f.b.stop)
	return f
}

func (f *batchFixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.pool.Exec(f.t.Context(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

// claimed spawns url, sends to it and claims it for r1.
func (f *batchFixture) claimed(url string) db.ClaimNextWakeRow {
	f.t.Helper()
	q, ctx := db.New(), f.t.Context()
	f.exec(`SELECT * FROM spawn_entity($1)`, url)
	f.exec(`SELECT * FROM send_to_entity($1, '{}')`, url)
	c, err := q.ClaimNextWake(ctx, f.pool, db.ClaimNextWakeParams{RunnerID: "r1", LeaseTtlMs: 30000, TenantID: "default"})
	if err != nil || c.EntityUrl != url {
		f.t.Fatalf("claim %s: %+v %v", url, c, err)
	}
	return c
}

// holdFirstBatch locks url's dispatch row in an open transaction, so a
// release of url's claim stays in flight until the returned function
// commits it.
func (f *batchFixture) holdFirstBatch(url string) (release func()) {
	f.t.Helper()
	tx, err := f.pool.Begin(f.t.Context())
	if err != nil {
		f.t.Fatal(err)
	}
	if _, err := tx.Exec(f.t.Context(), `SELECT 1 FROM entity_dispatch_state WHERE entity_url = $1 FOR UPDATE`, url); err != nil {
		f.t.Fatal(err)
	}
	return func() {
		if err := tx.Commit(context.WithoutCancel(f.t.Context())); err != nil {
			f.t.Error(err)
		}
	}
}

func (f *batchFixture) seen(size string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.sizes {
		if s == size {
			return true
		}
	}
	return false
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond) // poll interval, bounded by the deadline
	}
}

func TestReleaseBatchAnswersEachItem(t *testing.T) {
	t.Parallel()
	f := newBatchFixture(t)
	h := f.claimed("/chat/h")
	a := f.claimed("/chat/a")
	b := f.claimed("/chat/b")
	s := f.claimed("/chat/s")
	f.exec(`SELECT * FROM stop_entity('/chat/s')`)

	// Batch 1 (h alone) stays in flight on the held dispatch row; the
	// others queue behind it and form batch 2.
	commit := f.holdFirstBatch("/chat/h")
	type answer struct {
		row db.ReleaseClaimRow
		err error
	}
	do := func(consumer string, epoch int64) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			r, err := f.b.release.Do(context.Background(), releaseItem{consumer: consumer, epoch: epoch, acks: []byte(`[]`)})
			ch <- answer{r, err}
		}()
		return ch
	}
	first := do(h.ConsumerID, h.Epoch)
	waitFor(t, "the first batch", func() bool { return f.seen("release:1") })
	good := do(a.ConsumerID, a.Epoch)
	stale := do(b.ConsumerID, b.Epoch+1)
	unknown := do("no-such-consumer", 1)
	stopping := do(s.ConsumerID, s.Epoch)
	waitFor(t, "four queued releases", func() bool { return f.b.release.Queued() == 4 })
	commit()

	if r := <-first; r.err != nil || !r.row.Released {
		t.Fatalf("first: %+v %v", r.row, r.err)
	}
	if r := <-good; r.err != nil || !r.row.Released || !r.row.EntityCleared || r.row.EntityStatus != "idle" {
		t.Fatalf("good: %+v %v", r.row, r.err)
	}
	for name, ch := range map[string]<-chan answer{"stale epoch": stale, "unknown consumer": unknown} {
		r := <-ch
		if de := db.DomainError(r.err); de == nil || de.Code != "CLAIM_NOT_FOUND" {
			t.Fatalf("%s: want CLAIM_NOT_FOUND, got %+v %v", name, r.row, r.err)
		}
	}
	if r := <-stopping; r.err != nil || !r.row.Released || r.row.EntityStatus != "stopped" {
		t.Fatalf("stopping entity: %+v %v", r.row, r.err)
	}
	if !f.seen("release:4") {
		t.Fatalf("batches %v: the four queued releases did not share a batch", f.sizes)
	}
	var active int
	if err := f.pool.QueryRow(t.Context(), `SELECT count(*) FROM consumer_claims WHERE status = 'active'`).Scan(&active); err != nil || active != 1 {
		t.Fatalf("active claims: %d %v (want b's alone)", active, err)
	}
}

func TestClaimBatchAnswersEachItem(t *testing.T) {
	t.Parallel()
	f := newBatchFixture(t)
	for _, u := range []string{"/chat/w1", "/chat/w2"} {
		f.exec(`SELECT * FROM spawn_entity($1)`, u)
		f.exec(`SELECT * FROM send_to_entity($1, '{}')`, u)
	}
	// Batch 1 claims /chat/w1 (the oldest wake) and waits on its entity
	// row, held here; the other claims queue behind it and form batch 2.
	tx, err := f.pool.Begin(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(t.Context()))
	if _, err := tx.Exec(t.Context(), `SELECT 1 FROM entities WHERE url = '/chat/w1' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		res claimResult
		err error
	}
	do := func(runner string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			r, err := f.b.claim.Do(context.Background(), claimItem{runner: runner, ttl: 30000})
			ch <- answer{r, err}
		}()
		return ch
	}
	first := do("r1")
	waitFor(t, "the first batch", func() bool { return f.seen("claim:1") })
	good, disabled, unknown, none := do("r1"), do("r-off"), do("ghost"), do("r1")
	waitFor(t, "four queued claims", func() bool { return f.b.claim.Queued() == 4 })
	if err := tx.Commit(t.Context()); err != nil {
		t.Fatal(err)
	}
	if a := <-first; a.err != nil || !a.res.found || a.res.row.EntityUrl != "/chat/w1" {
		t.Fatalf("first: %+v %v", a.res, a.err)
	}
	// good and none are both r1's: the batch serves them in input order,
	// so whichever the batch took first got /chat/w2.
	g, n := <-good, <-none
	if g.err != nil || n.err != nil || g.res.found == n.res.found {
		t.Fatalf("r1's two claims: %+v %v / %+v %v", g.res, g.err, n.res, n.err)
	}
	if g.res.found && g.res.row.EntityUrl != "/chat/w2" || n.res.found && n.res.row.EntityUrl != "/chat/w2" {
		t.Fatalf("r1's claim: %+v / %+v", g.res, n.res)
	}
	if a := <-disabled; db.DomainError(a.err) == nil || db.DomainError(a.err).Code != "RUNNER_DISABLED" {
		t.Fatalf("disabled runner: %+v %v", a.res, a.err)
	}
	if a := <-unknown; db.DomainError(a.err) == nil || db.DomainError(a.err).Code != "RUNNER_NOT_FOUND" {
		t.Fatalf("unknown runner: %+v %v", a.res, a.err)
	}
	if !f.seen("claim:4") {
		t.Fatalf("batches %v: the four queued claims did not share a batch", f.sizes)
	}
}
