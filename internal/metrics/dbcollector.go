package metrics

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullwake/pullwake/db"
)

// Source reads the claim state the DB-derived gauges show. It is called once
// per scrape with a context bounded by Config.ScrapeTimeout.
type Source interface {
	// ClaimCounts returns the number of claims by status.
	ClaimCounts(ctx context.Context) (map[string]int64, error)
	// LeakedClaims returns the number of active claims that no dispatch
	// slot names, or whose lease has passed.
	LeakedClaims(ctx context.Context) (int64, error)
}

// DBSource is the Source over pullwake's database, for one tenant.
type DBSource struct {
	Conn   db.DBTX // usually the server's *pgxpool.Pool
	Tenant string
}

// ClaimCounts implements Source with ClaimCountsByStatus.
func (s DBSource) ClaimCounts(ctx context.Context) (map[string]int64, error) {
	rows, err := db.New().ClaimCountsByStatus(ctx, s.Conn, s.Tenant)
	if err != nil {
		return nil, fmt.Errorf("count claims by status: %w", err)
	}
	out := make(map[string]int64, len(rows))
	for _, r := range rows {
		out[r.Status] = r.N
	}
	return out, nil
}

// LeakedClaims implements Source with CountLeakedClaims.
func (s DBSource) LeakedClaims(ctx context.Context) (int64, error) {
	n, err := db.New().CountLeakedClaims(ctx, s.Conn, s.Tenant)
	if err != nil {
		return 0, fmt.Errorf("count leaked claims: %w", err)
	}
	return n, nil
}

// claimStatuses are always reported, at zero when no claim has them.
var claimStatuses = []string{"active", "released", "expired", "failed"}

var (
	claimsDesc = prometheus.NewDesc("pullwake_claims",
		"Claims in the database by status.", []string{"status"}, nil)
	leakedDesc = prometheus.NewDesc("pullwake_leaked_claims",
		"Active claims that no dispatch slot names, or whose lease has passed: a non-zero value that persists past one sweep interval is a bug.", nil, nil)
	scrapeOKDesc = prometheus.NewDesc("pullwake_db_scrape_success",
		"1 when the database gauges (pullwake_claims, pullwake_leaked_claims) were read in this scrape, 0 when reading them failed.", nil, nil)
)

// dbCollector computes the DB-derived gauges at scrape time. When the
// database does not answer within the timeout, the gauges are left out
// (absent, not stale) and pullwake_db_scrape_success is 0.
type dbCollector struct {
	src     Source
	timeout time.Duration
	log     *slog.Logger
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- claimsDesc
	ch <- leakedDesc
	ch <- scrapeOKDesc
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
	defer cancel()
	counts, err := c.src.ClaimCounts(ctx)
	var leaked int64
	if err == nil {
		leaked, err = c.src.LeakedClaims(ctx)
	}
	if err != nil {
		c.log.Warn("metrics: read claim gauges", "err", err)
		ch <- prometheus.MustNewConstMetric(scrapeOKDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(scrapeOKDesc, prometheus.GaugeValue, 1)
	seen := make(map[string]bool, len(claimStatuses))
	for _, s := range claimStatuses {
		seen[s] = true
		ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(counts[s]), s)
	}
	for s, n := range counts { // a status this code does not know yet
		if !seen[s] {
			ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(n), s)
		}
	}
	ch <- prometheus.MustNewConstMetric(leakedDesc, prometheus.GaugeValue, float64(leaked))
}
