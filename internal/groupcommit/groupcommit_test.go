package groupcommit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeDB is an Exec that records its batches and, when gate is set, holds
// each batch "in flight" until the test lets it go.
type fakeDB struct {
	mu      sync.Mutex
	batches [][]int
	entered chan []int    // receives each batch as it starts (when set)
	gate    chan struct{} // each batch waits for one value (when set)
	fail    func(call int, items []int) error
	itemErr func(call int, item int) error
}

func (f *fakeDB) exec(ctx context.Context, items []int) ([]Outcome[int], error) {
	f.mu.Lock()
	f.batches = append(f.batches, slices.Clone(items))
	call := len(f.batches)
	f.mu.Unlock()
	if f.entered != nil {
		f.entered <- slices.Clone(items)
	}
	if f.gate != nil {
		<-f.gate
	}
	if f.fail != nil {
		if err := f.fail(call, items); err != nil {
			return nil, err
		}
	}
	out := make([]Outcome[int], len(items))
	for i, it := range items {
		out[i] = Outcome[int]{Value: it * 10}
		if f.itemErr != nil {
			out[i].Err = f.itemErr(call, it)
		}
	}
	return out, nil
}

func (f *fakeDB) calls() [][]int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.batches)
}

func start(t *testing.T, cfg Config[int, int]) *Batcher[int, int] {
	t.Helper()
	b := New(cfg)
	b.Start(t.Context())
	t.Cleanup(b.Stop)
	return b
}

type answer struct {
	in, v int
	err   error
}

// doAsync runs Do(in) in a goroutine and sends its answer to out.
func doAsync(b *Batcher[int, int], in int, out chan<- answer) {
	go func() {
		v, err := b.Do(context.Background(), in)
		out <- answer{in, v, err}
	}()
}

// waitQueued polls until n requests wait in the queue (deadline 10s).
func waitQueued(t *testing.T, b *Batcher[int, int], n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for len(b.in) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests queued, want %d", len(b.in), n)
		}
		time.Sleep(time.Millisecond) // poll interval, bounded by the deadline
	}
}

func TestIdleRequestRunsAlone(t *testing.T) {
	t.Parallel()
	f := &fakeDB{}
	b := start(t, Config[int, int]{Exec: f.exec})
	v, err := b.Do(t.Context(), 7)
	if err != nil || v != 70 {
		t.Fatalf("Do: %d %v", v, err)
	}
	if c := f.calls(); len(c) != 1 || !slices.Equal(c[0], []int{7}) {
		t.Fatalf("batches %v", c)
	}
}

// Requests that arrive while a batch is in flight form the next batch; each
// caller gets its own value.
func TestRequestsDuringFlightFormNextBatch(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{})}
	b := start(t, Config[int, int]{Exec: f.exec})
	out := make(chan answer, 10)
	doAsync(b, 1, out)
	if got := <-f.entered; !slices.Equal(got, []int{1}) {
		t.Fatalf("first batch %v", got)
	}
	for i := 2; i <= 5; i++ {
		doAsync(b, i, out)
	}
	waitQueued(t, b, 4)
	f.gate <- struct{}{} // the first batch commits
	second := <-f.entered
	slices.Sort(second)
	if !slices.Equal(second, []int{2, 3, 4, 5}) {
		t.Fatalf("second batch %v, want the four that waited", second)
	}
	f.gate <- struct{}{}
	for range 5 {
		a := <-out
		if a.err != nil || a.v != a.in*10 {
			t.Fatalf("caller %d got %d %v", a.in, a.v, a.err)
		}
	}
}

func TestBatchSizeCap(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{})}
	var sizes []int
	var mu sync.Mutex
	b := start(t, Config[int, int]{Exec: f.exec, MaxBatch: 3, ObserveBatch: func(n int) {
		mu.Lock()
		sizes = append(sizes, n)
		mu.Unlock()
	}})
	out := make(chan answer, 10)
	doAsync(b, 0, out)
	<-f.entered
	for i := 1; i <= 7; i++ {
		doAsync(b, i, out)
	}
	waitQueued(t, b, 7)
	close(f.gate)
	for range 8 {
		if a := <-out; a.err != nil {
			t.Fatal(a.err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(sizes, []int{1, 3, 3, 1}) {
		t.Fatalf("batch sizes %v, want [1 3 3 1]", sizes)
	}
}

// A bad item gets its own error; its batch-mates their values.
func TestItemErrorIsItsOwn(t *testing.T) {
	t.Parallel()
	bad := errors.New("claim not found")
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{}),
		itemErr: func(_ int, it int) error {
			if it == 3 {
				return bad
			}
			return nil
		}}
	b := start(t, Config[int, int]{Exec: f.exec})
	out := make(chan answer, 10)
	doAsync(b, 0, out)
	<-f.entered
	for i := 1; i <= 4; i++ {
		doAsync(b, i, out)
	}
	waitQueued(t, b, 4)
	close(f.gate)
	for range 5 {
		a := <-out
		if a.in == 3 {
			if !errors.Is(a.err, bad) {
				t.Fatalf("bad item: %v", a.err)
			}
		} else if a.err != nil || a.v != a.in*10 {
			t.Fatalf("item %d: %d %v", a.in, a.v, a.err)
		}
	}
}

var (
	errDeadlock = errors.New("deadlock detected")
	errRejected = errors.New("statement rejected")
	errConnLost = errors.New("connection lost")
)

func classify(err error) Failure {
	switch {
	case errors.Is(err, errDeadlock):
		return Transient
	case errors.Is(err, errRejected):
		return RolledBack
	}
	return MayHaveCommitted
}

// gatherFive makes one batch of 1 and, while it is in flight, queues 2..5
// so they form one batch; it returns their answers.
func gatherFive(t *testing.T, f *fakeDB, b *Batcher[int, int]) map[int]answer {
	t.Helper()
	out := make(chan answer, 10)
	doAsync(b, 1, out)
	<-f.entered
	for i := 2; i <= 5; i++ {
		doAsync(b, i, out)
	}
	waitQueued(t, b, 4)
	close(f.gate)
	go func() {
		for range f.entered { // drain the signals of later batches
		}
	}()
	got := map[int]answer{}
	for range 5 {
		a := <-out
		got[a.in] = a
	}
	close(f.entered)
	return got
}

func TestTransientBatchFailureIsRetried(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{}),
		fail: func(call int, _ []int) error {
			if call == 2 {
				return errDeadlock
			}
			return nil
		}}
	b := start(t, Config[int, int]{Exec: f.exec, Classify: classify})
	for in, a := range gatherFive(t, f, b) {
		if a.err != nil || a.v != in*10 {
			t.Fatalf("item %d: %d %v", in, a.v, a.err)
		}
	}
	c := f.calls()
	if len(c) != 3 || len(c[1]) != 4 || len(c[2]) != 4 {
		t.Fatalf("batches %v: want [1] then the batch of 4 twice", c)
	}
}

// A batch the database rejected as a whole is split: the poisoned item
// fails alone, the others succeed.
func TestRejectedBatchIsSplit(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 20), gate: make(chan struct{}),
		fail: func(_ int, items []int) error {
			if slices.Contains(items, 4) {
				return errRejected
			}
			return nil
		}}
	b := start(t, Config[int, int]{Exec: f.exec, Classify: classify})
	for in, a := range gatherFive(t, f, b) {
		if in == 4 {
			if !errors.Is(a.err, errRejected) {
				t.Fatalf("poisoned item: %v", a.err)
			}
			continue
		}
		if a.err != nil || a.v != in*10 {
			t.Fatalf("item %d: %d %v", in, a.v, a.err)
		}
	}
}

// A failure that may have committed is answered to every item, never re-run.
func TestUnknownFailureAnswersAllOnce(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{}),
		fail: func(call int, _ []int) error {
			if call == 2 {
				return errConnLost
			}
			return nil
		}}
	b := start(t, Config[int, int]{Exec: f.exec, Classify: classify})
	for in, a := range gatherFive(t, f, b) {
		if in == 1 {
			continue
		}
		if !errors.Is(a.err, errConnLost) {
			t.Fatalf("item %d: %v", in, a.err)
		}
	}
	if c := f.calls(); len(c) != 2 {
		t.Fatalf("batches %v: the failed batch ran again", c)
	}
}

// An item whose own outcome is transient runs again; after MaxAttempts it
// gets the error.
func TestTransientItemIsRetried(t *testing.T) {
	t.Parallel()
	f := &fakeDB{itemErr: func(call int, it int) error {
		if it == 1 && call == 1 || it == 2 {
			return errDeadlock
		}
		return nil
	}}
	b := start(t, Config[int, int]{Exec: f.exec, Retryable: func(err error) bool { return errors.Is(err, errDeadlock) }, MaxAttempts: 3})
	if v, err := b.Do(t.Context(), 1); err != nil || v != 10 {
		t.Fatalf("item 1: %d %v", v, err)
	}
	if _, err := b.Do(t.Context(), 2); !errors.Is(err, errDeadlock) {
		t.Fatalf("item 2: %v", err)
	}
	if c := f.calls(); len(c) != 5 {
		t.Fatalf("batches %v: want 2 runs of item 1, 3 of item 2", c)
	}
}

// Stop answers the batch in flight and every queued request before it
// returns; after it, Do refuses.
func TestStopDrains(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{})}
	b := New(Config[int, int]{Exec: f.exec})
	b.Start(t.Context())
	out := make(chan answer, 10)
	doAsync(b, 1, out)
	<-f.entered
	for i := 2; i <= 4; i++ {
		doAsync(b, i, out)
	}
	waitQueued(t, b, 3)
	stopped := make(chan struct{})
	go func() { b.Stop(); close(stopped) }()
	// Stop cannot return while a batch is in flight.
	select {
	case <-stopped:
		t.Fatal("Stop returned with a batch in flight")
	default:
	}
	close(f.gate)
	<-stopped
	for range 4 {
		if a := <-out; a.err != nil || a.v != a.in*10 {
			t.Fatalf("item %d: %d %v", a.in, a.v, a.err)
		}
	}
	if _, err := b.Do(t.Context(), 9); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do after Stop: %v", err)
	}
	b.Stop() // twice is fine
}

func TestDoBeforeStartRefuses(t *testing.T) {
	t.Parallel()
	b := New(Config[int, int]{Exec: (&fakeDB{}).exec})
	if _, err := b.Do(t.Context(), 1); !errors.Is(err, ErrStopped) {
		t.Fatalf("Do before Start: %v", err)
	}
	b.Stop()
}

// Many callers at once: every one gets its own answer (run with -race).
func TestManyCallers(t *testing.T) {
	t.Parallel()
	f := &fakeDB{}
	b := start(t, Config[int, int]{Exec: f.exec, MaxBatch: 8})
	var wg sync.WaitGroup
	errs := make(chan error, 200)
	for i := range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v, err := b.Do(context.Background(), i)
			if err != nil || v != i*10 {
				errs <- fmt.Errorf("caller %d: %d %v", i, v, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	n := 0
	for _, c := range f.calls() {
		if len(c) > 8 {
			t.Fatalf("batch of %d over the cap", len(c))
		}
		n += len(c)
	}
	if n != 200 {
		t.Fatalf("%d items run, want 200", n)
	}
}

// With ExecOne, a batch of one is the single call; larger batches use Exec.
func TestExecOneRunsBatchesOfOne(t *testing.T) {
	t.Parallel()
	f := &fakeDB{entered: make(chan []int, 10), gate: make(chan struct{})}
	var mu sync.Mutex
	var ones []int
	execOne := func(ctx context.Context, in int) (int, error) {
		mu.Lock()
		ones = append(ones, in)
		mu.Unlock()
		if in == 2 {
			return 0, errRejected
		}
		return in * 100, nil
	}
	// The first batch of one is held in flight through Exec's gate only if
	// it went to Exec, so hold it in ExecOne instead.
	hold := make(chan struct{})
	entered := make(chan struct{}, 1)
	b := start(t, Config[int, int]{Exec: f.exec, Classify: classify, ExecOne: func(ctx context.Context, in int) (int, error) {
		if in == 1 {
			entered <- struct{}{}
			<-hold
		}
		return execOne(ctx, in)
	}})
	out := make(chan answer, 10)
	doAsync(b, 1, out)
	<-entered
	doAsync(b, 3, out)
	doAsync(b, 4, out)
	waitQueued(t, b, 2)
	close(hold)
	close(f.gate)
	got := map[int]answer{}
	for range 3 {
		a := <-out
		got[a.in] = a
	}
	if got[1].v != 100 || got[1].err != nil {
		t.Fatalf("single call: %+v", got[1])
	}
	if got[3].v != 30 || got[4].v != 40 {
		t.Fatalf("batch of two did not use Exec: %+v %+v", got[3], got[4])
	}
	if v, err := b.Do(t.Context(), 2); !errors.Is(err, errRejected) || v != 0 {
		t.Fatalf("single call's error is the item's: %d %v", v, err)
	}
	mu.Lock()
	defer mu.Unlock()
	if !slices.Equal(ones, []int{1, 2}) {
		t.Fatalf("ExecOne ran %v, want [1 2]", ones)
	}
}
