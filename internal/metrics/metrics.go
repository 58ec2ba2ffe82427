package metrics

import (
	"cmp"
	"log/slog"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Release outcomes, the values of the outcome label of
// pullwake_releases_total.
const (
	// OutcomeReleased: the claim was active and held its entity's dispatch
	// slot; the release freed the entity.
	OutcomeReleased = "released"
	// OutcomeStaleEpoch: the claim was no longer its entity's active claim.
	// Either it was still active but a newer claim held the slot (released =
	// true, entity_cleared = false), or it had already ended as expired (by
	// the sweeper or by a newer claim taking over).
	OutcomeStaleEpoch = "stale_epoch"
	// OutcomeNoop: a repeated done for a claim already released; nothing
	// changed.
	OutcomeNoop = "noop"
)

// Outcome classifies a release_claim result (its released, entity_cleared
// and claim_status columns) as one of the Outcome* constants.
func Outcome(released, entityCleared bool, claimStatus string) string {
	switch {
	case released && entityCleared:
		return OutcomeReleased
	case released:
		return OutcomeStaleEpoch
	case claimStatus == "expired" || claimStatus == "failed":
		return OutcomeStaleEpoch
	default:
		return OutcomeNoop
	}
}

// Claim results, the values of the result label of
// pullwake_claim_duration_seconds.
const (
	claimResultClaimed = "claimed"
	claimResultNone    = "none"
)

// Config configures New. Every field is optional.
type Config struct {
	// TokenStoreSize reports the number of write tokens held in memory
	// (tokens.Store.Len). Nil leaves pullwake_token_store_size out.
	TokenStoreSize func() int
	// LiveReaders reports the long-poll and SSE stream readers being
	// served now (streams.Handler.LiveReaders). Nil leaves
	// pullwake_live_readers out.
	LiveReaders func() int
	// WakeEventsHeld reports how long the oldest row of the wake-event log
	// has waited unpublished (wakepublish.Publisher.HeldFor). Nil leaves
	// pullwake_wake_events_held_seconds out.
	WakeEventsHeld func() time.Duration
	// Source reads claim state from the database when RefreshClaimGauges
	// is called (by the sweeper), never at scrape time. Nil leaves the
	// DB-derived gauges out.
	Source Source
	// ScrapeTimeout bounds the DB queries of one RefreshClaimGauges.
	// Default 2s.
	ScrapeTimeout time.Duration
	// Logger is kept for callers that set it; the metrics log nothing.
	Logger *slog.Logger
}

// Metrics is the set of pullwake's instruments and their registry. Its
// methods are safe for concurrent use; a nil *Metrics records nothing, so
// code paths may hold an optional one.
type Metrics struct {
	reg *prometheus.Registry

	src            Source
	refreshTimeout time.Duration
	snap           *gaugeSnapshot

	claimsStarted   prometheus.Counter
	claimDuration   *prometheus.HistogramVec
	releases        *prometheus.CounterVec
	releaseDuration prometheus.Histogram
	expirations     prometheus.Counter
	appends         prometheus.Counter
	appendBytes     prometheus.Counter
	batchSize       *prometheus.HistogramVec
	httpRequests    *prometheus.CounterVec
	httpDuration    *prometheus.HistogramVec
	pushDeliveries  *prometheus.CounterVec
	pushLag         *prometheus.HistogramVec

	// The labelled children the hot paths use, looked up once.
	claimedObs prometheus.Observer
	noneObs    prometheus.Observer
	releaseBy  map[string]prometheus.Counter
	batchObs   map[string]prometheus.Observer
	pushBy     map[string]prometheus.Counter
	pushLagBy  map[string]prometheus.Observer
}

// BatchTransitions are the values of the transition label of
// pullwake_group_commit_batch_size.
var BatchTransitions = []string{"release", "claim", "append"}

// BatchBuckets are the upper bounds of pullwake_group_commit_batch_size.
var BatchBuckets = []float64{1, 2, 4, 8, 16, 32, 64}

// latencyBuckets span one PostgreSQL round trip (sub-millisecond) to a
// request stuck behind locks (seconds).
var latencyBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5}

// httpBuckets are latencyBuckets up to the longest answers: live reads
// wait up to the long-poll timeout (30s), SSE answers last up to 60s.
var httpBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// pushLagBuckets span a push to an idle target (milliseconds) to one
// that waited out failed deliveries' back-off (up to a minute each).
var pushLagBuckets = []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600}

// New builds the instruments on a fresh registry, with the Go runtime and
// process collectors.
func New(cfg Config) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg:            reg,
		src:            cfg.Source,
		refreshTimeout: cmp.Or(cfg.ScrapeTimeout, 2*time.Second),
		snap:           &gaugeSnapshot{},
		claimsStarted: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullwake_claims_started_total",
			Help: "Claims handed to runners (claim_next_wake returned a wake).",
		}),
		claimDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullwake_claim_duration_seconds",
			Help:    "Time to serve a claim request, by result (claimed: a wake was handed out; none: no work).",
			Buckets: latencyBuckets,
		}, []string{"result"}),
		releases: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwake_releases_total",
			Help: "Claim releases (done callbacks and forced releases) by outcome: released (entity freed), stale_epoch (claim no longer the entity's active one), noop (already released).",
		}, []string{"outcome"}),
		releaseDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "pullwake_release_duration_seconds",
			Help:    "Time to serve a claim release.",
			Buckets: latencyBuckets,
		}),
		expirations: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullwake_expirations_total",
			Help: "Claims expired by the lease sweeper.",
		}),
		appends: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullwake_appends_total",
			Help: "Messages appended to streams.",
		}),
		appendBytes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pullwake_append_bytes_total",
			Help: "Bytes appended to streams.",
		}),
		batchSize: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullwake_group_commit_batch_size",
			Help:    "Items per group-commit transaction, by transition (release, claim, append).",
			Buckets: BatchBuckets,
		}, []string{"transition"}),
		httpRequests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwake_http_requests_total",
			Help: "HTTP requests answered, by route (the pattern of the route that served it; / is every path no other route serves), method and status class (2xx, 3xx, 4xx, 5xx).",
		}, httpLabels),
		httpDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullwake_http_request_duration_seconds",
			Help:    "Time to answer an HTTP request, body written, by route, method and status class (live reads wait up to the long-poll timeout).",
			Buckets: httpBuckets,
		}, httpLabels),
		pushDeliveries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pullwake_push_deliveries_total",
			Help: "Push deliveries (POSTs of a wake to a webhook target), by outcome: delivered (the endpoint answered 2xx), failed (no answer, a timeout or a non-2xx answer: the claim was released and the target backs off).",
		}, []string{"outcome"}),
		pushLag: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "pullwake_push_delivery_lag_seconds",
			Help:    "Time from a pushed wake's queueing (its row's created_at, the database clock) to its delivery's answer (this server's clock), by outcome.",
			Buckets: pushLagBuckets,
		}, []string{"outcome"}),
		releaseBy: map[string]prometheus.Counter{},
		batchObs:  map[string]prometheus.Observer{},
		pushBy:    map[string]prometheus.Counter{},
		pushLagBy: map[string]prometheus.Observer{},
	}
	// Every outcome and result shows from the start, at zero.
	for _, o := range []string{OutcomeReleased, OutcomeStaleEpoch, OutcomeNoop} {
		m.releaseBy[o] = m.releases.WithLabelValues(o)
	}
	m.claimedObs = m.claimDuration.WithLabelValues(claimResultClaimed)
	m.noneObs = m.claimDuration.WithLabelValues(claimResultNone)
	for _, t := range BatchTransitions {
		m.batchObs[t] = m.batchSize.WithLabelValues(t)
	}
	for _, o := range PushOutcomes {
		m.pushBy[o] = m.pushDeliveries.WithLabelValues(o)
		m.pushLagBy[o] = m.pushLag.WithLabelValues(o)
	}
	reg.MustRegister(m.batchSize,
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		m.claimsStarted, m.claimDuration, m.releases, m.releaseDuration,
		m.expirations, m.appends, m.appendBytes,
		m.httpRequests, m.httpDuration, m.pushDeliveries, m.pushLag,
	)
	if f := cfg.TokenStoreSize; f != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pullwake_token_store_size",
			Help: "Write tokens held in this server's memory.",
		}, func() float64 { return float64(f()) }))
	}
	if f := cfg.LiveReaders; f != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pullwake_live_readers",
			Help: "Long-poll and SSE stream readers this server is serving now (capped by PULLWAKE_MAX_LIVE_READERS).",
		}, func() float64 { return float64(f()) }))
	}
	if f := cfg.WakeEventsHeld; f != nil {
		reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
			Name: "pullwake_wake_events_held_seconds",
			Help: "How long the oldest row of the wake-event log has stayed the oldest, unpublished, as this server's publisher last looked (every second): near 0 while events flow; growing while a transaction open on the cluster holds the snapshot fence, or while publishing fails.",
		}, func() float64 { return f().Seconds() }))
	}
	if cfg.Source != nil {
		reg.MustRegister(&dbCollector{snap: m.snap, now: time.Now})
	}
	return m
}

// Registry returns the registry, for callers that add their own collectors.
func (m *Metrics) Registry() *prometheus.Registry { return m.reg }

// Handler serves the registry in the Prometheus exposition format. A failed
// collector does not fail the scrape: the other metrics are still served.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
		Registry:      m.reg, // promhttp_metric_handler_errors_total
	})
}

// ClaimStarted records a claim request that handed out a wake and took d.
func (m *Metrics) ClaimStarted(d time.Duration) {
	if m == nil {
		return
	}
	m.claimsStarted.Inc()
	m.claimedObs.Observe(d.Seconds())
}

// ClaimNone records a claim request that found no work and took d.
func (m *Metrics) ClaimNone(d time.Duration) {
	if m == nil {
		return
	}
	m.noneObs.Observe(d.Seconds())
}

// Released records a release with its outcome (one of the Outcome*
// constants; see Outcome) that took d.
func (m *Metrics) Released(outcome string, d time.Duration) {
	if m == nil {
		return
	}
	if c, ok := m.releaseBy[outcome]; ok {
		c.Inc()
	} else {
		m.releases.WithLabelValues(outcome).Inc()
	}
	m.releaseDuration.Observe(d.Seconds())
}

// Expired records n claims expired by one sweep.
func (m *Metrics) Expired(n int) {
	if m == nil || n <= 0 {
		return
	}
	m.expirations.Add(float64(n))
}

// Appended records n messages of bytes bytes in total appended to a stream.
func (m *Metrics) Appended(n int, bytes int) {
	if m == nil || n <= 0 {
		return
	}
	m.appends.Add(float64(n))
	if bytes > 0 {
		m.appendBytes.Add(float64(bytes))
	}
}

// BatchSize records one group-commit transaction of n items for a
// transition (one of BatchTransitions).
func (m *Metrics) BatchSize(transition string, n int) {
	if m == nil {
		return
	}
	if o, ok := m.batchObs[transition]; ok {
		o.Observe(float64(n))
		return
	}
	m.batchSize.WithLabelValues(transition).Observe(float64(n))
}

// Push delivery outcomes, the values of the outcome label of
// pullwake_push_deliveries_total and pullwake_push_delivery_lag_seconds
// (server/push reports them).
const (
	PushDelivered = "delivered"
	PushFailed    = "failed"
)

// PushOutcomes are the push delivery outcomes, each shown from the start.
var PushOutcomes = []string{PushDelivered, PushFailed}

// PushDelivery records one push delivery's outcome (PushDelivered or
// PushFailed) and its lag: from the wake's queueing to the delivery's
// answer. Its signature is push.Config's delivery hook.
func (m *Metrics) PushDelivery(outcome string, lag time.Duration) {
	if m == nil {
		return
	}
	lag = max(lag, 0) // the queue time is the database's clock, the answer this server's
	if c, ok := m.pushBy[outcome]; ok {
		c.Inc()
		m.pushLagBy[outcome].Observe(lag.Seconds())
		return
	}
	m.pushDeliveries.WithLabelValues(outcome).Inc()
	m.pushLag.WithLabelValues(outcome).Observe(lag.Seconds())
}
