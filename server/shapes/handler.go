package shapes

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pglogrepl"

	"github.com/pullwake/pullwake/internal/jsontext"
	"github.com/pullwake/pullwake/server/httpx"
)

// Config configures the shape handler.
type Config struct {
	Feed   *Feed
	Logger *slog.Logger
	// LongPollTimeout (20s): a live request with nothing new answers
	// up-to-date after this long.
	LongPollTimeout time.Duration
	// SSETimeout (60s): an SSE answer ends after this long (the client
	// reconnects); KeepAlive (21s): a comment is sent when nothing else was.
	SSETimeout time.Duration
	KeepAlive  time.Duration
	// StartTimeout (20s): how long a request waits for the feed to start.
	StartTimeout time.Duration
	// Private: answers depend on a credential (an admin token is
	// configured), so caches must not share them.
	Private bool
	// MaxMessages (10000): about the most changes one answer carries
	// (whole transactions); the client asks again for the rest.
	MaxMessages int
	// ReadWait (5s): how long a non-live answer waits for the feed to
	// decode the WAL flushed when the request came.
	ReadWait time.Duration
	// MaxLive (1000): live requests (long-poll and SSE) waiting at once;
	// more answer 503 with Retry-After.
	MaxLive int
}

// Handler serves GET /v1/shape.
type Handler struct {
	cfg  Config
	feed *Feed
	log  *slog.Logger
	live atomic.Int64 // live requests now
}

// New returns the shape handler.
func New(cfg Config) *Handler {
	cfg.Logger = cmp.Or(cfg.Logger, slog.Default())
	cfg.LongPollTimeout = cmp.Or(cfg.LongPollTimeout, 20*time.Second)
	cfg.SSETimeout = cmp.Or(cfg.SSETimeout, 60*time.Second)
	cfg.KeepAlive = cmp.Or(cfg.KeepAlive, 21*time.Second)
	cfg.StartTimeout = cmp.Or(cfg.StartTimeout, 20*time.Second)
	cfg.MaxMessages = cmp.Or(cfg.MaxMessages, 10000)
	cfg.ReadWait = cmp.Or(cfg.ReadWait, 5*time.Second)
	cfg.MaxLive = cmp.Or(cfg.MaxLive, 1000)
	return &Handler{cfg: cfg, feed: cfg.Feed, log: cfg.Logger}
}

// Headers every answer exposes to browser scripts (Electric's list).
const exposed = "electric-cursor,electric-handle,electric-offset,electric-schema,electric-up-to-date,electric-internal-known-error,retry-after,etag"

// CORS sets the CORS headers of every shape answer, errors included.
func CORS(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	origin := r.Header.Get("Origin")
	if origin == "" {
		origin = "*"
	} else {
		h.Add("Vary", "Origin")
	}
	h.Set("Access-Control-Allow-Origin", origin)
	h.Set("Access-Control-Expose-Headers", exposed)
	h.Set("Access-Control-Allow-Methods", "GET, HEAD, OPTIONS")
}

// Preflight answers an OPTIONS request.
func Preflight(w http.ResponseWriter, r *http.Request) {
	CORS(w, r)
	allow := r.Header.Get("Access-Control-Request-Headers")
	if allow == "" {
		allow = "Authorization, If-None-Match"
	}
	w.Header().Set("Access-Control-Allow-Headers", allow)
	w.Header().Set("Access-Control-Max-Age", "86400")
	w.WriteHeader(http.StatusNoContent)
}

// shapeDef is a validated request's shape.
type shapeDef struct {
	t       *table
	where   expr
	cols    []int // selected, in table order
	full    bool  // replica=full
	changes bool  // log=changes_only
	key     string
}

type request struct {
	def    shapeDef
	offset string // "-1", "now" or <lsn>_<n>
	lsn    uint64
	handle string
	live   bool
	sse    bool
	cursor string
}

var paramKey = regexp.MustCompile(`^params\[([0-9]+)\]$`)

func bad(field, format string, args ...any) error {
	return &httpx.Error{Status: http.StatusBadRequest, Code: "INVALID_REQUEST",
		Message: field + ": " + fmt.Sprintf(format, args...), Details: map[string]any{"errors": map[string][]string{field: {fmt.Sprintf(format, args...)}}}}
}

func parseRequest(r *http.Request) (*request, error) {
	q := r.URL.Query()
	for k, vs := range q {
		for _, v := range vs {
			if msg := jsontext.CheckText(v); msg != "" {
				return nil, bad(k, "%s", msg)
			}
		}
	}
	get := func(k string) (string, error) {
		if len(q[k]) > 1 {
			return "", bad(k, "given %d times; give it once", len(q[k]))
		}
		return q.Get(k), nil
	}
	req := &request{}
	name, err := get("table")
	if err != nil {
		return nil, err
	}
	if name == "" {
		return nil, bad("table", "missing: name one of %s", strings.Join(TableNames(), ", "))
	}
	t := tables[strings.TrimPrefix(name, "public.")]
	if t == nil {
		return nil, bad("table", "%q is not served: shapes serve %s", name, strings.Join(TableNames(), ", "))
	}
	req.def.t = t
	if req.offset, err = get("offset"); err != nil {
		return nil, err
	}
	switch req.offset {
	case "":
		return nil, bad("offset", "missing: -1 for a snapshot, or the electric-offset of the previous answer")
	case "-1", "now":
	default:
		lsn, _, ok := strings.Cut(req.offset, "_")
		n, err := strconv.ParseUint(lsn, 10, 64)
		if !ok || err != nil {
			return nil, bad("offset", "%q is not an offset: -1, now, or <lsn>_<n> as an answer gave it", req.offset)
		}
		req.lsn = n
	}
	if req.handle, err = get("handle"); err != nil {
		return nil, err
	}
	if req.offset == "-1" || req.offset == "now" {
		req.handle = ""
	} else if req.handle == "" {
		return nil, bad("handle", "can't be blank when offset != -1")
	}
	boolParam := func(k string) (bool, error) {
		v, err := get(k)
		if err != nil || v == "" || v == "false" {
			return false, err
		}
		if v == "true" {
			return true, nil
		}
		return false, bad(k, "%q: want true or false", v)
	}
	if req.live, err = boolParam("live"); err != nil {
		return nil, err
	}
	sse1, err := boolParam("live_sse")
	if err != nil {
		return nil, err
	}
	sse2, err := boolParam("experimental_live_sse")
	if err != nil {
		return nil, err
	}
	req.sse = sse1 || sse2
	if req.live && (req.offset == "-1" || req.offset == "now") {
		return nil, bad("live", "can't be true when offset is %s", req.offset)
	}
	if req.sse && !req.live {
		return nil, bad("live_sse", "can't be true unless live is also true")
	}
	req.cursor = q.Get("cursor")
	switch v, _ := get("replica"); v {
	case "", "default":
	case "full":
		req.def.full = true
	default:
		return nil, bad("replica", "%q: want default or full", v)
	}
	switch v, _ := get("log"); v {
	case "", "full":
	case "changes_only":
		req.def.changes = true
	default:
		return nil, bad("log", "%q: want full or changes_only", v)
	}
	if req.def.cols, err = parseColumns(t, q.Get("columns")); err != nil {
		return nil, err
	}
	params := map[string]string{}
	for k, vs := range q {
		if m := paramKey.FindStringSubmatch(k); m != nil {
			params[m[1]] = vs[0]
		}
	}
	if p := q.Get("params"); p != "" {
		var m map[string]any
		if err := json.Unmarshal([]byte(p), &m); err != nil {
			return nil, bad("params", "must be a JSON object of strings, or given as params[1]=...: %v", err)
		}
		for k, v := range m {
			switch v := v.(type) {
			case string:
				params[k] = v
			case float64, bool:
				params[k] = fmt.Sprint(v)
			default:
				return nil, bad("params", "params[%s] must be a string", k)
			}
		}
	}
	where := q.Get("where")
	if where != "" {
		if req.def.where, err = parseWhere(where, t, params); err != nil {
			return nil, bad("where", "%v", err)
		}
	}
	pk := make([]string, 0, len(params))
	for k := range params {
		pk = append(pk, k+"="+params[k])
	}
	sort.Strings(pk)
	colNames := make([]string, len(req.def.cols))
	for i, c := range req.def.cols {
		colNames[i] = t.Columns[c].Name
	}
	req.def.key = strings.Join([]string{t.Name, where, strings.Join(pk, "\x01"), strings.Join(colNames, ","),
		strconv.FormatBool(req.def.full), strconv.FormatBool(req.def.changes)}, "\x00")
	return req, nil
}

// parseColumns reads columns= (comma-separated, optionally "quoted"); the
// primary key must be among them.
func parseColumns(t *table, s string) ([]int, error) {
	if s == "" {
		all := make([]int, len(t.Columns))
		for i := range all {
			all[i] = i
		}
		return all, nil
	}
	var names []string
	for i := 0; i < len(s); {
		if s[i] == '"' {
			var b strings.Builder
			j := i + 1
			for ; j < len(s); j++ {
				if s[j] == '"' {
					if j+1 < len(s) && s[j+1] == '"' {
						b.WriteByte('"')
						j++
						continue
					}
					break
				}
				b.WriteByte(s[j])
			}
			if j >= len(s) {
				return nil, bad("columns", "unterminated quoted column name")
			}
			names = append(names, b.String())
			i = j + 1
		} else {
			j := strings.IndexByte(s[i:], ',')
			if j < 0 {
				j = len(s) - i
			}
			n := strings.TrimSpace(s[i : i+j])
			if n == "" {
				return nil, bad("columns", "empty column name")
			}
			names = append(names, strings.ToLower(n))
			i += j
		}
		if i < len(s) {
			if s[i] != ',' {
				return nil, bad("columns", "expected a comma after column %q", names[len(names)-1])
			}
			i++
		}
	}
	sel := map[int]bool{}
	for _, n := range names {
		c := t.col(n)
		if c < 0 {
			return nil, bad("columns", "unknown column %q of table %s", n, t.Name)
		}
		sel[c] = true
	}
	for _, c := range t.PK {
		if !sel[c] {
			return nil, bad("columns", "must include the primary key column %q", t.Columns[c].Name)
		}
	}
	out := make([]int, 0, len(sel))
	for c := range sel {
		out = append(out, c)
	}
	slices.Sort(out)
	return out, nil
}

// Serve answers one shape request (behind the route's credential check).
func (h *Handler) Serve(w http.ResponseWriter, r *http.Request) error {
	CORS(w, r)
	if h.cfg.Private {
		w.Header().Add("Vary", "Authorization")
	}
	req, err := parseRequest(r)
	if err != nil {
		w.Header().Set("Cache-Control", "no-store")
		return err
	}
	if req.live {
		defer h.live.Add(-1)
		if n := h.live.Add(1); n > int64(h.cfg.MaxLive) {
			w.Header().Set("Cache-Control", "no-store")
			w.Header().Set("Retry-After", "1")
			return httpx.Errorf(http.StatusServiceUnavailable, "TOO_MANY_READERS",
				"%d live shape requests are waiting already, the most this server holds; retry", h.cfg.MaxLive)
		}
	}
	ctx, cancel := contextWithTimeout(r, h.cfg.StartTimeout)
	ep, err := h.feed.acquire(ctx)
	cancel()
	if err != nil {
		w.Header().Set("Cache-Control", "no-store")
		var wl ErrWALLevel
		if errors.As(err, &wl) {
			return httpx.Errorf(http.StatusServiceUnavailable, "WAL_LEVEL_NOT_LOGICAL", "%s", wl.Error())
		}
		if r.Context().Err() != nil {
			return r.Context().Err()
		}
		w.Header().Set("Retry-After", "5")
		return httpx.Errorf(http.StatusServiceUnavailable, "SHAPES_UNAVAILABLE", "shape sync is unavailable: %v", err)
	}
	ep.readers.Add(1)
	defer func() {
		ep.readers.Add(-1)
		ep.touch()
	}()
	current := ep.handleFor(req.def.key, false)
	if req.handle != "" && req.handle != current {
		return h.mustRefetch(w, current)
	}
	if !req.live {
		if err := h.readYourWrites(r, ep); err != nil {
			return err
		}
	}
	switch {
	case req.offset == "-1":
		return h.serveSnapshot(w, r, ep, req, current)
	case req.offset == "now":
		_, head := ep.snapshotHead()
		return h.answer(w, r, req, current, nil, head, true, true)
	}
	if head := ep.headLSN(); req.lsn > head {
		w.Header().Set("Cache-Control", "no-store")
		return bad("offset", "%s is past the end of this shape's log", req.offset)
	}
	if req.sse {
		return h.serveSSE(w, r, ep, req, current)
	}
	return h.serveLog(w, r, ep, req, current)
}

// readYourWrites waits until the feed has decoded the WAL flushed when
// the request came, so a write that committed before a request is in its
// answer. After ReadWait it answers with what the feed has (a later
// request catches up).
func (h *Handler) readYourWrites(r *http.Request, ep *epoch) error {
	var lsn string
	ctx, cancel := context.WithTimeout(r.Context(), h.cfg.ReadWait)
	defer cancel()
	if err := h.feed.cfg.Pool.QueryRow(ctx, "SELECT pg_current_wal_flush_lsn()::text").Scan(&lsn); err != nil {
		return fmt.Errorf("read the WAL position: %w", err)
	}
	target, err := pglogrepl.ParseLSN(lsn)
	if err != nil {
		return fmt.Errorf("WAL position %q: %w", lsn, err)
	}
	err = ep.waitApplied(r.Context(), uint64(target), h.cfg.ReadWait)
	if errors.Is(err, errBehind) {
		h.log.Warn("shape answered before the feed caught up with the WAL flushed at the request", "lsn", lsn, "applied", pglogrepl.LSN(ep.applied.Load()).String())
		return nil
	}
	return err
}

func (h *Handler) mustRefetch(w http.ResponseWriter, handle string) error {
	hd := w.Header()
	hd.Set("electric-handle", handle)
	hd.Set("Content-Type", "application/json")
	hd.Set("Cache-Control", h.cache("public, max-age=60, must-revalidate"))
	w.WriteHeader(http.StatusConflict)
	_, err := w.Write([]byte(`[{"headers":{"control":"must-refetch"}}]`))
	return ignoreWrite(err)
}

// cache turns Electric's cache-control into pullwake's: private when
// answers depend on a credential.
func (h *Handler) cache(v string) string {
	if h.cfg.Private {
		return strings.ReplaceAll(v, "public", "private")
	}
	return v
}

func (h *Handler) serveSnapshot(w http.ResponseWriter, r *http.Request, ep *epoch, req *request, handle string) error {
	rows, head := ep.snapshot(req.def.t.Name)
	var msgs [][]byte
	if !req.def.changes {
		for _, row := range rows {
			if req.def.matches(row) {
				msgs = append(msgs, req.def.insert(row, nil))
			}
		}
	}
	return h.answer(w, r, req, handle, msgs, head, false, false)
}

// serveLog answers a catch-up read, or a long poll.
func (h *Handler) serveLog(w http.ResponseWriter, r *http.Request, ep *epoch, req *request, handle string) error {
	var timeout <-chan time.Time
	if req.live {
		t := time.NewTimer(h.cfg.LongPollTimeout)
		defer t.Stop()
		timeout = t.C
	}
	lsn := req.lsn
	for {
		txs, head, complete, ok, wake := ep.since(req.def.t.Name, lsn, h.cfg.MaxMessages)
		if !ok {
			return h.mustRefetch(w, ep.handleFor(req.def.key, true))
		}
		msgs := req.def.render(txs)
		if len(msgs) > 0 || !req.live {
			return h.answer(w, r, req, handle, msgs, head, complete, false)
		}
		lsn = head // nothing for this shape up to here
		select {
		case <-wake:
		case <-timeout:
			return h.answer(w, r, req, handle, nil, lsn, true, true)
		case <-ep.done:
			return h.mustRefetch(w, "gone-"+strconv.FormatInt(uniqueMicros(), 10))
		case <-h.feed.ctx.Done():
			return h.answer(w, r, req, handle, nil, lsn, true, true)
		case <-r.Context().Done():
			return nil
		}
	}
}

// answer writes a 200 with msgs, ending with up-to-date when the answer
// reaches the head.
func (h *Handler) answer(w http.ResponseWriter, r *http.Request, req *request, handle string, msgs [][]byte, end uint64, upToDate, noChanges bool) error {
	hd := w.Header()
	offset := strconv.FormatUint(end, 10) + "_0"
	hd.Set("Content-Type", "application/json")
	hd.Set("electric-handle", handle)
	hd.Set("electric-offset", offset)
	if !req.live {
		hd.Set("electric-schema", req.def.schema())
	}
	if upToDate {
		hd.Set("electric-up-to-date", "")
		msgs = append(msgs, upToDateMsg(end))
	}
	switch {
	case req.offset == "-1":
		hd.Set("Cache-Control", h.cache("public, max-age=604800, s-maxage=3600, stale-while-revalidate=2629746"))
	case req.live:
		hd.Set("Cache-Control", h.cache("public, max-age=5, stale-while-revalidate=5"))
		hd.Set("electric-cursor", nextCursor(h.cfg.LongPollTimeout, req.cursor))
	default:
		hd.Set("Cache-Control", h.cache("public, max-age=60, stale-while-revalidate=300"))
	}
	etag := handle + ":" + req.offset + ":" + offset
	if noChanges {
		etag += ":" + strconv.FormatInt(time.Now().UnixNano(), 10)
	}
	hd.Set("ETag", `"`+etag+`"`)
	if inm := r.Header.Get("If-None-Match"); inm != "" {
		for _, v := range strings.Split(inm, ",") {
			if strings.Trim(strings.TrimSpace(v), `"`) == etag {
				w.WriteHeader(http.StatusNotModified)
				return nil
			}
		}
	}
	var b bytes.Buffer
	b.WriteByte('[')
	for i, m := range msgs {
		if i > 0 {
			b.WriteByte(',')
		}
		b.Write(m)
	}
	b.WriteByte(']')
	w.WriteHeader(http.StatusOK)
	if r.Method == http.MethodHead {
		return nil
	}
	_, err := w.Write(b.Bytes())
	return ignoreWrite(err)
}

// serveSSE streams the shape's changes as Server-Sent Events, each batch
// ending with up-to-date, until SSETimeout or the client goes.
func (h *Handler) serveSSE(w http.ResponseWriter, r *http.Request, ep *epoch, req *request, handle string) error {
	fl, ok := w.(http.Flusher)
	if !ok {
		return errors.New("shapes: response writer cannot flush")
	}
	rc := http.NewResponseController(w)
	lsn := req.lsn
	// The first check happens before the headers go, so an unknown offset
	// still answers 409.
	txs, head, complete, ok, wake := ep.since(req.def.t.Name, lsn, h.cfg.MaxMessages)
	if !ok {
		return h.mustRefetch(w, ep.handleFor(req.def.key, true))
	}
	hd := w.Header()
	hd.Set("Content-Type", "text/event-stream")
	hd.Set("Cache-Control", h.cache(fmt.Sprintf("public, max-age=%d", max(1, int(h.cfg.SSETimeout/time.Second)-1))))
	hd.Set("electric-handle", handle)
	hd.Set("electric-offset", strconv.FormatUint(lsn, 10)+"_0")
	hd.Set("electric-cursor", nextCursor(h.cfg.LongPollTimeout, req.cursor))
	hd.Set("X-Accel-Buffering", "no")
	w.WriteHeader(http.StatusOK)
	fl.Flush()
	end := time.NewTimer(h.cfg.SSETimeout)
	defer end.Stop()
	keep := time.NewTicker(h.cfg.KeepAlive)
	defer keep.Stop()
	for {
		if msgs := req.def.render(txs); len(msgs) > 0 {
			var b bytes.Buffer
			for _, m := range msgs {
				b.WriteString("data: ")
				b.Write(m)
				b.WriteString("\n\n")
			}
			if complete {
				b.WriteString("data: ")
				b.Write(upToDateMsg(head))
				b.WriteString("\n\n")
			}
			_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := w.Write(b.Bytes()); err != nil {
				return nil
			}
			fl.Flush()
			keep.Reset(h.cfg.KeepAlive)
		}
		lsn = head
		if !complete {
			txs, head, complete, ok, wake = ep.since(req.def.t.Name, lsn, h.cfg.MaxMessages)
			if !ok {
				return nil
			}
			continue
		}
		select {
		case <-wake:
		case <-keep.C:
			_ = rc.SetWriteDeadline(time.Now().Add(10 * time.Second))
			if _, err := w.Write([]byte(": keep-alive\n\n")); err != nil {
				return nil
			}
			fl.Flush()
			continue
		case <-end.C:
			return nil
		case <-ep.done:
			return nil
		case <-h.feed.ctx.Done():
			return nil
		case <-r.Context().Done():
			return nil
		}
		txs, head, complete, ok, wake = ep.since(req.def.t.Name, lsn, h.cfg.MaxMessages)
		if !ok {
			return nil
		}
	}
}

func ignoreWrite(error) error { return nil }

// cursorEpoch is where live cursors count from (as Electric's do).
var cursorEpoch = time.Date(2024, 10, 9, 0, 0, 0, 0, time.UTC)

// nextCursor is the live cache buster: the end of the current long-poll
// interval in seconds since cursorEpoch, moved on past the client's
// previous cursor so a cached live answer is never served twice.
func nextCursor(timeout time.Duration, prev string) string {
	sec := int64(timeout / time.Second)
	if sec <= 0 {
		return "0"
	}
	since := int64(time.Since(cursorEpoch) / time.Second)
	next := (since + sec - 1) / sec * sec
	if p, err := strconv.ParseInt(prev, 10, 64); err == nil && next <= p {
		next = p + 1 + rand.Int64N(3600)
	}
	return strconv.FormatInt(next, 10)
}

func upToDateMsg(lsn uint64) []byte {
	return []byte(`{"headers":{"control":"up-to-date","global_last_seen_lsn":"` + strconv.FormatUint(lsn, 10) + `"}}`)
}

func (ep *epoch) headLSN() uint64 {
	ep.mu.RLock()
	defer ep.mu.RUnlock()
	return ep.head
}

func (ep *epoch) snapshotHead() (struct{}, uint64) { return struct{}{}, ep.headLSN() }
