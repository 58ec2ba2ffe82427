package server

import (
	"context"
	"net/http"
	"time"
)

// Wake streams: every runner has a JSON-mode Durable Stream at
// /v1/stream/runners/{id}/wake, also served at /runners/{id}/wake (the
// path Electric's runtime reads by default). The database appends one
// event per queued wake to it (00008_electric_runtime); clients only read
// it, with the runner's token or the admin token. Reading is the stream
// handler's, after this check.

// wakeStream serves GET and HEAD of a runner's wake stream under either
// path. It runs outside the request timeout: a live read waits up to the
// long-poll limit, as on any stream.
func (s *Server) wakeStream(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Streams == nil {
		s.fail(w, r, errf(http.StatusNotFound, "NOT_FOUND", "streams are not served"))
		return
	}
	switch r.Method {
	case http.MethodOptions:
	case http.MethodGet, http.MethodHead:
		ctx, cancel := context.WithTimeout(r.Context(), min(s.cfg.RequestTimeout, 5*time.Second))
		err := s.requireRunner(r.WithContext(ctx))
		cancel()
		if err != nil {
			s.fail(w, r, err)
			return
		}
	default:
		s.fail(w, r, errf(http.StatusForbidden, "FORBIDDEN", "a wake stream is written by the server only; %s is refused", r.Method))
		return
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = wakeStreamPath(r.PathValue("id"))
	r2.URL.RawPath = ""
	s.cfg.Streams.ServeHTTP(w, r2)
}
