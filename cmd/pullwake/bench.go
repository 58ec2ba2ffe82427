package main

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/pullwake/pullwake/internal/bench"
)

const benchSynopsis = `bench [flags]

Measures the claim -> append 1 KiB -> done cycle with N concurrent runners,
one mode after another, each on fresh data in the same database, and prints
rates, per-step p50/p99 latencies and the ratios between modes:
%s
Modes 1, 5, 7, 9 and 15 drive a server: --server URL, or one this command starts
(this binary, 'serve', on a free 127.0.0.1 port, against --database-url,
one per HTTP mode, serving a tenant of its own). Use a database meant for
benchmarking: each mode creates runners and entities under /bench/ and
deletes them when it ends (unless --keep).`

func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var modesHelp bytesWriter
	bench.Describe(&modesHelp)
	fs := newFlagSet("bench", fmt.Sprintf(benchSynopsis, modesHelp.String()))
	fs.SetOutput(stderr)
	var d dbFlags
	d.register(fs)
	var (
		cfg     bench.Config
		modes   string
		server  string
		admin   string
		logPath string
		quiet   bool
	)
	fs.StringVar(&server, "server", os.Getenv("PULLWAKE_BENCH_SERVER"), "URL of a running pullwake serve for the HTTP modes; empty = start one (env PULLWAKE_BENCH_SERVER)")
	fs.StringVar(&admin, "admin-token", os.Getenv("PULLWAKE_ADMIN_TOKEN"), "admin token of the --server (env PULLWAKE_ADMIN_TOKEN)")
	fs.IntVar(&cfg.Runners, "runners", 32, "concurrent runners (N)")
	fs.DurationVar(&cfg.Duration, "duration", 15*time.Second, "how long each mode runs")
	fs.StringVar(&modes, "modes", "1,2,3,4,5", "modes to run, e.g. 1,2,3,4,5 or 1-9 (see above)")
	fs.IntVar(&cfg.Entities, "entities", 0, "entities with a queued wake per cycle mode; 0 = enough for --duration")
	fs.BoolVar(&cfg.PinEntities, "pin-entities", false, "spawn each entity for one runner (round-robin) instead of for any runner: one wake event per send instead of one per runner (use with hundreds of runners)")
	fs.IntVar(&cfg.LiveClaims, "live-claims", 10000, "claims mode 9 holds at once before reading the server's RSS")
	fs.IntVar(&cfg.Queued, "queued", 100000, "wakes modes 14, 15 and 16 queue (set-based) before they start")
	fs.IntVar(&cfg.Rounds, "rounds", 1, "run the list of modes this many times, each round starting one mode later (a rotation: with as many rounds as modes, each mode runs once in each place); ratios use each mode's mean rate")
	fs.StringVar(&logPath, "server-log", "", "file for the log of a server the bench starts (default: a temporary file, kept on failure)")
	fs.BoolVar(&quiet, "quiet", false, "no progress line")
	fs.BoolVar(&cfg.Keep, "keep", false, "keep each mode's rows (default: delete them when the mode ends, so every mode starts on the same database)")
	if _, err := parseArgs(fs, args); err != nil {
		return err
	}
	if err := d.check(); err != nil {
		return err
	}
	ms, err := bench.ParseModes(modes)
	if err != nil {
		return fmt.Errorf("%w: --modes: %v", errUsage, err)
	}
	cfg.Modes = ms
	cfg.DatabaseURL = d.url
	cfg.Log = stderr
	if !quiet {
		cfg.Progress = stderr
	}
	if server != "" {
		cfg.Server = bench.Server{URL: server, AdminToken: admin, Tenant: d.tenant}
	} else {
		cfg.StartServer = func(ctx context.Context, tenant string) (bench.Server, func() error, error) {
			return startBenchServer(ctx, d.url, tenant, logPath, stderr, cfg.Runners)
		}
	}
	rep, err := bench.Run(ctx, cfg)
	if rep != nil && len(rep.Results) > 0 {
		rep.Print(stdout)
	}
	return explainDB(d.url, err)
}

type bytesWriter struct{ b []byte }

func (w *bytesWriter) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
func (w *bytesWriter) String() string              { return string(w.b) }

// startBenchServer runs this binary's serve on a free loopback port with a
// random admin token, waits for /healthz, and returns a stop function
// (SIGTERM, then SIGKILL after 10 s).
// Its runners all connect from this one address: unless the environment
// says otherwise, the server's connection cap has room for two connections
// a runner and the per-client limit is off (it would close the runners'
// idle keep-alives under them).
func startBenchServer(ctx context.Context, dbURL, tenant, logPath string, stderr io.Writer, runners int) (bench.Server, func() error, error) {
	exe, err := os.Executable()
	if err != nil {
		return bench.Server{}, nil, fmt.Errorf("find this binary: %w", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return bench.Server{}, nil, fmt.Errorf("find a free port: %w", err)
	}
	addr := l.Addr().String()
	l.Close()
	tok := make([]byte, 16)
	_, _ = rand.Read(tok)
	admin := hex.EncodeToString(tok)

	keepLog := logPath != ""
	logPath = cmp.Or(logPath, filepath.Join(os.TempDir(), fmt.Sprintf("pullwake-bench-%s.log", tenant)))
	logf, err := os.Create(logPath)
	if err != nil {
		return bench.Server{}, nil, fmt.Errorf("create server log: %w", err)
	}
	cmd := exec.Command(exe, "serve")
	cmd.Env = append(os.Environ(),
		"PULLWAKE_DATABASE_URL="+dbURL, "PULLWAKE_ADDR="+addr, "PULLWAKE_PUBLIC_URL=http://"+addr,
		"PULLWAKE_ADMIN_TOKEN="+admin, "PULLWAKE_TENANT="+tenant)
	if os.Getenv("PULLWAKE_MAX_CONNECTIONS") == "" && os.Getenv("PULLWAKE_MAX_CONNECTIONS_PER_CLIENT") == "" {
		conns := strconv.Itoa(max(1024, 2*runners+64))
		cmd.Env = append(cmd.Env, "PULLWAKE_MAX_CONNECTIONS="+conns, "PULLWAKE_MAX_CONNECTIONS_PER_CLIENT="+conns)
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		logf.Close()
		return bench.Server{}, nil, fmt.Errorf("start %s serve: %w", exe, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); logf.Close() }()
	stop := func() error {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if !keepLog {
				os.Remove(logPath)
			}
			var ee *exec.ExitError
			if errors.As(err, &ee) && ee.ExitCode() == -1 { // killed by our signal
				return nil
			}
			return err
		case <-time.After(10 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("server did not stop within 10s of SIGTERM (log: %s)", logPath)
		}
	}
	url := "http://" + addr
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"/healthz", nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		select {
		case err := <-exited:
			return bench.Server{}, nil, fmt.Errorf("server exited at start (%v); log: %s", err, logPath)
		case <-ctx.Done():
			_ = stop()
			return bench.Server{}, nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = stop()
			return bench.Server{}, nil, fmt.Errorf("server not healthy within 20s; log: %s", logPath)
		}
	}
	fmt.Fprintf(stderr, "bench: server pid %d on %s (log %s)\n", cmd.Process.Pid, url, logPath)
	return bench.Server{URL: url, AdminToken: admin, Tenant: tenant, PID: cmd.Process.Pid}, stop, nil
}
