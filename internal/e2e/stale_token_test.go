package e2e

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// staleBound is the documented bound within which every instance refuses a
// released claim's write token (README, docs/lifecycle.md), plus slack for
// a loaded test machine.
const staleBound = 2*time.Second + time.Second

// appendStatus appends one message with token and returns the status (0 on
// a transport error).
func appendStatus(c *client, w *wake, token string) (int, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	r, err := c.appendMsg(ctx, w.StreamPath, token, map[string]any{"stale": true})
	if err != nil {
		return 0, err.Error()
	}
	return r.Status, r.String()
}

// Claim on A, done on B, B killed with SIGKILL right after answering: B's
// claim-end notification may never leave it, yet A refuses the released
// write token within the bound.
func TestStaleTokenPeerKilledAfterDone(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	a := startServer(t, serverConfig{DatabaseURL: d.URL})
	b := startServer(t, serverConfig{DatabaseURL: d.URL})
	ca, cb := a.Client(), b.Client()
	run := ca.registerRunner(t, "r1")
	ca.spawn(t, "/chat/1")
	ca.send(t, "/chat/1", "hello")
	w := ca.claim(t, run, 60000)
	if st, why := appendStatus(ca, w, w.WriteToken); st != http.StatusNoContent {
		t.Fatalf("append on A with the fresh token: %s", why)
	}

	res := cb.done(t, w)
	b.Kill()
	if !res.Released {
		t.Fatalf("done on B did not release: %+v", res)
	}
	took := eventually(t, staleBound, 20*time.Millisecond, "A refuses the released token", func() (bool, string) {
		st, why := appendStatus(ca, w, w.WriteToken)
		return st == http.StatusUnauthorized, why
	})
	t.Logf("A refused the released token %s after B's done", took)
}

// Both instances run on a DATABASE_URL carrying pgxpool-only parameters:
// each is ready (its listener connects), and a release from psql kills the
// claim's write token on both.
func TestStaleTokenPoolParamsBinary(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	sep := "?"
	if strings.Contains(d.URL, "?") {
		sep = "&"
	}
	u := d.URL + sep + "pool_max_conns=8&pool_min_conns=1&pool_max_conn_lifetime=1h"
	a := startServer(t, serverConfig{DatabaseURL: u})
	b := startServer(t, serverConfig{DatabaseURL: u})
	ca, cb := a.Client(), b.Client()
	for name, c := range map[string]*client{"A": ca, "B": cb} {
		eventually(t, 10*time.Second, 20*time.Millisecond, name+" ready", func() (bool, string) {
			r, err := c.do(context.Background(), "GET", "/readyz", "", nil)
			if err != nil {
				return false, err.Error()
			}
			return r.Status == http.StatusOK, r.String()
		})
	}
	run := ca.registerRunner(t, "r1")
	ca.spawn(t, "/chat/1")
	ca.send(t, "/chat/1", "hello")
	w := ca.claim(t, run, 60000)
	r := cb.must(t, "POST", callbackPath(w), w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID}, http.StatusOK)
	var remint struct {
		WriteToken string `json:"write_token"`
	}
	if err := r.decode(&remint); err != nil {
		t.Fatal(err)
	}

	conn := sqlConn(t, d.URL)
	var released bool
	if err := conn.QueryRow(context.Background(), "SELECT released FROM release_claim($1, $2)", w.ConsumerID, w.Epoch).Scan(&released); err != nil || !released {
		t.Fatalf("release from psql: released=%v err=%v", released, err)
	}
	for name, c := range map[string]struct {
		c   *client
		tok string
	}{"A": {ca, w.WriteToken}, "B": {cb, remint.WriteToken}} {
		eventually(t, staleBound, 20*time.Millisecond, fmt.Sprintf("%s refuses the released token", name), func() (bool, string) {
			st, why := appendStatus(c.c, w, c.tok)
			return st == http.StatusUnauthorized, why
		})
	}
}
