package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/migrate"
)

func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("migrate", "migrate up|down|status [flags]\n\n  up      apply every pending migration\n  down    roll back the newest migration\n  status  list migrations and whether each is applied")
	fs.SetOutput(stderr)
	var d dbFlags
	d.register(fs)
	pos, err := parseArgs(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 {
		return fmt.Errorf("%w: want exactly one of up, down, status", errUsage)
	}
	action := pos[0]
	if action != "up" && action != "down" && action != "status" {
		return fmt.Errorf("%w: unknown action %q (want up, down or status)", errUsage, action)
	}
	if err := d.check(); err != nil {
		return err
	}
	pool, err := pgxpool.New(ctx, d.url)
	if err != nil {
		return fmt.Errorf("open database: %w", err)
	}
	defer pool.Close()
	m, err := migrate.New(pool)
	if err != nil {
		return err
	}
	defer m.Close()
	switch action {
	case "up":
		vs, err := m.Up(ctx)
		if err != nil {
			return err
		}
		if len(vs) == 0 {
			fmt.Fprintln(stdout, "migrate: schema is up to date")
		}
		for _, v := range vs {
			fmt.Fprintf(stdout, "migrate: applied %05d\n", v)
		}
	case "down":
		vs, err := m.Down(ctx)
		if err != nil {
			return err
		}
		for _, v := range vs {
			fmt.Fprintf(stdout, "migrate: rolled back %05d\n", v)
		}
	case "status":
		st, err := m.Status(ctx)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "VERSION\tSTATE\tAPPLIED AT\tFILE")
		for _, s := range st {
			state, at := "pending", "-"
			if s.Applied {
				state, at = "applied", s.At
			}
			fmt.Fprintf(tw, "%05d\t%s\t%s\t%s\n", s.Version, state, at, s.Path)
		}
		return tw.Flush()
	}
	return nil
}
