package bench

import (
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pullwake/pullwake/internal/testdb"
)

// transitions are the steps of mode 2's cycle, with the send that queues
// its wake, in the order a cycle runs them. Each is one autocommit
// statement, so what runs at its commit (deferred triggers) is counted
// with it. %[1]s is the entity, %[2]s its main stream, %[3]s the tenant;
// the release's consumer and epoch are read from the claim.
var transitions = []struct{ name, sql string }{
	{"send", `SELECT count(*) FROM send_to_entity('%[1]s', '{"n": 1}'::jsonb, 'bench', NULL, '%[3]s')`},
	{"claim", `SELECT count(*) FROM claim_next_wake('tc', 60000, NULL, '%[3]s')`},
	{"append", `SELECT count(*) FROM pw_stream_write('%[3]s', '%[2]s', 'application/json',
	            ARRAY[convert_to('{"type":"out"}', 'UTF8')], false, NULL, NULL, NULL, NULL, NULL)`},
	{"release", `SELECT count(*) FROM release_claim(
	               (SELECT active_consumer_id FROM entity_dispatch_state WHERE tenant_id = '%[3]s' AND entity_url = '%[1]s'),
	               (SELECT active_epoch FROM entity_dispatch_state WHERE tenant_id = '%[3]s' AND entity_url = '%[1]s'),
	               '[{"stream": "%[2]s", "offset": "0000000000000002"}]'::jsonb, NULL, '%[3]s')`},
}

// BenchmarkTransitionCost reports, per transition of the SQL cycle (send,
// claim, append 1 message, release), the statements the database executes
// for it (every executor run, nested ones and those of deferred triggers
// at commit included, counted by auto_explain) and the shared buffers it
// touches (hit + read, from the database's own counters, the cost of a
// bare SELECT 1 subtracted). One iteration is one cycle per measure:
//
//	go test ./internal/bench -run '^$' -bench TransitionCost -benchtime 30x
//
// Before/after figures of a change come from running it on both commits.
func BenchmarkTransitionCost(b *testing.B) {
	tdb := testdb.New(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const tenant = "tc"
	var plans atomic.Int64
	connect := func(count bool) *pgx.Conn {
		b.Helper()
		cfg, err := pgx.ParseConfig(tdb.URL)
		if err != nil {
			b.Fatal(err)
		}
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			if n.Severity == "LOG" && strings.Contains(n.Message, "plan:") {
				plans.Add(1)
			}
		}
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { c.Close(context.Background()) })
		if count {
			for _, s := range []string{`LOAD 'auto_explain'`, `SET auto_explain.log_nested_statements = on`,
				`SET auto_explain.log_min_duration = 0`, `SET client_min_messages = log`} {
				if _, err := c.Exec(ctx, s); err != nil {
					b.Fatalf("%s: %v", s, err)
				}
			}
		}
		return c
	}
	counter, plain := connect(true), connect(false)
	if _, err := plain.Exec(ctx, fmt.Sprintf(`SELECT count(*) FROM register_runner('tc', '', '', '\x01', NULL, '%s')`, tenant)); err != nil {
		b.Fatal(err)
	}
	next := 0
	spawn := func() (string, string) {
		b.Helper()
		next++
		url := fmt.Sprintf("/tc/e-%d", next)
		if _, err := plain.Exec(ctx, fmt.Sprintf(`SELECT count(*) FROM spawn_entity('%s', NULL, NULL, '%s')`, url, tenant)); err != nil {
			b.Fatal(err)
		}
		return url, "/v1/stream" + url + "/main"
	}
	// blocks is the database's shared buffer count, with this backend's
	// pending counters flushed first (the statement runs alone, so the
	// flush happens when it ends).
	blocks := func() int64 {
		b.Helper()
		if _, err := plain.Exec(ctx, `SELECT pg_stat_force_next_flush()`); err != nil {
			b.Fatal(err)
		}
		var n int64
		if err := plain.QueryRow(ctx, `SELECT blks_hit + blks_read FROM pg_stat_database WHERE datname = current_database()`).Scan(&n); err != nil {
			b.Fatal(err)
		}
		return n
	}
	// measured runs stmt on plain, its buffers net of the measuring itself.
	var overhead int64
	measured := func(stmt string) int64 {
		b.Helper()
		before := blocks()
		if _, err := plain.Exec(ctx, stmt); err != nil {
			b.Fatalf("%s: %v", stmt, err)
		}
		return blocks() - before - overhead
	}
	counted := func(stmt string) int64 {
		b.Helper()
		plans.Store(0)
		if _, err := counter.Exec(ctx, stmt); err != nil {
			b.Fatalf("%s: %v", stmt, err)
		}
		return plans.Load() - 1 // the statement itself is not one of the transition's
	}
	cycle := func(into func(i int, stmt string)) {
		b.Helper()
		url, stream := spawn()
		for i, tr := range transitions {
			into(i, fmt.Sprintf(tr.sql, url, stream, tenant))
		}
		var left int
		if err := plain.QueryRow(ctx, `SELECT count(*) FROM entity_dispatch_state WHERE tenant_id = $1 AND entity_url = $2
		                                 AND (active_consumer_id IS NOT NULL OR outstanding_wake_id IS NOT NULL)`, tenant, url).Scan(&left); err != nil || left != 0 {
			b.Fatalf("cycle on %s left a claim or a wake (%d, %v)", url, left, err)
		}
	}
	// Warm both sessions' plans and caches, then learn what measuring a
	// bare statement costs.
	for range 5 {
		cycle(func(_ int, s string) { counted(s) })
		cycle(func(_ int, s string) { measured(s) })
	}
	for range 5 {
		overhead = 0
		overhead = measured(`SELECT 1`)
	}
	stmts := make([]int64, len(transitions))
	bufs := make([]int64, len(transitions))
	b.ResetTimer()
	for range b.N {
		cycle(func(i int, s string) { stmts[i] += counted(s) })
		cycle(func(i int, s string) { bufs[i] += measured(s) })
	}
	b.StopTimer()
	var allS, allB int64
	for i, tr := range transitions {
		b.ReportMetric(float64(stmts[i])/float64(b.N), "stmts-"+tr.name+"/op")
		b.ReportMetric(float64(bufs[i])/float64(b.N), "bufs-"+tr.name+"/op")
		allS += stmts[i]
		allB += bufs[i]
	}
	b.ReportMetric(float64(allS)/float64(b.N), "stmts/cycle")
	b.ReportMetric(float64(allB)/float64(b.N), "bufs/cycle")
}
