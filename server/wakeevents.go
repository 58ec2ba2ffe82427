package server

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgtype"

	"github.com/pullwake/pullwake/db"
)

// PurgeWakeEvents deletes the wake-stream events of finished wakes older
// than the retention age (purge_wake_events), batch by batch (at most 20
// batches a pass). Each wake stream keeps its newest event.
func (sw *Sweeper) PurgeWakeEvents(ctx context.Context, now *time.Time) (int, error) {
	if sw.cfg.Retention <= 0 {
		return 0, nil
	}
	age := pgtype.Interval{Microseconds: sw.cfg.Retention.Microseconds(), Valid: true}
	total := 0
	for range 20 {
		qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		n, err := sw.q.PurgeWakeEvents(qctx, sw.cfg.Pool, db.PurgeWakeEventsParams{
			OlderThan: age, MaxRows: int32(sw.cfg.Batch), Now: now, TenantID: sw.cfg.Tenant})
		cancel()
		if err != nil {
			return total, fmt.Errorf("purge wake events: %w", err)
		}
		total += int(n)
		if int(n) < sw.cfg.Batch {
			break
		}
	}
	if total > 0 {
		sw.cfg.Logger.Info("retention purge of wake events", "wake_events_deleted", total)
	}
	return total, nil
}
