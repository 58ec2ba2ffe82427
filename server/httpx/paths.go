package httpx

import (
	"net/http"
	"strings"
)

// PathGuard applies the one rule for paths before any route or auth
// decision (the server mounts its mux behind it): a path is decoded once
// (by net/http) and what is routed, authorized and stored is that decoded
// path. So nothing may decode to a separator or to something that decodes
// again: an encoded '/' or '\' (%2F, %5C) in the request path, a '%' left
// in the decoded path (double encoding, e.g. %252F), and dot segments
// ('.', '..', also as %2E) are refused with 400. Without this rule
// /v1/stream/runners%2Fr1%2Fwake would route as one opaque segment (past
// the wake stream's own route and its runner-token check) while the
// stream handler, reading the decoded path, served the wake stream.
func PathGuard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if why := BadPath(r); why != "" {
			WriteJSON(w, http.StatusBadRequest, map[string]any{"error": map[string]any{
				"code": "INVALID_REQUEST", "message": why}})
			return
		}
		next.ServeHTTP(w, r)
	})
}

// BadPath says why r's path is refused, or "".
func BadPath(r *http.Request) string {
	raw := strings.ToLower(r.URL.EscapedPath())
	if strings.Contains(raw, "%2f") || strings.Contains(raw, "%5c") {
		return "the path contains an encoded '/' or '\\' (%2F, %5C): path segments cannot contain separators"
	}
	p := r.URL.Path
	if strings.ContainsRune(p, '%') {
		return "the path contains '%' after decoding (double encoding): not allowed"
	}
	if strings.ContainsRune(p, '\\') {
		return "the path contains '\\': not allowed"
	}
	for _, seg := range strings.Split(p, "/") {
		if seg == "." || seg == ".." {
			return "the path contains a '.' or '..' segment: not allowed"
		}
	}
	return ""
}
