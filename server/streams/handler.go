package streams

import (
	"cmp"
	"context"

	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/jsontext"
	"github.com/pullwake/pullwake/internal/secret"
)

// NotifyChannel is the PostgreSQL channel the stream functions pg_notify()
// on after an append, close or delete. The payload is a JSON object
// {"tenant_id": ..., "path": ...}; hand it to HandleNotification.
const NotifyChannel = "pullwake_streams"

// Prefix is the URL path under which streams live.
const Prefix = "/v1/stream/"

// Limits. Entity main streams take the API-wide 1 MiB body limit (runner
// output, one event at a time); plain streams take larger bodies for file-
// like payloads. Reads return chunks of at most readMaxRows messages and
// about readMaxBytes (at least one message), marked not up to date so the
// client reads on.
const (
	EntityBodyLimit = 1 << 20
	StreamBodyLimit = 8 << 20
	readMaxRows     = 1000
	readMaxBytes    = 1 << 20
	maxPathLen      = 1024
	// sseMaxDuration bounds one SSE response (the protocol asks for about a
	// minute so that CDNs can collapse reconnecting clients).
	sseMaxDuration = 60 * time.Second
)

// WriteGate authorizes appends to entity main streams from memory only (no DB).
type WriteGate interface {
	// Authorize reports whether token is the live write token for the stream
	// at path, and the epoch of the claim that holds it.
	Authorize(ctx context.Context, path, token string) (epoch int64, ok bool)
}

// Who may write and read streams when an admin token is configured (in dev
// mode, without one, plain streams are open whatever these say; an entity's
// stream always takes appends from its write token only).
const (
	// WriteAuthAdmin: creating, deleting, appending to and closing a plain
	// stream need the admin token (the default).
	WriteAuthAdmin = "admin"
	// WriteAuthNone: appends and closes of plain streams are open; creating
	// and deleting still need the admin token.
	WriteAuthNone = "none"

	// ReadAuthNone: every stream is readable without a token (the default).
	ReadAuthNone = "none"
	// ReadAuthEntity: an entity's stream is readable with the admin token or
	// the stream's live write token; plain streams are open.
	ReadAuthEntity = "entity"
	// ReadAuthAdmin: every read needs the admin token (an entity's stream
	// also takes its live write token).
	ReadAuthAdmin = "admin"
)

// CheckAuthModes validates the write and read modes (for flags).
func CheckAuthModes(write, read string) error {
	switch write {
	case WriteAuthAdmin, WriteAuthNone:
	default:
		return fmt.Errorf("stream write auth %q: want admin or none", write)
	}
	switch read {
	case ReadAuthNone, ReadAuthEntity, ReadAuthAdmin:
	default:
		return fmt.Errorf("stream read auth %q: want none, entity or admin", read)
	}
	return nil
}

// Config configures a Handler.
type Config struct {
	Pool            *pgxpool.Pool
	Tenant          string
	Gate            WriteGate
	AdminToken      string        // "" = dev mode: plain streams are open to everyone
	WriteAuth       string        // WriteAuthAdmin (default) or WriteAuthNone
	ReadAuth        string        // ReadAuthNone (default), ReadAuthEntity or ReadAuthAdmin
	LongPollTimeout time.Duration // default 30s
	// RequestTimeout bounds every database call of a request (default 15s):
	// a request answers 503 instead of hanging on a stuck database. A live
	// read waits up to LongPollTimeout, each of its queries up to this.
	RequestTimeout time.Duration
	// MaxLiveReaders caps concurrent long-poll and SSE readers (default
	// 1000); one more is 503 with Retry-After.
	MaxLiveReaders int
	Metrics        AppendRecorder // optional: counts appended messages and bytes
	// Publisher, when set, tells live readers on other servers about
	// appends, after commit (internal/pgnotify). Without it only this
	// process's readers wake at once; others at their next re-check.
	Publisher Publisher
	Logger    *slog.Logger
	// Writer, when set, runs appends instead of one pw_stream_write call
	// each (group commit: BatchWriter).
	Writer Writer
}

// Publisher sends a NOTIFY after the fact.
type Publisher interface {
	Publish(channel, payload string)
}

// AppendRecorder receives the size of each committed append
// (internal/metrics implements it).
type AppendRecorder interface {
	Appended(n int, bytes int)
}

// Handler serves /v1/stream/... (see the package doc).
type Handler struct {
	cfg  Config
	q    *db.Queries
	n    *notifier
	log  *slog.Logger
	live atomic.Int64 // live readers now
	// adminHash is the admin token's SHA-256: tokens are compared hash to
	// hash, so the comparison's time says nothing of the token's length.
	adminHash []byte
}

// New returns a Handler. Tenant defaults to "default", LongPollTimeout to
// 30s, RequestTimeout to 15s, MaxLiveReaders to 1000, the auth modes to
// WriteAuthAdmin and ReadAuthNone.
func New(cfg Config) *Handler {
	cfg.Tenant = cmp.Or(cfg.Tenant, "default")
	cfg.LongPollTimeout = cmp.Or(cfg.LongPollTimeout, 30*time.Second)
	cfg.RequestTimeout = cmp.Or(cfg.RequestTimeout, 15*time.Second)
	cfg.MaxLiveReaders = cmp.Or(cfg.MaxLiveReaders, 1000)
	cfg.WriteAuth = cmp.Or(cfg.WriteAuth, WriteAuthAdmin)
	cfg.ReadAuth = cmp.Or(cfg.ReadAuth, ReadAuthNone)
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	h := &Handler{cfg: cfg, q: db.New(), n: newNotifier(), log: cfg.Logger}
	if cfg.AdminToken != "" {
		h.adminHash = secret.Hash(cfg.AdminToken)
	}
	return h
}

// Notify wakes the live readers of the stream at path (the full URL path,
// like /v1/stream/chat/42/main) after an append committed: this process's
// at once, other servers' through the publisher.
func (h *Handler) Notify(path string) {
	h.n.notify(path)
	if h.cfg.Publisher != nil {
		b, _ := json.Marshal(struct {
			TenantID string `json:"tenant_id"`
			Path     string `json:"path"`
		}{h.cfg.Tenant, path})
		h.cfg.Publisher.Publish(NotifyChannel, string(b))
	}
}

// HandleNotification takes the payload of a NotifyChannel notification.
// Notifications for other tenants are ignored.
func (h *Handler) HandleNotification(payload string) {
	var p struct {
		TenantID string `json:"tenant_id"`
		Path     string `json:"path"`
	}
	if err := json.Unmarshal([]byte(payload), &p); err != nil || p.Path == "" {
		h.log.Warn("streams: ignoring malformed notification", "payload", payload)
		return
	}
	if p.TenantID != "" && p.TenantID != h.cfg.Tenant {
		return
	}
	h.n.notify(p.Path)
}

// Close releases every waiting live reader (they end their responses).
func (h *Handler) Close() { h.n.close() }

// Entity main stream paths: /v1/stream/{type}/{id}/main. The shape is
// reserved for creation only (a PUT of it is refused, so spawning the entity
// later finds the path free); whether a stream belongs to an entity, for
// appends, closes, reads and deletes, is asked of its row (entity_url).
var entityStreamRe = regexp.MustCompile(`^/v1/stream/[a-z][a-z0-9_-]{0,63}/[A-Za-z0-9._~-]{1,128}/main$`)

// IsEntityStream reports whether path has the reserved shape of an entity's
// main stream.
func IsEntityStream(path string) bool { return entityStreamRe.MatchString(path) }

// textHeaders are the request headers whose values reach PostgreSQL text.
var textHeaders = []string{"Content-Type", "Producer-Id", "Stream-Seq", "Stream-Forked-From"}

const exposedHeaders = "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, " +
	"Stream-TTL, Stream-Expires-At, Stream-Seq, ETag, Location, Content-Type, " +
	"Producer-Epoch, Producer-Seq, Producer-Expected-Seq, Producer-Received-Seq, Stream-SSE-Data-Encoding"

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	hd := w.Header()
	hd.Set("X-Content-Type-Options", "nosniff")
	hd.Set("Cross-Origin-Resource-Policy", "cross-origin")
	hd.Set("Access-Control-Allow-Origin", "*")
	hd.Set("Access-Control-Expose-Headers", exposedHeaders)

	if r.Method == http.MethodOptions {
		hd.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
		allow := r.Header.Get("Access-Control-Request-Headers")
		if allow == "" {
			allow = "Authorization, Content-Type, Stream-TTL, Stream-Expires-At, Stream-Seq, Stream-Closed, " +
				"Producer-Id, Producer-Epoch, Producer-Seq, If-None-Match, electric-claim-token"
		}
		hd.Set("Access-Control-Allow-Headers", allow)
		hd.Set("Access-Control-Max-Age", "86400")
		w.WriteHeader(http.StatusNoContent)
		return
	}

	path := r.URL.Path
	if msg := checkPath(path); msg != "" {
		writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", msg)
		return
	}
	for _, k := range textHeaders {
		for _, v := range r.Header.Values(k) {
			if msg := jsontext.CheckText(v); msg != "" {
				writeError(w, r, http.StatusBadRequest, "INVALID_REQUEST", k+" is "+msg)
				return
			}
		}
	}
	switch r.Method {
	case http.MethodGet:
		h.serveRead(w, r, path)
	case http.MethodHead:
		acc := h.readAccess(r, path)
		if acc == readNone {
			writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "reading streams needs the admin token")
			return
		}
		h.serveHead(w, r, path, acc)
	case http.MethodPost:
		h.serveAppend(w, r, path)
	case http.MethodPut:
		h.serveCreate(w, r, path)
	case http.MethodDelete:
		h.serveDelete(w, r, path)
	default:
		hd.Set("Allow", "GET, HEAD, POST, PUT, DELETE, OPTIONS")
		writeError(w, r, http.StatusMethodNotAllowed, "METHOD_NOT_ALLOWED", "method "+r.Method+" is not allowed on a stream")
	}
}

// checkPath validates a stream path; it returns a message for a bad one.
func checkPath(path string) string {
	rest, ok := strings.CutPrefix(path, Prefix)
	switch {
	case !ok || rest == "":
		return "a stream path is " + Prefix + "{name...}"
	case len(path) > maxPathLen:
		return "stream path longer than 1024 bytes"
	case strings.HasPrefix(rest, "__ds/") || rest == "__ds":
		return "paths under " + Prefix + "__ds are reserved"
	case jsontext.CheckText(path) != "":
		return "stream path is " + jsontext.CheckText(path)
	}
	for _, seg := range strings.Split(rest, "/") {
		if seg == "" || seg == "." || seg == ".." {
			return "stream path segments must be non-empty and not . or .."
		}
	}
	for _, c := range path {
		if c < 0x20 || c == 0x7f {
			return "stream path contains a control character"
		}
	}
	return ""
}

// authorizeAdmin checks the admin token for creating or deleting a plain
// stream; with no admin token configured anyone may.
func (h *Handler) authorizeAdmin(w http.ResponseWriter, r *http.Request) bool {
	if h.isAdmin(r) {
		return true
	}
	writeError(w, r, http.StatusUnauthorized, "UNAUTHORIZED", "creating or deleting a stream needs the admin token")
	return false
}

// isAdmin reports whether the request may act as the admin: it carries the
// admin token, or none is configured (dev mode).
func (h *Handler) isAdmin(r *http.Request) bool {
	if h.cfg.AdminToken == "" {
		return true
	}
	tok, _ := bearer(r)
	return secret.MatchesHash(tok, h.adminHash)
}

// entityWriter reports whether the request carries the live write token of
// the stream at path (memory only), and the epoch of the claim holding it.
func (h *Handler) entityWriter(r *http.Request, path string) (epoch int64, ok bool) {
	tok := writeToken(r)
	if tok == "" || h.cfg.Gate == nil {
		return -1, false
	}
	return h.cfg.Gate.Authorize(r.Context(), path, tok)
}

// readAccess is what a reader may see.
type readAccess int

const (
	readNone  readAccess = iota // nothing: 401 before any query
	readPlain                   // plain streams; an entity's stream is 401
	readAll                     // every stream
)

// readAccess decides from memory what the request may read; whether the
// stream is an entity's comes back with the read itself.
func (h *Handler) readAccess(r *http.Request, path string) readAccess {
	if h.cfg.ReadAuth == ReadAuthNone || h.isAdmin(r) {
		return readAll
	}
	if _, ok := h.entityWriter(r, path); ok {
		return readAll
	}
	if h.cfg.ReadAuth == ReadAuthEntity {
		return readPlain
	}
	return readNone
}

// dbContext bounds one database call of a request by RequestTimeout.
func (h *Handler) dbContext(r *http.Request) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), h.cfg.RequestTimeout)
}

// bearer returns the token of an "Authorization: Bearer <t>" header.
func bearer(r *http.Request) (string, bool) {
	auth := r.Header.Get("Authorization")
	scheme, tok, ok := strings.Cut(auth, " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	tok = strings.TrimSpace(tok)
	return tok, tok != ""
}

// writeToken returns the write token of an append to an entity stream.
func writeToken(r *http.Request) string {
	if tok, ok := bearer(r); ok {
		return tok
	}
	return strings.TrimSpace(r.Header.Get("Electric-Claim-Token"))
}

type errorBody struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

// writeError writes the API's JSON error body (no body for HEAD).
func writeError(w http.ResponseWriter, r *http.Request, status int, code, msg string) {
	hd := w.Header()
	hd.Set("Content-Type", "application/json")
	hd.Set("Cache-Control", "no-store")
	if status == http.StatusUnauthorized {
		hd.Set("WWW-Authenticate", "Bearer")
	}
	w.WriteHeader(status)
	if r.Method == http.MethodHead {
		return
	}
	var b errorBody
	b.Error.Code, b.Error.Message = code, msg
	_ = json.NewEncoder(w).Encode(b)
}

// internalError logs err and answers 500 (or 503 when the request was
// cancelled or the database is unavailable).
func (h *Handler) internalError(w http.ResponseWriter, r *http.Request, op, path string, err error) {
	if r.Context().Err() != nil {
		return // the client is gone
	}
	if db.Unavailable(err) {
		h.log.Warn("streams: database unavailable", "op", op, "path", path, "err", err)
		w.Header().Set("Retry-After", "1")
		writeError(w, r, http.StatusServiceUnavailable, "DATABASE_UNAVAILABLE", "the stream store is unavailable; retry")
		return
	}
	h.log.Error("streams: "+op+" failed", "path", path, "err", err)
	writeError(w, r, http.StatusInternalServerError, "INTERNAL", "internal error")
}
