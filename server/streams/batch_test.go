package streams

import (
	"context"
	"testing"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/testdb"
)

// Appends queued while a batch is in flight share the next transaction,
// and each gets its own status: the stopped entity's append and the
// unknown stream's are refused, their batch-mate appended.
func TestBatchWriterAnswersEachAppend(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	ctx := t.Context()
	for _, sql := range []string{
		`SELECT * FROM spawn_entity('/chat/h')`, `SELECT * FROM spawn_entity('/chat/a')`,
		`SELECT * FROM spawn_entity('/chat/s')`, `SELECT * FROM stop_entity('/chat/s')`,
	} {
		if _, err := tdb.Pool.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	var sizes []int
	sizesCh := make(chan int, 16)
	w := NewBatchWriter(tdb.Pool, "default", 1, func(n int) { sizesCh <- n })
	w.Start(ctx)
	defer w.Stop()

	// Batch 1 (an append to /chat/h) waits on its stream row, held here.
	tx, err := tdb.Pool.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, `SELECT 1 FROM streams WHERE path = '/v1/stream/chat/h/main' FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	type answer struct {
		row db.StreamWriteAsRow
		err error
	}
	ct := "application/json"
	do := func(path string) <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			r, err := w.Write(context.Background(), db.StreamWriteAsParams{EntityWriter: true, TenantID: "default", Path: path,
				ContentType: &ct, Data: [][]byte{[]byte(`{"x":1}`)}})
			ch <- answer{r, err}
		}()
		return ch
	}
	first := do("/v1/stream/chat/h/main")
	sizes = append(sizes, <-sizesCh)
	good, stopped, missing := do("/v1/stream/chat/a/main"), do("/v1/stream/chat/s/main"), do("/v1/stream/nope")
	deadline := time.Now().Add(10 * time.Second)
	for w.b.Queued() < 3 {
		if time.Now().After(deadline) {
			t.Fatal("three appends never queued")
		}
		time.Sleep(time.Millisecond) // poll interval, bounded by the deadline
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	sizes = append(sizes, <-sizesCh)
	if a := <-first; a.err != nil || a.row.Status != "appended" || a.row.TailSeq != 1 {
		t.Fatalf("first: %+v %v", a.row, a.err)
	}
	if a := <-good; a.err != nil || a.row.Status != "appended" || a.row.TailSeq != 1 {
		t.Fatalf("good: %+v %v", a.row, a.err)
	}
	if a := <-stopped; a.err != nil || a.row.Status != "entity_stopped" {
		t.Fatalf("stopped entity: %+v %v", a.row, a.err)
	}
	if a := <-missing; a.err != nil || a.row.Status != "not_found" {
		t.Fatalf("unknown stream: %+v %v", a.row, a.err)
	}
	if sizes[0] != 1 || sizes[1] != 3 {
		t.Fatalf("batch sizes %v, want [1 3]", sizes)
	}
}
