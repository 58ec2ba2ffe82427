package statuspage

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"mime"
	"net/http"
	"path"
	"strings"
)

// Prefix is where the page is served; Prefix without its trailing slash
// redirects here.
const Prefix = "/status/"

//go:embed static
var static embed.FS

// csp lets the page load its own files and fetch its own origin, nothing
// else: no inline script or style, no third-party host.
const csp = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; " +
	"img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

type file struct {
	body        []byte
	contentType string
	etag        string
}

// Handler serves the embedded page under Prefix.
type Handler struct {
	files map[string]file // by name under static/, "index.html" for the page
}

// New reads the embedded files once.
func New() (*Handler, error) {
	h := &Handler{files: map[string]file{}}
	err := fs.WalkDir(static, "static", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		body, err := static.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read %s: %w", p, err)
		}
		sum := sha256.Sum256(body)
		ct := mime.TypeByExtension(path.Ext(p))
		if ct == "" {
			ct = "application/octet-stream"
		}
		h.files[strings.TrimPrefix(p, "static/")] = file{body: body, contentType: ct, etag: `"` + hex.EncodeToString(sum[:8]) + `"`}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("status page files: %w", err)
	}
	if _, ok := h.files["index.html"]; !ok {
		return nil, fmt.Errorf("status page files: no index.html")
	}
	return h, nil
}

// lookup returns the file a request path under Prefix names ("" is the
// page itself) and whether there is one.
func (h *Handler) lookup(urlPath string) (file, bool) {
	name := strings.TrimPrefix(urlPath, Prefix)
	if name == "" {
		name = "index.html"
	}
	f, ok := h.files[name]
	return f, ok
}

// Has reports whether urlPath names a file of the page (for the caller's
// 404 in its own error format).
func (h *Handler) Has(urlPath string) bool {
	_, ok := h.lookup(urlPath)
	return ok
}

// ServeHTTP serves GET and HEAD of the page's files; the caller routes
// only those methods here and answers unknown names itself (Has).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	f, ok := h.lookup(r.URL.Path)
	if !ok {
		http.NotFound(w, r)
		return
	}
	hd := w.Header()
	hd.Set("Content-Type", f.contentType)
	hd.Set("ETag", f.etag)
	hd.Set("Cache-Control", "no-cache") // revalidate: an upgraded server serves its own page
	hd.Set("Content-Security-Policy", csp)
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Referrer-Policy", "no-referrer")
	if match := r.Header.Get("If-None-Match"); match != "" && etagMatches(match, f.etag) {
		w.WriteHeader(http.StatusNotModified)
		return
	}
	hd.Set("Content-Length", fmt.Sprint(len(f.body)))
	w.WriteHeader(http.StatusOK)
	if r.Method != http.MethodHead {
		_, _ = w.Write(f.body)
	}
}

func etagMatches(header, etag string) bool {
	for _, m := range strings.Split(header, ",") {
		m = strings.TrimSpace(m)
		if m == "*" || strings.TrimPrefix(m, "W/") == etag {
			return true
		}
	}
	return false
}
