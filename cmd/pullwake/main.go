// Command pullwake is the pullwake control plane: one binary with
// subcommands. See `pullwake --help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `pullwake: a pull-wake claim control plane on PostgreSQL.

Usage:
  pullwake <command> [flags]

Commands:
  serve      run the HTTP server (with the lease sweeper and claim listener)
  migrate    apply or inspect the embedded migrations: up | down | status
  release    release a claim by its durable identity: release CONSUMER EPOCH
  claims     list claims as a table (or --json)
  entity     print an entity with its dispatch state: entity URL
  tail       print a stream's messages; --follow keeps printing new ones: tail STREAM
  sweep      run one lease-expiry pass and print what it expired
  bench      measure the claim cycle over HTTP and over SQL (see --help)
  version    print the version

Every setting is a flag and an environment variable; the flag wins.
Run 'pullwake <command> --help' for a command's flags.
`

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	run func(ctx context.Context, args []string, stdout, stderr io.Writer) error
}

func commands() map[string]command {
	return map[string]command{
		"serve":   {runServe},
		"migrate": {runMigrate},
		"release": {runRelease},
		"claims":  {runClaims},
		"entity":  {runEntity},
		"tail":    {runTail},
		"sweep":   {runSweep},
		"bench":   {runBench},
		"version": {func(_ context.Context, args []string, stdout, _ io.Writer) error {
			fs := flag.NewFlagSet("version", flag.ContinueOnError)
			fs.SetOutput(stdout)
			fs.Usage = func() { fmt.Fprintln(stdout, "Usage: pullwake version\n\nPrints the version of this binary.") }
			if err := fs.Parse(args); err != nil {
				return err
			}
			fmt.Fprintln(stdout, "pullwake", version)
			return nil
		}},
	}
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// errUsage marks an error caused by bad arguments: exit code 2.
var errUsage = errors.New("usage")

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "pullwake: unknown command %q\n\n%s", args[0], usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	err := cmd.run(ctx, args[1:], stdout, stderr)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	case errors.Is(err, errUsage):
		fmt.Fprintf(stderr, "pullwake %s: %v\n", args[0], err)
		return 2
	default:
		fmt.Fprintf(stderr, "pullwake %s: %v\n", args[0], explainDB("", err))
		return 1
	}
}
