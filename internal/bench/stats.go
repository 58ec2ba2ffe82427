package bench

import (
	"slices"
	"time"
)

// samples collects the latencies of one cycle step for one worker; workers
// own theirs, so recording takes no lock.
type samples []time.Duration

// recorder holds one worker's samples, one slice per step.
type recorder struct {
	steps []samples
	// batch, when set by a cycle, is how many cycles that call made (the
	// batched mode runs every runner's cycle in one call); 0 counts one.
	batch int64
}

func newRecorder(nsteps int) *recorder {
	r := &recorder{steps: make([]samples, nsteps)}
	for i := range r.steps {
		r.steps[i] = make(samples, 0, 4096)
	}
	return r
}

// time records how long f took as step i, and returns f's error.
func (r *recorder) time(i int, f func() error) error {
	t0 := time.Now()
	err := f()
	r.steps[i] = append(r.steps[i], time.Since(t0))
	return err
}

// StepStats summarises one step of a mode.
type StepStats struct {
	Name  string
	Count int
	P50   time.Duration
	P99   time.Duration
	Mean  time.Duration
}

func summarise(name string, all []samples) StepStats {
	n := 0
	for _, s := range all {
		n += len(s)
	}
	merged := make([]time.Duration, 0, n)
	for _, s := range all {
		merged = append(merged, s...)
	}
	st := StepStats{Name: name, Count: n}
	if n == 0 {
		return st
	}
	slices.Sort(merged)
	var sum time.Duration
	for _, d := range merged {
		sum += d
	}
	st.Mean = sum / time.Duration(n)
	st.P50 = percentile(merged, 0.50)
	st.P99 = percentile(merged, 0.99)
	return st
}

// percentile of sorted durations, nearest rank.
func percentile(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.5) - 1
	i = max(0, min(i, len(sorted)-1))
	return sorted[i]
}
