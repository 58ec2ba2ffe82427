package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// errNoWork ends a worker: the queue is empty.
var errNoWork = errors.New("no work")

// cycleFunc runs one cycle, recording each step's latency. It returns
// errNoWork when there is nothing left to claim.
type cycleFunc func(ctx context.Context, rec *recorder) error

// ModeResult is what one mode measured.
type ModeResult struct {
	Mode     Mode
	Runners  int
	Entities int
	Cycles   int64
	Elapsed  time.Duration
	Steps    []StepStats
	Errors   int64
	FirstErr string
	// RanDry is set when workers found the queue empty before the time was
	// up: the rate is over the time they ran, but raise --entities.
	RanDry bool
	// ServerRSS is the resident memory of a server the bench started, in
	// bytes, read at the end of the mode (0 when unknown).
	ServerRSS int64
	// ServerCPU and ClientCPU are the CPU time the server (when the bench
	// started it) and this process used while the mode ran.
	ServerCPU time.Duration
	ClientCPU time.Duration
	// WAL is what the cluster wrote to its write-ahead log while the mode
	// ran (cluster-wide: other work on the cluster counts too).
	WAL walDelta
	// Batches is the server's group-commit batch sizes during the mode
	// (HTTP modes; nil when the server reports none).
	Batches batchStats
	Note    string
}

// Rate is cycles (or transactions, for the commit mode) per second.
func (r ModeResult) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.Cycles) / r.Elapsed.Seconds()
}

// Report is a whole run.
type Report struct {
	// Config is the run's; with several rounds, each round's modes run
	// under RunID-<round>.
	Config  Config
	Started time.Time
	Results []ModeResult
	// LoadStart is the 1-minute load average when the run started.
	LoadStart string
}

// Run runs every configured mode in turn and returns what each measured.
func Run(ctx context.Context, cfg Config) (*Report, error) {
	if err := cfg.fill(); err != nil {
		return nil, err
	}
	pcfg, err := pgxpool.ParseConfig(cfg.DatabaseURL)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	pcfg.MaxConns = int32(cfg.Runners + 4)
	rep := &Report{Config: cfg, Started: time.Now(), LoadStart: loadavg()}
	for round := range cfg.Rounds {
		// Round r starts at the r-th mode of the list (a rotation), so
		// over as many rounds as modes each mode runs once in each place:
		// on a shared machine the first mode after a setup or a cleanup
		// measured up to a third slower or faster than the others.
		n := len(cfg.Modes)
		for k := range n {
			m := cfg.Modes[(round+k)%n]
			if cfg.Rounds > 1 {
				cfg.RunID = fmt.Sprintf("%s-%d", rep.runID(), round+1)
			}
			res, err := runMode(ctx, &cfg, pcfg, m)
			if err != nil {
				return rep, fmt.Errorf("mode %d (%s): %w", m, m, err)
			}
			rep.Results = append(rep.Results, res)
			if ctx.Err() != nil {
				return rep, ctx.Err()
			}
		}
	}
	return rep, nil
}

// runMode runs one mode on connections of its own. Sessions are not shared
// between modes: a session's cached plans of the lifecycle functions carry
// what it saw in the previous mode (its tables, its custom-plan costs), and
// the mode that ran second measured up to a quarter slower than the same
// mode run first.
func runMode(ctx context.Context, cfg *Config, pcfg *pgxpool.Config, m Mode) (ModeResult, error) {
	pool, err := pgxpool.NewWithConfig(ctx, pcfg.Copy())
	if err != nil {
		return ModeResult{}, fmt.Errorf("open database: %w", err)
	}
	defer pool.Close()
	if err := pool.Ping(ctx); err != nil {
		return ModeResult{}, fmt.Errorf("connect to database: %w", err)
	}
	if m.isHTTP() {
		return runHTTPMode(ctx, cfg, pool, m)
	}
	if m == ModeLean {
		return runLeanMode(ctx, cfg, pool, m)
	}
	if m.isSend() {
		return runSendMode(ctx, cfg, pool, m)
	}
	return runSQLMode(ctx, cfg, pool, m)
}

// drive runs n workers for the configured duration. newWorker builds
// worker i's cycle and a cleanup. Workers check the clock before each
// cycle, so cycles in flight at the deadline complete and count.
func drive(ctx context.Context, cfg *Config, pool *pgxpool.Pool, m Mode, n int,
	newWorker func(ctx context.Context, i int) (cycleFunc, func(), error)) (ModeResult, error) {
	res := ModeResult{Mode: m, Runners: n}
	cycles := make([]cycleFunc, n)
	for i := range n {
		c, cleanup, err := newWorker(ctx, i)
		if err != nil {
			return res, fmt.Errorf("start runner %d: %w", i, err)
		}
		defer cleanup()
		cycles[i] = c
	}
	steps := m.steps()
	recs := make([]*recorder, n)
	for i := range recs {
		recs[i] = newRecorder(len(steps))
	}

	var (
		done     atomic.Int64
		errCount atomic.Int64
		dry      atomic.Bool
		firstErr atomic.Pointer[string]
		lastEnd  atomic.Int64
		wg       sync.WaitGroup
	)
	wal0 := readWAL(ctx, pool)
	cpu0 := procCPU(os.Getpid())
	start := time.Now()
	deadline := start.Add(cfg.Duration)
	stopProgress := progress(cfg, m, start, &done)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			consecutive := 0
			for time.Now().Before(deadline) && ctx.Err() == nil {
				err := cycles[i](ctx, recs[i])
				if errors.Is(err, errNoWork) {
					dry.Store(true)
					break
				}
				if err != nil {
					errCount.Add(1)
					msg := err.Error()
					firstErr.CompareAndSwap(nil, &msg)
					if consecutive++; consecutive >= 3 || ctx.Err() != nil {
						break
					}
					continue
				}
				consecutive = 0
				done.Add(max(1, recs[i].batch))
				recs[i].batch = 0
			}
			end := int64(time.Since(start))
			for {
				old := lastEnd.Load()
				if end <= old || lastEnd.CompareAndSwap(old, end) {
					break
				}
			}
		}()
	}
	wg.Wait()
	stopProgress()

	res.ClientCPU = procCPU(os.Getpid()) - cpu0
	res.WAL = readWAL(ctx, pool).minus(wal0)
	res.Cycles = done.Load()
	res.Elapsed = time.Duration(lastEnd.Load())
	res.Errors = errCount.Load()
	if p := firstErr.Load(); p != nil {
		res.FirstErr = *p
	}
	res.RanDry = dry.Load() && res.Elapsed < cfg.Duration
	for si, name := range steps {
		all := make([]samples, n)
		for i, r := range recs {
			all[i] = r.steps[si]
		}
		res.Steps = append(res.Steps, summarise(name, all))
	}
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if res.Cycles == 0 && res.FirstErr != "" {
		return res, fmt.Errorf("no cycle succeeded: %s", res.FirstErr)
	}
	return res, nil
}

// progress prints a progress line every second until stopped.
func progress(cfg *Config, m Mode, start time.Time, done *atomic.Int64) func() {
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(time.Second)
		defer t.Stop()
		line := func() {
			el := time.Since(start)
			n := done.Load()
			fmt.Fprintf(cfg.Progress, "\r  mode %d %-9s %5.1fs/%s  %8d cycles  %8.0f/s ", int(m), m,
				el.Seconds(), cfg.Duration, n, float64(n)/el.Seconds())
		}
		for {
			select {
			case <-stop:
				line()
				fmt.Fprintln(cfg.Progress)
				return
			case <-t.C:
				line()
			}
		}
	}()
	return func() { close(stop); wg.Wait() }
}

// runID is the run's id before rounds were numbered.
func (rep *Report) runID() string { return rep.Config.RunID }
