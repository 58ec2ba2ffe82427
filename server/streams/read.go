package streams

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"math/rand/v2"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pullwake/pullwake/db"
)

var offsetRe = regexp.MustCompile(`^[0-9]{16}$`)

// parseOffset turns a client offset into the seq to read after; nil means
// the tail ("now").
func parseOffset(s string) (after *int64, ok bool) {
	switch {
	case s == "-1":
		zero := int64(0)
		return &zero, true
	case s == "now":
		return nil, true
	case offsetRe.MatchString(s):
		n, err := strconv.ParseInt(s, 10, 64)
		return &n, err == nil
	}
	return nil, false
}

// Cursors (protocol §10.1): 20-second intervals counted from 2024-10-09 UTC.
var cursorEpoch = time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)

const cursorInterval = 20 * time.Second

// nextCursor returns the cursor for a live response: the current interval,
// or, when the client's cursor is not behind it, the client's cursor plus a
// random jitter of 1-3600 seconds so cursors never repeat or go back.
func nextCursor(now time.Time, client string) string {
	cur := int64(now.Sub(cursorEpoch) / cursorInterval)
	if c, err := strconv.ParseInt(client, 10, 64); err == nil && c >= cur {
		jitter := int64(rand.IntN(3600)+1) * int64(time.Second) / int64(cursorInterval)
		cur = c + max(jitter, 1)
	}
	return strconv.FormatInt(cur, 10)
}

// chunk is one read of a stream.
type chunk struct {
	db.StreamReadRow
	after int64 // the seq the read started after
}

func (c *chunk) upToDate() bool { return c.LastSeq >= c.TailSeq }
func (c *chunk) eof() bool      { return c.Closed && c.upToDate() }
func (c *chunk) jsonMode() bool {
	mt, _ := mediaType(c.ContentType)
	return isJSON(mt)
}

// body renders the chunk's messages: a JSON array in JSON mode (the State
// Protocol events of an entity stream with their offsets: eventoffset.go),
// else the bytes concatenated.
func (c *chunk) body() []byte {
	if c.jsonMode() {
		msgs := c.Data
		if c.IsEntity && int64(len(msgs)) == c.LastSeq-c.after {
			msgs = withEventOffsets(msgs, c.after)
		}
		return joinJSON(msgs)
	}
	return bytes.Join(c.Data, nil)
}

func joinJSON(msgs [][]byte) []byte {
	n := 2
	for _, m := range msgs {
		n += len(m) + 1
	}
	b := make([]byte, 0, n)
	b = append(b, '[')
	for i, m := range msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, m...)
	}
	return append(b, ']')
}

func (c *chunk) etag() string {
	e := `"` + strconv.FormatInt(c.CreatedAtUs, 36) + ":" + offset(c.after) + ":" + offset(c.LastSeq)
	if c.eof() {
		e += ":c"
	}
	return e + `"`
}

// errCancelled: the reader's request ended while it waited for a shared read.
var errCancelled = errors.New("streams: reader cancelled")

// read runs one chunk read: the only query of a catch-up read and of each
// live wake-up. It is bounded by RequestTimeout.
func (h *Handler) read(r *http.Request, path string, after *int64, maxRows int32, touch bool) (*chunk, error) {
	return h.readCtx(r.Context(), path, after, maxRows, touch)
}

func (h *Handler) readCtx(ctx context.Context, path string, after *int64, maxRows int32, touch bool) (*chunk, error) {
	ctx, cancel := context.WithTimeout(ctx, h.cfg.RequestTimeout)
	defer cancel()
	row, err := h.q.StreamRead(ctx, h.cfg.Pool, db.StreamReadParams{
		TenantID: h.cfg.Tenant, Path: path, After: after, MaxRows: maxRows, MaxBytes: readMaxBytes, Touch: touch,
	})
	if err != nil {
		return nil, err
	}
	c := &chunk{StreamReadRow: row}
	if after != nil {
		c.after = *after
	} else {
		c.after = row.TailSeq
	}
	return c, nil
}

// wakeRead is a live reader's read after a wake-up of generation g: shared
// with every other reader of g at the same offset (see notifier). The query
// is not tied to the request that happens to run it, so one reader leaving
// does not fail the others.
func (h *Handler) wakeRead(r *http.Request, sub *subscription, g *generation, path string, after int64) (*chunk, error) {
	return sub.shared(g, readKey{after: after}, false, r.Context().Done(), func() (*chunk, error) {
		return h.readCtx(context.WithoutCancel(r.Context()), path, &after, readMaxRows, false)
	})
}

// firstRead is a long-poll's first read from an offset, which restarts the
// sliding TTL: shared with the readers arriving at the same offset in the
// same generation while the read is at most shareWindow old (see
// subscription.shared). A long-poll that an append answered comes back at
// the offset its response gave it, as do the other readers that append
// woke: one query answers them all.
func (h *Handler) firstRead(r *http.Request, sub *subscription, g *generation, path string, after int64) (*chunk, error) {
	return sub.shared(g, readKey{after: after, touch: true}, true, r.Context().Done(), func() (*chunk, error) {
		return h.readCtx(context.WithoutCancel(r.Context()), path, &after, readMaxRows, true)
	})
}

// admitLive counts a live reader in, or answers 503 when MaxLiveReaders
// are reading already; call the returned func when the reader ends.
func (h *Handler) admitLive(w http.ResponseWriter, r *http.Request) (func(), bool) {
	if h.live.Add(1) > int64(h.cfg.MaxLiveReaders) {
		h.live.Add(-1)
		w.Header().Set("Retry-After", "1")
		writeError(w, r, http.StatusServiceUnavailable, "TOO_MANY_READERS",
			"the server has as many live readers as it takes; retry, or read without live")
		return nil, false
	}
	return func() { h.live.Add(-1) }, true
}

// LiveReaders is the number of long-poll and SSE readers now.
func (h *Handler) LiveReaders() int { return int(h.live.Load()) }

// refuseEntity answers 401 when the chunk is an entity's stream and the
// request may read plain streams only.
func refuseEntity(w http.ResponseWriter, r *http.Request, c *chunk, acc readAccess) bool {
	if acc == readPlain && c.IsEntity {
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED",
			"reading an entity's stream needs the admin token or the stream's write token")
		return true
	}
	return false
}

func (h *Handler) setMetaHeaders(w http.ResponseWriter, c *chunk) {
	hd := w.Header()
	hd.Set("Content-Type", c.ContentType)
	if c.TtlSeconds >= 0 {
		hd.Set("Stream-TTL", strconv.FormatInt(c.TtlSeconds, 10))
	}
	if c.ExpiresAtUs >= 0 {
		hd.Set("Stream-Expires-At", time.UnixMicro(c.ExpiresAtUs).UTC().Format(time.RFC3339Nano))
	}
}

// cacheControl for data responses: shared caches may keep a chunk (it
// never changes) unless the stream belongs to an entity.
func cacheControl(c *chunk) string {
	if c.IsEntity {
		return "private, max-age=60, stale-while-revalidate=300"
	}
	return "public, max-age=60, stale-while-revalidate=300"
}

// serveHead handles HEAD: metadata, no TTL refresh, never cached.
func (h *Handler) serveHead(w http.ResponseWriter, r *http.Request, path string, acc readAccess) {
	c, err := h.read(r, path, nil, 0, false)
	if err != nil {
		h.internalError(w, r, "head", path, err)
		return
	}
	if refuseEntity(w, r, c, acc) {
		return
	}
	w.Header().Set("Cache-Control", "no-store")
	switch c.Status {
	case "not_found":
		w.WriteHeader(http.StatusNotFound)
		return
	case "gone":
		w.WriteHeader(http.StatusGone)
		return
	}
	h.setMetaHeaders(w, c)
	setOffsetHeaders(w, c.TailSeq, c.Closed)
	w.WriteHeader(http.StatusOK)
}

// serveRead handles GET: catch-up, long-poll or SSE.
func (h *Handler) serveRead(w http.ResponseWriter, r *http.Request, path string) {
	q := r.URL.Query()
	live := q.Get("live")
	offStr := "-1"
	if v, ok := q["offset"]; ok {
		offStr = v[0]
	} else if live != "" {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "live reads need an offset")
		return
	}
	after, ok := parseOffset(offStr)
	if !ok {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "offset must be -1, now, or an offset this server returned")
		return
	}
	switch live {
	case "", "long-poll", "sse":
	default:
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "live must be long-poll or sse")
		return
	}
	acc := h.readAccess(r, path)
	if acc == readNone {
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "reading streams needs the admin token")
		return
	}
	if live == "" {
		h.serveCatchUp(w, r, path, after, acc)
		return
	}
	leave, ok := h.admitLive(w, r)
	if !ok {
		return
	}
	defer leave()
	if live == "long-poll" {
		h.serveLongPoll(w, r, path, after, q.Get("cursor"), acc)
	} else {
		h.serveSSE(w, r, path, after, q.Get("cursor"), acc)
	}
}

// answerRead handles the outcomes of a read that are not data.
func answerRead(w http.ResponseWriter, r *http.Request, c *chunk) bool {
	switch c.Status {
	case "not_found":
		writeError(w, r, http.StatusNotFound, "STREAM_NOT_FOUND", "no stream at this path")
		return true
	case "gone":
		writeGone(w, r)
		return true
	case "bad_offset":
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "offset is past the end of the stream")
		return true
	}
	return false
}

func (h *Handler) serveCatchUp(w http.ResponseWriter, r *http.Request, path string, after *int64, acc readAccess) {
	c, err := h.read(r, path, after, readMaxRows, true)
	if err != nil {
		h.internalError(w, r, "read", path, err)
		return
	}
	if refuseEntity(w, r, c, acc) || answerRead(w, r, c) {
		return
	}
	h.writeChunk(w, r, c, after == nil, "")
}

// writeChunk writes a 200 with the chunk's data and headers. tail marks an
// offset=now read (never cached, no ETag); cursor is set on live responses.
func (h *Handler) writeChunk(w http.ResponseWriter, r *http.Request, c *chunk, tail bool, cursor string) {
	hd := w.Header()
	h.setMetaHeaders(w, c)
	hd.Set("Stream-Next-Offset", offset(c.LastSeq))
	if c.upToDate() {
		hd.Set("Stream-Up-To-Date", "true")
	}
	if c.eof() {
		hd.Set("Stream-Closed", "true")
	} else if cursor != "" {
		hd.Set("Stream-Cursor", cursor)
	}
	if tail {
		hd.Set("Cache-Control", "no-store")
	} else {
		etag := c.etag()
		hd.Set("ETag", etag)
		hd.Set("Cache-Control", cacheControl(c))
		if etagMatch(r.Header.Get("If-None-Match"), etag) {
			w.WriteHeader(http.StatusNotModified)
			return
		}
	}
	body := c.body()
	hd.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(body)
}

func etagMatch(header, etag string) bool {
	if header == "" {
		return false
	}
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimPrefix(strings.TrimSpace(t), "W/")
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// serveLongPoll waits up to LongPollTimeout for data past the offset.
func (h *Handler) serveLongPoll(w http.ResponseWriter, r *http.Request, path string, after *int64, clientCursor string, acc readAccess) {
	sub := h.n.subscribe(path)
	defer sub.release()
	timer := time.NewTimer(h.cfg.LongPollTimeout)
	defer timer.Stop()
	timedOut, first, woken := false, true, false
	for {
		g := sub.gen() // taken before the query: an append after it closes g.ch
		var c *chunk
		var err error
		switch {
		case woken:
			c, err = h.wakeRead(r, sub, g, path, *after)
		case first && after != nil:
			c, err = h.firstRead(r, sub, g, path, *after)
		default:
			// offset=now reads the tail on its own (its answer is the
			// moment it asked); a re-check after the timeout reads afresh
			// (an append from psql announces nothing).
			c, err = h.read(r, path, after, readMaxRows, first)
		}
		if err != nil {
			if !errors.Is(err, errCancelled) {
				h.internalError(w, r, "long-poll", path, err)
			}
			return
		}
		if first && refuseEntity(w, r, c, acc) {
			return
		}
		first = false
		if answerRead(w, r, c) {
			return
		}
		if after == nil {
			after = &c.TailSeq // offset=now: wait for data past the tail seen now
		}
		if len(c.Data) > 0 {
			h.writeChunk(w, r, c, false, nextCursor(time.Now(), clientCursor))
			return
		}
		if c.Closed || timedOut {
			hd := w.Header()
			hd.Set("Content-Type", c.ContentType)
			hd.Set("Stream-Next-Offset", offset(c.LastSeq))
			hd.Set("Stream-Up-To-Date", "true")
			hd.Set("Cache-Control", "no-store")
			if c.Closed {
				hd.Set("Stream-Closed", "true")
			} else {
				hd.Set("Stream-Cursor", nextCursor(time.Now(), clientCursor))
			}
			w.WriteHeader(http.StatusNoContent)
			return
		}
		sub.park(true)
		woken = false
		select {
		case <-g.ch:
			woken = true
		case <-timer.C:
			timedOut = true // re-check once: a notification may have been missed
		case <-h.n.done:
			timedOut = true
		case <-r.Context().Done():
			sub.park(false)
			return
		}
		sub.park(false)
	}
}

type controlEvent struct {
	StreamNextOffset string `json:"streamNextOffset"`
	StreamCursor     string `json:"streamCursor,omitempty"`
	UpToDate         bool   `json:"upToDate,omitempty"`
	StreamClosed     bool   `json:"streamClosed,omitempty"`
}

// serveSSE streams data and control events until the stream closes, the
// client leaves, the server shuts down or sseMaxDuration passes.
func (h *Handler) serveSSE(w http.ResponseWriter, r *http.Request, path string, after *int64, clientCursor string, acc readAccess) {
	sub := h.n.subscribe(path)
	defer sub.release()
	flusher, _ := w.(http.Flusher)
	deadline := time.NewTimer(sseMaxDuration)
	defer deadline.Stop()
	recheck := time.NewTicker(h.cfg.LongPollTimeout)
	defer recheck.Stop()
	var (
		started bool
		base64m bool
		cursor  = clientCursor
		buf     bytes.Buffer
	)
	woken := false
	for {
		g := sub.gen()
		// Only the first query restarts the sliding TTL: a live read counts
		// as one access, and wake-ups stay read-only (and shared).
		var c *chunk
		var err error
		if woken && after != nil {
			c, err = h.wakeRead(r, sub, g, path, *after)
		} else {
			c, err = h.read(r, path, after, readMaxRows, !started)
		}
		woken = false
		if err != nil {
			if !started && !errors.Is(err, errCancelled) {
				h.internalError(w, r, "sse", path, err)
			}
			return
		}
		if !started && refuseEntity(w, r, c, acc) {
			return
		}
		if c.Status != "ok" {
			if !started {
				answerRead(w, r, c)
			}
			return // deleted or expired while streaming
		}
		first := !started
		if first {
			hd := w.Header()
			hd.Set("Content-Type", "text/event-stream")
			hd.Set("Cache-Control", "no-cache")
			hd.Set("X-Accel-Buffering", "no")
			mt, _ := mediaType(c.ContentType)
			if !(strings.HasPrefix(mt, "text/") || isJSON(mt)) {
				base64m = true
				hd.Set("Stream-SSE-Data-Encoding", "base64")
			}
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if after == nil {
			after = new(int64)
			*after = c.TailSeq
		}
		sent := false
		if len(c.Data) > 0 {
			buf.Reset()
			buf.WriteString("event: data\n")
			var payload []byte
			if base64m {
				payload = []byte(base64.StdEncoding.EncodeToString(bytes.Join(c.Data, nil)))
			} else {
				payload = c.body()
			}
			writeDataLines(&buf, payload)
			buf.WriteString("\n")
			if _, err := w.Write(buf.Bytes()); err != nil {
				return
			}
			*after = c.LastSeq
			sent = true
		}
		if sent || first || c.eof() {
			ctl := controlEvent{StreamNextOffset: offset(c.LastSeq), UpToDate: c.upToDate()}
			if c.eof() {
				ctl.StreamClosed = true
				ctl.UpToDate = true
			} else {
				cursor = nextCursor(time.Now(), cursor)
				ctl.StreamCursor = cursor
			}
			b, _ := json.Marshal(ctl)
			if _, err := w.Write([]byte("event: control\ndata:" + string(b) + "\n\n")); err != nil {
				return
			}
		}
		if flusher != nil {
			flusher.Flush()
		}
		if c.eof() {
			return
		}
		if !c.upToDate() {
			continue // more data is already there
		}
		select {
		case <-g.ch:
			woken = true
		case <-recheck.C:
		case <-deadline.C:
			return
		case <-h.n.done:
			return
		case <-r.Context().Done():
			return
		}
	}
}

// writeDataLines writes payload as SSE data lines: one "data:" prefix per
// line, splitting on CR, LF and CRLF, so no payload can end an event early.
func writeDataLines(buf *bytes.Buffer, payload []byte) {
	s := strings.ReplaceAll(string(payload), "\r\n", "\n")
	s = strings.ReplaceAll(s, "\r", "\n")
	for _, line := range strings.Split(s, "\n") {
		// "data:" then the line; a line that starts with a space gets one
		// more, because SSE readers drop the first space after the colon.
		buf.WriteString("data:")
		if strings.HasPrefix(line, " ") {
			buf.WriteByte(' ')
		}
		buf.WriteString(line)
		buf.WriteString("\n")
	}
}
