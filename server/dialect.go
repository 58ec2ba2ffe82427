package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/httpx"
)

// entityEncoding is how one route prefix speaks about entities: the shape
// of an entity, the status of a send, the error codes, who a send is from.
// pullwakeEncoding is SPEC §4 (/entities); electricEncoding is Electric's
// agents-server dialect (/_electric/entities).
type entityEncoding interface {
	entity(e db.GetEntityRow) any
	// status is the entity's status in this encoding's names.
	status(e db.GetEntityRow) string
	statuses() []string
	knowsStatus(s string) bool
	sentStatus() int
	// sender is the inbox "from" of a send (NULL: the database's default).
	sender(r *http.Request, b sendBody) (*string, error)
	// spawnExtras: tags, parent, args and initialMessage on spawn; type
	// and parent filters on the list.
	spawnExtras() bool
	// agentTokens: a send may be authorized by the sending entity's write token.
	agentTokens() bool
	stopSignal() string
	mapError(s *Server, r *http.Request, err error) error
}

// entityValidator checks what a spawn or a send carries against the
// entity type's schemas. ValidateSpawn gets the spawn's args (nil when
// absent) and whether the type must be registered; ValidateSend the
// message type ("" when absent) and payload. The handlers encode its
// errors for their prefix (entitytypes.Refusal). The default accepts
// everything; the server's is the entity types' service
// (server/entitytypes).
type entityValidator interface {
	ValidateSpawn(ctx context.Context, entityType string, args json.RawMessage, requireType bool) error
	ValidateSend(ctx context.Context, entityType, msgType string, payload json.RawMessage) error
}

type acceptAll struct{}

func (acceptAll) ValidateSpawn(context.Context, string, json.RawMessage, bool) error { return nil }
func (acceptAll) ValidateSend(context.Context, string, string, json.RawMessage) error {
	return nil
}

// ---- pullwake's encoding (SPEC §4) ----

type pullwakeEncoding struct{}

func (pullwakeEncoding) entity(e db.GetEntityRow) any    { return EntityFromRow(e) }
func (pullwakeEncoding) status(e db.GetEntityRow) string { return e.Status }
func (pullwakeEncoding) statuses() []string {
	return []string{"idle", "running", "stopping", "stopped"}
}
func (pullwakeEncoding) knowsStatus(s string) bool                            { return entityStatuses[s] }
func (pullwakeEncoding) sentStatus() int                                      { return http.StatusAccepted }
func (pullwakeEncoding) spawnExtras() bool                                    { return false }
func (pullwakeEncoding) agentTokens() bool                                    { return false }
func (pullwakeEncoding) stopSignal() string                                   { return "SIGTERM" }
func (pullwakeEncoding) mapError(_ *Server, _ *http.Request, err error) error { return err }

// sender: "from", else from_agent, else from_principal, else the
// database's default ("admin").
func (pullwakeEncoding) sender(_ *http.Request, b sendBody) (*string, error) {
	switch {
	case b.From != nil:
		return b.From, nil
	case b.FromAgent != nil:
		return b.FromAgent, nil
	}
	return b.FromPrincipal, nil
}

// ---- Electric's encoding ----

type electricEncoding struct{}

// electricEntityJSON is an entity as Electric's agents server answers it,
// followed by pullwake's own detail under its own names.
type electricEntityJSON struct {
	URL       string            `json:"url"`
	Type      string            `json:"type"`
	Status    string            `json:"status"`
	Streams   map[string]string `json:"streams"`
	Tags      json.RawMessage   `json:"tags"`
	Parent    *string           `json:"parent,omitempty"`
	CreatedAt int64             `json:"created_at"`
	UpdatedAt int64             `json:"updated_at"`

	MainStream string       `json:"main_stream"`
	RunnerID   *string      `json:"runner_id"`
	Dispatch   DispatchJSON `json:"dispatch"`
}

// electricMutationJSON is the answer of a spawn or a tag change under
// Electric's prefix: the entity, and the 32-bit id of the transaction that
// changed it. Electric's UI waits until a change of the entities shape
// carries that id in headers.txids before it reports the action done.
type electricMutationJSON struct {
	electricEntityJSON
	TxID int64 `json:"txid"`
}

// withTxID runs fn, one lifecycle function call, and reads the id of its
// transaction in that transaction (Electric's answers carry it).
func (s *Server) withTxID(ctx context.Context, fn func(db.DBTX) error) (int64, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("begin: %w", err)
	}
	defer func() { _ = tx.Rollback(ctx) }() // after Commit, a no-op
	if err := fn(tx); err != nil {
		return 0, err
	}
	txid, err := s.q.CurrentTxID(ctx, tx)
	if err != nil {
		return 0, fmt.Errorf("transaction id: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("commit: %w", err)
	}
	return txid, nil
}

// electricPrincipal is the inbox sender of a send made with the admin
// token and no Electric-Principal header.
const electricPrincipal = "/principal/system%3Aadmin"

var electricStatuses = []string{"idle", "running", "stopping", "stopped", "killed"}

func (electricEncoding) entity(e db.GetEntityRow) any { return electricEntity(e) }

// electricEntity is an entity as Electric's agents server answers it.
func electricEntity(e db.GetEntityRow) electricEntityJSON {
	tags := e.Tags
	if len(tags) == 0 {
		tags = json.RawMessage("{}")
	}
	return electricEntityJSON{
		URL: e.Url, Type: entityType(e.Url), Status: electricEncoding{}.status(e),
		Streams: map[string]string{"main": e.Url + "/main"}, Tags: tags, Parent: e.Parent,
		CreatedAt: e.CreatedAt.UnixMilli(), UpdatedAt: e.UpdatedAt.UnixMilli(),
		MainStream: e.MainStream, RunnerID: e.RunnerID, Dispatch: dispatchFromRow(e),
	}
}

// status: a stopped entity is "killed" when SIGKILL stopped it (Electric's
// DELETE and signal), "stopped" otherwise (SIGTERM, pullwake's stop).
func (electricEncoding) status(e db.GetEntityRow) string {
	if e.Status == "stopped" && e.StopSignal != nil && *e.StopSignal == "SIGKILL" {
		return "killed"
	}
	return e.Status
}

func (electricEncoding) statuses() []string        { return electricStatuses }
func (electricEncoding) knowsStatus(s string) bool { return slices.Contains(electricStatuses, s) }
func (electricEncoding) sentStatus() int           { return http.StatusOK }
func (electricEncoding) spawnExtras() bool         { return true }
func (electricEncoding) agentTokens() bool         { return true }
func (electricEncoding) stopSignal() string        { return "SIGKILL" }

// sender: the entity named by from_agent (a handler's send, or the admin
// naming one), else the principal: the Electric-Principal header ("kind:id"
// or "/principal/..."), else the body's from_principal or from (a
// principal the admin names), else the admin principal. With the header, a
// from or from_principal must name the same principal.
func (electricEncoding) sender(r *http.Request, b sendBody) (*string, error) {
	var p string
	if h := r.Header.Get("electric-principal"); h != "" {
		var err error
		if p, err = principalURL(h); err != nil {
			return nil, httpx.BadRequest("electric-principal: %v", err)
		}
	}
	for _, f := range []*string{b.FromPrincipal, b.From} {
		if f == nil {
			continue
		}
		named, err := principalURL(*f)
		switch {
		case err != nil:
			return nil, httpx.BadRequest("from: %v", err)
		case p == "":
			p = named
		case named != p:
			return nil, httpx.BadRequest("from %q must be the sending principal %s", *f, p)
		}
	}
	if b.FromAgent != nil {
		if _, _, err := splitEntityURL(*b.FromAgent); err != nil {
			return nil, httpx.BadRequest("from_agent: %v", err)
		}
		return b.FromAgent, nil
	}
	if p == "" {
		p = electricPrincipal
	}
	return &p, nil
}

// principalURL canonicalizes "kind:id" or "/principal/<kind:id, escaped>".
func principalURL(v string) (string, error) {
	if rest, ok := strings.CutPrefix(v, "/principal/"); ok {
		dec, err := url.PathUnescape(rest)
		if err != nil {
			return "", fmt.Errorf("%q is not a principal URL", v)
		}
		v = dec
	}
	kind, id, ok := strings.Cut(v, ":")
	if !ok || !slices.Contains([]string{"user", "agent", "service", "system"}, kind) {
		return "", fmt.Errorf("%q must be kind:id with kind user, agent, service or system", v)
	}
	if id == "" || strings.Contains(id, "/") || len(id) > 256 {
		return "", fmt.Errorf("%q: the id must be 1 to 256 bytes without /", v)
	}
	return "/principal/" + strings.ReplaceAll(url.PathEscape(kind+":"+id), ":", "%3A"), nil
}

// mapError renames pullwake's codes as Electric's suite expects them.
func (electricEncoding) mapError(s *Server, r *http.Request, err error) error {
	code, msg := "", ""
	var ae *httpx.Error
	if de := db.DomainError(err); de != nil {
		code, msg = de.Code, de.Message
	} else if errors.As(err, &ae) {
		code, msg = ae.Code, ae.Message
	}
	switch code {
	case "ENTITY_EXISTS":
		return httpx.Errorf(http.StatusConflict, "DUPLICATE_URL", "%s", msg)
	case "ENTITY_STOPPED":
		return httpx.Errorf(http.StatusConflict, "NOT_RUNNING", "%s", msg)
	case "ENTITY_NOT_FOUND":
		// The route's entity is missing (a spawn's is its parent): name an
		// unregistered type when that is why.
		typ := r.PathValue("type")
		if r.Method != http.MethodPut && typ != "" {
			_, terr := s.q.GetEntityType(r.Context(), s.pool, db.GetEntityTypeParams{TenantID: s.cfg.Tenant, Name: typ})
			if errors.Is(terr, db.ErrNotFound) {
				return httpx.Errorf(http.StatusNotFound, "UNKNOWN_ENTITY_TYPE", "entity type %q not found", typ)
			}
		}
		return httpx.Errorf(http.StatusNotFound, "NOT_FOUND", "%s", msg)
	}
	return err
}

// ---- input checks ----

// splitEntityURL checks /{type}/{id}.
func splitEntityURL(u string) (string, string, error) {
	typ, id, ok := strings.Cut(strings.TrimPrefix(u, "/"), "/")
	if !ok || !strings.HasPrefix(u, "/") || !httpx.EntityTypeRE.MatchString(typ) || !httpx.IDRE.MatchString(id) {
		return "", "", fmt.Errorf("%q is not an entity URL /{type}/{id}", u)
	}
	return typ, id, nil
}

const (
	maxTagKey   = 256
	maxTagValue = 4096
	maxTags     = 64
)

func checkTagKey(k string) error {
	if k == "" || len(k) > maxTagKey {
		return httpx.BadRequest("a tag key must be 1 to %d bytes", maxTagKey)
	}
	return nil
}

// checkTags returns tags (a JSON object of strings) or nil when absent.
func checkTags(raw json.RawMessage) (json.RawMessage, error) {
	t := bytes.TrimSpace(raw)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	var tags map[string]any
	if err := json.Unmarshal(t, &tags); err != nil {
		return nil, httpx.BadRequest("tags must be an object of strings")
	}
	if len(tags) > maxTags {
		return nil, httpx.BadRequest("at most %d tags", maxTags)
	}
	for k, v := range tags {
		if err := checkTagKey(k); err != nil {
			return nil, err
		}
		s, ok := v.(string)
		if !ok {
			return nil, httpx.BadRequest("tag %q: the value must be a string", k)
		}
		if len(s) > maxTagValue {
			return nil, httpx.BadRequest("tag %q: the value must be at most %d bytes", k, maxTagValue)
		}
	}
	return t, nil
}

// jsonValue returns v, or nil when it is absent or null.
func jsonValue(v json.RawMessage) (json.RawMessage, error) {
	t := bytes.TrimSpace(v)
	if len(t) == 0 || string(t) == "null" {
		return nil, nil
	}
	if !json.Valid(t) {
		return nil, errors.New("not JSON")
	}
	return t, nil
}

// ---- Electric-only routes ----

// requireAdminOrEntity accepts the admin token or the live write token of
// the route's entity (a handler of Electric's runtime tagging itself).
func (s *Server) requireAdminOrEntity(r *http.Request, url string) error {
	err := s.requireAdmin(r)
	if err != nil && s.holdsWriteToken(r, url) {
		return nil
	}
	return err
}

// setTag serves POST /_electric/entities/{type}/{id}/tags/{key} {"value"}
// and DELETE on the same path: set_entity_tag, which writes the tag and
// its event on the main stream in one transaction. 200 with the entity
// and the transaction's id (txid).
func (s *Server) setTag(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	url, err := httpx.EntityURL(r)
	if err != nil {
		return err
	}
	if err := s.requireAdminOrEntity(r, url); err != nil {
		return err
	}
	key := r.PathValue("key")
	if err := checkTagKey(key); err != nil {
		return err
	}
	p := db.SetEntityTagParams{Url: url, Key: key, TenantID: s.cfg.Tenant}
	if r.Method != http.MethodDelete {
		var body struct {
			Value *string `json:"value"`
		}
		if err := httpx.Decode(w, r, &body); err != nil {
			return err
		}
		if body.Value == nil {
			return httpx.BadRequest("value is required")
		}
		if len(*body.Value) > maxTagValue {
			return httpx.BadRequest("value must be at most %d bytes", maxTagValue)
		}
		p.Value = body.Value
	}
	txid, err := s.withTxID(r.Context(), func(tx db.DBTX) error {
		_, err := s.q.SetEntityTag(r.Context(), tx, p)
		return err
	})
	if err != nil {
		return err
	}
	s.afterSend(url)
	e, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	s.log.Info("entity tag changed", "entity_url", url, "tag", key, "removed", p.Value == nil)
	httpx.WriteJSON(w, http.StatusOK, electricMutationJSON{electricEntity(e), txid})
	return nil
}

var electricSignals = []string{"SIGINT", "SIGHUP", "SIGTERM", "SIGKILL", "SIGSTOP", "SIGCONT", "SIGUSR"}

// signalEntity serves POST /_electric/entities/{type}/{id}/signal
// {"signal", "reason"?}: SIGKILL and SIGTERM stop the entity (kill_entity);
// Electric's other signals are refused (422 INVALID_SIGNAL), as is any
// signal to a stopped entity (409 INVALID_SIGNAL).
func (s *Server) signalEntity(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	url, err := httpx.EntityURL(r)
	if err != nil {
		return err
	}
	var body struct {
		Signal *string `json:"signal"`
		Reason *string `json:"reason"`
	}
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	if body.Signal == nil || !slices.Contains(electricSignals, *body.Signal) {
		return httpx.BadRequest("signal must be one of %s", strings.Join(electricSignals, ", "))
	}
	if *body.Signal != "SIGKILL" && *body.Signal != "SIGTERM" {
		return httpx.Errorf(http.StatusUnprocessableEntity, "INVALID_SIGNAL", "signal %s is not handled: pullwake handles SIGKILL and SIGTERM", *body.Signal)
	}
	if body.Reason != nil && len(*body.Reason) > maxTagValue {
		return httpx.BadRequest("reason must be at most %d bytes", maxTagValue)
	}
	before, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	if before.Status == "stopped" {
		return httpx.Errorf(http.StatusConflict, "INVALID_SIGNAL", "cannot signal a %s entity", enc.status(before))
	}
	killed, err := s.q.KillEntity(r.Context(), s.pool, db.KillEntityParams{
		Url: url, Signal: *body.Signal, Reason: body.Reason, TenantID: s.cfg.Tenant})
	if err != nil {
		return err
	}
	s.afterSend(url)
	after, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	s.log.Info("entity signalled", "entity_url", url, "signal", *body.Signal, "entity_status", after.Status)
	httpx.WriteJSON(w, http.StatusOK, map[string]any{
		"url": url, "signal": *body.Signal, "previous_state": enc.status(before),
		"new_state": enc.status(after), "created_at": time.Now().UnixMilli(), "txid": killed.Txid,
	})
	return nil
}

// ---- entity streams at the root ----

// electricOffsetStart is Electric's spelling of the start of a stream.
const electricOffsetStart = "0000000000000000_0000000000000000"

// rootStreamPrefixes are the root paths of the API itself: the streams
// served at the root never shadow them.
var rootStreamPrefixes = []string{"/_electric/", "/__ds/", "/v1/", "/entities", "/runners/", "/healthz", "/readyz", "/metrics", "/status/"}

// rootStreamExact are root paths of the API that are only that path.
var rootStreamExact = []string{"/status"}

// rootStream serves the Durable Stream at /v1/stream{path} at {path} too,
// where Electric's agents server serves its streams (an entity's main
// stream at /{type}/{id}/main, plain streams anywhere else), with the
// stream routes' own rules, auth and deadlines. Electric's start offset
// reads from the start. It reports false for the API's own paths.
func (s *Server) rootStream(w http.ResponseWriter, r *http.Request) bool {
	if s.cfg.Streams == nil || r.URL.Path == "/" || slices.Contains(rootStreamExact, r.URL.Path) {
		return false
	}
	for _, p := range rootStreamPrefixes {
		if strings.HasPrefix(r.URL.Path, p) {
			return false
		}
	}
	r2 := r.Clone(r.Context())
	r2.URL.Path = "/v1/stream" + r.URL.Path
	r2.URL.RawPath = ""
	if q := r2.URL.Query(); q.Get("offset") == electricOffsetStart {
		q.Set("offset", "-1")
		r2.URL.RawQuery = q.Encode()
	}
	s.cfg.Streams.ServeHTTP(w, r2)
	return true
}
