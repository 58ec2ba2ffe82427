package server_test

import (
	"net/http"
	"strings"
	"testing"
)

// The status page is served from the binary at /status/, open without a
// token even when the server has one (its data comes from the shape
// endpoint, behind its own auth), with a CSP that keeps it to its origin
// and an ETag that makes a reload a 304.
func TestStatusPageFiles(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.adminToken = "admin-secret" })

	page := b.must(200, b.do("GET", "/status/", "", nil))
	if ct := page.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
		t.Fatalf("page Content-Type %q", ct)
	}
	for _, want := range []string{`src="app.js"`, `href="style.css"`, `id="entities"`, `id="runners"`} {
		if !strings.Contains(string(page.body), want) {
			t.Errorf("page lacks %s", want)
		}
	}
	if csp := page.header.Get("Content-Security-Policy"); !strings.Contains(csp, "connect-src 'self'") || strings.Contains(csp, "unsafe-inline") {
		t.Errorf("CSP %q", csp)
	}
	for file, ct := range map[string]string{"app.js": "text/javascript", "shape.js": "text/javascript", "style.css": "text/css"} {
		r := b.must(200, b.do("GET", "/status/"+file, "", nil))
		if got := r.header.Get("Content-Type"); !strings.HasPrefix(got, ct) {
			t.Errorf("%s: Content-Type %q, want %s", file, got, ct)
		}
		if len(r.body) == 0 {
			t.Errorf("%s: empty", file)
		}
	}

	etag := page.header.Get("ETag")
	if etag == "" {
		t.Fatal("no ETag")
	}
	if r := b.do("GET", "/status/", "", nil, "If-None-Match", etag); r.status != http.StatusNotModified || len(r.body) != 0 {
		t.Fatalf("revalidation: %d %q", r.status, r.body)
	}
	if r := b.do("GET", "/status/", "", nil, "If-None-Match", `"other"`); r.status != http.StatusOK {
		t.Fatalf("other ETag: %d", r.status)
	}

	// Unknown files are the API's 404; other methods its 405; /status is
	// never a root stream, not even to create one.
	if code := b.must(404, b.do("GET", "/status/nope.js", "", nil)).errorCode(t); code != "NOT_FOUND" {
		t.Fatalf("unknown file: %s", code)
	}
	r := b.must(405, b.do("POST", "/status/", "", nil))
	if r.header.Get("Allow") == "" {
		t.Fatal("405 without Allow")
	}
	b.must(405, b.do("PUT", "/status", "admin-secret", nil))
	b.must(405, b.do("PUT", "/status/x", "admin-secret", nil))

	// /status redirects to the page.
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := noFollow.Get(b.url + "/status")
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	if res.StatusCode != http.StatusMovedPermanently || res.Header.Get("Location") != "/status/" {
		t.Fatalf("/status: %d Location %q", res.StatusCode, res.Header.Get("Location"))
	}
}
