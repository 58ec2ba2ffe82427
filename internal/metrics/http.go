package metrics

import (
	"net/http"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// httpLabels are the labels of pullwake_http_requests_total and
// pullwake_http_request_duration_seconds. Every value comes from a bounded
// set, never from the request's path: route is a pattern the server
// registered (Route), method one of httpMethods or "other", status_class
// one of 1xx to 5xx or "other".
var httpLabels = []string{"route", "method", "status_class"}

// httpMethods are the values of the method label: the methods that get
// one of their own, then "other" for any other method a client sends.
var httpMethods = [...]string{http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut,
	http.MethodPatch, http.MethodDelete, http.MethodOptions, "other"}

// statusClasses are the values of the status_class label.
var statusClasses = [...]string{"other", "1xx", "2xx", "3xx", "4xx", "5xx"}

// methodIndex is the index of method's label value in httpMethods.
func methodIndex(method string) int {
	for i, m := range httpMethods[:len(httpMethods)-1] {
		if m == method {
			return i
		}
	}
	return len(httpMethods) - 1
}

// classIndex is the index of code's label value in statusClasses (see
// StatusClass).
func classIndex(code int) int {
	switch {
	case code == 0:
		return 2
	case code >= 100 && code < 600:
		return code / 100
	default:
		return 0
	}
}

// Route is the route label of a mux pattern: the pattern without its
// method ("GET /entities/{type}/{id}" -> "/entities/{type}/{id}"); the
// method is a label of its own.
func Route(pattern string) string {
	if i := strings.IndexAny(pattern, " \t"); i >= 0 && !strings.HasPrefix(pattern, "/") {
		return strings.TrimLeft(pattern[i:], " \t")
	}
	return pattern
}

// StatusClass is the status_class label of an HTTP status code: "2xx" for
// 200 to 299 and so on; 0 (the handler wrote nothing, so net/http answers
// 200) is "2xx"; a code outside 100-599 is "other".
func StatusClass(code int) string { return statusClasses[classIndex(code)] }

// InstrumentHTTP returns h recording every request it answers in
// pullwake_http_requests_total and pullwake_http_request_duration_seconds
// under the route of pattern, the mux pattern h is registered with (see
// Route). The server wraps each of its routes with it, the catch-all "/"
// included, so a request is recorded once, under a label from a fixed
// set. The duration runs until the handler returns: the whole answer of a
// long-poll or an SSE response. A nil *Metrics returns h as it is.
func (m *Metrics) InstrumentHTTP(pattern string, h http.Handler) http.Handler {
	if m == nil {
		return h
	}
	rm := &routeMetrics{m: m, route: Route(pattern)}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		sw := &statusWriter{ResponseWriter: w}
		h.ServeHTTP(sw, r)
		rm.record(r.Method, sw.status, time.Since(start))
	})
}

// HTTPRequest records one answered request: route is a route label (a
// pattern without its method, see Route), method the request's method
// (any method outside the standard ones is counted as "other"), status
// the status code written (0 = none, which net/http answers 200).
func (m *Metrics) HTTPRequest(route, method string, status int, d time.Duration) {
	if m == nil {
		return
	}
	(&routeMetrics{m: m, route: route}).record(method, status, d)
}

// routeMetrics are one route's labelled children, each looked up once, on
// its first request.
type routeMetrics struct {
	m     *Metrics
	route string
	cells [len(httpMethods)][len(statusClasses)]atomic.Pointer[httpCell]
}

type httpCell struct {
	requests prometheus.Counter
	duration prometheus.Observer
}

func (rm *routeMetrics) record(method string, status int, d time.Duration) {
	mi, ci := methodIndex(method), classIndex(status)
	c := rm.cells[mi][ci].Load()
	if c == nil {
		labels := []string{rm.route, httpMethods[mi], statusClasses[ci]}
		c = &httpCell{rm.m.httpRequests.WithLabelValues(labels...), rm.m.httpDuration.WithLabelValues(labels...)}
		rm.cells[mi][ci].Store(c) // a racing request stores the same children
	}
	c.requests.Inc()
	c.duration.Observe(d.Seconds())
}

// statusWriter remembers the status code of the answer. It flushes through
// to the connection (SSE and long-poll answers flush) and unwraps for
// http.ResponseController.
type statusWriter struct {
	http.ResponseWriter
	status int // the first final (>= 200) code written; 0 = none yet
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// FlushError flushes the answer written so far (http.ResponseController
// calls it).
func (w *statusWriter) FlushError() error {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return http.NewResponseController(w.ResponseWriter).Flush()
}

// Flush implements http.Flusher, which the stream handler's live answers use.
func (w *statusWriter) Flush() { _ = w.FlushError() }

// Unwrap returns the wrapped writer (for http.ResponseController).
func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
