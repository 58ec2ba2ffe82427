package sweeper

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

// ResendWakeEvents is the wake-event rule's backstop (sweep_wake_events):
// a claimable wake whose events its runners have read past without
// claiming it, the newest older than WakeEventResend, gets a new event.
// It runs after every expiry pass, on one instance at a time (an advisory
// lock inside the function), over the oldest Batch queued wakes.
func (sw *Sweeper) ResendWakeEvents(ctx context.Context, now *time.Time) (int, error) {
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	age := pgtype.Interval{Microseconds: sw.cfg.WakeEventResend.Microseconds(), Valid: true}
	n, err := sw.q.SweepWakeEvents(qctx, sw.cfg.Pool, db.SweepWakeEventsParams{
		MinAge: age, MaxWakes: int32(sw.cfg.Batch), Now: now, TenantID: sw.cfg.Tenant})
	if err != nil {
		return 0, fmt.Errorf("resend wake events: %w", err)
	}
	if n > 0 {
		sw.cfg.Logger.Info("wake events written again for wakes read but not claimed", "wakes", n)
	}
	return int(n), nil
}
