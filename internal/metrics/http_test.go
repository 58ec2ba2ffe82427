package metrics_test

import (
	"bufio"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/pullwake/pullwake/internal/metrics"
)

func TestRouteAndStatusClass(t *testing.T) {
	t.Parallel()
	for pattern, want := range map[string]string{
		"GET /entities/{type}/{id}": "/entities/{type}/{id}",
		"POST /_electric/runners":   "/_electric/runners",
		"/v1/stream/":               "/v1/stream/",
		"/":                         "/",
		"/runners/{id}/wake":        "/runners/{id}/wake",
	} {
		if got := metrics.Route(pattern); got != want {
			t.Errorf("Route(%q) = %q, want %q", pattern, got, want)
		}
	}
	for code, want := range map[int]string{0: "2xx", 200: "2xx", 204: "2xx", 301: "3xx", 304: "3xx",
		400: "4xx", 404: "4xx", 499: "4xx", 500: "5xx", 503: "5xx", 600: "other", 999: "other"} {
		if got := metrics.StatusClass(code); got != want {
			t.Errorf("StatusClass(%d) = %q, want %q", code, got, want)
		}
	}
}

// A mux whose every route goes through InstrumentHTTP, as the server's
// routes() registers them: requests are counted by pattern, never by path,
// and an unknown method or path adds no label value of its own.
func TestHTTPMetricsByRoute(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{})
	mux := http.NewServeMux()
	handle := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, m.InstrumentHTTP(pattern, h)) }
	handle("GET /entities/{type}/{id}", func(w http.ResponseWriter, r *http.Request) {
		if r.PathValue("id") == "missing" {
			http.Error(w, "no", http.StatusNotFound)
			return
		}
		_, _ = io.WriteString(w, "{}") // no WriteHeader: 200
	})
	handle("POST /entities/{type}/{id}", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	})
	handle("GET /healthz", func(http.ResponseWriter, *http.Request) {}) // writes nothing: 200
	handle("/v1/stream/", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	handle("/", func(w http.ResponseWriter, r *http.Request) { http.NotFound(w, r) })
	srv := httptest.NewServer(mux)
	defer srv.Close()

	do := func(method, path string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
	}
	for i := range 3 {
		do("GET", "/entities/chat/"+string(rune('a'+i)))
	}
	do("GET", "/entities/chat/missing")
	do("POST", "/entities/chat/a")
	do("HEAD", "/healthz")
	do("GET", "/v1/stream/x/y")
	do("GET", "/v1/stream/other")
	do("GET", "/no/such/path")
	do("GET", "/another/unknown")
	do("FROBNICATE", "/x")

	body := scrape(t, m)
	want(t, body,
		`pullwake_http_requests_total{method="GET",route="/entities/{type}/{id}",status_class="2xx"} 3`,
		`pullwake_http_requests_total{method="GET",route="/entities/{type}/{id}",status_class="4xx"} 1`,
		`pullwake_http_requests_total{method="POST",route="/entities/{type}/{id}",status_class="2xx"} 1`,
		`pullwake_http_requests_total{method="HEAD",route="/healthz",status_class="2xx"} 1`,
		`pullwake_http_requests_total{method="GET",route="/v1/stream/",status_class="5xx"} 2`,
		`pullwake_http_requests_total{method="GET",route="/",status_class="4xx"} 2`,
		`pullwake_http_requests_total{method="other",route="/",status_class="4xx"} 1`,
		`pullwake_http_request_duration_seconds_count{method="GET",route="/entities/{type}/{id}",status_class="2xx"} 3`,
		`pullwake_http_request_duration_seconds_count{method="GET",route="/",status_class="4xx"} 2`,
	)
	for _, path := range []string{"/no/such/path", "/another/unknown", "chat/a", "FROBNICATE", "/x/y"} {
		if strings.Contains(grep(body, "pullwake_http_"), path) {
			t.Errorf("a request's path or method became a label value: %q\n%s", path, grep(body, "pullwake_http_"))
		}
	}
}

// The wrapper passes Flush through: an SSE answer reaches the client
// before the handler returns, and is counted when it does.
func TestHTTPMetricsFlushThrough(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{})
	release := make(chan struct{})
	h := m.InstrumentHTTP("GET /events", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/event-stream")
		_, _ = io.WriteString(w, "data: one\n\n")
		w.(http.Flusher).Flush()
		<-release
		_, _ = io.WriteString(w, "data: two\n\n")
		if err := http.NewResponseController(w).Flush(); err != nil {
			t.Errorf("ResponseController.Flush through the wrapper: %v", err)
		}
	}))
	srv := httptest.NewServer(h)
	defer srv.Close()
	resp, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	if err != nil || line != "data: one\n" {
		t.Fatalf("first event before the handler returned: %q, %v", line, err)
	}
	if strings.Contains(scrape(t, m), `route="/events"`) {
		t.Error("counted before the answer ended")
	}
	close(release)
	_, _ = io.Copy(io.Discard, resp.Body)
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(scrape(t, m), `pullwake_http_requests_total{method="GET",route="/events",status_class="2xx"} 1`) {
		if time.Now().After(deadline) {
			t.Fatalf("not counted after the answer ended:\n%s", grep(scrape(t, m), "pullwake_http_"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPushAndLiveReaderMetrics(t *testing.T) {
	t.Parallel()
	readers := 0
	m := metrics.New(metrics.Config{LiveReaders: func() int { return readers }})
	want(t, scrape(t, m),
		`pullwake_push_deliveries_total{outcome="delivered"} 0`,
		`pullwake_push_deliveries_total{outcome="failed"} 0`,
		`pullwake_push_delivery_lag_seconds_count{outcome="delivered"} 0`,
		`pullwake_live_readers 0`,
	)
	m.PushDelivery(metrics.PushDelivered, 40*time.Millisecond)
	m.PushDelivery(metrics.PushDelivered, 3*time.Second)
	m.PushDelivery(metrics.PushFailed, 10*time.Second)
	m.PushDelivery(metrics.PushDelivered, -time.Second) // clocks apart: counted as 0
	readers = 5
	want(t, scrape(t, m),
		`pullwake_push_deliveries_total{outcome="delivered"} 3`,
		`pullwake_push_deliveries_total{outcome="failed"} 1`,
		`pullwake_push_delivery_lag_seconds_count{outcome="delivered"} 3`,
		`pullwake_push_delivery_lag_seconds_bucket{outcome="delivered",le="0.005"} 1`,
		`pullwake_push_delivery_lag_seconds_bucket{outcome="delivered",le="0.05"} 2`,
		`pullwake_push_delivery_lag_seconds_bucket{outcome="delivered",le="5"} 3`,
		`pullwake_push_delivery_lag_seconds_sum{outcome="delivered"} 3.04`,
		`pullwake_push_delivery_lag_seconds_count{outcome="failed"} 1`,
		`pullwake_live_readers 5`,
	)
	if strings.Contains(scrape(t, metrics.New(metrics.Config{})), "pullwake_live_readers") {
		t.Error("pullwake_live_readers without a LiveReaders func")
	}

	held := time.Duration(0)
	m = metrics.New(metrics.Config{WakeEventsHeld: func() time.Duration { return held }})
	want(t, scrape(t, m), `pullwake_wake_events_held_seconds 0`)
	held = 12500 * time.Millisecond
	want(t, scrape(t, m), `pullwake_wake_events_held_seconds 12.5`)
	if strings.Contains(scrape(t, metrics.New(metrics.Config{})), "pullwake_wake_events_held_seconds") {
		t.Error("pullwake_wake_events_held_seconds without a WakeEventsHeld func")
	}

	var nilM *metrics.Metrics
	nilM.PushDelivery(metrics.PushDelivered, time.Second)
	nilM.HTTPRequest("/", "GET", 200, time.Second)
	h := http.NotFoundHandler()
	if nilM.InstrumentHTTP("/", h) == nil {
		t.Error("a nil Metrics' InstrumentHTTP returned nil")
	}
}

// TestPromlint lints the registry's whole output, every metric present
// (the DB gauges read once, each instrument recorded once), against
// Prometheus' naming and help conventions.
func TestPromlint(t *testing.T) {
	t.Parallel()
	src := fakeSource{counts: map[string]int64{"active": 1, "released": 2, "expired": 3, "queued": 4}}
	m := metrics.New(metrics.Config{
		TokenStoreSize: func() int { return 1 },
		LiveReaders:    func() int { return 2 },
		Source:         src,
	})
	if err := m.RefreshClaimGauges(context.Background(), true); err != nil {
		t.Fatal(err)
	}
	m.ClaimStarted(time.Millisecond)
	m.ClaimNone(time.Millisecond)
	m.Released(metrics.OutcomeReleased, time.Millisecond)
	m.Expired(1)
	m.Appended(1, 10)
	m.BatchSize("claim", 2)
	m.HTTPRequest("/entities/{type}/{id}", "GET", 200, time.Millisecond)
	m.PushDelivery(metrics.PushDelivered, time.Second)

	body := scrape(t, m)
	for _, name := range []string{"pullwake_http_requests_total", "pullwake_http_request_duration_seconds",
		"pullwake_push_deliveries_total", "pullwake_push_delivery_lag_seconds", "pullwake_queued_wakes",
		"pullwake_live_readers", "pullwake_claims", "pullwake_token_store_size", "go_goroutines"} {
		if !strings.Contains(body, "# TYPE "+name+" ") {
			t.Errorf("%s missing from the output", name)
		}
	}
	problems, err := promlint.New(strings.NewReader(body)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
}

// Concurrent first requests of a route record every request once.
func TestHTTPMetricsConcurrent(t *testing.T) {
	t.Parallel()
	m := metrics.New(metrics.Config{})
	h := m.InstrumentHTTP("POST /x/{id}", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusCreated)
	}))
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest("POST", "/x/1", nil))
			}
		}()
	}
	wg.Wait()
	want(t, scrape(t, m), `pullwake_http_requests_total{method="POST",route="/x/{id}",status_class="2xx"} 800`)
}
