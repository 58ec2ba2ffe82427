package server_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/pb33f/libopenapi"
	validator "github.com/pb33f/libopenapi-validator"
	oaerrors "github.com/pb33f/libopenapi-validator/errors"
	v3 "github.com/pb33f/libopenapi/datamodel/high/v3"
)

// The API reference, api/openapi.yaml, is held to the server three ways:
// every pattern the router serves must be documented
// (TestOpenAPIDocumentsEveryRoute); the requests and answers of a whole
// cycle, driven through a real server, must match the document's schemas
// (TestOpenAPIValidatesACycle); and every answer any test of this package
// receives is checked against the document when that test ends
// (traffic_test.go).

const specPath = "../api/openapi.yaml"

var (
	specOnce  sync.Once
	specBytes []byte
	specErr   error
)

// spec parses api/openapi.yaml afresh (libopenapi documents are not shared
// between goroutines) from bytes read once.
func spec(t testing.TB) (libopenapi.Document, *v3.Document) {
	t.Helper()
	specOnce.Do(func() { specBytes, specErr = os.ReadFile(specPath) })
	if specErr != nil {
		t.Fatalf("read the API reference: %v", specErr)
	}
	doc, err := libopenapi.NewDocument(specBytes)
	if err != nil {
		t.Fatalf("parse %s: %v", specPath, err)
	}
	model, err := doc.BuildV3Model()
	if err != nil {
		t.Fatalf("build the model of %s: %v", specPath, err)
	}
	return doc, &model.Model
}

var wildcard = regexp.MustCompile(`\{[^}]*\}`)

// normPath makes path templates comparable whatever their parameter names:
// /entities/{type}/{id} and /entities/{t}/{i} are the same route.
func normPath(p string) string { return wildcard.ReplaceAllString(p, "{}") }

// documented maps each normalized path of the document to its methods.
func documented(m *v3.Document) map[string]map[string]bool {
	out := map[string]map[string]bool{}
	for path, item := range m.Paths.PathItems.FromOldest() {
		methods := map[string]bool{}
		for method := range item.GetOperations().KeysFromOldest() {
			methods[strings.ToUpper(method)] = true
		}
		out[normPath(path)] = methods
	}
	return out
}

func TestOpenAPIDocumentsEveryRoute(t *testing.T) {
	t.Parallel()
	doc, model := spec(t)
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	if ok, verrs := v.ValidateDocument(); !ok {
		for _, e := range verrs {
			t.Errorf("%s is not a valid OpenAPI document: %s", specPath, e.Error())
		}
	}
	docs := documented(model)
	b := setup(t)
	routes := b.srv.Routes()
	if len(routes) < 10 {
		t.Fatalf("the router lists only %d patterns: %v", len(routes), routes)
	}
	for _, pattern := range routes {
		method, path, hasMethod := strings.Cut(pattern, " ")
		if !hasMethod {
			method, path = "", pattern
		}
		if path == "/" {
			continue // the catch-all: 404 NOT_FOUND or 405 METHOD_NOT_ALLOWED, described in info
		}
		np := normPath(path)
		if strings.HasSuffix(path, "/") || strings.Contains(path, "...}") {
			// A subtree (/v1/stream/): some documented path must lie under it.
			prefix := strings.TrimSuffix(np, "{}")
			found := false
			for p := range docs {
				found = found || strings.HasPrefix(p, prefix) && p != prefix
			}
			if !found {
				t.Errorf("route %q: no path under %s in %s", pattern, prefix, specPath)
			}
			continue
		}
		methods, ok := docs[np]
		switch {
		case !ok:
			t.Errorf("route %q: path %s is not in %s", pattern, path, specPath)
		case method != "" && !methods[method]:
			t.Errorf("route %q: %s has no %s operation in %s", pattern, path, strings.ToLower(method), specPath)
		case len(methods) == 0:
			t.Errorf("route %q: %s has no operation in %s", pattern, path, specPath)
		}
	}
}

// exchange is one recorded request and its answer.
type exchange struct {
	method, url string
	reqHeader   http.Header
	reqBody     []byte
	status      int
	resHeader   http.Header
	resBody     []byte
}

// recorder sends requests like bundle.do and keeps every exchange.
type recorder struct {
	b  *bundle
	ex []exchange
}

func (rc *recorder) do(method, path, token string, body any, hdr ...string) resp {
	t := rc.b.t
	t.Helper()
	var raw []byte
	switch v := body.(type) {
	case nil:
	case string:
		raw = []byte(v)
	default:
		var err error
		if raw, err = json.Marshal(v); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(method, rc.b.url+path, bytes.NewReader(raw))
	if err != nil {
		t.Fatal(err)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer res.Body.Close()
	data, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatalf("%s %s: read answer: %v", method, path, err)
	}
	rc.ex = append(rc.ex, exchange{method: method, url: rc.b.url + path, reqHeader: req.Header.Clone(), reqBody: raw,
		status: res.StatusCode, resHeader: res.Header.Clone(), resBody: data})
	return resp{status: res.StatusCode, header: res.Header, body: data}
}

func (rc *recorder) must(want int, method, path, token string, body any, hdr ...string) resp {
	rc.b.t.Helper()
	r := rc.do(method, path, token, body, hdr...)
	if r.status != want {
		rc.b.t.Fatalf("%s %s: status %d, want %d: %s", method, path, r.status, want, r.body)
	}
	return r
}

// validate checks every exchange against the document: the answer always,
// the request too when the server accepted it (a refused request is bad
// input on purpose).
func (rc *recorder) validate(t *testing.T) {
	t.Helper()
	doc, _ := spec(t)
	v, errs := validator.NewValidator(doc)
	if len(errs) > 0 {
		t.Fatalf("validator: %v", errs)
	}
	for _, x := range rc.ex {
		req, err := http.NewRequest(x.method, x.url, bytes.NewReader(x.reqBody))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = x.reqHeader
		res := &http.Response{StatusCode: x.status, Header: x.resHeader, Body: io.NopCloser(bytes.NewReader(x.resBody)), Request: req}
		var ok bool
		var verrs []*oaerrors.ValidationError
		if x.status < 400 {
			ok, verrs = v.ValidateHttpRequestResponse(req, res)
		} else {
			ok, verrs = v.ValidateHttpResponse(req, res)
		}
		if !ok {
			t.Errorf("%s %s -> %d does not match %s:\n  request: %.300s\n  answer: %.300s", x.method, strings.TrimPrefix(x.url, rc.b.url), x.status, specPath, x.reqBody, x.resBody)
			for _, e := range verrs {
				t.Errorf("    %s", e.Error())
				for _, f := range e.SchemaValidationErrors {
					t.Errorf("      at %s: %s", f.FieldPath, f.Reason)
				}
			}
		}
	}
}

// A whole cycle, with the answers of the error paths a runner meets, every
// exchange validated against api/openapi.yaml.
func TestOpenAPIValidatesACycle(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.metrics = true })
	rc := &recorder{b: b}

	rc.must(200, "GET", "/healthz", "", nil)
	rc.must(200, "GET", "/readyz", "", nil)
	rc.must(200, "GET", "/metrics", "", nil)

	// Runners.
	reg := rc.must(201, "POST", "/_electric/runners", "", map[string]any{"id": "r1", "label": "first", "kind": "test"}).json(t)
	rt := reg["runner_token"].(string)
	rc.must(200, "GET", "/_electric/runners", "", nil)
	rc.must(200, "GET", "/_electric/runners/r1", "", nil)
	rc.must(200, "POST", "/_electric/runners/r1/heartbeat", rt, map[string]any{"lease_ms": 5000, "diagnostics": map[string]any{"version": "1"}})
	rc.must(204, "POST", "/_electric/runners/r1/claim", rt, map[string]any{}) // no work

	// Entities.
	rc.must(201, "PUT", "/entities/chat/1", "", map[string]any{})
	rc.must(201, "PUT", "/entities/chat/2", "", map[string]any{"runner_id": "r1"})
	rc.must(202, "POST", "/entities/chat/1", "", map[string]any{"payload": map[string]any{"text": "hi"}, "from": "tester"})
	rc.must(200, "GET", "/entities/chat/1", "", nil)
	rc.must(200, "GET", "/entities?status=idle", "", nil)
	rc.must(200, "GET", "/entities?runner_id=r1", "", nil)

	// Claim, read, append, heartbeat, re-mint.
	var w wake
	if err := json.Unmarshal(rc.must(200, "POST", "/_electric/runners/r1/claim", rt, map[string]any{"lease_ttl_ms": 30000}).body, &w); err != nil {
		t.Fatal(err)
	}
	cb := "/_electric/wake-callbacks/" + w.ConsumerID
	rc.must(200, "GET", "/_electric/runners/r1/health", rt, nil)
	read := rc.must(200, "GET", w.StreamPath+"?offset=-1", "", nil)
	rc.must(200, "HEAD", w.StreamPath, "", nil)
	app := rc.must(204, "POST", w.StreamPath, w.WriteToken, map[string]any{"type": "reply", "text": "hello"})
	rc.must(200, "POST", cb, w.ClaimToken, map[string]any{"epoch": w.Epoch})
	rc.must(200, "POST", cb, w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID})
	rc.must(200, "POST", cb, w.ClaimToken, map[string]any{"generation": w.Epoch, "wakeId": w.WakeID})

	// Done with claim_next: chat/2 has work queued for r1 meanwhile.
	rc.must(202, "POST", "/entities/chat/2", "", map[string]any{"payload": "next"})
	done := rc.must(200, "POST", cb, w.ClaimToken, map[string]any{"epoch": w.Epoch, "done": true, "claim_next": true,
		"acks": []map[string]any{{"stream": w.StreamPath, "offset": app.header.Get("Stream-Next-Offset")}}}).json(t)
	next, ok := done["next"].(map[string]any)
	if !ok {
		t.Fatalf("done with claim_next got no next claim: %v (read %s)", done, read.body)
	}
	cb2 := "/_electric/wake-callbacks/" + next["consumer_id"].(string)
	epoch2 := next["epoch"]
	ct2 := next["claim_token"].(string)
	rc.must(200, "POST", cb2, ct2, map[string]any{"epoch": epoch2, "done": true, "claim_next": true}) // next: null
	rc.must(200, "POST", cb2, ct2, map[string]any{"epoch": epoch2, "done": true,
		"acks": []map[string]any{{"path": next["stream_path"], "offset": "0000000000000001"}}}) // repeated: released false
	rc.must(409, "POST", cb2, ct2, map[string]any{"epoch": epoch2})                             // heartbeat after the end
	rc.must(409, "POST", cb2, ct2, map[string]any{"epoch": epoch2, "wake_id": next["wake_id"]}) // no re-mint either
	rc.must(404, "POST", cb2, ct2, map[string]any{"epoch": 999, "done": true})

	// Operators: claims, force release, disable, enable, stop.
	rc.must(200, "GET", "/_electric/claims", "", nil)
	rc.must(200, "GET", "/_electric/claims?status=released&runner_id=r1&limit=5", "", nil)
	rc.must(202, "POST", "/entities/chat/1", "", map[string]any{"payload": "again"})
	var w3 wake
	if err := json.Unmarshal(rc.must(200, "POST", "/_electric/runners/r1/claim", rt, nil).body, &w3); err != nil {
		t.Fatal(err)
	}
	rc.must(200, "GET", "/_electric/claims?status=active", "", nil)
	rc.must(200, "POST", fmt.Sprintf("/_electric/claims/%s/%d/release", w3.ConsumerID, w3.Epoch), "", nil)
	rc.must(404, "POST", "/_electric/claims/wake-999/1/release", "", nil)
	rc.must(200, "POST", "/_electric/runners/r1/disable", "", nil)
	rc.must(202, "POST", "/entities/chat/1", "", map[string]any{"payload": "while disabled"})
	rc.must(409, "POST", "/_electric/runners/r1/claim", rt, nil)
	rc.must(200, "POST", "/_electric/runners/r1/enable", "", nil)
	rc.must(200, "DELETE", "/entities/chat/2", "", nil)
	rc.must(409, "POST", "/entities/chat/2", "", map[string]any{"payload": "too late"})

	// Error answers a newcomer meets.
	rc.must(400, "PUT", "/entities/Chat/1", "", map[string]any{})
	rc.must(400, "POST", "/_electric/runners/r1/claim", rt, map[string]any{"lease_ttl_ms": 5})
	rc.must(401, "POST", "/_electric/runners/r1/claim", "", map[string]any{})
	rc.must(401, "POST", w.StreamPath, "", map[string]any{"type": "reply"})
	rc.must(403, "PUT", w.StreamPath, "", nil)
	rc.must(404, "GET", "/entities/chat/404", "", nil)
	rc.must(404, "GET", "/_electric/runners/nobody", "", nil)
	rc.must(409, "PUT", "/entities/chat/1", "", map[string]any{})
	rc.must(413, "POST", "/entities/chat/1", "", `{"payload": "`+strings.Repeat("x", 1<<20)+`"}`)

	// A plain stream.
	rc.must(201, "PUT", "/v1/stream/notes", "", nil, "Content-Type", "application/json")
	rc.must(204, "POST", "/v1/stream/notes", "", []any{map[string]any{"n": 1}, map[string]any{"n": 2}})
	rc.must(200, "GET", "/v1/stream/notes?offset=-1", "", nil)
	rc.must(200, "HEAD", "/v1/stream/notes", "", nil)
	rc.must(204, "OPTIONS", "/v1/stream/notes", "", nil, "Origin", "http://example.test", "Access-Control-Request-Method", "POST")
	rc.must(204, "DELETE", "/v1/stream/notes", "", nil)
	rc.must(404, "GET", "/v1/stream/notes?offset=-1", "", nil)

	rc.validate(t)
}
