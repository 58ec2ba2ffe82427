package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/pullwake/pullwake/internal/testdb"
)

// The hot paths' cost per call, in shared buffers (hit + read): a send and
// the publish of its wake's events after its commit, the claim pick, the event claim, a
// heartbeat, an append, a release, a done that claims the next wake, and
// the batch forms of claim, append and release (group commit), and the
// sweeper's two passes (bounded by their limit, not hot). Each is measured
// on one database twice: with only the few entities of the measurement,
// and with 100,000 queued wakes (all addressed to another runner, older
// than the measured ones), 100,000 live claims (all of the measuring
// runner) and 100,000 ended claims added straight into the tables.
// With the queue and the claims, three ways the plans can be stale:
//   - plans-of-empty-tables: the session that planned (and cached generic
//     plans) while the tables held a few rows, reused unchanged;
//   - stale-statistics: a new session, statistics still those of the
//     empty tables (autovacuum is off for this database's tables);
//   - analyzed: a new session after ANALYZE.
// A call may cost at most twice its cost on the empty database plus a
// small constant (index descents grow a level or two with the data).

const hotTenant = "hot"

// hotSize is the queued wakes and live claims added: 100,000, or
// PULLWAKE_HOTCOST_SIZE.
func hotSize(t *testing.T) int {
	if s := os.Getenv("PULLWAKE_HOTCOST_SIZE"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("PULLWAKE_HOTCOST_SIZE=%q: want a positive integer", s)
		}
		return n
	}
	return 100_000
}

// hotOps are the measured calls, in the order of a round.
var hotOps = []string{
	"send", "publish", "send (wake queued)", "claim_wake_for_event", "claim_next_wake", "heartbeat_claim",
	"append", "release_claim", "release_and_claim_next", "claim_next_wakes (1 item)",
	"pw_stream_writes (1 item)", "release_claims (1 item)", "sweep_wake_events (limit 100)",
	"expire_claims (limit 100)",
}

// hotBuffers is one phase's buffers per call, by op: one figure per round.
type hotBuffers map[string][]int64

func (h hotBuffers) median(op string) int64 {
	v := slices.Clone(h[op])
	if len(v) == 0 {
		return -1
	}
	slices.Sort(v)
	return v[len(v)/2]
}

// explainBuffers runs stmt under EXPLAIN (ANALYZE, BUFFERS) and returns
// the shared buffers (hit + read) of its top plan node, which include
// those of every statement a function runs inside it.
func explainBuffers(ctx context.Context, conn *pgx.Conn, stmt string, args ...any) (int64, error) {
	var out string
	if err := conn.QueryRow(ctx, "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "+stmt, args...).Scan(&out); err != nil {
		return 0, fmt.Errorf("%s: %w", stmt, err)
	}
	var plans []struct {
		Plan struct {
			Hit  int64 `json:"Shared Hit Blocks"`
			Read int64 `json:"Shared Read Blocks"`
		} `json:"Plan"`
	}
	if err := json.Unmarshal([]byte(out), &plans); err != nil || len(plans) != 1 {
		return 0, fmt.Errorf("%s: explain output %q: %v", stmt, out, err)
	}
	return plans[0].Plan.Hit + plans[0].Plan.Read, nil
}

// hotRound runs one round on entities /hot/a-{i}, /hot/b-{i} and
// /hot/c-{i} (idle, nothing sent), recording each call's buffers in into
// (nil: warm-up). a is claimed by its event, b by the pick, c by the
// batch forms (group commit).
func hotRound(ctx context.Context, conn *pgx.Conn, i int, into hotBuffers) error {
	a, b, c := fmt.Sprintf("/hot/a-%d", i), fmt.Sprintf("/hot/b-%d", i), fmt.Sprintf("/hot/c-%d", i)
	aStream, bStream, cStream := "/v1/stream"+a+"/main", "/v1/stream"+b+"/main", "/v1/stream"+c+"/main"
	measure := func(op, stmt string, args ...any) error {
		n, err := explainBuffers(ctx, conn, stmt, args...)
		if err != nil {
			return fmt.Errorf("round %d: %s: %w", i, op, err)
		}
		if into != nil {
			into[op] = append(into[op], n)
		}
		return nil
	}
	// The send, then the publish of its wake's events once its commit is
	// behind the snapshot fence (the publisher also finds the previous
	// round's other wakes in the log, claimed already: no event).
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := measure("send", `SELECT * FROM send_to_entity($1, '{"n": 1}'::jsonb, 'bench', NULL, $2)`, a, hotTenant); err != nil {
		return err
	}
	var xid string
	if err := tx.QueryRow(ctx, `SELECT pg_current_xact_id()::text`).Scan(&xid); err != nil {
		return err
	}
	if err := tx.Commit(ctx); err != nil {
		return err
	}
	if err := waitFenced(ctx, conn, xid); err != nil {
		return fmt.Errorf("round %d: %w", i, err)
	}
	if err := measure("publish", `SELECT pw_publish_wake_events()`); err != nil {
		return err
	}
	if _, err := conn.Exec(ctx, `SELECT * FROM send_to_entity($1, '{"n": 1}'::jsonb, 'bench', NULL, $2)`, b, hotTenant); err != nil {
		return err
	}
	if err := measure("send (wake queued)", `SELECT * FROM send_to_entity($1, '{"n": 2}'::jsonb, 'bench', NULL, $2)`, b, hotTenant); err != nil {
		return err
	}
	if err := measure("claim_wake_for_event", `SELECT * FROM claim_wake_for_event('hot', $1, 60000, NULL, $2)`, aStream, hotTenant); err != nil {
		return err
	}
	// The pick passes every wake addressed to the other runner and takes
	// b's, the only one the measuring runner may take.
	if err := measure("claim_next_wake", `SELECT * FROM claim_next_wake('hot', 60000, NULL, $1)`, hotTenant); err != nil {
		return err
	}
	claimOf := func(url string) (string, int64, error) {
		var c string
		var e int64
		err := conn.QueryRow(ctx, `SELECT active_consumer_id, active_epoch FROM entity_dispatch_state
		                            WHERE tenant_id = $1 AND entity_url = $2 AND active_consumer_id IS NOT NULL`,
			hotTenant, url).Scan(&c, &e)
		if err != nil {
			return "", 0, fmt.Errorf("round %d: the claim of %s: %w", i, url, err)
		}
		return c, e, nil
	}
	ca, ea, err := claimOf(a)
	if err != nil {
		return err
	}
	cb, eb, err := claimOf(b)
	if err != nil {
		return err
	}
	if err := measure("heartbeat_claim", `SELECT * FROM heartbeat_claim($1, $2, NULL, NULL, $3)`, ca, ea, hotTenant); err != nil {
		return err
	}
	if err := measure("append", `SELECT * FROM pw_stream_write_as(true, $1, $2, 'application/json',
	                                 ARRAY[convert_to('{"type":"out"}', 'UTF8')], false, NULL, NULL, NULL, NULL, NULL)`,
		hotTenant, aStream); err != nil {
		return err
	}
	acks := func(stream string, off int) string {
		return fmt.Sprintf(`[{"stream": %q, "offset": "%016d"}]`, stream, off)
	}
	if err := measure("release_claim", `SELECT * FROM release_claim($1, $2, $3::jsonb, NULL, $4)`,
		ca, ea, acks(aStream, 2), hotTenant); err != nil {
		return err
	}
	if err := measure("release_and_claim_next", `SELECT * FROM release_and_claim_next($1, $2, $3::jsonb, 'hot', 60000, NULL, $4)`,
		cb, eb, acks(bStream, 2), hotTenant); err != nil {
		return err
	}
	// The batch forms, one item each, on c.
	if _, err := conn.Exec(ctx, `SELECT * FROM send_to_entity($1, '{"n": 1}'::jsonb, 'bench', NULL, $2)`, c, hotTenant); err != nil {
		return err
	}
	if err := measure("claim_next_wakes (1 item)", `SELECT * FROM claim_next_wakes('{hot}', '{60000}', NULL, $1)`, hotTenant); err != nil {
		return err
	}
	cc, ec, err := claimOf(c)
	if err != nil {
		return err
	}
	if err := measure("pw_stream_writes (1 item)", `SELECT * FROM pw_stream_writes($1, ARRAY[$2], '{application/json}', '{true}',
	                                                   '{1}', ARRAY[convert_to('{"type":"out"}', 'UTF8')], NULL)`,
		hotTenant, cStream); err != nil {
		return err
	}
	if err := measure("release_claims (1 item)", `SELECT * FROM release_claims(ARRAY[$1], ARRAY[$2::bigint], ARRAY[$3::jsonb], NULL, $4)`,
		cc, ec, acks(cStream, 2), hotTenant); err != nil {
		return err
	}
	if err := measure("sweep_wake_events (limit 100)", `SELECT sweep_wake_events('0 s', 100, NULL, $1)`, hotTenant); err != nil {
		return err
	}
	if err := measure("expire_claims (limit 100)", `SELECT count(*) FROM expire_claims(NULL, $1, 100)`, hotTenant); err != nil {
		return err
	}
	// Every wake the round queued was claimed and every claim released.
	var left int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM entity_dispatch_state
	                               WHERE tenant_id = $1 AND entity_url IN ($2, $3, $4)
	                                 AND (active_consumer_id IS NOT NULL OR outstanding_wake_id IS NOT NULL)`,
		hotTenant, a, b, c).Scan(&left); err != nil {
		return err
	}
	if left != 0 {
		return fmt.Errorf("round %d: %d entities of the round still hold a claim or a wake", i, left)
	}
	return nil
}

// waitFenced waits until transaction xid lies behind the snapshot fence
// (every transaction on the cluster that started before it has ended), so
// that a publish takes its log rows; at most a minute.
func waitFenced(ctx context.Context, conn *pgx.Conn, xid string) error {
	deadline := time.Now().Add(time.Minute)
	for {
		var fenced bool
		if err := conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot()) > $1::xid8`, xid).Scan(&fenced); err != nil {
			return err
		}
		if fenced {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("transaction %s not behind the snapshot fence within a minute", xid)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// hotLoad adds n queued wakes addressed to runner 'other' (entities
// /hq/q-N, one sent message each, each wake with its event in other's wake
// stream, all older than the round's wakes), n live claims of runner 'hot'
// (entities /hq/c-N running, each with its claimed wake) and n ended claims
// with their finished wakes (history). The rows
// go straight into the tables, triggers and foreign-key checks off
// (session_replication_role), in the shape the lifecycle functions leave.
func hotLoad(ctx context.Context, conn *pgx.Conn, n int) error {
	stmts := []string{
		`SET session_replication_role = replica`,
		// Queued wakes, addressed to 'other'.
		`INSERT INTO entities (tenant_id, url, status, main_stream, runner_id, created_at, updated_at)
		 SELECT $1, '/hq/q-' || g, 'idle', '/v1/stream/hq/q-' || g || '/main', 'other', now() - interval '2 hours', now() - interval '2 hours'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO entity_dispatch_state (tenant_id, entity_url, last_sent_offset, outstanding_wake_id, updated_at)
		 SELECT $1, '/hq/q-' || g, 1, 'hq-' || g, now() - interval '2 hours' FROM generate_series(1, $2::int) g`,
		`INSERT INTO streams (tenant_id, path, content_type, tail_seq, entity_url, created_at, updated_at)
		 SELECT $1, '/v1/stream/hq/q-' || g || '/main', 'application/json', 1, '/hq/q-' || g, now() - interval '2 hours', now() - interval '2 hours'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO stream_messages (tenant_id, path, seq, data)
		 SELECT $1, '/v1/stream/hq/q-' || g || '/main', 1, convert_to('{"type":"inbox"}', 'UTF8') FROM generate_series(1, $2::int) g`,
		`INSERT INTO wakes (tenant_id, wake_id, entity_url, runner_id, status, created_at, updated_at)
		 SELECT $1, 'hq-' || g, '/hq/q-' || g, 'other', 'queued', now() - interval '2 hours' + g * interval '1 ms', now() - interval '2 hours'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO wake_queue (tenant_id, wake_id, entity_url, runner_id, created_at)
		 SELECT $1, 'hq-' || g, '/hq/q-' || g, 'other', now() - interval '2 hours' + g * interval '1 ms'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO stream_messages (tenant_id, path, seq, data)
		 SELECT $1, pw_wake_stream('other'), s.tail_seq + g,
		        convert_to('{"type":"wake","stream":"/v1/stream/hq/q-' || g || '/main","generation":1}', 'UTF8')
		   FROM generate_series(1, $2::int) g, streams s WHERE s.tenant_id = $1 AND s.path = pw_wake_stream('other')`,
		`INSERT INTO wake_events (tenant_id, wake_id, runner_id, generation, seq, created_at)
		 SELECT $1, 'hq-' || g, 'other', 1, s.tail_seq + g, now() - interval '2 hours'
		   FROM generate_series(1, $2::int) g, streams s WHERE s.tenant_id = $1 AND s.path = pw_wake_stream('other')`,
		`UPDATE streams SET tail_seq = tail_seq + $2::int WHERE tenant_id = $1 AND path = pw_wake_stream('other')`,
		// 'other' is online and has read its stream: the backstop
		// (sweep_wake_events) looks at its wakes.
		`UPDATE runners r SET liveness_lease_expires_at = now() + interval '1 hour', wake_stream_read_seq = s.tail_seq
		   FROM streams s WHERE r.tenant_id = $1 AND r.id = 'other' AND s.tenant_id = $1 AND s.path = pw_wake_stream('other')`,
		// Live claims of 'hot'.
		`INSERT INTO entities (tenant_id, url, status, main_stream, created_at, updated_at)
		 SELECT $1, '/hq/c-' || g, 'running', '/v1/stream/hq/c-' || g || '/main', now() - interval '2 hours', now()
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO entity_dispatch_state (tenant_id, entity_url, active_consumer_id, active_epoch, active_runner_id,
		                                    active_claimed_at, active_lease_expires_at, outstanding_wake_id, epoch,
		                                    last_sent_offset, updated_at)
		 SELECT $1, '/hq/c-' || g, 'hc-' || g, 1, 'hot', now(), now() + interval '1 hour', 'hc-' || g, 1, 1, now()
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO streams (tenant_id, path, content_type, tail_seq, entity_url, created_at, updated_at)
		 SELECT $1, '/v1/stream/hq/c-' || g || '/main', 'application/json', 1, '/hq/c-' || g, now() - interval '2 hours', now()
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO stream_messages (tenant_id, path, seq, data)
		 SELECT $1, '/v1/stream/hq/c-' || g || '/main', 1, convert_to('{"type":"inbox"}', 'UTF8') FROM generate_series(1, $2::int) g`,
		`INSERT INTO wakes (tenant_id, wake_id, entity_url, status, consumer_id, epoch, created_at, claimed_at, updated_at)
		 SELECT $1, 'hc-' || g, '/hq/c-' || g, 'claimed', 'hc-' || g, 1, now() - interval '2 hours', now(), now()
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path, runner_id, status,
		                              claim_token_hash, lease_ttl_ms, claimed_at, last_heartbeat_at, lease_expires_at, updated_at)
		 SELECT $1, 'hc-' || g, 1, 'hc-' || g, '/hq/c-' || g, '/v1/stream/hq/c-' || g || '/main', 'hot', 'active',
		        '\x00'::bytea, 3600000, now(), now(), now() + interval '1 hour', now()
		   FROM generate_series(1, $2::int) g`,
		// History: as many ended claims (and finished wakes) of 'hot',
		// ten per entity /hq/h-N.
		`INSERT INTO entities (tenant_id, url, status, main_stream, created_at, updated_at)
		 SELECT $1, '/hq/h-' || g, 'idle', '/v1/stream/hq/h-' || g || '/main', now() - interval '2 days', now() - interval '1 day'
		   FROM generate_series(1, $2::int / 10) g`,
		`INSERT INTO entity_dispatch_state (tenant_id, entity_url, epoch, acked_offset, last_sent_offset, updated_at)
		 SELECT $1, '/hq/h-' || g, 10, 10, 10, now() - interval '1 day' FROM generate_series(1, $2::int / 10) g`,
		`INSERT INTO streams (tenant_id, path, content_type, tail_seq, entity_url, created_at, updated_at)
		 SELECT $1, '/v1/stream/hq/h-' || g || '/main', 'application/json', 10, '/hq/h-' || g, now() - interval '2 days', now() - interval '1 day'
		   FROM generate_series(1, $2::int / 10) g`,
		`INSERT INTO consumer_claims (tenant_id, consumer_id, epoch, wake_id, entity_url, stream_path, runner_id, status,
		                              claim_token_hash, lease_ttl_ms, claimed_at, last_heartbeat_at, lease_expires_at,
		                              released_at, acked_streams, updated_at)
		 SELECT $1, 'hh-' || g, (g - 1) % 10 + 1, 'hh-' || g, '/hq/h-' || ((g - 1) / 10 + 1),
		        '/v1/stream/hq/h-' || ((g - 1) / 10 + 1) || '/main', 'hot',
		        CASE WHEN g % 10 = 0 THEN 'expired' ELSE 'released' END, '\x00'::bytea, 30000,
		        now() - interval '2 days', now() - interval '2 days', now() - interval '2 days' + interval '30 s',
		        CASE WHEN g % 10 = 0 THEN NULL ELSE now() - interval '2 days' END, '[]'::jsonb, now() - interval '2 days'
		   FROM generate_series(1, $2::int) g`,
		`INSERT INTO wakes (tenant_id, wake_id, entity_url, status, consumer_id, epoch, created_at, claimed_at, finished_at, updated_at)
		 SELECT $1, 'hh-' || g, '/hq/h-' || ((g - 1) / 10 + 1), CASE WHEN g % 10 = 0 THEN 'expired' ELSE 'completed' END,
		        'hh-' || g, (g - 1) % 10 + 1, now() - interval '2 days', now() - interval '2 days',
		        now() - interval '2 days', now() - interval '2 days'
		   FROM generate_series(1, $2::int) g`,
		`RESET session_replication_role`,
	}
	for _, s := range stmts {
		var args []any
		if strings.Contains(s, "$1") {
			args = append(args, hotTenant)
		}
		if strings.Contains(s, "$2") {
			args = append(args, n)
		}
		if _, err := conn.Exec(ctx, s, args...); err != nil {
			return fmt.Errorf("load: %w\n%s", err, s)
		}
	}
	return nil
}

// hotTables are the tables whose statistics the test keeps stale.
var hotTables = []string{
	"entities", "entity_dispatch_state", "streams", "stream_messages", "wakes", "wake_queue", "wake_events",
	"wake_event_log", "consumer_claims", "runners", "push_queue", "stream_producers",
}

// TestHotPathBuffersStayFlat measures the hot paths' buffers per call
// empty and full, with plans made in the three ways above (see the top of
// this file), and fails when a call costs more than twice its empty cost
// plus hotSlack. It prints the table; PULLWAKE_HOTCOST_SIZE changes the
// size, PULLWAKE_HOTCOST_PLANS shows the plans.
func TestHotPathBuffersStayFlat(t *testing.T) {
	t.Parallel()
	size := hotSize(t)
	tdb := testdb.New(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// PULLWAKE_HOTCOST_PLANS=N logs the plans (auto_explain) of the
	// statements that read more than N buffers in the measured rounds.
	showPlans := os.Getenv("PULLWAKE_HOTCOST_PLANS") != ""
	minPlanBuffers, _ := strconv.Atoi(os.Getenv("PULLWAKE_HOTCOST_PLANS"))
	var plans planLog
	connect := func() *pgx.Conn {
		t.Helper()
		cfg, err := pgx.ParseConfig(tdb.URL)
		if err != nil {
			t.Fatal(err)
		}
		cfg.OnNotice = func(_ *pgconn.PgConn, n *pgconn.Notice) {
			if n.Severity == "LOG" && strings.Contains(n.Message, "plan:") {
				plans.mu.Lock()
				plans.plans = append(plans.plans, n.Message)
				plans.mu.Unlock()
			}
		}
		c, err := pgx.ConnectConfig(ctx, cfg)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close(context.Background()) })
		if showPlans {
			for _, s := range []string{
				`LOAD 'auto_explain'`, `SET auto_explain.log_nested_statements = on`, `SET auto_explain.log_analyze = on`,
				`SET auto_explain.log_buffers = on`, `SET client_min_messages = log`,
			} {
				if _, err := c.Exec(ctx, s); err != nil {
					t.Fatalf("%s: %v", s, err)
				}
			}
		}
		return c
	}
	bufs := regexp.MustCompile(`Buffers: shared hit=(\d+)(?: read=(\d+))?`)
	admin := connect()
	exec := func(sql string, args ...any) {
		t.Helper()
		if _, err := admin.Exec(ctx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	// Statistics change only when the test says so.
	for _, tb := range hotTables {
		exec(`ALTER TABLE ` + tb + ` SET (autovacuum_enabled = off)`)
	}
	// Runner 'hot' measures; 'other' is addressed by the big queue. Both
	// have wake streams, so a send's publish writes two events.
	exec(`SELECT count(*) FROM register_runner('hot', '', '', '\x01', NULL, $1)`, hotTenant)
	exec(`SELECT count(*) FROM register_runner('other', '', '', '\x02', NULL, $1)`, hotTenant)
	const warm, rounds = 8, 3
	phases := []string{"empty", "plans-of-empty-tables", "stale-statistics", "analyzed"}
	entities := warm + rounds + rounds + 2*(warm+rounds)
	exec(`SELECT count(*) FROM generate_series(1, $1::int) g,
	             LATERAL spawn_entity('/hot/a-' || g, NULL, NULL, $2) a,
	             LATERAL spawn_entity('/hot/b-' || g, NULL, NULL, $2) b,
	             LATERAL spawn_entity('/hot/c-' || g, NULL, NULL, $2) c`, entities, hotTenant)
	exec(`VACUUM (ANALYZE) ` + strings.Join(hotTables, ", "))

	got := map[string]hotBuffers{}
	next := 1
	run := func(conn *pgx.Conn, phase string, warmup int) {
		t.Helper()
		for range warmup {
			if err := hotRound(ctx, conn, next, nil); err != nil {
				t.Fatalf("%s (warm-up): %v", phase, err)
			}
			next++
		}
		got[phase] = hotBuffers{}
		if showPlans {
			if _, err := conn.Exec(ctx, `SET auto_explain.log_min_duration = 0`); err != nil {
				t.Fatal(err)
			}
			plans.take()
			defer func() {
				_, _ = conn.Exec(ctx, `SET auto_explain.log_min_duration = -1`)
				for _, p := range plans.take() {
					m := bufs.FindStringSubmatch(p)
					if m == nil {
						continue
					}
					h, _ := strconv.Atoi(m[1])
					r, _ := strconv.Atoi(m[2]) // 0 when absent
					if h+r >= minPlanBuffers && !strings.Contains(p, "EXPLAIN") {
						t.Logf("%s: %s", phase, p)
					}
				}
			}()
		}
		for range rounds {
			if err := hotRound(ctx, conn, next, got[phase]); err != nil {
				t.Fatalf("%s: %v", phase, err)
			}
			next++
		}
	}

	first := connect()
	run(first, "empty", warm)
	start := time.Now()
	if err := hotLoad(ctx, admin, size); err != nil {
		t.Fatal(err)
	}
	t.Logf("added %d queued wakes, %d live claims and %d ended claims in %s", size, size, size, time.Since(start).Round(time.Millisecond))
	run(first, "plans-of-empty-tables", 0)
	run(connect(), "stale-statistics", warm)
	exec(`ANALYZE ` + strings.Join(hotTables, ", "))
	run(connect(), "analyzed", warm)

	var b strings.Builder
	fmt.Fprintf(&b, "shared buffers per call (median of %d), empty and with %d queued wakes, live claims and ended claims:\n", rounds, size)
	fmt.Fprintf(&b, "%-30s", "op")
	for _, p := range phases {
		fmt.Fprintf(&b, " %22s", p)
	}
	b.WriteString("\n")
	for _, op := range hotOps {
		fmt.Fprintf(&b, "%-30s", op)
		for _, p := range phases {
			fmt.Fprintf(&b, " %22d", got[p].median(op))
		}
		b.WriteString("\n")
	}
	t.Log(b.String())
	for _, op := range hotOps {
		base := got["empty"].median(op)
		limit := 2*base + hotSlack
		if strings.Contains(op, "(limit 100)") {
			// A sweeper pass reads up to its limit of rows whatever the
			// size: bounded by the limit, not by the table.
			limit += 100 * hotPerRow
		}
		for _, p := range phases[1:] {
			if n := got[p].median(op); n > limit {
				t.Errorf("%s, %s: %d buffers per call; %d with the tables empty (at most %d)", op, p, n, base, limit)
			}
		}
	}
}

// hotSlack is what a call may add to twice its cost on empty tables: its
// index descents are a level or two deeper. hotPerRow is what a sweeper
// pass may read for each row of its limit.
const (
	hotSlack  = 40
	hotPerRow = 15
)
