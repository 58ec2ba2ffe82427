package server

import (
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/tokens"
)

// The reconciler reports itself failing (for /readyz) once its query has
// failed for three intervals, and healthy again after a pass succeeds.
func TestReconcileStatusReportsFailure(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	s, err := New(Config{Pool: d.Pool, ReconcileInterval: 5 * time.Second, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer s.migrator.Close()
	ctx := context.Background()
	s.recon.started = time.Now()
	s.tokens.Mint("/v1/stream/chat/1/main", tokens.Owner{ConsumerID: "wake-1", Epoch: 1}, "claim-token")
	s.recon.runOnce(ctx)
	if ok, why := s.recon.Status(); !ok {
		t.Fatalf("status after a good pass: %s", why)
	}
	if s.tokens.Len() != 0 {
		t.Fatal("token of a claim that does not exist survived the pass")
	}

	s.tokens.Mint("/v1/stream/chat/1/main", tokens.Owner{ConsumerID: "wake-1", Epoch: 1}, "claim-token")
	closed, err := pgxpool.New(ctx, d.URL)
	if err != nil {
		t.Fatal(err)
	}
	closed.Close()
	s.pool = closed // every query now fails
	s.recon.interval = 50 * time.Millisecond
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.recon.runOnce(ctx)
		if ok, why := s.recon.Status(); !ok {
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
