// Command echo-runner is a pullwake runner written with the runner
// library: it registers (or restarts) a runner, and answers every message
// sent to an entity it claims with an echo event on the entity's main
// stream. Run it with --help for its flags.
package main

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"syscall"
	"time"

	"github.com/pullwake/pullwake/runner"
)

const usage = `Usage: echo-runner [flags]

Registers a runner with a pullwake server and answers every message sent to
the entities it claims with an echo event on the entity's main stream:

  {"type":"echo","key":"echo-<inbox key>",
   "value":{"in_reply_to":"<inbox key>","from":"<sender>","payload":<payload>},
   "headers":{"operation":"insert"}}

It runs until SIGINT or SIGTERM, then stops gracefully: running handlers
finish (or are released after --stop-timeout) before it exits.

Each flag has an environment variable; the flag wins.

Flags:
`

// config is the command line, flags over environment.
type config struct {
	server      string
	adminToken  string
	runnerID    string
	runnerToken string
	concurrency int
	lease       time.Duration
	stopTimeout time.Duration
	logFormat   string
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is the whole command; it returns the exit status.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c, err := parse(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "echo-runner: %v\n", err)
		return 2
	}
	var h slog.Handler = slog.NewTextHandler(stderr, nil)
	if c.logFormat == "json" {
		h = slog.NewJSONHandler(stderr, nil)
	}
	log := slog.New(h)

	r, err := runner.New(runner.Config{
		ServerURL: c.server, RunnerID: c.runnerID, AdminToken: c.adminToken, RunnerToken: c.runnerToken,
		Label: "echo-runner", Kind: "example", Concurrency: c.concurrency, LeaseTTL: c.lease,
		StopTimeout: c.stopTimeout, Logger: log,
	}, runner.HandlerFunc(echo))
	if err != nil {
		fmt.Fprintf(stderr, "echo-runner: %v\n", err)
		return 2
	}
	if err := reachable(ctx, c.server); err != nil {
		fmt.Fprintf(stderr, "echo-runner: %v\n", err)
		return 1
	}
	log.Info("echo-runner starting", "server", c.server, "runner_id", c.runnerID, "concurrency", c.concurrency)
	if err := r.Run(ctx); err != nil {
		fmt.Fprintf(stderr, "echo-runner: %v\n", err)
		return 1
	}
	return 0
}

func parse(args []string, stdout, stderr io.Writer) (config, error) {
	var c config
	fs := flag.NewFlagSet("echo-runner", flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are returned; --help prints to stdout
	fs.Usage = func() {}
	var help bool
	fs.BoolVar(&help, "help", false, "print this help and exit (also -h)")
	conc, err := envInt("PULLWAKE_RUNNER_CONCURRENCY", 1)
	if err != nil {
		return c, err
	}
	lease, err := envDuration("PULLWAKE_RUNNER_LEASE", 0)
	if err != nil {
		return c, err
	}
	stopTimeout, err := envDuration("PULLWAKE_RUNNER_STOP_TIMEOUT", 30*time.Second)
	if err != nil {
		return c, err
	}
	fs.StringVar(&c.server, "server", cmp.Or(os.Getenv("PULLWAKE_URL"), "http://127.0.0.1:8080"),
		"base URL of the pullwake server (env PULLWAKE_URL)")
	fs.StringVar(&c.adminToken, "admin-token", os.Getenv("PULLWAKE_ADMIN_TOKEN"),
		"admin token, to register the runner; empty for a server in dev mode (env PULLWAKE_ADMIN_TOKEN)")
	fs.StringVar(&c.runnerID, "runner-id", cmp.Or(os.Getenv("PULLWAKE_RUNNER_ID"), "echo-runner"),
		"runner id; registering an existing id restarts that runner (env PULLWAKE_RUNNER_ID)")
	fs.StringVar(&c.runnerToken, "runner-token", os.Getenv("PULLWAKE_RUNNER_TOKEN"),
		"use this runner token instead of registering (env PULLWAKE_RUNNER_TOKEN)")
	fs.IntVar(&c.concurrency, "concurrency", conc, "claims handled at once (env PULLWAKE_RUNNER_CONCURRENCY)")
	fs.DurationVar(&c.lease, "lease", lease, "claim lease to ask for, 1s to 10m; 0 = the server's default (env PULLWAKE_RUNNER_LEASE)")
	fs.DurationVar(&c.stopTimeout, "stop-timeout", stopTimeout,
		"on SIGINT/SIGTERM, how long running handlers may finish before they are released (env PULLWAKE_RUNNER_STOP_TIMEOUT)")
	fs.StringVar(&c.logFormat, "log-format", cmp.Or(os.Getenv("PULLWAKE_LOG_FORMAT"), "text"), "text or json (env PULLWAKE_LOG_FORMAT)")
	err = fs.Parse(args)
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		return c, fmt.Errorf("%w (see --help)", err)
	}
	if help || err != nil {
		fmt.Fprint(stdout, usage)
		fs.SetOutput(stdout)
		fs.PrintDefaults()
		return c, flag.ErrHelp
	}
	switch {
	case fs.NArg() > 0:
		return c, fmt.Errorf("unexpected argument %q (see --help)", fs.Arg(0))
	case c.concurrency < 1:
		return c, fmt.Errorf("--concurrency must be at least 1, got %d", c.concurrency)
	case c.logFormat != "text" && c.logFormat != "json":
		return c, fmt.Errorf("--log-format must be text or json, got %q", c.logFormat)
	}
	return c, nil
}

func envInt(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not an integer", name, v)
	}
	return n, nil
}

func envDuration(name string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s=%q is not a duration (like 30s)", name, v)
	}
	return d, nil
}

// reachable checks once that the server answers, so a wrong --server is a
// clear error rather than a retry loop.
func reachable(ctx context.Context, server string) error {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, server+"/healthz", nil)
	if err != nil {
		return fmt.Errorf("--server %q: %w", server, err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("pullwake server at %s does not answer (is it running? `make run` starts one): %w", server, err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return fmt.Errorf("%s/healthz answered %d: is this a pullwake server?", server, res.StatusCode)
	}
	return nil
}

// echo answers each inbox message with one echo event, all in one append.
func echo(ctx context.Context, w *runner.Wake) error {
	if len(w.Inbox) == 0 {
		return nil
	}
	out := make([]any, 0, len(w.Inbox))
	for _, m := range w.Inbox {
		out = append(out, map[string]any{
			"type": "echo",
			"key":  "echo-" + m.Key,
			"value": map[string]any{
				"in_reply_to": m.Key,
				"from":        m.From,
				"payload":     json.RawMessage(cmp.Or(string(m.Payload), "null")),
			},
			"headers": map[string]string{"operation": "insert"},
		})
	}
	if _, err := w.Append(ctx, out...); err != nil {
		return fmt.Errorf("echo %d messages to %s: %w", len(out), w.EntityURL, err)
	}
	return nil
}
