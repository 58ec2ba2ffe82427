package reconcile

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/tokens"
)

// No goroutine (the timer, a pool's health check) may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The reconciler reports itself failing (for /readyz) once its query has
// failed for three intervals, and healthy again after a pass succeeds.
func TestReconcileStatusReportsFailure(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	store := tokens.New()
	rc := New(Config{Pool: d.Pool, Interval: 5 * time.Second, Tokens: store, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	ctx := context.Background()
	rc.started = time.Now()
	store.Mint("/v1/stream/chat/1/main", tokens.Owner{ConsumerID: "wake-1", Epoch: 1}, "claim-token")
	rc.RunOnce(ctx)
	if ok, why := rc.Status(); !ok {
		t.Fatalf("status after a good pass: %s", why)
	}
	if store.Len() != 0 {
		t.Fatal("token of a claim that does not exist survived the pass")
	}

	store.Mint("/v1/stream/chat/1/main", tokens.Owner{ConsumerID: "wake-1", Epoch: 1}, "claim-token")
	closed, err := pgxpool.New(ctx, d.URL)
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	rc.pool = closed // every query now fails
	rc.interval = 50 * time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		rc.RunOnce(ctx)
		if ok, why := rc.Status(); !ok {
			if !strings.Contains(why, "token reconcile failing") {
				t.Fatalf("reason %q", why)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("status still healthy after 10s of failing passes")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
