package server_test

import (
	"bufio"
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/migrate"
)

func TestReadyzFollowsMigrations(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.empty = true })
	b.must(200, b.do("GET", "/healthz", "", nil))
	r := b.do("GET", "/readyz", "", nil)
	if r.status != 503 || !strings.Contains(string(r.body), "migrate") {
		t.Fatalf("readyz before migrations: %d %s", r.status, r.body)
	}
	m, err := migrate.New(b.db.Pool)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if _, err := m.Up(context.Background()); err != nil {
		t.Fatal(err)
	}
	b.must(200, b.do("GET", "/readyz", "", nil))
	if _, err := m.Down(context.Background()); err != nil {
		t.Fatal(err)
	}
	if r := b.do("GET", "/readyz", "", nil); r.status != 503 {
		t.Fatalf("readyz one migration behind: %d", r.status)
	}
}

// scrape returns the sample values of /metrics keyed by "name{labels}".
func (b *bundle) scrape() map[string]float64 {
	b.t.Helper()
	r := b.must(200, b.do("GET", "/metrics", "", nil))
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(r.body))
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err == nil {
			out[line[:i]] = v
		}
	}
	return out
}

// gauges has the sweeper read the claim gauges (as its passes do), then
// scrapes.
func (b *bundle) gauges() map[string]float64 {
	b.t.Helper()
	if err := b.srv.Sweeper().RefreshGauges(context.Background(), true); err != nil {
		b.t.Fatal(err)
	}
	return b.scrape()
}

func TestMetricsAcrossCycleAndExpiry(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.metrics = true })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.spawn("/chat/2")
	m0 := b.gauges()

	b.send("/chat/1", "x")
	w := b.mustClaim("r1", rt, 0)
	m1 := b.gauges()
	if m1["pullwake_claims_started_total"]-m0["pullwake_claims_started_total"] != 1 ||
		m1[`pullwake_claims{status="active"}`] != 1 || m1["pullwake_token_store_size"] != 1 {
		t.Fatalf("after claim: started %v active %v tokens %v", m1["pullwake_claims_started_total"],
			m1[`pullwake_claims{status="active"}`], m1["pullwake_token_store_size"])
	}
	b.must(204, b.appendMain(w, w.WriteToken, []any{map[string]any{"a": 1}, map[string]any{"b": 2}}))
	b.must(200, b.done(w, map[string]any{"stream": w.StreamPath, "offset": "0000000000000003"}))
	b.must(200, b.done(w))
	m2 := b.gauges()
	if m2["pullwake_appends_total"] != 2 || m2["pullwake_append_bytes_total"] == 0 {
		t.Fatalf("appends: %v", pick(m2, "pullwake_append"))
	}
	if m2[`pullwake_releases_total{outcome="released"}`] != 1 || m2[`pullwake_releases_total{outcome="noop"}`] != 1 ||
		m2[`pullwake_claims{status="released"}`] != 1 || m2["pullwake_token_store_size"] != 0 ||
		m2["pullwake_release_duration_seconds_count"] != 2 {
		t.Fatalf("after done: %v", pick(m2, "pullwake_releases_total", "pullwake_claims{", "pullwake_token_store_size", "pullwake_release_duration_seconds_count"))
	}

	// An expiry: a claim whose lease passed is a leak until the sweep.
	b.send("/chat/2", "y")
	w2 := b.mustClaim("r1", rt, 1000)
	eventually(t, 5*time.Second, "lease passes", func() bool { return b.gauges()["pullwake_leaked_claims"] == 1 })
	expired, err := b.srv.Sweeper().RunOnce(context.Background(), nil)
	if err != nil || len(expired) != 1 || expired[0].ConsumerID != w2.ConsumerID {
		t.Fatalf("sweep: %v %v", expired, err)
	}
	m3 := b.gauges()
	if m3["pullwake_expirations_total"] != 1 || m3["pullwake_leaked_claims"] != 0 ||
		m3[`pullwake_claims{status="expired"}`] != 1 || m3["pullwake_token_store_size"] != 0 {
		t.Fatalf("after expiry: %v", pick(m3, "pullwake_expirations_total", "pullwake_leaked_claims", "pullwake_claims{", "pullwake_token_store_size"))
	}
}

func pick(m map[string]float64, prefixes ...string) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		for _, p := range prefixes {
			if strings.HasPrefix(k, p) {
				out[k] = v
			}
		}
	}
	return out
}

// An anonymous scrape of /metrics costs the database nothing: the claim
// gauges are the sweeper's last read, taken after each of its passes.
func TestMetricsScrapeRunsNoQuery(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.metrics = true; o.noPublisher = true })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.send("/chat/1", "x")
	b.mustClaim("r1", rt, 0)

	// The first pass ran at Start, before the claim.
	if m := b.scrape(); m["pullwake_db_scrape_success"] != 1 || m[`pullwake_claims{status="active"}`] != 0 {
		t.Fatalf("after start: %v", pick(m, "pullwake_db_scrape_success", "pullwake_claims{"))
	}
	before := b.acquires.Load()
	for range 20 {
		b.scrape()
	}
	if n := b.acquires.Load() - before; n != 0 {
		t.Fatalf("20 scrapes took %d database connections", n)
	}
	// The sweeper's pass reads them.
	if _, err := b.srv.Sweeper().RunOnce(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	if m := b.scrape(); m[`pullwake_claims{status="active"}`] != 1 || m["pullwake_leaked_claims"] != 0 {
		t.Fatalf("after a sweep: %v", pick(m, "pullwake_claims{", "pullwake_leaked_claims"))
	}
}
