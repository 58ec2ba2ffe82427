package main

import (
	"cmp"
	"flag"
	"fmt"
	"os"
	"time"
)

// dbFlags are the database settings every command that talks to PostgreSQL shares.
type dbFlags struct {
	url    string
	tenant string
}

func (d *dbFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&d.url, "database-url", cmp.Or(os.Getenv("PULLWAKE_DATABASE_URL"), os.Getenv("DATABASE_URL")),
		"PostgreSQL connection string (env PULLWAKE_DATABASE_URL or DATABASE_URL)")
	fs.StringVar(&d.tenant, "tenant", cmp.Or(os.Getenv("PULLWAKE_TENANT"), "default"), "tenant served (env PULLWAKE_TENANT)")
}

func (d *dbFlags) check() error {
	if d.url == "" {
		return fmt.Errorf("%w: no database: set --database-url, PULLWAKE_DATABASE_URL or DATABASE_URL", errUsage)
	}
	if d.tenant == "" {
		return fmt.Errorf("%w: --tenant must not be empty", errUsage)
	}
	return nil
}

// envDuration reads a Go duration from the environment, or def when unset.
// A malformed value is reported when flags are parsed.
func envDuration(name string, def time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return def
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		fmt.Fprintf(os.Stderr, "pullwake: %s=%q is not a duration (like 30s); using %s\n", name, v, def)
		return def
	}
	return d
}

func newFlagSet(name, synopsis string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "Usage: pullwake %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parseArgs parses flags wherever they stand among the positional
// arguments (`migrate up --database-url X` and `migrate --database-url X up`
// both work) and returns the positional ones.
func parseArgs(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}
