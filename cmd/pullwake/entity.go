package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server"
)

// entityURLRe is the shape of an entity URL, /{type}/{id} (docs/api.md).
var entityURLRe = regexp.MustCompile(`^/[a-z][a-z0-9_-]{0,63}/[A-Za-z0-9._~-]{1,128}$`)

func runEntity(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("entity", `entity URL [flags]

Prints the entity at URL (like /chat/42) with its dispatch state, read from
the database with the query GET /entities/{type}/{id} uses: its status, main
stream and runner, the claim that holds it (consumer, epoch, runner, lease),
its outstanding (queued or claimed) wake, and how far its main stream is
acked and sent. Messages past the acked offset are unacked work: a queued
wake or the active claim covers them.`)
	var d dbFlags
	d.register(fs)
	asJSON := fs.Bool("json", false, "print the entity as a JSON object, as GET /entities/{type}/{id} answers it")
	pos, err := parseCommand(fs, args, stdout)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want URL, got %d argument(s) (see pullwake entity --help)", errUsage, len(pos))
	}
	url := pos[0]
	if !strings.HasPrefix(url, "/") {
		url = "/" + url
	}
	if !entityURLRe.MatchString(url) {
		return fmt.Errorf("%w: URL %q is not an entity URL /{type}/{id} (type [a-z][a-z0-9_-]{0,63}, id [A-Za-z0-9._~-]{1,128})", errUsage, pos[0])
	}
	pool, err := openPool(ctx, d)
	if err != nil {
		return err
	}
	defer pool.Close()

	e, err := db.New().GetEntity(ctx, pool, db.GetEntityParams{TenantID: d.tenant, Url: url})
	if errors.Is(err, db.ErrNotFound) {
		return fmt.Errorf("entity %s not found (tenant %s)", url, d.tenant)
	}
	if err != nil {
		return fmt.Errorf("read entity %s: %w", url, err)
	}
	out := server.EntityFromRow(e)
	if *asJSON {
		return writeJSON(stdout, out)
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	dp := out.Dispatch
	epoch := "-"
	if dp.ActiveEpoch != nil {
		epoch = strconv.FormatInt(*dp.ActiveEpoch, 10)
	}
	for _, f := range [][2]string{
		{"url", out.URL},
		{"type", out.Type},
		{"status", out.Status},
		{"main_stream", out.MainStream},
		{"runner_id", str(out.RunnerID)},
		{"created_at", stamp(&out.CreatedAt)},
		{"updated_at", stamp(&out.UpdatedAt)},
		{"dispatch.active_consumer_id", str(dp.ActiveConsumerID)},
		{"dispatch.active_epoch", epoch},
		{"dispatch.active_runner_id", str(dp.ActiveRunnerID)},
		{"dispatch.active_lease_expires_at", stamp(dp.ActiveLeaseExpiresAt)},
		{"dispatch.outstanding_wake_id", str(dp.OutstandingWakeID)},
		{"dispatch.acked_offset", dp.AckedOffset},
		{"dispatch.last_sent_offset", dp.LastSentOffset},
		{"dispatch.last_released_at", stamp(dp.LastReleasedAt)},
	} {
		fmt.Fprintf(tw, "%s\t%s\n", f[0], f[1])
	}
	return tw.Flush()
}

// str formats an optional text for a table cell: "-" for none.
func str(s *string) string {
	if s == nil {
		return "-"
	}
	return *s
}
