package server_test

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"

	validator "github.com/pb33f/libopenapi-validator"
	"github.com/pb33f/libopenapi-validator/config"
)

// Every answer the server gives to this package's tests is held to the API
// reference: startOn wraps the handler with a trafficRecorder and, when the
// test ends, checks each recorded answer against api/openapi.yaml (status
// code documented for the path and method, body schema of JSON answers,
// every header and field declared). A mismatch fails the test that made
// the request, listing every mismatch.
// Requests are not validated: many are bad on purpose.

// maxRecordedBody bounds the answer body kept per exchange; a longer answer
// is checked for its status code only.
const maxRecordedBody = 256 << 10

// answer is one recorded request line and the server's answer.
type answer struct {
	method    string
	url       *url.URL
	reqHeader http.Header
	status    int
	header    http.Header
	body      []byte
	truncated bool
}

type trafficRecorder struct {
	mu  sync.Mutex
	ans []answer
}

func (tr *trafficRecorder) wrap(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rw := &recordingWriter{ResponseWriter: w}
		h.ServeHTTP(rw, r)
		if rw.status == 0 {
			rw.status = http.StatusOK // nothing written: net/http answers 200
		}
		u := *r.URL
		tr.mu.Lock()
		tr.ans = append(tr.ans, answer{method: r.Method, url: &u, reqHeader: r.Header.Clone(),
			status: rw.status, header: w.Header().Clone(), body: rw.body.Bytes(), truncated: rw.truncated})
		tr.mu.Unlock()
	})
}

// recordingWriter keeps the status and the first maxRecordedBody bytes of
// the body. It flushes (live reads, SSE) and unwraps (http.ResponseController).
type recordingWriter struct {
	http.ResponseWriter
	status    int
	body      bytes.Buffer
	truncated bool
}

func (rw *recordingWriter) WriteHeader(code int) {
	if rw.status == 0 && code >= 200 {
		rw.status = code
	}
	rw.ResponseWriter.WriteHeader(code)
}

func (rw *recordingWriter) Write(p []byte) (int, error) {
	if rw.status == 0 {
		rw.status = http.StatusOK
	}
	if room := maxRecordedBody - rw.body.Len(); room < len(p) {
		rw.body.Write(p[:max(room, 0)])
		rw.truncated = true
	} else {
		rw.body.Write(p)
	}
	return rw.ResponseWriter.Write(p)
}

func (rw *recordingWriter) Flush() {
	if f, ok := rw.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (rw *recordingWriter) Unwrap() http.ResponseWriter { return rw.ResponseWriter }

// strictAnswers makes a field the document does not declare a mismatch
// too, but for the free-form maps (a schema is stored as given, tags and
// diagnostics are the client's, a shape row's value and old_value are
// keyed by the columns asked for) and the headers every stream and shape
// answer carries (CORS, nosniff), described once in info. $.body.next is declared in the
// allOf branch of ReleaseAndClaimNextAnswer, which the strict walk of an
// anyOf does not see.
var strictAnswers = []config.Option{
	config.WithStrictMode(),
	config.WithStrictIgnoredHeadersExtra("Access-Control-Allow-Origin", "Access-Control-Expose-Headers", "Access-Control-Allow-Methods",
		"Cross-Origin-Resource-Policy", "X-Content-Type-Options"),
	config.WithStrictIgnorePaths(freeForm()...),
}

func freeForm() []string {
	var out []string
	for _, f := range []string{"tags", "diagnostics", "client", "creation_schema", "inbox_schemas", "state_schemas", "default_dispatch_policy", "value", "old_value"} {
		out = append(out, "$.body."+f+".**", "$.body[*]."+f+".**")
	}
	return append(out, "$.body.next")
}

var (
	trafficMu    sync.Mutex // a libopenapi validator is not shared between goroutines
	trafficOnce  sync.Once
	trafficV     validator.Validator
	trafficVErrs []error
)

// check validates every recorded answer and fails t with the mismatches.
func (tr *trafficRecorder) check(t testing.TB) {
	t.Helper()
	tr.mu.Lock()
	ans := tr.ans
	tr.mu.Unlock()
	if len(ans) == 0 {
		return
	}
	trafficMu.Lock()
	defer trafficMu.Unlock()
	trafficOnce.Do(func() {
		doc, _ := spec(t)
		trafficV, trafficVErrs = validator.NewValidator(doc, strictAnswers...)
	})
	if len(trafficVErrs) > 0 {
		t.Fatalf("validator: %v", trafficVErrs)
	}
	for _, a := range ans {
		if errs := checkAnswer(a); len(errs) > 0 {
			body := a.body
			if a.truncated {
				body = append(body[:300:300], "..."...)
			}
			t.Errorf("%s %s -> %d does not match %s: %.300s\n    %s", a.method, a.url.RequestURI(), a.status, specPath, body, strings.Join(errs, "\n    "))
		}
	}
}

// checkAnswer holds one answer to the document; it returns the mismatches.
func checkAnswer(a answer) []string {
	if a.status == http.StatusInternalServerError {
		// An unexpected fault (tests inject database errors) is
		// 500 INTERNAL on any route; info says so once rather than
		// every operation listing it.
		return errorEnvelope(a, "INTERNAL")
	}
	errs, unknownPath, unknownMethod := validateAnswer(a, a.url)
	if len(errs) == 0 {
		return nil
	}
	if unknownPath {
		// Plain streams are served under /v1/stream/ at any depth and at
		// the root too (outside the API's own paths); an OpenAPI path
		// parameter cannot hold a slash, so such a stream's answer is
		// held to /v1/stream/{path}.
		u := *a.url
		u.Path, u.RawPath = "/v1/stream/p", ""
		if again, _, _ := validateAnswer(a, &u); len(again) == 0 {
			return nil
		}
	}
	if (unknownPath || unknownMethod) && (a.status == http.StatusNotFound || a.status == http.StatusMethodNotAllowed ||
		a.status == http.StatusBadRequest) {
		// An unknown path (404 NOT_FOUND), a method a path does not serve
		// (405 METHOD_NOT_ALLOWED, with Allow), a stream missing at a
		// path of several segments, or a path the path rule refuses before
		// any route (400: an encoded separator, a dot segment): the
		// conventions of info describe them; no operation can.
		return errorEnvelope(a, "")
	}
	return errs
}

func validateAnswer(a answer, u *url.URL) (errs []string, unknownPath, unknownMethod bool) {
	req := &http.Request{Method: a.method, URL: u, Header: a.reqHeader, Body: http.NoBody}
	body := a.body
	if a.truncated {
		body = nil
	}
	res := &http.Response{StatusCode: a.status, Header: a.header, Body: io.NopCloser(bytes.NewReader(body)), Request: req}
	ok, verrs := trafficV.ValidateHttpResponse(req, res)
	if ok {
		return nil, false, false
	}
	for _, e := range verrs {
		if e.ValidationType == "path" {
			unknownPath = unknownPath || e.ValidationSubType == "missing"
			unknownMethod = unknownMethod || e.ValidationSubType == "missingOperation"
		}
		errs = append(errs, e.Error())
		for _, f := range e.SchemaValidationErrors {
			errs = append(errs, "  at "+f.FieldPath+": "+f.Reason)
		}
	}
	if a.truncated {
		// Only the status is held to the document: the body was cut.
		var kept []string
		for _, e := range verrs {
			if e.ValidationType != "response" || !strings.Contains(strings.ToLower(e.Message), "body") {
				kept = append(kept, e.Error())
			}
		}
		errs = kept
	}
	return errs, unknownPath, unknownMethod
}

// errorEnvelope checks an error answer has the documented shape
// {"error":{"code","message"}} (code want, if given), and a 405 its Allow.
func errorEnvelope(a answer, want string) []string {
	var errs []string
	if a.status == http.StatusMethodNotAllowed && a.header.Get("Allow") == "" {
		errs = append(errs, "405 without an Allow header")
	}
	if a.method == http.MethodHead {
		return errs
	}
	var e struct {
		Error struct{ Code, Message string }
	}
	if err := json.Unmarshal(a.body, &e); err != nil || e.Error.Code == "" || e.Error.Message == "" {
		return append(errs, `the body is not {"error":{"code","message"}}`)
	}
	if want != "" && e.Error.Code != want {
		errs = append(errs, "error code "+e.Error.Code+", want "+want)
	}
	return errs
}
