package bench

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"text/tabwriter"
	"time"
)

// ratio is one comparison between modes, with its target when it has one
// (docs/performance.md).
type ratio struct {
	num, den Mode
	divDen   float64 // the denominator's rate is divided by this first
	target   float64
	what     string
}

var ratios = []ratio{
	{ModeHTTP, ModeSQL, 1, 1.2, "HTTP cycle (group commit) vs one call per step over SQL"},
	{ModeSQL, ModeSQLSplit, 1, 1.5, "one transaction per transition vs the split release"},
	{ModeSQL, ModeCommit, 1, 1.0 / 6, "SQL cycle vs the one-row commit rate (target: >= 0.5 x rate/3)"},
	{ModeHTTP, ModeSQLSplit, 1, 2, "HTTP cycle (group commit) vs the split release over SQL"},
	{ModeHTTPNext, ModeSQLSplit, 1, 2, "HTTP with claim_next vs the split release"},
	{ModeHTTPNext, ModeHTTP, 1, 0, "claim_next vs three-request HTTP cycle"},
	{ModeSQLNext, ModeSQL, 1, 0, "claim_next vs three-call SQL cycle"},
	{ModeHTTPAppend, ModeSQLInsert, 1, 0.8, "HTTP append vs a direct single-row INSERT loop"},
	{ModeHTTP, ModeSQLBatch, 1, 0, "HTTP cycle vs the batched SQL ceiling"},
	{ModeSQL, ModeLean, 1, 0.5, "SQL cycle vs the lean cycle (same rules, smallest schema)"},
	{ModeHTTP, ModeLean, 1, 0.4, "HTTP cycle vs the lean cycle"},
	{ModeSendOneRunner, ModeSendRunners, 1, 0.9, "sends to entities of one runner vs of one runner each (no lock per runner)"},
	{ModeSendQueued, ModeSendRunners, 1, 0.9, "sends with --queued wakes queued vs none (no cost that grows with the queue)"},
	{ModeHTTPBacklog, ModeHTTP, 1, 0.9, "HTTP cycle behind --queued other wakes vs without"},
	{ModeSQLBacklog, ModeSQL, 1, 0.9, "SQL cycle behind --queued other wakes vs without"},
}

// Print writes the report: one row per mode, then the ratios.
func (rep *Report) Print(w io.Writer) {
	c := rep.Config
	fmt.Fprintf(w, "pullwake bench  %s  runners=%d  duration=%s/mode  cpus=%d  %s/%s  loadavg start %s end %s\n",
		rep.Started.UTC().Format(time.RFC3339), c.Runners, c.Duration, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH,
		rep.LoadStart, loadavg())
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "mode\tname\tcycles\tsecs\trate/s\tstep p50/p99 ms ...\t")
	for _, r := range rep.Results {
		var steps []string
		for _, s := range r.Steps {
			steps = append(steps, fmt.Sprintf("%s %.2f/%.2f", s.Name, ms(s.P50), ms(s.P99)))
		}
		fmt.Fprintf(tw, "%d\t%s\t%d\t%.1f\t%.0f\t%s\t\n", r.Mode, r.Mode, r.Cycles, r.Elapsed.Seconds(), r.Rate(), strings.Join(steps, "  "))
	}
	tw.Flush()
	for _, r := range rep.Results {
		var notes []string
		if r.RanDry && r.Mode != ModeLiveClaims {
			notes = append(notes, fmt.Sprintf("ran out of work after %.1fs: raise --entities (had %d)", r.Elapsed.Seconds(), r.Entities))
		}
		if r.Errors > 0 {
			notes = append(notes, fmt.Sprintf("%d errors, first: %s", r.Errors, r.FirstErr))
		}
		if r.Cycles > 0 && r.ClientCPU > 0 {
			cpu := fmt.Sprintf("CPU per cycle: bench client %.0f µs", float64(r.ClientCPU.Microseconds())/float64(r.Cycles))
			if r.ServerCPU > 0 {
				cpu += fmt.Sprintf(", server %.0f µs", float64(r.ServerCPU.Microseconds())/float64(r.Cycles))
			}
			notes = append(notes, cpu)
		}
		if r.Cycles > 0 && r.WAL.ok {
			c := float64(r.Cycles)
			notes = append(notes, fmt.Sprintf("WAL per cycle %.0f bytes, %.1f records, %.2f full-page images; %.2f cycles per WAL flush",
				float64(r.WAL.bytes)/c, float64(r.WAL.records)/c, float64(r.WAL.fpi)/c, c/float64(max(r.WAL.syncs, 1))))
		}
		if r.ServerRSS > 0 {
			notes = append(notes, fmt.Sprintf("server RSS at end %.1f MiB", float64(r.ServerRSS)/(1<<20)))
		}
		if len(r.Batches) > 0 {
			notes = append(notes, "group commit: "+r.Batches.String())
		}
		if r.Note != "" {
			notes = append(notes, r.Note)
		}
		if len(notes) > 0 {
			fmt.Fprintf(w, "  mode %d: %s\n", r.Mode, strings.Join(notes, "; "))
		}
	}
	// With several rounds, a mode's rate is its mean over them.
	rates := map[Mode]float64{}
	runs := map[Mode]int{}
	for _, r := range rep.Results {
		rates[r.Mode] += r.Rate()
		runs[r.Mode]++
	}
	for m, n := range runs {
		rates[m] /= float64(n)
	}
	fmt.Fprintln(w, "ratios:")
	for _, q := range ratios {
		a, ok1 := rates[q.num]
		b, ok2 := rates[q.den]
		if !ok1 || !ok2 || b == 0 {
			continue
		}
		v := a / (b / q.divDen)
		verdict := ""
		if q.target > 0 {
			verdict = fmt.Sprintf("target >= %.2f: %s", q.target, map[bool]string{true: "met", false: "MISSED"}[v >= q.target])
		}
		fmt.Fprintf(w, "  %d÷%d = %5.2f  %-28s %s\n", q.num, q.den, v, verdict, q.what)
	}
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Describe lists the modes with what one cycle is.
func Describe(w io.Writer) {
	for m := firstMode; m <= lastMode; m++ {
		fmt.Fprintf(w, "  %d %-11s %s\n", m, m, m.Describe())
	}
}

// loadavg is the 1-minute load average (Linux), or "?": other work on the
// machine skews every figure, so the report shows it.
func loadavg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return "?"
	}
	return f[0]
}
