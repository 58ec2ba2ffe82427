package server_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
)

// manifestServer answers every request with status and body, counting
// the requests and the methods it saw.
func manifestServer(t *testing.T, status int, body any) (*httptest.Server, *atomic.Int64, *atomic.Value) {
	t.Helper()
	var calls atomic.Int64
	var method atomic.Value
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		method.Store(r.Method)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		_ = json.NewEncoder(w).Encode(body)
	}))
	t.Cleanup(srv.Close)
	return srv, &calls, &method
}

func TestEntityTypeFromServeEndpoint(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	manifest := map[string]any{
		"name": "helper", "description": "from the manifest",
		"creation_schema": map[string]any{"type": "object", "required": []any{"topic"}},
		"input_schemas":   map[string]any{"ask": map[string]any{"type": "string"}},
	}
	srv, calls, method := manifestServer(t, 200, manifest)
	got := b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin,
		map[string]any{"name": "helper", "serve_endpoint": srv.URL})).json(t)
	inbox, _ := got["inbox_schemas"].(map[string]any)
	if got["description"] != "from the manifest" || got["creation_schema"] == nil ||
		inbox["ask"] == nil || got["revision"] != float64(1) {
		t.Fatalf("registered from the manifest: %v", got)
	}
	if calls.Load() != 1 || method.Load() != "PUT" {
		t.Fatalf("endpoint called %d times, method %v", calls.Load(), method.Load())
	}
	// The manifest's schemas are enforced.
	if r := b.do("PUT", "/_electric/entities/helper/1", electricAdmin, map[string]any{}); r.status != 422 {
		t.Fatalf("spawn without the manifest's required argument: %d %s", r.status, r.body)
	}

	// A description or creation_schema next to serve_endpoint is a plain
	// registration: the endpoint is not called.
	b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin,
		map[string]any{"name": "plain", "description": "given", "serve_endpoint": srv.URL}))
	if calls.Load() != 1 {
		t.Fatalf("endpoint called for a registration with a description: %d", calls.Load())
	}
}

func TestEntityTypeServeEndpointRefusals(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	mismatch, _, _ := manifestServer(t, 200, map[string]any{"name": "foo", "description": "says foo"})
	failing, _, _ := manifestServer(t, 500, map[string]any{"error": "down"})
	notJSON, _, _ := manifestServer(t, 200, []any{1, 2})
	redirect := httptest.NewServer(http.RedirectHandler(mismatch.URL, http.StatusFound))
	t.Cleanup(redirect.Close)
	closed := httptest.NewServer(http.NotFoundHandler())
	closed.Close()

	for _, c := range []struct {
		endpoint string
		status   int
		code     string
	}{
		{mismatch.URL, 400, "SERVE_ENDPOINT_NAME_MISMATCH"},
		{failing.URL, 422, "SERVE_ENDPOINT_UNREACHABLE"},
		{notJSON.URL, 422, "SERVE_ENDPOINT_UNREACHABLE"},
		{redirect.URL, 422, "SERVE_ENDPOINT_UNREACHABLE"},
		{closed.URL, 422, "SERVE_ENDPOINT_UNREACHABLE"},
		{"file:///etc/passwd", 400, "INVALID_REQUEST"},
		{"/relative", 400, "INVALID_REQUEST"},
	} {
		r := b.do("POST", "/_electric/entity-types", electricAdmin, map[string]any{"name": "bar", "serve_endpoint": c.endpoint})
		if r.status != c.status || r.errorCode(t) != c.code {
			t.Fatalf("serve endpoint %s: %d %s, want %d %s", c.endpoint, r.status, r.body, c.status, c.code)
		}
	}
	if r := b.do("GET", "/_electric/entity-types/bar", electricAdmin, nil); r.status != 404 {
		t.Fatalf("a refused registration registered the type: %d %s", r.status, r.body)
	}
	if r := b.do("POST", "/_electric/entity-types", "", map[string]any{"name": "bar", "serve_endpoint": mismatch.URL}); r.status != 401 {
		t.Fatalf("serve endpoint registration without the admin token: %d", r.status)
	}
}

func TestEntityTypeElectricSchemaNames(t *testing.T) {
	t.Parallel()
	b := setup(t, withElectricAdmin)
	got := b.must(201, b.do("POST", "/_electric/entity-types", electricAdmin, map[string]any{
		"name": "named", "input_schemas": map[string]any{"q": map[string]any{"type": "string"}},
		"output_schemas": map[string]any{"a": map[string]any{"type": "object"}},
	})).json(t)
	inbox, _ := got["inbox_schemas"].(map[string]any)
	state, _ := got["state_schemas"].(map[string]any)
	if inbox["q"] == nil || state["a"] == nil {
		t.Fatalf("input_schemas/output_schemas are inbox_schemas/state_schemas: %v", got)
	}
}
