package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// dataset is one mode's fresh data: entities /bench/{prefix}-{n} with one
// sent message and one queued wake each, in tenant.
type dataset struct {
	tenant   string
	prefix   string
	entities int
	runners  []string // entities pinned round-robin to these; nil = any runner
}

// spawnBatch bounds each setup transaction.
const spawnBatch = 10000

// create spawns the entities and sends each one message, in batches, then
// refreshes planner statistics and checkpoints so every mode starts from
// the same state (statistics current, no checkpoint debt from the setup).
func (d dataset) create(ctx context.Context, pool *pgxpool.Pool, checkpoint bool) error {
	// Batches grow from small ones, with ANALYZE after each: the lifecycle
	// functions' statements and the foreign-key checks cache their plans in
	// the session, and a plan made while a table was empty (a sequential
	// scan) would otherwise be kept while one statement fills the table,
	// making the setup quadratic. ANALYZE invalidates those plans.
	batch := 500
	for lo := 1; lo <= d.entities; lo += batch {
		if lo > 1 {
			if _, err := pool.Exec(ctx, `ANALYZE entities, entity_dispatch_state, streams, wakes`); err != nil {
				return fmt.Errorf("analyze during setup: %w", err)
			}
			batch = min(batch*4, spawnBatch)
		}
		hi := min(lo+batch-1, d.entities)
		_, err := pool.Exec(ctx, `
			SELECT count(*) FROM generate_series($1::int, $2::int) g,
			       LATERAL spawn_entity('/bench/' || $3::text || '-' || g,
			                            ($5::text[])[(g - 1) % greatest(cardinality($5::text[]), 1) + 1], NULL, $4::text)`,
			lo, hi, d.prefix, d.tenant, d.runners)
		if err != nil {
			return fmt.Errorf("spawn bench entities %d-%d: %w", lo, hi, err)
		}
		_, err = pool.Exec(ctx, `
			SELECT count(*) FROM generate_series($1::int, $2::int) g,
			       LATERAL send_to_entity('/bench/' || $3::text || '-' || g, '{"bench": true}'::jsonb,
			                              'bench', NULL, $4::text)`,
			lo, hi, d.prefix, d.tenant)
		if err != nil {
			return fmt.Errorf("send to bench entities %d-%d: %w", lo, hi, err)
		}
	}
	if err := publishLog(ctx, pool); err != nil {
		return err
	}
	return settle(ctx, pool, checkpoint)
}

// settle analyzes the hot tables and checkpoints (best effort: CHECKPOINT
// needs a privileged role).
func settle(ctx context.Context, pool *pgxpool.Pool, checkpoint bool) error {
	if _, err := pool.Exec(ctx, `VACUUM (ANALYZE) entities, entity_dispatch_state, wakes, consumer_claims, streams, stream_messages, runners`); err != nil {
		return fmt.Errorf("analyze after setup: %w", err)
	}
	if checkpoint {
		_, _ = pool.Exec(ctx, `CHECKPOINT`)
	}
	return nil
}

// createRunners inserts n runners straight into the table (the SQL modes
// never authenticate) and returns their ids.
func createRunners(ctx context.Context, pool *pgxpool.Pool, tenant, prefix string, n int) ([]string, error) {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-r%03d", prefix, i+1)
	}
	_, err := pool.Exec(ctx, `
		INSERT INTO runners (tenant_id, id, label, kind, token_hash)
		SELECT $1, id, 'bench', 'bench', '\x00'::bytea FROM unnest($2::text[]) AS id`, tenant, ids)
	if err != nil {
		return nil, fmt.Errorf("create bench runners: %w", err)
	}
	return ids, nil
}

// finish tidies up after a mode: it removes the mode's data, or with keep
// stops the entities left with a queued wake.
func (d dataset) finish(ctx context.Context, pool *pgxpool.Pool, keep bool) error {
	if keep {
		_, err := d.stopLeftovers(ctx, pool)
		return err
	}
	return d.remove(ctx, pool)
}

// stopLeftovers stops the mode's entities that still have a queued wake,
// so a later mode sharing the tenant (a server given by URL) never takes
// them: their wakes become superseded.
func (d dataset) stopLeftovers(ctx context.Context, pool *pgxpool.Pool) (int64, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Minute)
	defer cancel()
	var n int64
	err := pool.QueryRow(ctx, `
		SELECT count(*) FROM (
		    SELECT w.entity_url FROM wakes w
		     WHERE w.tenant_id = $1 AND w.status = 'queued' AND w.entity_url LIKE $2
		) q, LATERAL stop_entity(q.entity_url, NULL, $1)`,
		d.tenant, "/bench/"+escapeLike(d.prefix)+"-%").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("stop leftover bench entities: %w", err)
	}
	return n, nil
}

func escapeLike(s string) string {
	return strings.NewReplacer(`\`, `\\`, `%`, `\%`, `_`, `\_`).Replace(s)
}

// message is the 1 KiB JSON message every cycle appends.
func message(runner string) []byte {
	head := `{"type":"bench","key":"` + runner + `","value":{"text":"`
	tail := `"}}`
	pad := messageSize - len(head) - len(tail)
	return []byte(head + strings.Repeat("x", max(pad, 0)) + tail)
}

// remove deletes the mode's rows (runners, entities, their streams and
// messages, wakes and claims), so the next mode starts on a database of
// the same size: with a per-row cost anywhere, a growing database would
// make later modes look slower. VACUUM in the next setup reclaims them.
func (d dataset) remove(ctx context.Context, pool *pgxpool.Pool) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	url := "/bench/" + escapeLike(d.prefix) + "-%"
	for _, q := range []string{
		`DELETE FROM consumer_claims WHERE tenant_id = $1 AND entity_url LIKE $2`,
		`DELETE FROM wakes WHERE tenant_id = $1 AND entity_url LIKE $2`,
		`DELETE FROM entity_dispatch_state WHERE tenant_id = $1 AND entity_url LIKE $2`,
		`DELETE FROM stream_messages WHERE tenant_id = $1 AND path LIKE '/v1/stream' || $2`,
		`DELETE FROM streams WHERE tenant_id = $1 AND path LIKE '/v1/stream' || $2`,
		`DELETE FROM entities WHERE tenant_id = $1 AND url LIKE $2`,
		`DELETE FROM runners WHERE tenant_id = $1 AND id LIKE $2`,
	} {
		arg := url
		if strings.Contains(q, "runners") {
			arg = escapeLike(d.prefix) + "-r%"
		}
		if _, err := pool.Exec(ctx, q, d.tenant, arg); err != nil {
			return fmt.Errorf("remove bench data: %w", err)
		}
	}
	return nil
}

// publishLog publishes every logged wake event (pw_publish_wake_events,
// large batches), so no mode's clock runs while a server's publisher
// catches up on its setup's events. A database without the log (before
// migration 00022) wrote them at commit.
func publishLog(ctx context.Context, pool *pgxpool.Pool) error {
	var hasLog bool
	if err := pool.QueryRow(ctx, `SELECT to_regclass('wake_event_log') IS NOT NULL`).Scan(&hasLog); err != nil || !hasLog {
		return err
	}
	deadline := time.Now().Add(10 * time.Minute)
	for {
		var events int
		var left bool
		if err := pool.QueryRow(ctx, `SELECT pw_publish_wake_events(10000), EXISTS (SELECT 1 FROM wake_event_log)`).Scan(&events, &left); err != nil {
			return fmt.Errorf("publish the queued wakes' events: %w", err)
		}
		if !left {
			return nil
		}
		if time.Now().After(deadline) {
			return errors.New("the queued wakes' events were not published within 10 minutes")
		}
		if events == 0 {
			time.Sleep(10 * time.Millisecond) // behind the fence: another transaction is open
		}
	}
}

// queueBacklog queues --queued wakes in the mode's tenant for a runner of
// their own that never claims (modes 15 and 16): the cycle's runners pass
// them by on every pick.
func queueBacklog(ctx context.Context, cfg *Config, pool *pgxpool.Pool, tenant, prefix string, m Mode) error {
	idle, err := createRunners(ctx, pool, tenant, prefix+"-idle", 1)
	if err != nil {
		return err
	}
	start := time.Now()
	if err := queueWakes(ctx, pool, tenant, prefix+"-idle", idle, cfg.Queued); err != nil {
		return err
	}
	fmt.Fprintf(cfg.Log, "mode %d: queued %d other wakes and published their events in %s\n", m, cfg.Queued, time.Since(start).Round(100*time.Millisecond))
	return nil
}

// finishMode tidies up after a cycle mode (dataset.finish). A backlog
// mode's tenant, when it is the mode's own (ownTenant), goes whole, as a
// send mode's does: deleting its 100,000 queued entities row by row takes
// minutes.
func finishMode(ctx context.Context, cfg *Config, pool *pgxpool.Pool, ds dataset, m Mode, ownTenant bool) error {
	if (m == ModeHTTPBacklog || m == ModeSQLBacklog) && ownTenant && !cfg.Keep {
		return removeTenant(ctx, pool, ds.tenant)
	}
	return ds.finish(ctx, pool, cfg.Keep)
}
