package server_test

import (
	"strings"
	"testing"
)

// Every route is measured once, by its pattern (never the path), the
// stream routes and the catch-all included; the catch-all's label takes
// every path no other route serves.
func TestHTTPMetricsByRoutePattern(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.metrics = true })
	rt := b.registerRunner("r1")
	b.spawn("/chat/1")
	b.must(200, b.do("GET", "/entities/chat/1", b.admin, nil))
	b.must(404, b.do("GET", "/entities/chat/nope", b.admin, nil))
	b.must(200, b.do("GET", "/v1/stream/chat/1/main?offset=-1", "", nil))
	b.must(200, b.do("GET", "/chat/1/main?offset=-1", "", nil)) // a stream at the root: the catch-all serves it
	b.must(404, b.do("GET", "/no/such/path-1", "", nil))
	b.must(404, b.do("GET", "/_electric/no-such-route", "", nil))
	b.must(405, b.do("POST", "/healthz", "", nil)) // no POST route: the catch-all answers
	b.must(200, b.do("GET", "/runners/r1/wake?offset=-1", rt, nil))
	b.must(200, b.do("GET", "/healthz", "", nil))

	m := b.gauges()
	for key, want := range map[string]float64{
		`pullwake_http_requests_total{method="PUT",route="/entities/{type}/{id}",status_class="2xx"}`:       1,
		`pullwake_http_requests_total{method="GET",route="/entities/{type}/{id}",status_class="2xx"}`:       1,
		`pullwake_http_requests_total{method="GET",route="/entities/{type}/{id}",status_class="4xx"}`:       1,
		`pullwake_http_requests_total{method="POST",route="/_electric/runners",status_class="2xx"}`:         1,
		`pullwake_http_requests_total{method="GET",route="/v1/stream/",status_class="2xx"}`:                 1,
		`pullwake_http_requests_total{method="GET",route="/",status_class="2xx"}`:                           1,
		`pullwake_http_requests_total{method="GET",route="/",status_class="4xx"}`:                           2,
		`pullwake_http_requests_total{method="POST",route="/",status_class="4xx"}`:                          1,
		`pullwake_http_requests_total{method="GET",route="/runners/{id}/wake",status_class="2xx"}`:          1,
		`pullwake_http_requests_total{method="GET",route="/healthz",status_class="2xx"}`:                    1,
		`pullwake_http_request_duration_seconds_count{method="GET",route="/",status_class="4xx"}`:           2,
		`pullwake_http_request_duration_seconds_count{method="GET",route="/v1/stream/",status_class="2xx"}`: 1,
		// The spawn queued nothing; the gauge is read with the claim gauges.
		`pullwake_queued_wakes`: 0,
	} {
		if got, ok := m[key]; !ok || got != want {
			t.Errorf("%s = %v (present %v), want %v", key, got, ok, want)
		}
	}
	for k := range m {
		if strings.HasPrefix(k, "pullwake_http_") && (strings.Contains(k, "no/such") || strings.Contains(k, "chat/1") ||
			strings.Contains(k, "no-such-route") || strings.Contains(k, "r1")) {
			t.Errorf("a path became a label value: %s", k)
		}
	}

	// A send queues a wake: the sweeper's next read shows it.
	b.send("/chat/1", "hi")
	if got := b.gauges()["pullwake_queued_wakes"]; got != 1 {
		t.Errorf("pullwake_queued_wakes = %v after a send, want 1", got)
	}
}
