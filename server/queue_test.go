package server_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/sweeper"
)

// pickBuffers is how many buffers the claim's pick (as claim_next_wake runs
// it for the wakes any runner may take) touches: the cost of finding the
// oldest queued wake.
func pickBuffers(t *testing.T, d *testdb.DB) int {
	t.Helper()
	var plan []struct {
		Plan struct {
			Hit  int `json:"Shared Hit Blocks"`
			Read int `json:"Shared Read Blocks"`
		} `json:"Plan"`
	}
	var raw []byte
	err := d.Pool.QueryRow(t.Context(), `
		EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON)
		SELECT q.wake_id FROM wake_queue q
		 WHERE q.tenant_id = 'default' AND q.runner_key = ''
		 ORDER BY q.created_at, q.wake_id LIMIT 1 FOR UPDATE OF q SKIP LOCKED`).Scan(&raw)
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &plan); err != nil || len(plan) != 1 {
		t.Fatalf("explain: %s (%v)", raw, err)
	}
	return plan[0].Plan.Hit + plan[0].Plan.Read
}

// Claims leave dead entries at the head of the queue's index, which every
// later pick walks; the sweeper's vacuum of wake_queue removes them.
func TestSweeperVacuumKeepsQueueHeadClean(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx := t.Context()
	exec := func(sql string) {
		t.Helper()
		if _, err := d.Pool.Exec(ctx, sql); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Autovacuum would clean the queue on its own schedule, under the test.
	exec(`ALTER TABLE wake_queue SET (autovacuum_enabled = false)`)
	exec(`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`)
	exec(`SELECT count(*) FROM generate_series(1, 3100) g, LATERAL spawn_entity('/q/' || g)`)
	exec(`SELECT count(*) FROM generate_series(1, 3100) g, LATERAL send_to_entity('/q/' || g, '{}'::jsonb)`)
	exec(`ANALYZE`)
	// 3,000 claims, oldest first: their queue entries die at the head.
	// (g in the arguments makes it one call per row, not one call reused.)
	exec(`SELECT count(*) FROM generate_series(1, 3000) g, LATERAL claim_next_wake('r1', 60000 + 0 * g) c`)

	dirty := pickBuffers(t, d)
	sw := sweeper.New(sweeper.Config{Pool: d.Pool})
	if err := sw.VacuumQueue(ctx); err != nil {
		t.Fatal(err)
	}
	clean := pickBuffers(t, d)
	t.Logf("pick touched %d buffers after 3,000 claims, %d after the sweeper's vacuum", dirty, clean)
	if dirty < 15 || clean > 8 {
		t.Fatalf("pick touched %d buffers before the vacuum and %d after; want the dead head (>= 15) gone (<= 8)", dirty, clean)
	}
}

// The running server's sweeper vacuums the queue on every pass.
func TestServerSweeperVacuumsQueue(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.sweep = 50 * time.Millisecond })
	eventually(t, 20*time.Second, "a vacuum of wake_queue", func() bool {
		var n int64
		err := b.db.Pool.QueryRow(t.Context(),
			`SELECT vacuum_count FROM pg_stat_user_tables WHERE relname = 'wake_queue'`).Scan(&n)
		return err == nil && n > 0
	})
}
