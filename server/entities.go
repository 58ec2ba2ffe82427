package server

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"time"

	"github.com/pullwake/pullwake/db"
)

type dispatchJSON struct {
	ActiveConsumerID     *string    `json:"active_consumer_id"`
	ActiveEpoch          *int64     `json:"active_epoch"`
	ActiveRunnerID       *string    `json:"active_runner_id"`
	ActiveLeaseExpiresAt *time.Time `json:"active_lease_expires_at"`
	OutstandingWakeID    *string    `json:"outstanding_wake_id"`
	AckedOffset          string     `json:"acked_offset"`
	LastSentOffset       string     `json:"last_sent_offset"`
	LastReleasedAt       *time.Time `json:"last_released_at"`
}

type entityJSON struct {
	URL        string `json:"url"`
	Type       string `json:"type"`
	Status     string `json:"status"`
	MainStream string `json:"main_stream"`
	// Streams is main_stream as Electric's runtime reads it: {"main": path}.
	Streams   map[string]string `json:"streams"`
	RunnerID  *string           `json:"runner_id"`
	Parent    *string           `json:"parent"` // the entity that spawned this one, or null
	CreatedAt time.Time         `json:"created_at"`
	UpdatedAt time.Time         `json:"updated_at"`
	Dispatch  dispatchJSON      `json:"dispatch"`
}

// entityType is the {type} part of an entity URL /{type}/{id}.
func entityType(url string) string {
	typ, _, _ := strings.Cut(strings.TrimPrefix(url, "/"), "/")
	return typ
}

func entityFromRow(e db.GetEntityRow) entityJSON {
	return entityJSON{
		URL: e.Url, Type: entityType(e.Url), Status: e.Status, MainStream: e.MainStream,
		Streams: map[string]string{"main": e.MainStream}, RunnerID: e.RunnerID, Parent: e.Parent,
		CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt,
		Dispatch: dispatchJSON{
			ActiveConsumerID: e.ActiveConsumerID, ActiveEpoch: e.ActiveEpoch, ActiveRunnerID: e.ActiveRunnerID,
			ActiveLeaseExpiresAt: e.ActiveLeaseExpiresAt, OutstandingWakeID: e.OutstandingWakeID,
			AckedOffset: e.AckedOffset, LastSentOffset: e.LastSentOffset, LastReleasedAt: e.LastReleasedAt,
		},
	}
}

func (s *Server) loadEntity(r *http.Request, url string) (entityJSON, error) {
	e, err := s.q.GetEntity(r.Context(), s.pool, db.GetEntityParams{TenantID: s.cfg.Tenant, Url: url})
	if errors.Is(err, db.ErrNotFound) {
		return entityJSON{}, errf(http.StatusNotFound, "ENTITY_NOT_FOUND", "entity %s not found", url)
	}
	if err != nil {
		return entityJSON{}, err
	}
	return entityFromRow(e), nil
}

func (s *Server) spawnEntity(w http.ResponseWriter, r *http.Request) error {
	url, err := entityURL(r)
	if err != nil {
		return err
	}
	var body struct {
		RunnerID *string         `json:"runner_id"`
		Args     json.RawMessage `json:"args"`   // checked against the type's creation_schema
		Parent   *string         `json:"parent"` // an existing entity's URL (spawn_entity checks)
	}
	if err := decode(w, r, &body); err != nil {
		return err
	}
	if body.RunnerID != nil && !idRE.MatchString(*body.RunnerID) {
		return badRequest("runner_id %q must match %s", *body.RunnerID, idRE)
	}
	if body.Parent != nil && !isEntityURL(*body.Parent) {
		return badRequest("parent %q must be an entity URL /{type}/{id}", *body.Parent)
	}
	if args, err := jsonObject(body.Args, "args"); err != nil {
		return err
	} else if err := s.checkSpawn(r, url, args); err != nil {
		return err
	}
	e, err := s.q.SpawnEntity(r.Context(), s.pool, db.SpawnEntityParams{Url: url, RunnerID: body.RunnerID,
		Parent: body.Parent, TenantID: s.cfg.Tenant})
	if err != nil {
		return err
	}
	s.log.Info("entity spawned", "entity_url", url)
	writeJSON(w, http.StatusCreated, entityJSON{
		URL: e.Url, Type: entityType(e.Url), Status: e.Status, MainStream: e.MainStream,
		Streams: map[string]string{"main": e.MainStream}, RunnerID: e.RunnerID, Parent: e.Parent,
		CreatedAt: e.CreatedAt, UpdatedAt: e.UpdatedAt,
		Dispatch: dispatchJSON{AckedOffset: zeroOffset, LastSentOffset: zeroOffset},
	})
	return nil
}

const zeroOffset = "0000000000000000"

func (s *Server) getEntity(w http.ResponseWriter, r *http.Request) error {
	url, err := entityURL(r)
	if err != nil {
		return err
	}
	e, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, e)
	return nil
}

var entityStatuses = map[string]bool{"idle": true, "running": true, "stopping": true, "stopped": true}

func (s *Server) listEntities(w http.ResponseWriter, r *http.Request) error {
	p := db.ListEntitiesParams{TenantID: s.cfg.Tenant, MaxRows: 1000}
	if v := r.URL.Query().Get("status"); v != "" {
		if !entityStatuses[v] {
			return badRequest("status %q must be one of idle, running, stopping, stopped", v)
		}
		p.Status = &v
	}
	if v := r.URL.Query().Get("runner_id"); v != "" {
		if !idRE.MatchString(v) {
			return badRequest("runner_id %q must match %s", v, idRE)
		}
		p.RunnerID = &v
	}
	rows, err := s.q.ListEntities(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	out := make([]entityJSON, 0, len(rows))
	for _, e := range rows {
		out = append(out, entityFromRow(db.GetEntityRow(e)))
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

// sendBody is a send: {"payload", "from"?, "type"?}. Electric's runtime
// names the sender from_agent (an entity URL) or from_principal; "from"
// wins. "type" is the message type, checked against the inbox schema of
// that name of the entity's type.
type sendBody struct {
	Payload       json.RawMessage `json:"payload"`
	Type          *string         `json:"type"`
	From          *string         `json:"from"`
	FromAgent     *string         `json:"from_agent"`
	FromPrincipal *string         `json:"from_principal"`
}

func (b sendBody) from() *string {
	switch {
	case b.From != nil:
		return b.From
	case b.FromAgent != nil:
		return b.FromAgent
	}
	return b.FromPrincipal
}

// sendToEntity serves POST /entities/{type}/{id} (admin).
func (s *Server) sendToEntity(w http.ResponseWriter, r *http.Request) error {
	var body sendBody
	if err := decode(w, r, &body); err != nil {
		return err
	}
	return s.send(w, r, body)
}

// electricSend serves POST /_electric/entities/{type}/{id}/send: the admin
// token, or the live write token of the sending entity (from_agent), which
// is what a handler of Electric's runtime sends when it messages another
// entity.
func (s *Server) electricSend(w http.ResponseWriter, r *http.Request) error {
	var body sendBody
	if err := decode(w, r, &body); err != nil {
		return err
	}
	if err := s.requireAdmin(r); err != nil {
		tok := bearer(r)
		if tok == "" {
			tok = r.Header.Get("electric-claim-token")
		}
		if body.FromAgent == nil || tok == "" {
			return err
		}
		if _, ok := s.tokens.Valid("/v1/stream"+*body.FromAgent+"/main", tok); !ok {
			return err
		}
	}
	return s.send(w, r, body)
}

// send appends the message and queues a wake (send_to_entity).
func (s *Server) send(w http.ResponseWriter, r *http.Request, body sendBody) error {
	url, err := entityURL(r)
	if err != nil {
		return err
	}
	if body.Payload == nil {
		return badRequest("payload is required")
	}
	if body.Type != nil {
		if err := s.checkSend(r, url, *body.Type, body.Payload); err != nil {
			return err
		}
	}
	res, err := s.q.SendToEntity(r.Context(), s.pool, db.SendToEntityParams{
		Url: url, Payload: body.Payload, FromName: body.from(), TenantID: s.cfg.Tenant})
	if err != nil {
		return err
	}
	if s.cfg.Streams != nil {
		s.cfg.Streams.Notify("/v1/stream" + url + "/main")
	}
	if res.WakeID != "" {
		s.wakes.kick() // the wake's events are in: wake this server's wake-stream readers now
	}
	s.log.Info("message sent", "entity_url", url, "offset", res.MsgOffset, "wake_id", res.WakeID)
	writeJSON(w, http.StatusAccepted, map[string]any{"offset": res.MsgOffset})
	return nil
}

func (s *Server) stopEntity(w http.ResponseWriter, r *http.Request) error {
	url, err := entityURL(r)
	if err != nil {
		return err
	}
	if _, err := s.q.StopEntity(r.Context(), s.pool, db.StopEntityParams{Url: url, TenantID: s.cfg.Tenant}); err != nil {
		return err
	}
	e, err := s.loadEntity(r, url)
	if err != nil {
		return err
	}
	s.log.Info("entity stop requested", "entity_url", url, "entity_status", e.Status)
	writeJSON(w, http.StatusOK, e)
	return nil
}
