package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/testdb"
)

// The flat-cost figure: claim_next_wake and release_claim cost the same
// with 1,000,000 historical claims and 100,000 queued wakes as on an empty
// database. The data is built with generate_series straight into the
// tables, in the shape the lifecycle functions leave behind.

const flatTenant = "flat"

// buildHistory adds entities '/flat/h-N', each with claims/entities ended
// claims (released, one in ten expired) and as many finished wakes, all a
// day old. The entities are idle with everything acked.
func buildHistory(ctx context.Context, pool *pgxpool.Pool, entities, claims int) error {
	per := max(1, claims/max(entities, 1))
	stmts := []string{
		`INSERT INTO entities (tenant_id, url, status, main_stream, created_at, updated_at)
		 SELECT $1, '/flat/h-' || g, 'idle', '/v1/stream/flat/h-' || g || '/main', now() - interval '2 days', now() - interval '1 day'
		   FROM generate_series(1, $2::int) g WHERE $3::int > 0`,
		`INSERT INTO entity_dispatch_state (tenant_id, entity_url, epoch, acked_offset, last_sent_offset,
		                                    last_released_at, last_completed_at, updated_at)
		 SELECT $1, '/flat/h-' || g, $3::int, $3::int, $3::int, now() - interval '1 day', now() - interval '1 day', now() - interval '1 day'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO streams (tenant_id, path, content_type, tail_seq, entity_url, created_at, updated_at)
		 SELECT $1, '/v1/stream/flat/h-' || g || '/main', 'application/json', $3::int, '/flat/h-' || g, now() - interval '2 days', now() - interval '1 day'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path, runner_id,
		                              status, claim_token_hash, lease_ttl_ms, claimed_at, last_heartbeat_at,
		                              lease_expires_at, released_at, acked_streams, updated_at)
		 SELECT $1, 'hist-' || g, (g - 1) % $3::int + 1, 'hist-' || g, '/flat/h-' || ((g - 1) / $3::int + 1),
		        '/v1/stream/flat/h-' || ((g - 1) / $3::int + 1) || '/main', 'flat-old',
		        CASE WHEN g % 10 = 0 THEN 'expired' ELSE 'released' END, '\x00'::bytea, 30000,
		        now() - interval '2 days' + g * interval '10 ms', now() - interval '2 days' + g * interval '10 ms',
		        now() - interval '2 days' + g * interval '10 ms' + interval '30 s',
		        CASE WHEN g % 10 = 0 THEN NULL ELSE now() - interval '2 days' + g * interval '10 ms' + interval '1 s' END,
		        '[]'::jsonb, now() - interval '2 days' + g * interval '10 ms' + interval '1 s'
		   FROM generate_series(1, $2::int * $3::int) g`,
		`INSERT INTO wakes (tenant_id, wake_id, entity_url, status, consumer_id, epoch, created_at, claimed_at, finished_at, updated_at)
		 SELECT $1, 'hist-' || g, '/flat/h-' || ((g - 1) / $3::int + 1),
		        CASE WHEN g % 10 = 0 THEN 'expired' ELSE 'completed' END, 'hist-' || g, (g - 1) % $3::int + 1,
		        now() - interval '2 days' + g * interval '10 ms', now() - interval '2 days' + g * interval '10 ms',
		        now() - interval '2 days' + g * interval '10 ms' + interval '1 s', now() - interval '2 days' + g * interval '10 ms' + interval '1 s'
		   FROM generate_series(1, $2::int * $3::int) g`,
	}
	for _, s := range stmts {
		if _, err := pool.Exec(ctx, s, flatTenant, entities, per); err != nil {
			return fmt.Errorf("build history: %w", err)
		}
	}
	return nil
}

// addQueued adds n entities '/flat/q-{from+i}', each with one sent message
// and one queued wake, oldest first in numbering order.
func addQueued(ctx context.Context, pool *pgxpool.Pool, from, n int) error {
	stmts := []string{
		`INSERT INTO entities (tenant_id, url, status, main_stream)
		 SELECT $1, '/flat/q-' || g, 'idle', '/v1/stream/flat/q-' || g || '/main' FROM generate_series($2::int, $3::int) g`,
		`INSERT INTO entity_dispatch_state (tenant_id, entity_url, last_sent_offset, outstanding_wake_id)
		 SELECT $1, '/flat/q-' || g, 1, 'q-' || g FROM generate_series($2::int, $3::int) g`,
		`INSERT INTO streams (tenant_id, path, content_type, tail_seq, entity_url)
		 SELECT $1, '/v1/stream/flat/q-' || g || '/main', 'application/json', 1, '/flat/q-' || g FROM generate_series($2::int, $3::int) g`,
		`INSERT INTO stream_messages (tenant_id, path, seq, data)
		 SELECT $1, '/v1/stream/flat/q-' || g || '/main', 1, convert_to('{"type":"inbox"}', 'UTF8') FROM generate_series($2::int, $3::int) g`,
		`INSERT INTO wakes (tenant_id, wake_id, entity_url, status, created_at, updated_at)
		 SELECT $1, 'q-' || g, '/flat/q-' || g, 'queued', now() - interval '1 hour' + g * interval '1 us', now()
		   FROM generate_series($2::int, $3::int) g`,
	}
	for _, s := range stmts {
		if _, err := pool.Exec(ctx, s, flatTenant, from, from+n-1); err != nil {
			return fmt.Errorf("add queued wakes: %w", err)
		}
	}
	return nil
}

func flatSetup(ctx context.Context, pool *pgxpool.Pool, histEntities, claims, queued int) error {
	// PULLWAKE_BENCH_EXTRA_SQL names a SQL file run first: a way to measure
	// a proposed change to a lifecycle function before it is a migration.
	if f := os.Getenv("PULLWAKE_BENCH_EXTRA_SQL"); f != "" {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		if _, err := pool.Exec(ctx, string(b)); err != nil {
			return fmt.Errorf("%s: %w", f, err)
		}
	}
	if _, err := pool.Exec(ctx, `INSERT INTO runners (tenant_id, id, token_hash) VALUES ($1, 'flat', '\x00')`, flatTenant); err != nil {
		return err
	}
	if claims > 0 {
		if err := buildHistory(ctx, pool, histEntities, claims); err != nil {
			return err
		}
	}
	if err := addQueued(ctx, pool, 1, queued); err != nil {
		return err
	}
	_, err := pool.Exec(ctx, `VACUUM (ANALYZE) entities, entity_dispatch_state, streams, stream_messages, wakes, consumer_claims, runners`)
	return err
}

// flatCycle claims the oldest queued wake and releases it with the main
// stream acked to its tail, timing each call.
func flatCycle(ctx context.Context, q *db.Queries, conn db.DBTX) (claim, release time.Duration, err error) {
	t0 := time.Now()
	c, err := q.ClaimNextWake(ctx, conn, db.ClaimNextWakeParams{RunnerID: "flat", LeaseTtlMs: 60000, TenantID: flatTenant})
	if err != nil {
		return 0, 0, fmt.Errorf("claim: %w", err)
	}
	t1 := time.Now()
	acks, _ := json.Marshal([]map[string]string{{"stream": c.StreamPath, "offset": "0000000000000001"}})
	r, err := q.ReleaseClaim(ctx, conn, db.ReleaseClaimParams{ConsumerID: c.ConsumerID, Epoch: c.Epoch, Acks: acks, TenantID: flatTenant})
	if err != nil {
		return 0, 0, fmt.Errorf("release: %w", err)
	}
	if !r.Released || !r.EntityCleared || r.QueuedWakeID != "" {
		return 0, 0, fmt.Errorf("release %s/%d: %+v", c.ConsumerID, c.Epoch, r)
	}
	return t1.Sub(t0), time.Since(t1), nil
}

// BenchmarkFlatCost compares claim and release latency on an empty
// database and on one with 1,000,000 historical claims (and as many
// finished wakes) and 100,000 queued wakes. Building the large one takes
// about a minute; run it alone:
//
//	go test ./internal/bench -run '^$' -bench FlatCost -benchtime 3000x
func BenchmarkFlatCost(b *testing.B) {
	ctx := context.Background()
	for _, size := range []struct {
		name                 string
		histEntities, claims int
		queued               int
	}{
		{"empty", 0, 0, 1000},
		{"history-1M-claims-100k-queued", 100_000, 1_000_000, 100_000},
	} {
		tdb := testdb.New(b)
		start := time.Now()
		if err := flatSetup(ctx, tdb.Pool, size.histEntities, size.claims, size.queued); err != nil {
			b.Fatal(err)
		}
		b.Logf("%s: built in %s", size.name, time.Since(start).Round(time.Millisecond))
		conn, err := tdb.Pool.Acquire(ctx)
		if err != nil {
			b.Fatal(err)
		}
		q := db.New()
		added := size.queued
		b.Run(size.name, func(b *testing.B) {
			b.ReportAllocs()
			var left int
			if err := conn.QueryRow(ctx, `SELECT count(*) FROM wakes WHERE tenant_id = $1 AND status = 'queued'`, flatTenant).Scan(&left); err != nil {
				b.Fatal(err)
			}
			if left < b.N {
				// Top the queue up (the empty database keeps a small one).
				if err := addQueued(ctx, tdb.Pool, added+1, b.N-left); err != nil {
					b.Fatal(err)
				}
				added += b.N - left
			}
			var claimT, releaseT time.Duration
			b.ResetTimer()
			for range b.N {
				c, r, err := flatCycle(ctx, q, conn)
				if err != nil {
					b.Fatal(err)
				}
				claimT += c
				releaseT += r
			}
			b.ReportMetric(float64(claimT.Nanoseconds())/float64(b.N), "claim-ns/op")
			b.ReportMetric(float64(releaseT.Nanoseconds())/float64(b.N), "release-ns/op")
		})
		conn.Release()
	}
}

// planLog collects the plans auto_explain sends to the client.
type planLog struct {
	mu    sync.Mutex
	plans []string
}

func (p *planLog) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.plans
	p.plans = nil
	return out
}

var seqScanHot = regexp.MustCompile(`Seq Scan on (consumer_claims|wakes|entity_dispatch_state|entities|streams|stream_messages)\b`)

// TestLifecyclePlansUseIndexes runs claim_next_wake, release_claim and
// purge_history under auto_explain (nested statements, analyzed) on a
// database with history, and checks that no statement inside them scans a
// hot table sequentially and that the queue pick, the claim lookup and the
// retention batches use their indexes.
func TestLifecyclePlansUseIndexes(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := flatSetup(ctx, tdb.Pool, 2000, 20000, 2000); err != nil {
		t.Fatal(err)
	}

	var log planLog
	cfg, err := pgx.ParseConfig(tdb.URL)
	if err != nil {
		t.Fatal(err)
	}
	cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
		if n.Severity == "LOG" && strings.Contains(n.Message, "plan:") {
			log.mu.Lock()
			log.plans = append(log.plans, n.Message)
			log.mu.Unlock()
		}
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(ctx, `LOAD 'auto_explain'`); err != nil {
		t.Skipf("auto_explain unavailable: %v", err)
	}
	for _, s := range []string{
		`SET auto_explain.log_min_duration = 0`, `SET auto_explain.log_nested_statements = on`,
		`SET auto_explain.log_analyze = on`, `SET client_min_messages = log`,
	} {
		if _, err := conn.Exec(ctx, s); err != nil {
			t.Fatalf("%s: %v", s, err)
		}
	}
	q := db.New()
	check := func(step string, plans []string, wantIndexes ...string) {
		t.Helper()
		all := strings.Join(plans, "\n----\n")
		if len(plans) == 0 {
			t.Fatalf("%s: auto_explain sent no plans", step)
		}
		for _, p := range plans {
			m := seqScanHot.FindString(p)
			if m == "" {
				continue
			}
			t.Errorf("%s: %s:\n%s", step, m, all)
		}
		for _, ix := range wantIndexes {
			if !strings.Contains(all, ix) {
				t.Errorf("%s: no plan uses %s:\n%s", step, ix, all)
			}
		}
	}

	// A few cycles first, so the queue head holds claimed wakes as it does
	// in service; then the checked one.
	for range 5 {
		if _, _, err := flatCycle(ctx, q, conn); err != nil {
			t.Fatal(err)
		}
	}
	log.take()
	c, err := q.ClaimNextWake(ctx, conn, db.ClaimNextWakeParams{RunnerID: "flat", LeaseTtlMs: 60000, TenantID: flatTenant})
	if err != nil {
		t.Fatal(err)
	}
	plans := log.take()
	check("claim_next_wake", plans, "wake_queue_pkey", "entity_dispatch_state_pkey")
	// The pick walks the queue's index in order: no sort of the queue.
	for _, p := range plans {
		if strings.Contains(p, "wake_queue") && (strings.Contains(p, "Sort") || strings.Contains(p, "Bitmap")) {
			t.Errorf("claim_next_wake: the pick sorts the queue instead of walking its index in order:\n%s", p)
		}
	}

	acks, _ := json.Marshal([]map[string]string{{"stream": c.StreamPath, "offset": "0000000000000001"}})
	if _, err := q.ReleaseClaim(ctx, conn, db.ReleaseClaimParams{ConsumerID: c.ConsumerID, Epoch: c.Epoch, Acks: acks, TenantID: flatTenant}); err != nil {
		t.Fatal(err)
	}
	check("release_claim", log.take(), "consumer_claims_pkey", "entity_dispatch_state_pkey", "wakes_pkey")

	p, err := q.PurgeHistory(ctx, conn, db.PurgeHistoryParams{OlderThan: pgIntervalHours(1), MaxRows: 500, TenantID: flatTenant})
	if err != nil {
		t.Fatal(err)
	}
	if p.ClaimsDeleted != 500 || p.WakesDeleted != 500 {
		t.Errorf("purge_history deleted %d claims, %d wakes; want 500 of each", p.ClaimsDeleted, p.WakesDeleted)
	}
	check("purge_history", log.take(), "consumer_claims_finished_idx", "wakes_finished_idx")
}

func pgIntervalHours(h int64) pgtype.Interval {
	return pgtype.Interval{Microseconds: h * int64(time.Hour/time.Microsecond), Valid: true}
}
