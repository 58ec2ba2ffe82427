package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/server/entitytypes"
	"github.com/pullwake/pullwake/server/httpx"
)

// Entity routes are served twice: under /entities in pullwake's own
// encoding (SPEC §4) and under /_electric/entities in Electric's
// (dialect.go). The handlers below are the one implementation; an
// entityEncoding decides the answers' shapes, status codes and error codes.

// DispatchJSON is an entity's dispatch state as the API answers it.
type DispatchJSON struct {
	ActiveConsumerID     *string    `json:"active_consumer_id"`
	ActiveEpoch          *int64     `json:"active_epoch"`
	ActiveRunnerID       *string    `json:"active_runner_id"`
	ActiveLeaseExpiresAt *time.Time `json:"active_lease_expires_at"`
	OutstandingWakeID    *string    `json:"outstanding_wake_id"`
	AckedOffset          string     `json:"acked_offset"`
	LastSentOffset       string     `json:"last_sent_offset"`
	LastReleasedAt       *time.Time `json:"last_released_at"`
}

// EntityJSON is an entity as GET /entities/{type}/{id} answers it (the CLI
// prints the same).
type EntityJSON struct {
	URL        string `json:"url"`
	Type       string `json:"type"`
	Status     string `json:"status"`
	MainStream string `json:"main_stream"`
	// Streams is main_stream as Electric's runtime reads it: {"main": path}.
	Streams   map[string]string `json:"streams"`
	RunnerID  *string           `json:"runner_id"`
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	Dispatch  DispatchJSON      `json:"dispatch"`
}

// entityType is the {type} part of an entity URL /{type}/{id}.
func entityType(url string) string {
	typ, _, _ := strings.Cut(strings.TrimPrefix(url, "/"), "/")
	return typ
}

func dispatchFromRow(e db.GetEntityRow) DispatchJSON {
	return DispatchJSON{
		ActiveConsumerID: e.ActiveConsumerID, ActiveEpoch: e.ActiveEpoch, ActiveRunnerID: e.ActiveRunnerID,
		ActiveLeaseExpiresAt: e.ActiveLeaseExpiresAt, OutstandingWakeID: e.OutstandingWakeID,
		AckedOffset: e.AckedOffset, LastSentOffset: e.LastSentOffset, LastReleasedAt: e.LastReleasedAt,
	}
}

// EntityFromRow encodes an entity row with its dispatch state.
func EntityFromRow(e db.GetEntityRow) EntityJSON {
	return EntityJSON{
		URL: e.Url, Type: entityType(e.Url), Status: e.Status, MainStream: e.MainStream,
		Streams: map[string]string{"main": e.MainStream}, RunnerID: e.RunnerID,
		CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, Dispatch: dispatchFromRow(e),
	}
}

// rowOfEntity is a freshly written entity row as GetEntity reads it, with
// the dispatch state of an entity nothing was sent to (spawn, tags).
func rowOfEntity(e db.Entity) db.GetEntityRow {
	return db.GetEntityRow{
		Url: e.Url, Status: e.Status, MainStream: e.MainStream, RunnerID: e.RunnerID,
		CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt, AckedOffset: zeroOffset, LastSentOffset: zeroOffset,
		Tags: e.Tags, Parent: e.Parent, StopSignal: e.StopSignal,
	}
}

func (s *Server) loadEntity(r *http.Request, url string) (db.GetEntityRow, error) {
	e, err := s.q.GetEntity(r.Context(), s.pool, db.GetEntityParams{TenantID: s.cfg.Tenant, Url: url})
	if errors.Is(err, db.ErrNotFound) {
		return db.GetEntityRow{}, httpx.Errorf(http.StatusNotFound, "ENTITY_NOT_FOUND", "entity %s not found", url)
	}
	return e, err
}

// entityRoute serves fn in encoding enc: enc translates fn's errors.
func (s *Server) entityRoute(enc entityEncoding, fn func(entityEncoding, http.ResponseWriter, *http.Request) error) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		if err := fn(enc, w, r); err != nil {
			return enc.mapError(s, r, err)
		}
		return nil
	}
}

// spawnBody is a spawn: {"runner_id"?} in pullwake's encoding; Electric's
// adds {"args"?, "tags"?, "parent"?, "initialMessage"?}.
type spawnBody struct {
	RunnerID           *string         `json:"runner_id"`
	InitialMessageType *string         `json:"initialMessageType"`
	Args               json.RawMessage `json:"args"`
	Tags               json.RawMessage `json:"tags"`
	Parent             *string         `json:"parent"`
	InitialMessage     json.RawMessage `json:"initialMessage"`
}

func (s *Server) spawnEntity(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	url, err := httpx.EntityURL(r)
	if err != nil {
		return err
	}
	var body spawnBody
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	if body.RunnerID != nil && !httpx.IDRE.MatchString(*body.RunnerID) {
		return httpx.BadRequest("runner_id %q must match %s", *body.RunnerID, httpx.IDRE)
	}
	p := db.SpawnEntityAsParams{Url: url, RunnerID: body.RunnerID, TenantID: s.cfg.Tenant}
	if enc.spawnExtras() {
		if p.Tags, err = checkTags(body.Tags); err != nil {
			return err
		}
		if body.Parent != nil {
			if _, _, err := splitEntityURL(*body.Parent); err != nil {
				return httpx.BadRequest("parent: %v", err)
			}
			p.Parent = body.Parent
		}
		if v, err := jsonValue(body.InitialMessage); err != nil {
			return httpx.BadRequest("initialMessage: %v", err)
		} else if v != nil {
			p.InitialMessage = v
			from, err := enc.sender(r, sendBody{})
			if err != nil {
				return err
			}
			p.FromName = from
			msgType := ""
			if body.InitialMessageType != nil {
				msgType = *body.InitialMessageType
			}
			if err := s.validator.ValidateSend(r.Context(), entityType(url), msgType, v); err != nil {
				return err
			}
		}
	}
	// args are checked against the type's creation_schema under both
	// prefixes; Electric's always requires a registered type, /entities
	// only with RequireEntityTypes.
	args, err := httpx.JSONObject(body.Args, "args")
	if err != nil {
		return err
	}
	_, electric := enc.(electricEncoding)
	if err := s.validator.ValidateSpawn(r.Context(), entityType(url), args, electric || s.cfg.RequireEntityTypes); err != nil {
		return entitytypes.Refusal(electric, err)
	}
	var e db.Entity
	spawn := func(tx db.DBTX) (err error) { e, err = s.q.SpawnEntityAs(r.Context(), tx, p); return err }
	var txid int64
	if electric {
		txid, err = s.withTxID(r.Context(), spawn) // Electric's answer carries it
	} else {
		err = spawn(s.pool)
	}
	if err != nil {
		return err
	}
	if p.InitialMessage != nil {
		s.afterSend(url)
	}
	s.log.Info("entity spawned", "entity_url", url)
	row := rowOfEntity(e)
	if p.InitialMessage != nil {
		if row, err = s.loadEntity(r, url); err != nil {
			return err
		}
	}
	if electric {
		httpx.WriteJSON(w, http.StatusCreated, electricMutationJSON{electricEntity(row), txid})
		return nil
	}
	httpx.WriteJSON(w, http.StatusCreated, enc.entity(row))
	return nil
}

const zeroOffset = "0000000000000000"

func (s *Server) getEntity(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	url, err := httpx.EntityURL(r)
	if err != nil {
		return err
	}
	e, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, enc.entity(e))
	return nil
}

var entityStatuses = map[string]bool{"idle": true, "running": true, "stopping": true, "stopped": true}

// listEntities serves GET /entities (?status, ?runner_id) and GET
// /_electric/entities (also ?type, ?parent; ?status in Electric's names).
func (s *Server) listEntities(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	p := db.ListEntitiesParams{TenantID: s.cfg.Tenant, MaxRows: 1000}
	q := r.URL.Query()
	status := q.Get("status")
	if status != "" && !enc.knowsStatus(status) {
		return httpx.BadRequest("status %q must be one of %s", status, strings.Join(enc.statuses(), ", "))
	}
	if status != "" && enc.spawnExtras() {
		status = "" // Electric's names: filtered below, on the encoded answers
	} else if status != "" {
		p.Status = &status
	}
	if v := q.Get("runner_id"); v != "" {
		if !httpx.IDRE.MatchString(v) {
			return httpx.BadRequest("runner_id %q must match %s", v, httpx.IDRE)
		}
		p.RunnerID = &v
	}
	if enc.spawnExtras() {
		if v := q.Get("type"); v != "" {
			if !httpx.EntityTypeRE.MatchString(v) {
				return httpx.BadRequest("type %q must match %s", v, httpx.EntityTypeRE)
			}
			p.Type = &v
		}
		if v := q.Get("parent"); v != "" {
			p.Parent = &v
		}
	}
	rows, err := s.q.ListEntities(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	want := q.Get("status")
	out := make([]any, 0, len(rows))
	for _, e := range rows {
		row := db.GetEntityRow(e)
		if enc.spawnExtras() && want != "" && enc.status(row) != want {
			continue
		}
		out = append(out, enc.entity(row))
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

// sendBody is a send: {"payload", "from"?}. Electric's runtime names the
// sender from_agent (an entity URL) or from_principal, and may give the
// message a type.
type sendBody struct {
	Payload       json.RawMessage `json:"payload"`
	Type          *string         `json:"type"`
	From          *string         `json:"from"`
	FromAgent     *string         `json:"from_agent"`
	FromPrincipal *string         `json:"from_principal"`
}

// sendToEntity serves POST /entities/{type}/{id} (admin) and POST
// /_electric/entities/{type}/{id}/send: the admin token, or there the live
// write token of the sending entity (from_agent), which is what a handler
// of Electric's runtime sends when it messages another entity.
func (s *Server) sendToEntity(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	var body sendBody
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	if err := s.requireAdmin(r); err != nil {
		if !enc.agentTokens() || body.FromAgent == nil || !s.holdsWriteToken(r, *body.FromAgent) {
			return err
		}
	}
	url, err := httpx.EntityURL(r)
	if err != nil {
		return err
	}
	if body.Payload == nil {
		return httpx.BadRequest("payload is required")
	}
	from, err := enc.sender(r, body)
	if err != nil {
		return err
	}
	msgType := ""
	if body.Type != nil {
		msgType = *body.Type
	}
	if err := s.validator.ValidateSend(r.Context(), entityType(url), msgType, body.Payload); err != nil {
		_, electric := enc.(electricEncoding)
		return entitytypes.Refusal(electric, err)
	}
	p := db.SendToEntityParams{Url: url, Payload: body.Payload, FromName: from, TenantID: s.cfg.Tenant}
	if msgType != "" {
		p.MessageType = &msgType // the inbox event's value.message_type
	}
	res, err := s.q.SendToEntity(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	s.afterSend(url)
	if res.WakeID != "" {
		s.wakePub.Kick() // publish the wake's events now; the publisher then wakes the readers
	}
	s.log.Info("message sent", "entity_url", url, "offset", res.MsgOffset, "wake_id", res.WakeID)
	answer := map[string]any{"offset": res.MsgOffset}
	if _, electric := enc.(electricEncoding); electric {
		answer["txid"] = res.Txid // the inbox event's headers.txid, which Electric's UI waits for
	}
	httpx.WriteJSON(w, enc.sentStatus(), answer)
	return nil
}

// afterSend wakes this server's live readers of the entity's main stream.
func (s *Server) afterSend(url string) {
	if s.cfg.Streams != nil {
		s.cfg.Streams.Notify("/v1/stream" + url + "/main")
	}
}

// holdsWriteToken reports whether r carries the live write token of the
// entity at url (Authorization: Bearer or electric-claim-token).
func (s *Server) holdsWriteToken(r *http.Request, url string) bool {
	tok := bearer(r)
	if tok == "" {
		tok = r.Header.Get("electric-claim-token")
	}
	if tok == "" {
		return false
	}
	_, ok := s.gate.Authorize(r.Context(), "/v1/stream"+url+"/main", tok)
	return ok
}

// stopEntity serves DELETE: a stop (pullwake) or a SIGKILL (Electric),
// both kill_entity; an idle entity is stopped at once, a running one is
// stopping until its claim ends.
func (s *Server) stopEntity(enc entityEncoding, w http.ResponseWriter, r *http.Request) error {
	url, err := httpx.EntityURL(r)
	if err != nil {
		return err
	}
	if _, err := s.q.KillEntity(r.Context(), s.pool, db.KillEntityParams{
		Url: url, Signal: enc.stopSignal(), TenantID: s.cfg.Tenant}); err != nil {
		return err
	}
	s.afterSend(url)
	e, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	s.log.Info("entity stop requested", "entity_url", url, "entity_status", e.Status)
	httpx.WriteJSON(w, http.StatusOK, enc.entity(e))
	return nil
}
