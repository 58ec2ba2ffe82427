package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/pullwake/pullwake/db"
)

var claimStatuses = []string{"active", "released", "expired", "failed"}

// claimJSON is one claim as `pullwake claims --json` prints it: the fields
// of GET /_electric/claims.
type claimJSON struct {
	ConsumerID      string          `json:"consumer_id"`
	Epoch           int64           `json:"epoch"`
	WakeID          string          `json:"wake_id"`
	EntityURL       string          `json:"entity_url"`
	StreamPath      string          `json:"stream_path"`
	RunnerID        string          `json:"runner_id"`
	Status          string          `json:"status"`
	ClaimedAt       time.Time       `json:"claimed_at"`
	LastHeartbeatAt *time.Time      `json:"last_heartbeat_at"`
	LeaseExpiresAt  *time.Time      `json:"lease_expires_at"`
	ReleasedAt      *time.Time      `json:"released_at"`
	AckedStreams    json.RawMessage `json:"acked_streams"`
	UpdatedAt       time.Time       `json:"updated_at"`
}

func runClaims(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("claims", `claims [flags]

Lists claims, newest first, as an aligned table (or a JSON array with
--json). Filters combine.`)
	var d dbFlags
	d.register(fs)
	status := fs.String("status", "", "only claims with this status: active, released, expired or failed")
	runner := fs.String("runner", "", "only claims of this runner id")
	entity := fs.String("entity", "", "only claims of this entity URL, like /chat/42")
	asJSON := fs.Bool("json", false, "print a JSON array")
	limit := fs.Int("limit", 100, "print at most this many claims (1 to 10000)")
	pos, err := parseCommand(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: unexpected argument %q (see pullwake claims --help)", errUsage, pos[0])
	}
	if *status != "" && !slices.Contains(claimStatuses, *status) {
		return fmt.Errorf("%w: --status %q: want active, released, expired or failed", errUsage, *status)
	}
	if *limit < 1 || *limit > 10000 {
		return fmt.Errorf("%w: --limit %d: want 1 to 10000", errUsage, *limit)
	}
	pool, err := openPool(ctx, d)
	if err != nil {
		return err
	}
	defer pool.Close()

	rows, err := db.New().ListClaims(ctx, pool, db.ListClaimsParams{
		TenantID:  d.tenant,
		Status:    optional(*status),
		RunnerID:  optional(*runner),
		EntityUrl: optional(*entity),
		MaxRows:   int32(*limit),
	})
	if err != nil {
		return fmt.Errorf("list claims: %w", err)
	}
	if *asJSON {
		out := make([]claimJSON, 0, len(rows))
		for _, r := range rows {
			out = append(out, claimJSON{
				ConsumerID: r.ConsumerID, Epoch: r.Epoch, WakeID: r.WakeID, EntityURL: r.EntityUrl,
				StreamPath: r.StreamPath, RunnerID: r.RunnerID, Status: r.Status,
				ClaimedAt: r.ClaimedAt.UTC(), LastHeartbeatAt: utc(r.LastHeartbeatAt),
				LeaseExpiresAt: utc(r.LeaseExpiresAt), ReleasedAt: utc(r.ReleasedAt),
				AckedStreams: r.AckedStreams, UpdatedAt: r.UpdatedAt.UTC(),
			})
		}
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CONSUMER\tEPOCH\tSTATUS\tENTITY\tRUNNER\tCLAIMED AT\tLEASE EXPIRES\tRELEASED AT")
	for _, r := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.ConsumerID, strconv.FormatInt(r.Epoch, 10),
			r.Status, r.EntityUrl, r.RunnerID, stamp(&r.ClaimedAt), stamp(r.LeaseExpiresAt), stamp(r.ReleasedAt))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(rows) == *limit {
		fmt.Fprintf(stderr, "pullwake claims: showing the newest %d claims; raise --limit or filter to see more\n", *limit)
	}
	return nil
}

// optional turns an unset filter ("") into NULL.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func utc(t *time.Time) *time.Time {
	if t == nil {
		return nil
	}
	u := t.UTC()
	return &u
}

// stamp formats a time for a table cell: UTC to the second, "-" for none.
func stamp(t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.UTC().Format(time.RFC3339)
}
