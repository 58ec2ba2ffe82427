package db_test

// Concurrent claim / release / heartbeat / expire / send from several
// connections against one database, with the lifecycle invariants checked
// continuously from another connection and once more at the end.

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
)

// itemErr is a batch item's outcome as the error its function raised.
func itemErr(code, message string) error {
	if code == "" {
		return nil
	}
	return &pgconn.PgError{Code: code, Message: message}
}

const (
	concurrencyDuration = 10 * time.Second // the issue asks for 10 s
	concurrencyWorkers  = 8
	concurrencyEntities = 20
)

var concurrencyRunners = []string{"r1", "r2", "r3"}

// invariantSQL lists every violated lifecycle invariant; one statement, so
// one snapshot.
const invariantSQL = `
SELECT v FROM (
  SELECT 'queued wake ' || w.wake_id || ' missing from wake_queue' AS v
    FROM wakes w WHERE w.status = 'queued'
     AND NOT EXISTS (SELECT 1 FROM wake_queue q WHERE q.tenant_id = w.tenant_id AND q.wake_id = w.wake_id
                       AND q.entity_url = w.entity_url AND q.created_at = w.created_at)
  UNION ALL
  SELECT 'wake_queue holds ' || q.wake_id || ', which is not queued'
    FROM wake_queue q WHERE NOT EXISTS (
      SELECT 1 FROM wakes w WHERE w.tenant_id = q.tenant_id AND w.wake_id = q.wake_id AND w.status = 'queued')
  UNION ALL
  SELECT 'two active claims on ' || c.entity_url AS v
    FROM consumer_claims c WHERE c.status = 'active'
   GROUP BY c.tenant_id, c.entity_url HAVING count(*) > 1
  UNION ALL
  SELECT 'active claim with NULL lease ' || c.consumer_id || '/' || c.epoch
    FROM consumer_claims c WHERE c.status = 'active' AND c.lease_expires_at IS NULL
  UNION ALL
  SELECT 'active claim ' || c.consumer_id || '/' || c.epoch || ' not in its slot (slot '
         || coalesce(d.active_consumer_id, '-') || '/' || coalesce(d.active_epoch::text, '-') || ')'
    FROM consumer_claims c
    JOIN entity_dispatch_state d ON d.tenant_id = c.tenant_id AND d.entity_url = c.entity_url
   WHERE c.status = 'active'
     AND (d.active_consumer_id IS DISTINCT FROM c.consumer_id OR d.active_epoch IS DISTINCT FROM c.epoch
          OR d.active_runner_id IS DISTINCT FROM c.runner_id
          OR d.active_lease_expires_at IS DISTINCT FROM c.lease_expires_at)
  UNION ALL
  SELECT 'slot of ' || d.entity_url || ' names ' || d.active_consumer_id || '/' || d.active_epoch
         || ' which is ' || coalesce(c.status, 'missing')
    FROM entity_dispatch_state d
    LEFT JOIN consumer_claims c ON c.tenant_id = d.tenant_id AND c.consumer_id = d.active_consumer_id
                               AND c.epoch = d.active_epoch
   WHERE d.active_consumer_id IS NOT NULL AND c.status IS DISTINCT FROM 'active'
  UNION ALL
  SELECT 'entity ' || e.url || ' is ' || e.status || ' with slot ' || coalesce(d.active_consumer_id, 'empty')
    FROM entities e JOIN entity_dispatch_state d ON d.tenant_id = e.tenant_id AND d.entity_url = e.url
   WHERE (e.status IN ('running', 'stopping')) <> (d.active_consumer_id IS NOT NULL)
  UNION ALL
  SELECT 'entity ' || w.entity_url || ' has ' || count(*) || ' queued wakes'
    FROM wakes w WHERE w.status = 'queued' GROUP BY w.tenant_id, w.entity_url HAVING count(*) > 1
  UNION ALL
  SELECT 'wake ' || w.wake_id || ' is claimed but its claim is ' || coalesce(c.status, 'missing')
    FROM wakes w
    LEFT JOIN consumer_claims c ON c.tenant_id = w.tenant_id AND c.consumer_id = w.consumer_id AND c.epoch = w.epoch
   WHERE w.status = 'claimed' AND c.status IS DISTINCT FROM 'active'
  UNION ALL
  SELECT 'idle entity ' || e.url || ' has messages past its ack (' || d.acked_offset || ' < '
         || d.last_sent_offset || ') and no queued wake'
    FROM entities e JOIN entity_dispatch_state d ON d.tenant_id = e.tenant_id AND d.entity_url = e.url
   WHERE e.status = 'idle' AND d.last_sent_offset > d.acked_offset
     AND NOT EXISTS (SELECT 1 FROM wakes w WHERE w.tenant_id = e.tenant_id AND w.entity_url = e.url
                                             AND w.status = 'queued')
  UNION ALL
  SELECT v FROM (` + outstandingSQL + `) o
  UNION ALL
  SELECT 'entity ' || d.entity_url || ' acked ' || d.acked_offset || ' past its tail ' || s.tail_seq
    FROM entity_dispatch_state d
    JOIN entities e ON e.tenant_id = d.tenant_id AND e.url = d.entity_url
    JOIN streams s ON s.tenant_id = e.tenant_id AND s.path = e.main_stream
   WHERE d.acked_offset > s.tail_seq
) x ORDER BY v`

// outstandingSQL lists every entity whose outstanding_wake_id is not what
// its wakes say: its queued wake when it has one, else the wake of the claim
// in its slot, else none.
const outstandingSQL = `
SELECT 'entity ' || d.entity_url || ' has outstanding_wake_id ' || coalesce(d.outstanding_wake_id, 'NULL')
       || ', its wakes say ' || coalesce(x.want, 'NULL') AS v
  FROM entity_dispatch_state d
  CROSS JOIN LATERAL (SELECT coalesce(
      (SELECT w.wake_id FROM wakes w WHERE w.tenant_id = d.tenant_id AND w.entity_url = d.entity_url
                                       AND w.status = 'queued' LIMIT 1),
      (SELECT c.wake_id FROM consumer_claims c WHERE c.tenant_id = d.tenant_id
                                                 AND c.consumer_id = d.active_consumer_id
                                                 AND c.epoch = d.active_epoch)) AS want) x
 WHERE d.outstanding_wake_id IS DISTINCT FROM x.want`

// checkInvariants returns the violations and each entity's acked_offset.
func checkInvariants(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}) ([]string, map[string]int64, error) {
	rows, err := q.Query(ctx, invariantSQL)
	if err != nil {
		return nil, nil, fmt.Errorf("invariants: %w", err)
	}
	bad, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, nil, fmt.Errorf("invariants: %w", err)
	}
	rows, err = q.Query(ctx, `SELECT entity_url, acked_offset FROM entity_dispatch_state`)
	if err != nil {
		return nil, nil, fmt.Errorf("acked offsets: %w", err)
	}
	acked := map[string]int64{}
	var url string
	var a int64
	_, err = pgx.ForEachRow(rows, []any{&url, &a}, func() error { acked[url] = a; return nil })
	return bad, acked, err
}

// sweepsTakeAdvisoryLock makes the load's expiry passes take a transaction
// advisory lock first, as the server's sweeper does (SPEC §3.5: one sweep at
// a time). It is off: sweeps from psql or `pullwake sweep` take no lock, so
// the load lets expiry passes overlap each other as well as every claim,
// release, heartbeat and send (expire_claims locks dispatch rows in entity
// order; see TestConcurrentSweepsDoNotDeadlock).
const sweepsTakeAdvisoryLock = false

var errSweepBusy = errors.New("another sweep holds the lock")

// sweep runs one expiry pass at now and returns how many claims it expired.
func sweep(ctx context.Context, conn *pgxpool.Conn, now time.Time) (int, error) {
	if !sweepsTakeAdvisoryLock {
		var n int
		err := conn.QueryRow(ctx, `SELECT count(*) FROM expire_claims($1)`, now).Scan(&n)
		return n, err
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck
	var got bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtext('pullwake test sweep'))`).Scan(&got); err != nil {
		return 0, err
	}
	if !got {
		return 0, errSweepBusy
	}
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM expire_claims($1)`, now).Scan(&n); err != nil {
		return 0, err
	}
	return n, tx.Commit(ctx)
}

type held struct {
	consumer string
	epoch    int64
	url      string
	path     string
	from     int64 // acked offset when claimed
}

// entitySet is the set of entities under load and the newest offset sent
// to each.
type entitySet struct {
	mu   sync.Mutex
	urls []string
	sent map[string]*atomic.Int64
}

func (e *entitySet) add(u string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.urls = append(e.urls, u)
	e.sent[u] = new(atomic.Int64)
}

func (e *entitySet) pick(rng *rand.Rand) string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.urls[rng.IntN(len(e.urls))]
}

// replace puts nu in old's place (old keeps its sent offset for acks).
func (e *entitySet) replace(old, nu string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.sent[nu] = new(atomic.Int64)
	for i, u := range e.urls {
		if u == old {
			e.urls[i] = nu
			return
		}
	}
}

func (e *entitySet) counter(u string) *atomic.Int64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.sent[u]
	if !ok {
		c = new(atomic.Int64)
		e.sent[u] = c
	}
	return c
}

func (e *entitySet) sentTo(u string) int64 { return e.counter(u).Load() }

func (e *entitySet) sentAt(u string, n int64) {
	c := e.counter(u)
	for old := c.Load(); n > old && !c.CompareAndSwap(old, n); old = c.Load() {
	}
}

type opCounts struct {
	mu sync.Mutex
	m  map[string]int
}

func (c *opCounts) add(k string) {
	c.mu.Lock()
	c.m[k]++
	c.mu.Unlock()
}

func (c *opCounts) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	keys := make([]string, 0, len(c.m))
	for k := range c.m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "  %-28s %7d\n", k, c.m[k])
	}
	return b.String()
}

func TestConcurrentLifecycle(t *testing.T) {
	t.Parallel()
	runConcurrentLifecycle(t, false)
}

// TestConcurrentLifecycleBatched is the same load with claims and
// releases made the way the server's group commit makes them: several at
// once through claim_next_wakes and release_claims (00012), the items in
// random order. An item that lost a deadlock (40P01, caught in its own
// subtransaction) is run again alone, as the server's batcher does.
func TestConcurrentLifecycleBatched(t *testing.T) {
	t.Parallel()
	runConcurrentLifecycle(t, true)
}

func runConcurrentLifecycle(t *testing.T, batched bool) {
	f := setup(t)
	ctx := f.ctx

	cfg, err := pgxpool.ParseConfig(f.url)
	if err != nil {
		t.Fatal(err)
	}
	cfg.MaxConns = concurrencyWorkers + 2
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()

	// The entities under load. A stop takes one out of the set (it stays,
	// stopping or stopped) and spawns a fresh one in its place.
	ents := &entitySet{sent: map[string]*atomic.Int64{}}
	for i := range concurrencyEntities {
		u := fmt.Sprintf("/chat/%d", i)
		if _, err := pool.Exec(ctx, `SELECT * FROM spawn_entity($1)`, u); err != nil {
			t.Fatal(err)
		}
		ents.add(u)
	}
	var spawned atomic.Int64
	spawned.Store(concurrencyEntities)

	counts := &opCounts{m: map[string]int{}}
	var failures atomic.Int64
	fail := func(format string, args ...any) {
		if failures.Add(1) <= 20 {
			t.Errorf(format, args...)
		}
	}
	checkErr := func(op string, err error, allowed ...string) bool {
		if err == nil {
			return true
		}
		code := pgCode(err)
		switch code {
		case "40P01":
			counts.add("DEADLOCK")
			var pe *pgconn.PgError
			errors.As(err, &pe)
			fail("%s: deadlock: %v\n%s\ncontext: %s", op, err, pe.Detail, pe.Where)
			return false
		case "40001":
			counts.add("SERIALIZATION FAILURE")
			fail("%s: serialization failure: %v", op, err)
			return false
		}
		for _, a := range allowed {
			if code == a {
				counts.add(op + " " + code)
				return false
			}
		}
		counts.add(op + " error")
		fail("%s: %v", op, err)
		return false
	}

	// ackFor is an ack anywhere from the claim's start to just past the
	// tail of what was sent.
	ackFor := func(rng *rand.Rand, h held) string {
		top := ents.sentTo(h.url) + 2
		a := h.from + rng.Int64N(max(top-h.from, 0)+1)
		return fmt.Sprintf(`[{"stream": %q, "offset": %q}]`, h.path, off(int(a)))
	}

	deadline := time.Now().Add(concurrencyDuration)
	var wg sync.WaitGroup
	for w := range concurrencyWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := pool.Acquire(ctx)
			if err != nil {
				fail("worker %d: acquire: %v", w, err)
				return
			}
			defer conn.Release()
			rng := rand.New(rand.NewPCG(uint64(w), uint64(time.Now().UnixNano())))
			var mine []held // claims this worker holds, like a runner would
			var ended []held
			// takeMine removes one of mine (or, sometimes, replays an
			// ended one: a late, repeated done).
			takeMine := func() (held, bool) {
				if len(ended) > 0 && (len(mine) == 0 || rng.IntN(5) == 0) {
					return ended[rng.IntN(len(ended))], true
				}
				if len(mine) == 0 {
					return held{}, false
				}
				k := rng.IntN(len(mine))
				h := mine[k]
				mine = append(mine[:k], mine[k+1:]...)
				ended = append(ended, h)
				if len(ended) > 50 {
					ended = ended[1:]
				}
				return h, true
			}
			for time.Now().Before(deadline) && ctx.Err() == nil {
				now := time.Now()
				step := ""
				switch p := rng.IntN(100); {
				case p < 22: // send
					u := ents.pick(rng)
					var offset string
					var wake *string
					err := conn.QueryRow(ctx, `SELECT msg_offset, wake_id FROM send_to_entity($1, '{"x":1}', 'load', $2)`, u, now).Scan(&offset, &wake)
					if checkErr("send", err, "PW003") { // the entity may have been stopped meanwhile
						var n int64
						fmt.Sscan(offset, &n) //nolint:errcheck
						ents.sentAt(u, n)
						counts.add("send")
					}
					step = "send to " + u
				case p < 42 && batched: // claims for 1-4 runners in one batch
					k := 1 + rng.IntN(4)
					runners, ttls := make([]string, k), make([]int32, k)
					for j := range k {
						runners[j] = concurrencyRunners[rng.IntN(len(concurrencyRunners))]
						ttls[j] = int32(500 + rng.IntN(4500))
					}
					rows, err := db.New().ClaimNextWakes(ctx, conn, db.ClaimNextWakesParams{
						RunnerIds: runners, LeaseTtlMs: ttls, Now: &now, TenantID: "default"})
					if checkErr("claim batch", err) {
						for _, r := range rows {
							if !checkErr("claim", itemErr(r.ErrCode, r.ErrMessage)) {
								continue
							}
							if !r.HasClaim {
								counts.add("claim: no work")
								continue
							}
							h := held{consumer: r.ConsumerID, epoch: r.Epoch, url: r.EntityUrl, path: r.StreamPath}
							fmt.Sscan(r.AckedOffset, &h.from) //nolint:errcheck
							mine = append(mine, h)
							counts.add("claim (batched)")
						}
					}
					step = fmt.Sprintf("claim batch %v", runners)
				case p < 60 && batched: // releases of 1-4 claims (sometimes late repeats) in one batch
					k := 1 + rng.IntN(4)
					arg := db.ReleaseClaimsParams{TenantID: "default", Now: &now}
					for range k {
						h, ok := takeMine()
						if !ok {
							break
						}
						arg.ConsumerIds = append(arg.ConsumerIds, h.consumer)
						arg.Epochs = append(arg.Epochs, h.epoch)
						arg.Acks = append(arg.Acks, ackFor(rng, h))
					}
					if len(arg.ConsumerIds) == 0 {
						continue
					}
					rows, err := db.New().ReleaseClaims(ctx, conn, arg)
					if checkErr("release batch", err) {
						for i, r := range rows {
							if r.ErrCode == "40P01" {
								counts.add("release item: deadlock, run again alone")
								err := conn.QueryRow(ctx, `SELECT released, entity_cleared FROM release_claim($1, $2, $3, $4)`,
									arg.ConsumerIds[i], arg.Epochs[i], arg.Acks[i], now).Scan(&r.Released, &r.EntityCleared)
								if !checkErr("release (again)", err) {
									continue
								}
							} else if !checkErr("release", itemErr(r.ErrCode, r.ErrMessage)) {
								continue
							}
							switch {
							case r.Released && r.EntityCleared:
								counts.add("release: cleared")
							case r.Released:
								counts.add("release: not the slot")
							default:
								counts.add("release: no-op")
							}
						}
					}
					step = fmt.Sprintf("release batch %v", arg.ConsumerIds)
				case p < 42: // claim
					runner := concurrencyRunners[rng.IntN(len(concurrencyRunners))]
					ttl := 500 + rng.IntN(4500)
					var h held
					var acked string
					err := conn.QueryRow(ctx, `SELECT consumer_id, epoch, entity_url, stream_path, acked_offset FROM claim_next_wake($1, $2, $3)`,
						runner, ttl, now).Scan(&h.consumer, &h.epoch, &h.url, &h.path, &acked)
					if errors.Is(err, pgx.ErrNoRows) {
						counts.add("claim: no work")
					} else if checkErr("claim", err) {
						fmt.Sscan(acked, &h.from) //nolint:errcheck
						mine = append(mine, h)
						counts.add("claim")
					}
					step = "claim by " + runner
				case p < 60: // release (sometimes a late, repeated one)
					h, ok := takeMine()
					if !ok {
						continue
					}
					var releasedOK, cleared bool
					err := conn.QueryRow(ctx, `SELECT released, entity_cleared FROM release_claim($1, $2, $3, $4)`,
						h.consumer, h.epoch, ackFor(rng, h), now).Scan(&releasedOK, &cleared)
					if checkErr("release", err) {
						switch {
						case releasedOK && cleared:
							counts.add("release: cleared")
						case releasedOK:
							counts.add("release: not the slot")
						default:
							counts.add("release: no-op")
						}
					}
					step = fmt.Sprintf("release %s/%d", h.consumer, h.epoch)
				case p < 70: // done and claim the runner's next wake in one call
					h, ok := takeMine()
					if !ok {
						continue
					}
					ttl := 500 + rng.IntN(4500)
					var releasedOK bool
					var next held
					var nextAcked string
					var hasNext bool
					err := conn.QueryRow(ctx, `SELECT released, next_wake_id IS NOT NULL, coalesce(next_consumer_id, ''),
					                                  coalesce(next_epoch, 0), coalesce(next_entity_url, ''),
					                                  coalesce(next_stream_path, ''), coalesce(next_acked_offset, '')
					                             FROM release_and_claim_next($1, $2, $3, NULL, $4, $5)`,
						h.consumer, h.epoch, ackFor(rng, h), ttl, now).
						Scan(&releasedOK, &hasNext, &next.consumer, &next.epoch, &next.url, &next.path, &nextAcked)
					if checkErr("release_and_claim_next", err) {
						switch {
						case hasNext:
							fmt.Sscan(nextAcked, &next.from) //nolint:errcheck
							mine = append(mine, next)
							counts.add("release_and_claim_next: next")
						case releasedOK:
							counts.add("release_and_claim_next: no work")
						default:
							counts.add("release_and_claim_next: no-op")
						}
					}
					step = fmt.Sprintf("release_and_claim_next %s/%d", h.consumer, h.epoch)
				case p < 83: // heartbeat
					if len(mine) == 0 {
						continue
					}
					h := mine[rng.IntN(len(mine))]
					_, err := conn.Exec(ctx, `SELECT * FROM heartbeat_claim($1, $2, NULL, $3)`, h.consumer, h.epoch, now)
					if checkErr("heartbeat", err, "PW007") {
						counts.add("heartbeat")
					}
					step = fmt.Sprintf("heartbeat %s/%d", h.consumer, h.epoch)
				case p < 85: // stop an entity; a fresh one takes its place
					u := ents.pick(rng)
					var status string
					err := conn.QueryRow(ctx, `SELECT status FROM stop_entity($1, $2)`, u, now).Scan(&status)
					if checkErr("stop", err) {
						counts.add("stop: " + status)
						nu := fmt.Sprintf("/chat/%d", spawned.Add(1)-1)
						if _, err := conn.Exec(ctx, `SELECT * FROM spawn_entity($1)`, nu); checkErr("spawn", err) {
							ents.replace(u, nu)
						}
					}
					step = "stop " + u
				default: // expire, sometimes with a pinned future clock
					at := now
					if rng.IntN(3) == 0 {
						at = now.Add(time.Duration(rng.IntN(4000)) * time.Millisecond)
						counts.add("expire (future now)")
					}
					n, err := sweep(ctx, conn, at)
					if errors.Is(err, errSweepBusy) {
						counts.add("expire: sweep busy")
						continue
					}
					if checkErr("expire", err) {
						counts.add("expire")
						for range n {
							counts.add("expired claims")
						}
					}
					step = "expire"
				}
				// After every step: outstanding_wake_id agrees with the wakes.
				rows, err := conn.Query(ctx, outstandingSQL)
				var bad []string
				if err == nil {
					bad, err = pgx.CollectRows(rows, pgx.RowTo[string])
				}
				if err != nil {
					if ctx.Err() == nil {
						fail("outstanding check after %s: %v", step, err)
					}
					return
				}
				counts.add("outstanding checks")
				for _, v := range bad {
					fail("after %s: %s", step, v)
				}
			}
		}()
	}

	// The checker: invariants in one snapshot, over and over, until the
	// workers stop; acked_offset must never move back.
	stop := make(chan struct{})
	checkerDone := make(chan struct{})
	var checks int
	go func() {
		defer close(checkerDone)
		last := map[string]int64{}
		for {
			select {
			case <-stop:
				return
			default:
			}
			bad, acked, err := checkInvariants(ctx, pool)
			if err != nil {
				if ctx.Err() == nil {
					fail("checker: %v", err)
				}
				return
			}
			checks++
			for _, v := range bad {
				fail("invariant (during run): %s", v)
			}
			for u, a := range acked {
				if a < last[u] {
					fail("acked_offset of %s went back from %d to %d", u, last[u], a)
				}
				last[u] = a
			}
		}
	}()

	wg.Wait()
	close(stop)
	<-checkerDone

	// Wind down: release every active claim with a full ack, expire
	// anything left at a far-future clock, then drain the queue the way
	// runners would, acking to the tail.
	rows, err := pool.Query(ctx, `SELECT consumer_id, epoch, stream_path FROM consumer_claims WHERE status = 'active'`)
	if err != nil {
		t.Fatal(err)
	}
	active, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (held, error) {
		var h held
		return h, r.Scan(&h.consumer, &h.epoch, &h.path)
	})
	if err != nil {
		t.Fatal(err)
	}
	end := time.Now().Add(time.Hour)
	for _, h := range active {
		_, err := pool.Exec(ctx, `SELECT * FROM release_claim($1, $2, '[]', $3)`, h.consumer, h.epoch, time.Now())
		checkErr("final release", err)
	}
	if _, err := pool.Exec(ctx, `SELECT * FROM expire_claims($1)`, end); err != nil {
		t.Fatalf("final expire: %v", err)
	}
	bad, _, err := checkInvariants(ctx, pool)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range bad {
		t.Errorf("invariant (after wind-down): %s", v)
	}
	var activeLeft, busy int
	if err := pool.QueryRow(ctx, `SELECT (SELECT count(*) FROM consumer_claims WHERE status = 'active'),
	                                     (SELECT count(*) FROM entities WHERE status IN ('running', 'stopping'))`).Scan(&activeLeft, &busy); err != nil {
		t.Fatal(err)
	}
	if activeLeft != 0 || busy != 0 {
		t.Errorf("after wind-down: %d active claims, %d entities running or stopping", activeLeft, busy)
	}

	// Drain: every sent message must be reachable through a queued wake.
	drained := 0
	for ; ; drained++ {
		var h held
		err := pool.QueryRow(ctx, `SELECT consumer_id, epoch, stream_path FROM claim_next_wake('r1', 30000, $1)`, end).Scan(&h.consumer, &h.epoch, &h.path)
		if errors.Is(err, pgx.ErrNoRows) {
			break
		}
		if err != nil {
			t.Fatalf("drain claim: %v", err)
		}
		acks := fmt.Sprintf(`[{"stream": %q, "offset": %q}]`, h.path, off(1<<40))
		var q *string
		if err := pool.QueryRow(ctx, `SELECT queued_wake_id FROM release_claim($1, $2, $3, $4)`, h.consumer, h.epoch, acks, end).Scan(&q); err != nil || q != nil {
			t.Fatalf("drain release: queued %v err %v", q, err)
		}
	}
	var unacked int
	if err := pool.QueryRow(ctx, `SELECT count(*) FROM entity_dispatch_state d JOIN entities e ON e.tenant_id = d.tenant_id AND e.url = d.entity_url
	                               WHERE e.status <> 'stopped' AND d.acked_offset <> d.last_sent_offset`).Scan(&unacked); err != nil {
		t.Fatal(err)
	}
	if unacked != 0 {
		t.Errorf("%d entities have sent messages no wake ever covered", unacked)
	}

	var byStatus string
	if err := pool.QueryRow(ctx, `SELECT string_agg(status || '=' || n, ' ' ORDER BY status) FROM
	                               (SELECT status, count(*) n FROM consumer_claims GROUP BY status) s`).Scan(&byStatus); err != nil {
		t.Fatal(err)
	}
	t.Logf("batched=%t, %d workers, %d entities at a time (%d spawned), %s: %d invariant checks, %d final releases, %d drained wakes, claims %s\n%s",
		batched, concurrencyWorkers, concurrencyEntities, spawned.Load(), concurrencyDuration, checks, len(active), drained, byStatus, counts)
}

// Two sweeps that see the lapsed claims in different orders must not
// deadlock. expire_claims locks dispatch rows in lease order as it loops and
// holds them to commit; a heartbeat that shortens one lease between the two
// sweeps' snapshots makes their orders cross. Built deterministically: a
// heartbeat in flight holds /chat/1's row while sweep A (order 1, 2) waits
// for it; /chat/2's lease is then shortened; sweep B (order 2, 1) takes
// /chat/2 and waits for /chat/1; the heartbeat ends.
func TestConcurrentSweepsDoNotDeadlock(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.spawn("/chat/2")
	f.send("/chat/1", at(0))
	c1 := f.claim("r1", 10*sec, at(0)) // lease 10s
	f.send("/chat/2", at(0))
	c2 := f.claim("r1", 20*sec, at(0)) // lease 20s

	hb, err := f.pool.Begin(f.ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer hb.Rollback(context.WithoutCancel(f.ctx)) //nolint:errcheck
	if _, err := hb.Exec(f.ctx, `SELECT * FROM heartbeat_claim($1, $2, NULL, $3)`, c1.ConsumerID, c1.Epoch, at(9*sec)); err != nil {
		t.Fatal(err)
	}

	sweep := func() (pid uint32, done chan error) {
		conn, err := f.pool.Acquire(f.ctx)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(conn.Release)
		done = make(chan error, 1)
		go func() {
			_, err := conn.Exec(f.ctx, `SELECT * FROM expire_claims($1)`, at(25*sec))
			done <- err
		}()
		return conn.Conn().PgConn().PID(), done
	}
	pidA, doneA := sweep()
	f.waitBlocked(pidA)
	// /chat/2's lease shortened to 2s by a heartbeat with a short TTL.
	if _, err := f.pool.Exec(f.ctx, `SELECT * FROM heartbeat_claim($1, $2, 1000, $3)`, c2.ConsumerID, c2.Epoch, at(1*sec)); err != nil {
		t.Fatal(err)
	}
	pidB, doneB := sweep()
	f.waitBlocked(pidB)
	if err := hb.Rollback(f.ctx); err != nil {
		t.Fatal(err)
	}
	errA, errB := <-doneA, <-doneB
	if errA != nil || errB != nil {
		t.Fatalf("concurrent sweeps: A: %v; B: %v", errA, errB)
	}
	for _, c := range []claimed{c1, c2} {
		if s := f.claimRow(c.ConsumerID, c.Epoch).Status; s != "expired" {
			t.Fatalf("%s: %s", c.EntityURL, s)
		}
	}
}
