package metrics

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pullwake/pullwake/db"
)

// Source reads the claim state the DB-derived gauges show. RefreshClaimGauges
// calls it (the server's sweeper does, after each pass); a scrape never does.
type Source interface {
	// ActiveClaims returns the number of active claims and how many of
	// them are leaked: no dispatch slot names them, or their lease has
	// passed. Its cost follows the active claims, not the history.
	ActiveClaims(ctx context.Context) (active, leaked int64, err error)
	// EndedClaims returns the number of ended claims by status (released,
	// expired, failed). It reads the history.
	EndedClaims(ctx context.Context) (map[string]int64, error)
	// QueuedWakes returns the number of queued wakes, counted up to
	// QueuedWakesCap (a result equal to it means at least that many): its
	// cost is bounded, not following the queue.
	QueuedWakes(ctx context.Context) (int64, error)
}

// QueuedWakesCap is the most queued wakes QueuedWakes counts:
// pullwake_queued_wakes stays at it when more are queued.
const QueuedWakesCap = 10000

// DBSource is the Source over pullwake's database, for one tenant.
type DBSource struct {
	Conn   db.DBTX // usually the server's *pgxpool.Pool
	Tenant string
}

// ActiveClaims implements Source with ActiveClaimGauges (partial indexes of
// active claims).
func (s DBSource) ActiveClaims(ctx context.Context) (active, leaked int64, err error) {
	r, err := db.New().ActiveClaimGauges(ctx, s.Conn, s.Tenant)
	if err != nil {
		return 0, 0, fmt.Errorf("count active claims: %w", err)
	}
	return r.Active, r.Leaked, nil
}

// QueuedWakes implements Source with QueuedWakeCount: a walk of the wake
// queue's index that stops at QueuedWakesCap.
func (s DBSource) QueuedWakes(ctx context.Context) (int64, error) {
	n, err := db.New().QueuedWakeCount(ctx, s.Conn, db.QueuedWakeCountParams{TenantID: s.Tenant, MaxCount: QueuedWakesCap})
	if err != nil {
		return 0, fmt.Errorf("count queued wakes: %w", err)
	}
	return n, nil
}

// EndedClaims implements Source with EndedClaimCounts.
func (s DBSource) EndedClaims(ctx context.Context) (map[string]int64, error) {
	rows, err := db.New().EndedClaimCounts(ctx, s.Conn, s.Tenant)
	if err != nil {
		return nil, fmt.Errorf("count ended claims: %w", err)
	}
	out := make(map[string]int64, len(rows))
	for _, r := range rows {
		out[r.Status] = r.N
	}
	return out, nil
}

// endedStatuses are reported, at zero when no claim has them, once the
// history has been read.
var endedStatuses = []string{"released", "expired", "failed"}

var (
	claimsDesc = prometheus.NewDesc("pullwake_claims",
		"Claims in the database by status, as the sweeper last read them (active after every expiry pass, ended ones about once a minute).", []string{"status"}, nil)
	leakedDesc = prometheus.NewDesc("pullwake_leaked_claims",
		"Active claims that no dispatch slot names, or whose lease has passed, as the sweeper last read them: a non-zero value that persists past one sweep interval is a bug.", nil, nil)
	scrapeOKDesc = prometheus.NewDesc("pullwake_db_scrape_success",
		"1 when the sweeper's last read of the database gauges (pullwake_claims, pullwake_leaked_claims, pullwake_queued_wakes) succeeded, 0 when it failed or has not run yet.", nil, nil)
	ageDesc = prometheus.NewDesc("pullwake_claim_gauges_age_seconds",
		"Seconds since the sweeper last read the active-claim gauges: it should stay below the sweep interval.", nil, nil)
	queuedDesc = prometheus.NewDesc("pullwake_queued_wakes",
		fmt.Sprintf("Wakes queued and not claimed yet, as the sweeper last read them (after every expiry pass); counted up to %d, so the value stays at %d when more are queued.", QueuedWakesCap, QueuedWakesCap), nil, nil)
)

// gaugeSnapshot is the last read of the DB-derived gauges.
type gaugeSnapshot struct {
	mu       sync.Mutex
	ok       bool // the last read succeeded
	activeAt time.Time
	active   int64
	leaked   int64
	queued   int64
	ended    map[string]int64 // nil until the history was read
}

// dbCollector serves the snapshot. A scrape never touches the database: an
// anonymous client scraping /metrics in a loop costs the database nothing.
type dbCollector struct {
	snap *gaugeSnapshot
	now  func() time.Time
}

func (c *dbCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- claimsDesc
	ch <- leakedDesc
	ch <- scrapeOKDesc
	ch <- ageDesc
	ch <- queuedDesc
}

func (c *dbCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.ok || s.activeAt.IsZero() {
		ch <- prometheus.MustNewConstMetric(scrapeOKDesc, prometheus.GaugeValue, 0)
		return
	}
	ch <- prometheus.MustNewConstMetric(scrapeOKDesc, prometheus.GaugeValue, 1)
	ch <- prometheus.MustNewConstMetric(ageDesc, prometheus.GaugeValue, c.now().Sub(s.activeAt).Seconds())
	ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(s.active), "active")
	if s.ended != nil {
		seen := make(map[string]bool, len(endedStatuses))
		for _, st := range endedStatuses {
			seen[st] = true
			ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(s.ended[st]), st)
		}
		for st, n := range s.ended { // a status this code does not know yet
			if !seen[st] && st != "active" {
				ch <- prometheus.MustNewConstMetric(claimsDesc, prometheus.GaugeValue, float64(n), st)
			}
		}
	}
	ch <- prometheus.MustNewConstMetric(leakedDesc, prometheus.GaugeValue, float64(s.leaked))
	ch <- prometheus.MustNewConstMetric(queuedDesc, prometheus.GaugeValue, float64(s.queued))
}

// RefreshClaimGauges reads the DB-derived gauges from the Source into the
// snapshot that /metrics serves: the active and leaked claims and the
// queued wakes always, the ended claims by status too when history is true. The server's sweeper
// calls it after every expiry pass (history about once a minute, from its housekeeping loop).
// The reads are bounded by Config.ScrapeTimeout. A failed read makes
// pullwake_db_scrape_success 0 and hides the gauges until a read succeeds.
// Without a Source it does nothing.
func (m *Metrics) RefreshClaimGauges(ctx context.Context, history bool) error {
	if m == nil || m.src == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.refreshTimeout)
	defer cancel()
	active, leaked, err := m.src.ActiveClaims(ctx)
	var queued int64
	if err == nil {
		queued, err = m.src.QueuedWakes(ctx)
	}
	var ended map[string]int64
	if err == nil && history {
		ended, err = m.src.EndedClaims(ctx)
	}
	s := m.snap
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		s.ok = false
		return fmt.Errorf("read claim gauges: %w", err)
	}
	s.ok = true
	s.activeAt = time.Now()
	s.active, s.leaked, s.queued = active, leaked, queued
	if history {
		s.ended = ended
		if s.ended == nil {
			s.ended = map[string]int64{}
		}
	}
	return nil
}
