package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/pullwake/pullwake/db"
)

func runSweep(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("sweep", `sweep [flags]

Runs one lease-expiry pass (the expire_claims SQL function, as the server's
sweeper does): every active claim whose lease has passed becomes expired and
frees its entity. Each claim is re-checked under its locks, so a pass beside
the servers' sweepers never ends a live claim, and sweeps lock entities in
one order, so overlapping passes wait for each other instead of deadlocking.
Prints each claim it expired, then a count.`)
	var d dbFlags
	d.register(fs)
	nowFlag := fs.String("now", "", "expire as of this RFC 3339 time instead of the database clock (like 2030-01-02T15:04:05Z)")
	limit := fs.Int("limit", 1000, "expire at most this many claims in this pass")
	pos, err := parseCommand(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: unexpected argument %q (see pullwake sweep --help)", errUsage, pos[0])
	}
	var now *time.Time
	if *nowFlag != "" {
		t, err := time.Parse(time.RFC3339Nano, *nowFlag)
		if err != nil {
			return fmt.Errorf("%w: --now %q is not an RFC 3339 time (like 2030-01-02T15:04:05Z)", errUsage, *nowFlag)
		}
		now = &t
	}
	if *limit < 1 || *limit > 1_000_000 {
		return fmt.Errorf("%w: --limit %d: want 1 to 1000000", errUsage, *limit)
	}
	pool, err := openPool(ctx, d)
	if err != nil {
		return err
	}
	defer pool.Close()

	rows, err := db.New().ExpireClaims(ctx, pool, db.ExpireClaimsParams{
		Now:       now,
		TenantID:  d.tenant,
		MaxClaims: int32(*limit),
	})
	if err != nil {
		return fmt.Errorf("expire claims: %w", err)
	}
	for _, r := range rows {
		fmt.Fprintf(stdout, "expired %s/%d entity_url=%s entity_cleared=%t entity_status=%s", r.ConsumerID, r.Epoch,
			r.EntityUrl, r.EntityCleared, r.EntityStatus)
		if r.QueuedWakeID != "" {
			fmt.Fprintf(stdout, " queued_wake_id=%s", r.QueuedWakeID)
		}
		fmt.Fprintln(stdout)
	}
	fmt.Fprintf(stdout, "sweep: expired %d claim(s)\n", len(rows))
	if len(rows) == *limit {
		fmt.Fprintf(stderr, "pullwake sweep: hit --limit %d; run again to expire the rest\n", *limit)
	}
	return nil
}
