package server_test

import (
	"context"
	"net/http"
	"strings"
	"testing"

	"github.com/pullwake/pullwake/internal/testdb"
)

// The shape routes take the credential the REST lists take: with an admin
// token configured, none or a wrong one is 401 (CORS headers included, so
// a browser page can read why), the token opens them.
func TestShapeRoutesNeedTheListCredential(t *testing.T) {
	t.Parallel()
	b := startOn(t, testdb.NewLogical(t), func(o *options) { o.adminToken = "shape-admin-token-0123456789abcdef" })
	for _, path := range []string{"/v1/shape", "/_electric/electric/v1/shape"} {
		for _, tok := range []string{"", "wrong"} {
			r := b.do("GET", path+"?table=entities&offset=-1", tok, nil, "Origin", "https://ui.example")
			if r.status != http.StatusUnauthorized || r.errorCode(t) != "UNAUTHORIZED" || r.header.Get("WWW-Authenticate") != "Bearer" ||
				r.header.Get("Access-Control-Allow-Origin") != "https://ui.example" || !strings.Contains(r.header.Get("Access-Control-Expose-Headers"), "electric-handle") {
				t.Fatalf("%s with token %q: %d %v %s", path, tok, r.status, r.header, r.body)
			}
		}
		// The REST list behaves alike.
		if r := b.do("GET", "/_electric/runners", "", nil); r.status != http.StatusUnauthorized {
			t.Fatalf("GET /_electric/runners without a token: %d", r.status)
		}
		r := b.do("GET", path+"?table=entities&offset=-1", b.admin, nil)
		if r.status != http.StatusOK || r.header.Get("electric-handle") == "" ||
			!strings.HasPrefix(r.header.Get("Cache-Control"), "private") || !strings.Contains(strings.Join(r.header.Values("Vary"), ","), "Authorization") {
			t.Fatalf("%s with the admin token: %d %v %s", path, r.status, r.header, r.body)
		}
		// A browser's preflight needs no credential.
		r = b.do("OPTIONS", path, "", nil, "Access-Control-Request-Headers", "authorization")
		if r.status != http.StatusNoContent || r.header.Get("Access-Control-Allow-Headers") != "authorization" {
			t.Fatalf("preflight %d %v", r.status, r.header)
		}
	}
}

// On a database whose wal_level is not logical, shape requests answer 503
// naming the setting, and every other route works.
func TestShapesNeedLogicalWALLevel(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	var level string
	if err := d.Pool.QueryRow(context.Background(), "SHOW wal_level").Scan(&level); err != nil {
		t.Fatal(err)
	}
	if level == "logical" {
		t.Fatalf("this test needs a test server with wal_level replica (the default); PULLWAKE_TEST_DATABASE_URL names one with %s", level)
	}
	b := startOn(t, d)
	r := b.do("GET", "/_electric/electric/v1/shape?table=entities&offset=-1", "", nil)
	if r.status != http.StatusServiceUnavailable || r.errorCode(t) != "WAL_LEVEL_NOT_LOGICAL" || !strings.Contains(string(r.body), "wal_level=logical") {
		t.Fatalf("shape on wal_level=%s: %d %s", level, r.status, r.body)
	}
	b.must(http.StatusCreated, b.do("PUT", "/entities/chat/1", "", map[string]any{}))
	b.must(http.StatusOK, b.do("GET", "/readyz", "", nil))
	b.must(http.StatusOK, b.do("GET", "/entities", "", nil))
}
