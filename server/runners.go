package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/pullwake/pullwake/db"
	"github.com/pullwake/pullwake/internal/secret"
	"github.com/pullwake/pullwake/server/httpx"
	"github.com/pullwake/pullwake/server/tokens"
)

type runnerJSON struct {
	ID                     string          `json:"id"`
	Label                  string          `json:"label"`
	Kind                   string          `json:"kind"`
	AdminStatus            string          `json:"admin_status"`
	LivenessStatus         string          `json:"liveness_status"`
	LastSeenAt             *time.Time      `json:"last_seen_at"`
	LivenessLeaseExpiresAt *time.Time      `json:"liveness_lease_expires_at"`
	Diagnostics            json.RawMessage `json:"diagnostics"`
	CreatedAt              time.Time       `json:"created_at"`
	UpdatedAt              time.Time       `json:"updated_at"`
	// WakeStream is the runner's wake stream (also served at
	// /runners/{id}/wake); WakeStreamOffset the offset from which a reader
	// sees the event of every wake still queued for the runner.
	WakeStream       string `json:"wake_stream"`
	WakeStreamOffset string `json:"wake_stream_offset,omitempty"`
	RunnerToken      string `json:"runner_token,omitempty"`
}

// liveness: online while the heartbeat lease runs, expired once it passed,
// offline when the runner never sent a heartbeat.
func liveness(lease *time.Time, now time.Time) string {
	switch {
	case lease == nil:
		return "offline"
	case lease.After(now):
		return "online"
	default:
		return "expired"
	}
}

func runnerFromRow(r db.Runner) runnerJSON {
	diag := r.Diagnostics
	if len(diag) == 0 {
		diag = json.RawMessage("null")
	}
	return runnerJSON{
		ID: r.ID, Label: r.Label, Kind: r.Kind, AdminStatus: r.AdminStatus,
		LivenessStatus: liveness(r.LivenessLeaseExpiresAt, time.Now()),
		LastSeenAt:     r.LastSeenAt, LivenessLeaseExpiresAt: r.LivenessLeaseExpiresAt,
		Diagnostics: diag, CreatedAt: r.CreatedAt, UpdatedAt: r.UpdatedAt,
		WakeStream: wakeStreamPath(r.ID),
	}
}

// wakeStreamPath is the path of a runner's wake stream (pw_wake_stream).
func wakeStreamPath(runnerID string) string { return streamPrefix + "runners/" + runnerID + "/wake" }

const streamPrefix = "/v1/stream/"

// registerRunner registers a runner, or restarts a registered one: an
// existing id gets a new runner token (the old one is refused from now on),
// keeps its claims, admin status and wake stream, and answers 200 instead
// of 201. Electric's runtime registers on every start.
func (s *Server) registerRunner(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		ID    *string `json:"id"`
		Label *string `json:"label"`
		Kind  *string `json:"kind"`
	}
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	if body.ID == nil {
		return httpx.BadRequest("id is required")
	}
	if !httpx.IDRE.MatchString(*body.ID) {
		return httpx.BadRequest("id %q must match %s", *body.ID, httpx.IDRE)
	}
	if body.Label != nil && len(*body.Label) > 256 || body.Kind != nil && len(*body.Kind) > 256 {
		return httpx.BadRequest("label and kind must be at most 256 bytes")
	}
	tok := secret.New()
	reg, err := s.q.RegisterRunner(r.Context(), s.pool, db.RegisterRunnerParams{
		ID: *body.ID, Label: body.Label, Kind: body.Kind, TokenHash: secret.Hash(tok), TenantID: s.cfg.Tenant})
	if err != nil {
		return err
	}
	run, err := s.q.GetRunner(r.Context(), s.pool, db.GetRunnerParams{TenantID: s.cfg.Tenant, ID: *body.ID})
	if err != nil {
		return err
	}
	// The old token's hash must not answer from this process's cache; other
	// servers drop theirs when they hear of the change.
	s.runnerTokens.Forget(*body.ID)
	s.wakePub.Kick() // the registration logged a back-fill of the runner's wake stream
	status := http.StatusCreated
	if reg.Created {
		s.log.Info("runner registered", "runner_id", run.ID)
	} else {
		status = http.StatusOK
		s.log.Info("runner re-registered, token rotated", "runner_id", run.ID)
	}
	out := runnerFromRow(run)
	out.WakeStream, out.WakeStreamOffset = reg.WakeStream, reg.WakeStreamOffset
	out.RunnerToken = tok
	httpx.WriteJSON(w, status, out)
	return nil
}

// Runner list pages: ?limit= from 1 to maxRunnerPage (the default), in id
// order; ?after=<id> starts after that id. A page also ends once the
// runners' diagnostics on it pass maxRunnerPageBytes (diagnostics are up to
// 16 KiB a runner): a full page, by count or by bytes, carries a Link
// header (rel="next") to the next one.
const (
	maxRunnerPage      = 1000
	maxRunnerPageBytes = 1 << 20
)

func (s *Server) listRunners(w http.ResponseWriter, r *http.Request) error {
	q := r.URL.Query()
	p := db.ListRunnersPageParams{TenantID: s.cfg.Tenant, MaxRows: maxRunnerPage}
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > maxRunnerPage {
			return httpx.BadRequest("limit %q must be an integer from 1 to %d", v, maxRunnerPage)
		}
		p.MaxRows = int32(n)
	}
	if v, ok := q["after"]; ok {
		if !httpx.IDRE.MatchString(v[0]) {
			return httpx.BadRequest("after %q must be a runner id (matching %s)", v[0], httpx.IDRE)
		}
		p.After = &v[0]
	}
	rows, err := s.q.ListRunnersPage(r.Context(), s.pool, p)
	if err != nil {
		return err
	}
	out := make([]runnerJSON, 0, len(rows))
	size := 0
	for _, run := range rows {
		out = append(out, runnerFromRow(run))
		if size += len(run.Diagnostics) + 512; size > maxRunnerPageBytes { // 512: the other fields, generously
			break
		}
	}
	if len(out) == int(p.MaxRows) || len(out) < len(rows) {
		w.Header().Set("Link", fmt.Sprintf(`</_electric/runners?after=%s&limit=%d>; rel="next"`, out[len(out)-1].ID, p.MaxRows))
	}
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

// maxDiagnostics caps a heartbeat's diagnostics, compacted JSON: they are
// stored on the runner row and returned by every runner listing.
const maxDiagnostics = 16 << 10

func (s *Server) loadRunner(r *http.Request) (db.Runner, error) {
	id := r.PathValue("id")
	if !httpx.IDRE.MatchString(id) {
		return db.Runner{}, httpx.BadRequest("runner id %q must match %s", id, httpx.IDRE)
	}
	run, err := s.q.GetRunner(r.Context(), s.pool, db.GetRunnerParams{TenantID: s.cfg.Tenant, ID: id})
	if errors.Is(err, db.ErrNotFound) {
		return db.Runner{}, httpx.Errorf(http.StatusNotFound, "RUNNER_NOT_FOUND", "runner %s not found", id)
	}
	return run, err
}

func (s *Server) getRunner(w http.ResponseWriter, r *http.Request) error {
	run, err := s.loadRunner(r)
	if err != nil {
		return err
	}
	ws, err := s.q.RunnerWakeStream(r.Context(), s.pool, db.RunnerWakeStreamParams{ID: run.ID, TenantID: s.cfg.Tenant})
	if err != nil {
		return err
	}
	out := runnerFromRow(run)
	out.WakeStream, out.WakeStreamOffset = ws.WakeStream, ws.WakeStreamOffset
	httpx.WriteJSON(w, http.StatusOK, out)
	return nil
}

func (s *Server) setRunnerStatus(status string) func(http.ResponseWriter, *http.Request) error {
	return func(w http.ResponseWriter, r *http.Request) error {
		id := r.PathValue("id")
		if !httpx.IDRE.MatchString(id) {
			return httpx.BadRequest("runner id %q must match %s", id, httpx.IDRE)
		}
		run, err := s.q.SetRunnerStatus(r.Context(), s.pool, db.SetRunnerStatusParams{
			AdminStatus: status, TenantID: s.cfg.Tenant, ID: id})
		if errors.Is(err, db.ErrNotFound) {
			return httpx.Errorf(http.StatusNotFound, "RUNNER_NOT_FOUND", "runner %s not found", id)
		}
		if err != nil {
			return err
		}
		s.log.Info("runner admin status set", "runner_id", id, "admin_status", status)
		s.wakePub.Kick() // an enable logged a back-fill of the runner's wake stream
		httpx.WriteJSON(w, http.StatusOK, runnerFromRow(run))
		return nil
	}
}

func (s *Server) runnerHeartbeat(w http.ResponseWriter, r *http.Request) error {
	var body struct {
		LeaseMS     *int64          `json:"lease_ms"`
		Diagnostics json.RawMessage `json:"diagnostics"`
		// WakeStreamOffset is where the runner's wake-stream reader has
		// read up to (Electric's runtime sends it): the wake-event backstop
		// takes the events before it as spent.
		WakeStreamOffset *string `json:"wake_stream_offset"`
	}
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	readSeq, err := wakeReadSeq(body.WakeStreamOffset)
	if err != nil {
		return err
	}
	lease, err := s.leaseMS(body.LeaseMS, "lease_ms")
	if err != nil {
		return err
	}
	var diag json.RawMessage
	if len(body.Diagnostics) > 0 && string(body.Diagnostics) != "null" {
		var buf bytes.Buffer
		if err := json.Compact(&buf, body.Diagnostics); err != nil {
			return httpx.BadRequest("diagnostics: %v", err)
		}
		if buf.Len() > maxDiagnostics {
			return httpx.Errorf(http.StatusRequestEntityTooLarge, "PAYLOAD_TOO_LARGE",
				"diagnostics is %d bytes of compact JSON, over the limit of %d", buf.Len(), maxDiagnostics)
		}
		diag = buf.Bytes()
	}
	run, err := s.q.HeartbeatRunner(r.Context(), s.pool, db.HeartbeatRunnerParams{
		LeaseMs: lease, Diagnostics: diag, WakeStreamReadSeq: readSeq, TenantID: s.cfg.Tenant, ID: r.PathValue("id")})
	if errors.Is(err, db.ErrNotFound) {
		return httpx.Errorf(http.StatusNotFound, "RUNNER_NOT_FOUND", "runner %s not found", r.PathValue("id"))
	}
	if err != nil {
		return err
	}
	httpx.WriteJSON(w, http.StatusOK, runnerFromRow(run))
	return nil
}

// wakeReadSeq turns a heartbeat's wake_stream_offset into the sequence
// number read up to: nil when absent or "now" (nothing learned), 0 for
// "-1"; anything but an offset of the wake stream is a 400.
func wakeReadSeq(offset *string) (*int64, error) {
	if offset == nil || *offset == "now" {
		return nil, nil
	}
	if *offset == "-1" {
		zero := int64(0)
		return &zero, nil
	}
	if len(*offset) == 16 && strings.Trim(*offset, "0123456789") == "" {
		n, err := strconv.ParseInt(*offset, 10, 64)
		if err == nil {
			return &n, nil
		}
	}
	return nil, httpx.BadRequest("wake_stream_offset %q must be -1, now, or an offset of the wake stream (16 digits)", *offset)
}

// leaseMS validates a lease in milliseconds against the configured bounds;
// nil means the default.
func (s *Server) leaseMS(v *int64, field string) (int32, error) {
	if v == nil {
		return int32(s.cfg.DefaultLeaseTTL.Milliseconds()), nil
	}
	lo, hi := s.cfg.MinLeaseTTL.Milliseconds(), s.cfg.MaxLeaseTTL.Milliseconds()
	if *v < lo || *v > hi {
		return 0, httpx.BadRequest("%s must be between %d and %d, got %d", field, lo, hi, *v)
	}
	return int32(*v), nil
}

// wakeNotification is what a runner gets for a claim: the snake_case
// fields of the API and, next to them, the camelCase fields Electric's
// runner runtime reads (it reads nothing else).
type wakeNotification struct {
	WakeID         string         `json:"wake_id"`
	ConsumerID     string         `json:"consumer_id"`
	Epoch          int64          `json:"epoch"`
	EntityURL      string         `json:"entity_url"`
	StreamPath     string         `json:"stream_path"`
	Streams        []streamOffset `json:"streams"`
	ClaimToken     string         `json:"claim_token"`
	WriteToken     string         `json:"write_token"`
	Callback       string         `json:"callback"`
	LeaseTTLMS     int32          `json:"lease_ttl_ms"`
	LeaseExpiresAt time.Time      `json:"lease_expires_at"`

	WakeIDAlt         string       `json:"wakeId"`
	ConsumerIDAlt     string       `json:"consumerId"`
	StreamPathAlt     string       `json:"streamPath"`
	ClaimTokenAlt     string       `json:"claimToken"`
	WriteTokenAlt     string       `json:"writeToken"`
	LeaseExpiresAtAlt time.Time    `json:"leaseExpiresAt"`
	TriggerEvent      string       `json:"triggerEvent"`
	Entity            notifyEntity `json:"entity"`
}

// notifyEntity is the claimed entity as Electric's runtime reads it.
type notifyEntity struct {
	Type    string            `json:"type"`
	URL     string            `json:"url"`
	Status  string            `json:"status"`
	Streams map[string]string `json:"streams"`
}

type streamOffset struct {
	Path   string `json:"path"`
	Offset string `json:"offset"`
}

// notify mints the claim's write token (evicting any older token of the
// stream), records the claim and builds the notification. Called after the
// claim committed.
// runnerID is "" when the claim was made for the releasing claim's runner
// (claim_next), which the server does not read back.
func (s *Server) notify(c db.ClaimNextWakeRow, runnerID string, took time.Duration, claimNext bool) wakeNotification {
	wt := s.tokens.Mint(c.StreamPath, tokens.Owner{ConsumerID: c.ConsumerID, Epoch: c.Epoch}, c.ClaimToken)
	s.metrics.ClaimStarted(took)
	// At debug: one line per claim at thousands a second costs more than
	// the claim's own work in this process; the claim row keeps the record.
	if s.log.Enabled(context.Background(), slog.LevelDebug) {
		attrs := []any{"consumer_id", c.ConsumerID, "epoch", c.Epoch, "entity_url", c.EntityUrl,
			"stream_path", c.StreamPath, "claim_next", claimNext}
		if runnerID != "" {
			attrs = append(attrs, "runner_id", runnerID)
		}
		s.log.Debug("wake claimed", attrs...)
	}
	typ, _, _ := strings.Cut(strings.TrimPrefix(c.EntityUrl, "/"), "/")
	return wakeNotification{
		WakeID: c.WakeID, ConsumerID: c.ConsumerID, Epoch: c.Epoch, EntityURL: c.EntityUrl,
		StreamPath: c.StreamPath, Streams: []streamOffset{{Path: c.StreamPath, Offset: c.AckedOffset}},
		ClaimToken: c.ClaimToken, WriteToken: wt,
		Callback:   fmt.Sprintf("%s/_electric/wake-callbacks/%s", s.cfg.PublicURL, c.ConsumerID),
		LeaseTTLMS: c.LeaseTtlMs, LeaseExpiresAt: c.LeaseExpiresAt,

		WakeIDAlt: c.WakeID, ConsumerIDAlt: c.ConsumerID, StreamPathAlt: c.StreamPath,
		ClaimTokenAlt: c.ClaimToken, WriteTokenAlt: wt, LeaseExpiresAtAlt: c.LeaseExpiresAt,
		TriggerEvent: "message_received",
		// A claimed entity is running (claim_next_wake set it so).
		Entity: notifyEntity{Type: typ, URL: c.EntityUrl, Status: "running",
			Streams: map[string]string{"main": c.StreamPath}},
	}
}

// claimBody is a claim request: today's {"lease_ttl_ms"} or an event of the
// runner's wake stream posted as it was read (Electric's runtime does so).
type claimBody struct {
	LeaseTTLMS     *int64          `json:"lease_ttl_ms"`
	Type           *string         `json:"type"`
	SubscriptionID *string         `json:"subscription_id"`
	Stream         *string         `json:"stream"`
	Generation     *int64          `json:"generation"`
	TS             json.RawMessage `json:"ts"`
}

// check validates an event body against the runner it was posted for.
func (b claimBody) check(runnerID string) error {
	if b.Type != nil && *b.Type != "wake" {
		return httpx.BadRequest("type %q: a claim takes a wake event (type \"wake\")", *b.Type)
	}
	if b.SubscriptionID != nil {
		want := "runner:" + runnerID
		if *b.SubscriptionID != want && !strings.HasPrefix(*b.SubscriptionID, want+":") {
			return httpx.BadRequest("subscription_id %q is not runner %s's (%s)", *b.SubscriptionID, runnerID, want)
		}
	}
	if b.Stream != nil && (len(*b.Stream) > 1024 || !strings.HasPrefix(*b.Stream, streamPrefix)) {
		return httpx.BadRequest("stream %q must be a stream path under %s", *b.Stream, streamPrefix)
	}
	if b.Generation != nil && *b.Generation < 0 {
		return httpx.BadRequest("generation must not be negative, got %d", *b.Generation)
	}
	if len(b.TS) > 0 && b.TS[0] != '"' && (b.TS[0] < '0' || b.TS[0] > '9') && string(b.TS) != "null" {
		return httpx.BadRequest("ts must be a number or a string")
	}
	return nil
}

// claim hands the runner the oldest queued wake it may take, or, when the
// body is a wake event of its wake stream, the wake of the entity the event
// names and nothing else (claim_wake_for_event): a runner that claims once
// per event it reads then claims every wake addressed to it (wake-event
// rule, docs/lifecycle.md).
func (s *Server) claim(w http.ResponseWriter, r *http.Request) error {
	var body claimBody
	if err := httpx.Decode(w, r, &body); err != nil {
		return err
	}
	runnerID := r.PathValue("id")
	if err := body.check(runnerID); err != nil {
		return err
	}
	ttl, err := s.leaseMS(body.LeaseTTLMS, "lease_ttl_ms")
	if err != nil {
		return err
	}
	start := time.Now()
	var c db.ClaimNextWakeRow
	var found bool
	if body.Stream != nil {
		c, found, err = s.claimWakeForEvent(r.Context(), runnerID, *body.Stream, ttl)
	} else {
		c, found, err = s.claimNextWake(r.Context(), runnerID, ttl)
	}
	if err != nil {
		return err
	}
	if !found {
		s.metrics.ClaimNone(time.Since(start))
		w.WriteHeader(http.StatusNoContent)
		return nil
	}
	httpx.WriteJSON(w, http.StatusOK, s.notify(c, runnerID, time.Since(start), false))
	return nil
}

// claimWakeForEvent claims the wake of the entity whose main stream an
// event names (one call, not batched: its lock wait must not hold others).
func (s *Server) claimWakeForEvent(ctx context.Context, runner, stream string, ttl int32) (db.ClaimNextWakeRow, bool, error) {
	c, err := s.q.ClaimWakeForEvent(ctx, s.pool, db.ClaimWakeForEventParams{
		RunnerID: runner, Stream: stream, LeaseTtlMs: ttl, TenantID: s.cfg.Tenant})
	if errors.Is(err, db.ErrNotFound) {
		return db.ClaimNextWakeRow{}, false, nil
	}
	return db.ClaimNextWakeRow(c), err == nil, err
}
