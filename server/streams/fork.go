package streams

import (
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/pullwake/pullwake/db"
)

// Forks (protocol §4.2) are created by a PUT with Stream-Forked-From and
// stored by pw_stream_fork (migrations/00010_stream_forks.sql) without
// copying the source's messages: the fork row carries its ancestry and reads
// stitch it. Once created a fork is an ordinary stream to every other
// handler here: appends, closure, producers and live reads need nothing of
// their own (a fork's live readers wait on the fork's path, so appends to
// its source never wake them).

// zeroOffsetAlias is the stream start as the reference server spells it.
// Clients that fork "from the beginning" hard-code it, so Stream-Fork-Offset
// accepts it as a synonym of 0000000000000000.
const zeroOffsetAlias = "0000000000000000_0000000000000000"

func forkHeaders(r *http.Request) bool {
	for _, k := range []string{"Stream-Forked-From", "Stream-Fork-Offset", "Stream-Fork-Sub-Offset"} {
		if _, ok := r.Header[k]; ok {
			return true
		}
	}
	return false
}

// forkRequest is a validated fork PUT.
type forkRequest struct {
	source string
	offset *int64 // nil: the source's tail
	sub    int64
}

// parseFork validates the fork headers; msg describes a bad one (400).
func parseFork(r *http.Request) (forkRequest, string) {
	var f forkRequest
	src := strings.TrimSpace(r.Header.Get("Stream-Forked-From"))
	if src == "" {
		return f, "Stream-Fork-Offset and Stream-Fork-Sub-Offset need Stream-Forked-From"
	}
	if v, ok := r.Header["Stream-Fork-Sub-Offset"]; ok {
		if !ttlRe.MatchString(v[0]) {
			return f, "Stream-Fork-Sub-Offset must be a non-negative integer without sign or leading zeros"
		}
		n, err := strconv.ParseInt(v[0], 10, 64)
		if err != nil {
			return f, "Stream-Fork-Sub-Offset is out of range"
		}
		f.sub = n
	}
	if v, ok := r.Header["Stream-Fork-Offset"]; ok {
		s := strings.TrimSpace(v[0])
		if s == zeroOffsetAlias {
			s = offset(0)
		}
		n, ok := parseOffset(s)
		if !ok || n == nil {
			return f, "Stream-Fork-Offset must be an offset this server returned"
		}
		f.offset = n
	} else if f.sub > 0 {
		return f, "Stream-Fork-Sub-Offset needs Stream-Fork-Offset"
	}
	if strings.Contains(src, "%") {
		if u, err := url.PathUnescape(src); err == nil {
			src = u
		}
	}
	if !utf8.ValidString(src) || checkPath(src) != "" {
		return f, "Stream-Forked-From must be a stream path (" + Prefix + "{name...})"
	}
	f.source = src
	return f, ""
}

// serveFork handles a PUT with fork headers: create the fork, or confirm an
// identical one. The answers carry no fork headers: a fork is a stream like
// any other to its readers.
func (h *Handler) serveFork(w http.ResponseWriter, r *http.Request, path string) {
	f, msg := parseFork(r)
	if msg != "" {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", msg)
		return
	}
	var ct *string
	mt := ""
	if v := strings.TrimSpace(r.Header.Get("Content-Type")); v != "" {
		var ok bool
		if mt, ok = mediaType(v); !ok {
			writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "Content-Type is not a valid media type")
			return
		}
		ct = &v
	}
	ttl, expires, msg := parseLifetime(r)
	if msg != "" {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", msg)
		return
	}
	body, ok := readCreateBody(w, r)
	if !ok {
		return
	}
	// The body is split by the fork's media type, which is the source's: a
	// request without Content-Type learns it from the source first.
	if len(body) > 0 && mt == "" {
		c, err := h.read(r, f.source, nil, 0, false)
		if err != nil {
			h.internalError(w, r, "fork", path, err)
			return
		}
		if c.Status == "ok" {
			mt, _ = mediaType(c.ContentType)
		}
	}
	msgs, _, err := splitMessages(body, isJSON(mt))
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", err.Error())
		return
	}
	if msgs == nil {
		msgs = [][]byte{}
	}
	row, err := h.q.StreamFork(r.Context(), h.cfg.Pool, db.StreamForkParams{
		TenantID: h.cfg.Tenant, Path: path, Source: f.source, ForkOffset: f.offset, SubOffset: f.sub,
		ContentType: ct, TtlSeconds: ttl, ExpiresAt: expires, Closed: headerTrue(r, "Stream-Closed"), Data: msgs,
	})
	if err != nil {
		h.internalError(w, r, "fork", path, err)
		return
	}
	if h.answerCreate(w, r, path, row.Status, row.ContentType, row.TailSeq, row.Closed) {
		return
	}
	switch row.Status {
	case "source_not_found":
		writeError(w, r, http.StatusNotFound, "STREAM_NOT_FOUND", "no source stream at Stream-Forked-From")
	case "source_gone":
		writeError(w, r, http.StatusConflict, "SOURCE_DELETED", "the source stream is deleted (kept only for its forks)")
	case "content_type":
		writeError(w, r, http.StatusConflict, "CONTENT_TYPE_MISMATCH", "the Content-Type differs from the source stream's")
	case "bad_offset":
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "Stream-Fork-Offset lies past the source stream's tail")
	case "bad_sub_offset":
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "Stream-Fork-Sub-Offset names a position past the next message of the source")
	case "too_deep":
		writeError(w, r, http.StatusBadRequest, "FORK_TOO_DEEP", "the fork would read through more ancestor segments than the limit of "+strconv.Itoa(MaxForkSegments))
	default:
		writeError(w, r, http.StatusConflict, "STREAM_CONFLICT", "a stream exists at this path with a different configuration")
	}
}

// MaxForkSegments is pw_fork_max_segments(): the most ancestor segments a
// fork reads through.
const MaxForkSegments = 32

// writeGone answers a request on a soft-deleted stream: deleted while forks
// still read its data.
func writeGone(w http.ResponseWriter, r *http.Request) {
	writeError(w, r, http.StatusGone, "STREAM_DELETED", "the stream is deleted; its data is kept only for its forks")
}
