package metrics_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/metrics"
	"github.com/pullwake/pullwake/internal/testdb"
)

// scrape fetches /metrics from m's handler and returns the text body.
func scrape(t *testing.T, m *metrics.Metrics) string {
	t.Helper()
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET /metrics: status %d", resp.StatusCode)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read /metrics: %v", err)
	}
	return string(b)
}

// want checks that the exposition text holds each sample line exactly.
func want(t *testing.T, body string, lines ...string) {
	t.Helper()
	have := make(map[string]bool)
	for _, l := range strings.Split(body, "\n") {
		have[l] = true
	}
	for _, l := range lines {
		if !have[l] {
			t.Errorf("missing sample %q", l)
		}
	}
	if t.Failed() {
		t.Logf("/metrics:\n%s", grep(body, "pullwake_"))
	}
}

func grep(body, prefix string) string {
	var out []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func quiet() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func TestMetricsRecordAndExpose(t *testing.T) {
	t.Parallel()
	tokens := 3
	m := metrics.New(metrics.Config{TokenStoreSize: func() int { return tokens }})

	// Before anything happens every outcome shows at zero.
	want(t, scrape(t, m),
		`pullwake_claims_started_total 0`,
		`pullwake_releases_total{outcome="released"} 0`,
		`pullwake_releases_total{outcome="stale_epoch"} 0`,
		`pullwake_releases_total{outcome="noop"} 0`,
		`pullwake_expirations_total 0`,
		`pullwake_token_store_size 3`,
	)

	// One claim -> done cycle, a late done of an older claim, a repeated
	// done, an empty claim poll, one sweep expiring two claims, two appends.
	m.ClaimStarted(2 * time.Millisecond)
	m.ClaimNone(300 * time.Microsecond)
	m.Released(metrics.Outcome(true, true, "released"), 3*time.Millisecond)
	m.Released(metrics.Outcome(true, false, "released"), time.Millisecond)
	m.Released(metrics.Outcome(false, false, "released"), time.Millisecond)
	m.Expired(2)
	m.Expired(0)
	m.Appended(3, 120)
	m.Appended(1, 30)
	tokens = 1

	body := scrape(t, m)
	want(t, body,
		`pullwake_claims_started_total 1`,
		`pullwake_claim_duration_seconds_count{result="claimed"} 1`,
		`pullwake_claim_duration_seconds_bucket{result="claimed",le="0.0025"} 1`,
		`pullwake_claim_duration_seconds_bucket{result="claimed",le="0.001"} 0`,
		`pullwake_claim_duration_seconds_count{result="none"} 1`,
		`pullwake_releases_total{outcome="released"} 1`,
		`pullwake_releases_total{outcome="stale_epoch"} 1`,
		`pullwake_releases_total{outcome="noop"} 1`,
		`pullwake_release_duration_seconds_count 3`,
		`pullwake_release_duration_seconds_sum 0.005`,
		`pullwake_expirations_total 2`,
		`pullwake_appends_total 4`,
		`pullwake_append_bytes_total 150`,
		`pullwake_token_store_size 1`,
	)
	// The Go and process collectors are registered; no DB gauges without a Source.
	if !strings.Contains(body, "go_goroutines ") {
		t.Error("go collector missing")
	}
	if strings.Contains(body, "pullwake_claims{") || strings.Contains(body, "pullwake_leaked_claims") {
		t.Error("DB gauges exposed without a Source")
	}

	// Each Metrics has its own registry: a second one starts from zero.
	want(t, scrape(t, metrics.New(metrics.Config{})), `pullwake_claims_started_total 0`)
}

func TestNilMetricsRecordsNothing(t *testing.T) {
	t.Parallel()
	var m *metrics.Metrics
	m.ClaimStarted(time.Millisecond)
	m.ClaimNone(time.Millisecond)
	m.Released(metrics.OutcomeReleased, time.Millisecond)
	m.Expired(1)
	m.Appended(1, 1)
}

func TestOutcome(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		released, cleared bool
		status            string
		want              string
	}{
		{true, true, "released", metrics.OutcomeReleased},
		{true, false, "released", metrics.OutcomeStaleEpoch}, // a newer claim holds the slot
		{false, false, "expired", metrics.OutcomeStaleEpoch}, // expired, or taken over by a newer claim
		{false, false, "released", metrics.OutcomeNoop},      // repeated done
	} {
		if got := metrics.Outcome(tc.released, tc.cleared, tc.status); got != tc.want {
			t.Errorf("Outcome(%v, %v, %q) = %q, want %q", tc.released, tc.cleared, tc.status, got, tc.want)
		}
	}
}

type fakeSource struct {
	counts map[string]int64
	leaked int64
	err    error
	block  bool // wait for the refresh deadline
	calls  *atomic.Int64
}

func (f fakeSource) ActiveClaims(ctx context.Context) (int64, int64, error) {
	if f.calls != nil {
		f.calls.Add(1)
	}
	if f.block {
		<-ctx.Done()
		return 0, 0, ctx.Err()
	}
	return f.counts["active"], f.leaked, f.err
}

func (f fakeSource) QueuedWakes(context.Context) (int64, error) {
	if f.calls != nil {
		f.calls.Add(1)
	}
	return f.counts["queued"], f.err
}

func (f fakeSource) EndedClaims(context.Context) (map[string]int64, error) {
	if f.calls != nil {
		f.calls.Add(1)
	}
	out := map[string]int64{}
	for k, v := range f.counts {
		if k != "active" && k != "queued" {
			out[k] = v
		}
	}
	return out, f.err
}

// The gauges come from RefreshClaimGauges (the sweeper's pass), never from
// a scrape: scraping asks the source nothing.
func TestDBGaugesFromRefreshNotFromScrape(t *testing.T) {
	t.Parallel()
	var calls atomic.Int64
	src := fakeSource{counts: map[string]int64{"active": 2, "released": 5, "queued": 7}, leaked: 1, calls: &calls}
	m := metrics.New(metrics.Config{Source: src})

	// Before any refresh: no gauges, and the scrapes read nothing.
	for range 3 {
		body := scrape(t, m)
		want(t, body, `pullwake_db_scrape_success 0`)
		if strings.Contains(body, "pullwake_claims{") {
			t.Fatalf("gauges before any refresh:\n%s", grep(body, "pullwake_"))
		}
	}
	if n := calls.Load(); n != 0 {
		t.Fatalf("scrapes read the source %d times", n)
	}

	// A refresh without history: active and leaked only.
	if err := m.RefreshClaimGauges(t.Context(), false); err != nil {
		t.Fatal(err)
	}
	body := scrape(t, m)
	want(t, body, `pullwake_db_scrape_success 1`, `pullwake_claims{status="active"} 2`, `pullwake_leaked_claims 1`,
		`pullwake_queued_wakes 7`)
	if strings.Contains(body, `pullwake_claims{status="released"}`) {
		t.Fatalf("ended claims before the history was read:\n%s", grep(body, "pullwake_"))
	}
	if !strings.Contains(body, "pullwake_claim_gauges_age_seconds ") {
		t.Fatal("no pullwake_claim_gauges_age_seconds")
	}
	// With history: every status, at zero when no claim has it.
	if err := m.RefreshClaimGauges(t.Context(), true); err != nil {
		t.Fatal(err)
	}
	before := calls.Load()
	want(t, scrape(t, m),
		`pullwake_db_scrape_success 1`,
		`pullwake_claims{status="active"} 2`,
		`pullwake_claims{status="released"} 5`,
		`pullwake_claims{status="expired"} 0`,
		`pullwake_claims{status="failed"} 0`,
		`pullwake_leaked_claims 1`,
	)
	if n := calls.Load() - before; n != 0 {
		t.Fatalf("a scrape read the source %d times", n)
	}
}

func TestDBGaugesWhenDatabaseFails(t *testing.T) {
	t.Parallel()
	for name, src := range map[string]fakeSource{
		"error":   {err: errors.New("connection refused")},
		"timeout": {block: true},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := metrics.New(metrics.Config{Source: src, ScrapeTimeout: 50 * time.Millisecond, Logger: quiet()})
			m.ClaimStarted(time.Millisecond)
			if err := m.RefreshClaimGauges(t.Context(), true); err == nil {
				t.Fatal("a failed read reported no error")
			}
			body := scrape(t, m) // still 200: the other metrics are served
			want(t, body, `pullwake_db_scrape_success 0`, `pullwake_claims_started_total 1`)
			if strings.Contains(body, "pullwake_claims{") || strings.Contains(body, "pullwake_leaked_claims ") ||
				strings.Contains(body, "pullwake_queued_wakes ") {
				t.Errorf("DB gauges served after a failed read:\n%s", grep(body, "pullwake_"))
			}
		})
	}
}

// TestDBGaugesFromDatabase reads the gauges from a real database holding one
// live active claim, one active claim whose lease has passed (a leak: the
// sweeper has not run) and one released claim.
func TestDBGaugesFromDatabase(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	ctx := context.Background()
	for _, q := range []string{
		`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`,
		`SELECT * FROM spawn_entity('/chat/live')`,
		`SELECT * FROM spawn_entity('/chat/leak')`,
		`SELECT * FROM spawn_entity('/chat/done')`,
		// The leaked claim: taken an hour ago with a one-second lease.
		`SELECT * FROM send_to_entity('/chat/leak', '"hi"', NULL, now() - interval '1 hour')`,
		`SELECT * FROM claim_next_wake('r1', 1000, now() - interval '1 hour')`,
		`SELECT * FROM send_to_entity('/chat/done', '"hi"')`,
		`SELECT * FROM release_claim((SELECT consumer_id FROM claim_next_wake('r1', 30000)), 1)`,
		`SELECT * FROM send_to_entity('/chat/live', '"hi"')`,
		`SELECT * FROM claim_next_wake('r1', 30000)`,
	} {
		if _, err := tdb.Pool.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	m := metrics.New(metrics.Config{Source: metrics.DBSource{Conn: tdb.Pool, Tenant: "default"}})
	refresh := func(m *metrics.Metrics) {
		t.Helper()
		if err := m.RefreshClaimGauges(ctx, true); err != nil {
			t.Fatal(err)
		}
	}
	refresh(m)
	want(t, scrape(t, m),
		`pullwake_db_scrape_success 1`,
		`pullwake_claims{status="active"} 2`,
		`pullwake_claims{status="released"} 1`,
		`pullwake_claims{status="expired"} 0`,
		`pullwake_leaked_claims 1`,
		// The done claim was released without acking its message: its
		// entity has a wake queued again.
		`pullwake_queued_wakes 1`,
	)

	// One sweep ends the leak.
	if _, err := tdb.Pool.Exec(ctx, `SELECT * FROM expire_claims()`); err != nil {
		t.Fatal(err)
	}
	refresh(m)
	want(t, scrape(t, m),
		`pullwake_claims{status="active"} 1`,
		`pullwake_claims{status="expired"} 1`,
		`pullwake_leaked_claims 0`,
		`pullwake_queued_wakes 2`, // the expiry re-queued the leaked claim's unacked message
	)

	// Another tenant's gauges see none of it.
	other := metrics.New(metrics.Config{Source: metrics.DBSource{Conn: tdb.Pool, Tenant: "other"}})
	refresh(other)
	want(t, scrape(t, other), `pullwake_claims{status="active"} 0`, `pullwake_leaked_claims 0`, `pullwake_queued_wakes 0`)

	// The count stops at its cap: the query reads no more index entries
	// than the cap, however long the queue is.
	for _, tc := range []struct{ max, want int64 }{{1, 1}, {2, 2}, {3, 2}} {
		n, err := db.New().QueuedWakeCount(ctx, tdb.Pool, db.QueuedWakeCountParams{TenantID: "default", MaxCount: int32(tc.max)})
		if err != nil || n != tc.want {
			t.Errorf("QueuedWakeCount(max %d) = %d, %v; want %d", tc.max, n, err, tc.want)
		}
	}
}
