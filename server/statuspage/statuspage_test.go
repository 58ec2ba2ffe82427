package statuspage

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// Every embedded file is served under Prefix with its type and an ETag;
// HEAD has no body; a weak or listed ETag revalidates to 304.
func TestServe(t *testing.T) {
	t.Parallel()
	h, err := New()
	if err != nil {
		t.Fatal(err)
	}
	for name := range h.files {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			path := Prefix + name
			if name == "index.html" {
				path = Prefix
			}
			if !h.Has(path) {
				t.Fatalf("Has(%s) = false", path)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			if rec.Code != http.StatusOK || rec.Body.Len() == 0 || rec.Header().Get("Content-Type") == "" {
				t.Fatalf("GET %s: %d, %d bytes, type %q", path, rec.Code, rec.Body.Len(), rec.Header().Get("Content-Type"))
			}
			etag := rec.Header().Get("ETag")

			rec = httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodHead, path, nil))
			if rec.Code != http.StatusOK || rec.Body.Len() != 0 {
				t.Fatalf("HEAD %s: %d with %d bytes", path, rec.Code, rec.Body.Len())
			}

			for _, match := range []string{etag, "W/" + etag, `"x", ` + etag, "*"} {
				req := httptest.NewRequest(http.MethodGet, path, nil)
				req.Header.Set("If-None-Match", match)
				rec = httptest.NewRecorder()
				h.ServeHTTP(rec, req)
				if rec.Code != http.StatusNotModified || rec.Body.Len() != 0 {
					t.Fatalf("If-None-Match %s: %d", match, rec.Code)
				}
			}
		})
	}
	if h.Has(Prefix+"nope.js") || h.Has(Prefix+"../doc.go") {
		t.Fatal("Has says yes to a file the page does not have")
	}
	if !strings.Contains(string(h.files["index.html"].body), `type="module"`) {
		t.Fatal("the page loads no module")
	}
}
