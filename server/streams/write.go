package streams

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/pullwake/pullwake/db"
)

// maxSafeInt is 2^53-1: producer epochs and seqs stay exact in JavaScript.
const maxSafeInt = 1<<53 - 1

// maxProducerID bounds Producer-Id: it is part of stream_producers' primary
// key, and a btree entry must fit in a third of a page (a 5000-byte id was
// a 500 "index row size exceeds maximum").
const maxProducerID = 1024

var ttlRe = regexp.MustCompile(`^(0|[1-9][0-9]{0,17})$`)

// TTL and expiry ranges accepted at creation (the streams table CHECKs
// them too): a TTL of 1 second to 10 years of 365 days; an expiry after now
// and before the year 10000. Beyond them, timestamp arithmetic overflows.
const (
	minTTLSeconds = 1
	maxTTLSeconds = 10 * 365 * 24 * 3600
)

var maxExpiresAt = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

// offset renders a seq as the protocol offset pw_offset() makes.
func offset(seq int64) string { return leftPad16(strconv.FormatInt(seq, 10)) }

func leftPad16(s string) string {
	if len(s) >= 16 {
		return s
	}
	return strings.Repeat("0", 16-len(s)) + s
}

// mediaType reduces a Content-Type to the comparable media type (as
// pw_media_type does); ok is false when it does not parse.
func mediaType(ct string) (string, bool) {
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return "", false
	}
	return strings.ToLower(mt), true
}

func isJSON(mt string) bool { return mt == "application/json" }

// headerTrue reports whether a presence header is exactly "true"
// (case-insensitive); any other value counts as absent.
func headerTrue(r *http.Request, name string) bool {
	return strings.EqualFold(strings.TrimSpace(r.Header.Get(name)), "true")
}

// readBody reads the request body up to limit; tooLarge reports an overrun.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) (body []byte, tooLarge bool, err error) {
	if r.ContentLength > limit {
		return nil, true, nil
	}
	body, err = io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, true, nil
	}
	return body, false, err
}

// splitMessages turns a request body into stored messages: a JSON body is
// validated and a top-level array flattened one level; any other body is one
// opaque message. emptyArray reports a body of "[]".
func splitMessages(body []byte, jsonMode bool) (msgs [][]byte, emptyArray bool, err error) {
	if len(body) == 0 {
		return nil, false, nil
	}
	if !jsonMode {
		return [][]byte{body}, false, nil
	}
	if !json.Valid(body) {
		return nil, false, errors.New("the body is not valid JSON")
	}
	trimmed := bytes.TrimSpace(body)
	if len(trimmed) > 0 && trimmed[0] == '[' {
		var elems []json.RawMessage
		if err := json.Unmarshal(trimmed, &elems); err != nil {
			return nil, false, errors.New("the body is not valid JSON")
		}
		if len(elems) == 0 {
			return nil, true, nil
		}
		msgs = make([][]byte, len(elems))
		for i, e := range elems {
			msgs[i] = []byte(e)
		}
		return msgs, false, nil
	}
	return [][]byte{trimmed}, false, nil
}

func setOffsetHeaders(w http.ResponseWriter, tail int64, closed bool) {
	w.Header().Set("Stream-Next-Offset", offset(tail))
	if closed {
		w.Header().Set("Stream-Closed", "true")
	}
}

// serveCreate handles PUT: create a stream, or confirm an identical one.
func (h *Handler) serveCreate(w http.ResponseWriter, r *http.Request, path string) {
	if IsEntityStream(path) {
		writeError(w, r, http.StatusForbidden, "FORBIDDEN", "an entity's main stream is created with its entity and cannot be replaced")
		return
	}
	if !h.authorizeAdmin(w, r) {
		return
	}
	if forkHeaders(r) {
		h.serveFork(w, r, path)
		return
	}
	ct := r.Header.Get("Content-Type")
	if strings.TrimSpace(ct) == "" {
		ct = "application/octet-stream"
	}
	mt, ok := mediaType(ct)
	if !ok {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "Content-Type is not a valid media type")
		return
	}
	ttl, expires, msg := parseLifetime(r)
	if msg != "" {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", msg)
		return
	}
	closed := headerTrue(r, "Stream-Closed")
	body, ok := readCreateBody(w, r)
	if !ok {
		return
	}
	msgs, _, err := splitMessages(body, isJSON(mt))
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", err.Error())
		return
	}
	if msgs == nil {
		msgs = [][]byte{}
	}
	ctx, cancel := h.dbContext(r)
	defer cancel()
	row, err := h.q.StreamCreate(ctx, h.cfg.Pool, db.StreamCreateParams{
		TenantID: h.cfg.Tenant, Path: path, ContentType: ct, TtlSeconds: ttl, ExpiresAt: expires,
		Closed: closed, Data: msgs,
	})
	if err != nil {
		h.internalError(w, r, "create", path, err)
		return
	}
	if !h.answerCreate(w, r, path, row.Status, row.ContentType, row.TailSeq, row.Closed) {
		writeError(w, r, http.StatusConflict, "STREAM_CONFLICT", "a stream exists at this path with a different configuration")
	}
}

// readCreateBody reads a create's body (plain or fork) up to
// StreamBodyLimit, answering 413 or 400 itself when it cannot.
func readCreateBody(w http.ResponseWriter, r *http.Request) ([]byte, bool) {
	body, tooLarge, err := readBody(w, r, StreamBodyLimit)
	if tooLarge {
		writeError(w, r, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE", "the body exceeds the stream limit of 8 MiB")
		return nil, false
	}
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "reading the body: "+err.Error())
		return nil, false
	}
	return body, true
}

// answerCreate writes the answer of a create (plain or fork) whose status is
// one both share, and reports whether it did: created (201, Location, live
// readers woken), exists (200: the same stream was created before), or
// forbidden (an entity's main stream).
func (h *Handler) answerCreate(w http.ResponseWriter, r *http.Request, path, status, contentType string, tail int64, closed bool) bool {
	switch status {
	case "created":
		w.Header().Set("Location", requestURL(r))
		w.Header().Set("Content-Type", contentType)
		setOffsetHeaders(w, tail, closed)
		w.WriteHeader(http.StatusCreated)
		h.n.notify(path)
	case "exists":
		w.Header().Set("Content-Type", contentType)
		setOffsetHeaders(w, tail, closed)
		w.WriteHeader(http.StatusOK)
	case "forbidden":
		writeError(w, r, http.StatusForbidden, "FORBIDDEN", "an entity's main stream cannot be replaced")
	default:
		return false
	}
	return true
}

// parseLifetime reads Stream-TTL and Stream-Expires-At of a PUT; msg
// describes a bad value.
func parseLifetime(r *http.Request) (ttl *int64, expires *time.Time, msg string) {
	if v := r.Header.Get("Stream-TTL"); v != "" {
		if !ttlRe.MatchString(v) {
			return nil, nil, "Stream-TTL must be a non-negative integer of seconds without sign or leading zeros"
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < minTTLSeconds || n > maxTTLSeconds {
			return nil, nil, fmt.Sprintf("Stream-TTL must be from %d to %d seconds (10 years)", minTTLSeconds, maxTTLSeconds)
		}
		ttl = &n
	}
	if v := r.Header.Get("Stream-Expires-At"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			return nil, nil, "Stream-Expires-At must be an RFC 3339 timestamp"
		}
		if !t.After(time.Now()) || t.After(maxExpiresAt) {
			return nil, nil, "Stream-Expires-At must lie in the future and before the year 10000"
		}
		expires = &t
	}
	if ttl != nil && expires != nil {
		return nil, nil, "give Stream-TTL or Stream-Expires-At, not both"
	}
	return ttl, expires, ""
}

func requestURL(r *http.Request) string {
	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	return scheme + "://" + r.Host + r.URL.EscapedPath()
}

// producer holds the idempotent producer headers of an append.
type producer struct {
	id         string
	epoch, seq int64
}

// parseProducer reads Producer-Id/-Epoch/-Seq: all or none.
func parseProducer(r *http.Request) (*producer, string) {
	id, hasID := r.Header["Producer-Id"]
	ep, hasEp := r.Header["Producer-Epoch"]
	sq, hasSeq := r.Header["Producer-Seq"]
	if !hasID && !hasEp && !hasSeq {
		return nil, ""
	}
	if !hasID || !hasEp || !hasSeq {
		return nil, "Producer-Id, Producer-Epoch and Producer-Seq go together"
	}
	p := &producer{id: strings.TrimSpace(id[0])}
	if p.id == "" {
		return nil, "Producer-Id must not be empty"
	}
	if len(p.id) > maxProducerID {
		return nil, "Producer-Id must be at most " + strconv.Itoa(maxProducerID) + " bytes"
	}
	var ok bool
	if p.epoch, ok = parseSafeInt(ep[0]); !ok {
		return nil, "Producer-Epoch must be an integer from 0 to 2^53-1"
	}
	if p.seq, ok = parseSafeInt(sq[0]); !ok {
		return nil, "Producer-Seq must be an integer from 0 to 2^53-1"
	}
	return p, ""
}

func parseSafeInt(s string) (int64, bool) {
	s = strings.TrimSpace(s)
	if s == "" || len(s) > 16 {
		return 0, false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n <= maxSafeInt
}

// serveAppend handles POST: append, close, or both.
func (h *Handler) serveAppend(w http.ResponseWriter, r *http.Request, path string) {
	limit := int64(StreamBodyLimit)
	// The write token is checked in memory; whether the stream is an
	// entity's (which only its write token may append to, and nobody may
	// close) is decided by pw_stream_write_as from the stream row, in the
	// append's own round trip.
	claimEpoch, writer := h.entityWriter(r, path)
	if writer {
		limit = EntityBodyLimit
	} else if h.cfg.WriteAuth == WriteAuthAdmin && !h.isAdmin(r) {
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED",
			"appending to a stream needs the admin token, or the write token of an entity's stream")
		return
	}
	prod, msg := parseProducer(r)
	if msg != "" {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", msg)
		return
	}
	closeReq := headerTrue(r, "Stream-Closed")
	var streamSeq *string
	if v, ok := r.Header["Stream-Seq"]; ok {
		s := v[0]
		if s == "" {
			writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "Stream-Seq must not be empty")
			return
		}
		streamSeq = &s
	}
	body, tooLarge, err := readBody(w, r, limit)
	if tooLarge {
		writeError(w, r, http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE",
			"the body exceeds the append limit of "+strconv.FormatInt(limit>>20, 10)+" MiB")
		return
	}
	if err != nil {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "reading the body: "+err.Error())
		return
	}
	if len(body) == 0 && !closeReq {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "an append needs a non-empty body (or Stream-Closed: true)")
		return
	}
	var reqType *string
	msgs := [][]byte{}
	if len(body) > 0 {
		ct := r.Header.Get("Content-Type")
		if strings.TrimSpace(ct) == "" {
			writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "an append with a body needs a Content-Type")
			return
		}
		mt, ok := mediaType(ct)
		if !ok {
			writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "Content-Type is not a valid media type")
			return
		}
		reqType = &mt
		var empty bool
		msgs, empty, err = splitMessages(body, isJSON(mt))
		if err != nil {
			writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", err.Error())
			return
		}
		if empty {
			writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "an empty JSON array appends nothing")
			return
		}
	}
	if writer && closeReq {
		writeError(w, r, http.StatusForbidden, "FORBIDDEN", "an entity's main stream cannot be closed: the entity owns it")
		return
	}
	if prod != nil && writer && prod.epoch > claimEpoch {
		// A producer epoch ahead of the claim's would fence every later
		// claim's producer out of the entity's stream.
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST",
			"Producer-Epoch on an entity's stream must not exceed the epoch of the claim that holds the write token ("+
				strconv.FormatInt(claimEpoch, 10)+")")
		return
	}
	if prod != nil && writer && prod.epoch < claimEpoch {
		w.Header().Set("Producer-Epoch", strconv.FormatInt(claimEpoch, 10))
		writeError(w, r, http.StatusForbidden, "STALE_PRODUCER_EPOCH",
			"the producer epoch is older than the epoch of the claim that holds the write token")
		return
	}
	arg := db.StreamWriteAsParams{
		EntityWriter: writer, TenantID: h.cfg.Tenant, Path: path, ContentType: reqType, Data: msgs,
		Close: closeReq, StreamSeq: streamSeq,
	}
	if prod != nil {
		arg.ProducerID, arg.ProducerEpoch, arg.ProducerSeq = &prod.id, &prod.epoch, &prod.seq
	}
	ctx, cancel := h.dbContext(r)
	defer cancel()
	row, err := h.write(ctx, arg)
	if err != nil {
		h.internalError(w, r, "append", path, err)
		return
	}
	hd := w.Header()
	switch row.Status {
	case "appended":
		h.Notify(path)
		if h.cfg.Metrics != nil && len(msgs) > 0 {
			h.cfg.Metrics.Appended(len(msgs), len(body))
		}
		setOffsetHeaders(w, row.TailSeq, row.Closed)
		if prod != nil {
			hd.Set("Producer-Epoch", strconv.FormatInt(prod.epoch, 10))
			hd.Set("Producer-Seq", strconv.FormatInt(prod.seq, 10))
			if len(msgs) > 0 {
				w.WriteHeader(http.StatusOK) // new data from a producer
				return
			}
		}
		w.WriteHeader(http.StatusNoContent)
	case "duplicate":
		setOffsetHeaders(w, row.TailSeq, row.Closed)
		hd.Set("Producer-Epoch", strconv.FormatInt(row.ProducerEpoch, 10))
		hd.Set("Producer-Seq", strconv.FormatInt(row.ProducerSeq, 10))
		w.WriteHeader(http.StatusNoContent)
	case "closed_noop":
		setOffsetHeaders(w, row.TailSeq, true)
		w.WriteHeader(http.StatusNoContent)
	case "closed":
		setOffsetHeaders(w, row.TailSeq, true)
		writeError(w, r, http.StatusConflict, "STREAM_CLOSED", "the stream is closed")
	case "not_found":
		writeError(w, r, http.StatusNotFound, "STREAM_NOT_FOUND", "no stream at this path")
	case "unauthorized":
		writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "appending to an entity's main stream needs its write token")
	case "forbidden":
		writeError(w, r, http.StatusForbidden, "FORBIDDEN", "an entity's main stream cannot be closed: the entity owns it")
	case "gone":
		writeGone(w, r)
	case "entity_stopped":
		writeError(w, r, http.StatusConflict, "ENTITY_STOPPED", "the entity that owns this stream is stopped")
	case "content_type":
		writeError(w, r, http.StatusConflict, "CONTENT_TYPE_MISMATCH", "the Content-Type differs from the stream's")
	case "stream_seq":
		writeError(w, r, http.StatusConflict, "STREAM_SEQ_CONFLICT", "Stream-Seq must be greater than the last one appended")
	case "stale_epoch":
		hd.Set("Producer-Epoch", strconv.FormatInt(row.ProducerEpoch, 10))
		writeError(w, r, http.StatusForbidden, "STALE_PRODUCER_EPOCH", "a newer producer epoch exists")
	case "bad_epoch_seq":
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", "a new producer epoch must start at Producer-Seq 0")
	case "seq_gap":
		hd.Set("Producer-Expected-Seq", strconv.FormatInt(row.ProducerSeq, 10))
		hd.Set("Producer-Received-Seq", strconv.FormatInt(prod.seq, 10))
		writeError(w, r, http.StatusConflict, "PRODUCER_SEQ_GAP", "Producer-Seq skips ahead of the expected seq")
	default:
		h.internalError(w, r, "append", path, errors.New("unknown status "+row.Status))
	}
}

// serveDelete handles DELETE.
func (h *Handler) serveDelete(w http.ResponseWriter, r *http.Request, path string) {
	if !h.authorizeAdmin(w, r) {
		return
	}
	ctx, cancel := h.dbContext(r)
	defer cancel()
	status, err := h.q.StreamDelete(ctx, h.cfg.Pool, db.StreamDeleteParams{TenantID: h.cfg.Tenant, Path: path})
	if err != nil {
		h.internalError(w, r, "delete", path, err)
		return
	}
	switch status {
	case "deleted":
		h.n.notify(path)
		w.WriteHeader(http.StatusNoContent)
	case "forbidden":
		writeError(w, r, http.StatusForbidden, "FORBIDDEN", "an entity's main stream is deleted with its entity only")
	case "gone":
		writeGone(w, r)
	default:
		writeError(w, r, http.StatusNotFound, "STREAM_NOT_FOUND", "no stream at this path")
	}
}
