package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"
)

// ErrClaimLost means the claim is no longer the entity's active claim: its
// lease passed, an operator released it, or a newer claim took over. The
// handler's context is cancelled with this cause (context.Cause), its
// appends fail with it, and no done is sent.
var ErrClaimLost = errors.New("runner: the claim is no longer active")

// ErrHandlerPanic wraps the value of a handler's panic in the log line of
// the release that follows it.
var ErrHandlerPanic = errors.New("runner: handler panicked")

// notification is the server's wake notification (the answer to a claim).
type notification struct {
	WakeID     string `json:"wake_id"`
	ConsumerID string `json:"consumer_id"`
	Epoch      int64  `json:"epoch"`
	EntityURL  string `json:"entity_url"`
	StreamPath string `json:"stream_path"`
	Streams    []struct {
		Path   string `json:"path"`
		Offset string `json:"offset"`
	} `json:"streams"`
	ClaimToken     string    `json:"claim_token"`
	WriteToken     string    `json:"write_token"`
	Callback       string    `json:"callback"`
	LeaseTTLMS     int64     `json:"lease_ttl_ms"`
	LeaseExpiresAt time.Time `json:"lease_expires_at"`
}

func (n *notification) validate() error {
	switch {
	case n.ConsumerID == "":
		return errors.New("wake notification without consumer_id")
	case n.StreamPath == "":
		return errors.New("wake notification without stream_path")
	case n.ClaimToken == "":
		return errors.New("wake notification without claim_token")
	case n.Callback == "":
		return errors.New("wake notification without callback")
	}
	return nil
}

// offset is where reading resumes: the acked offset of the main stream.
func (n *notification) offset() string {
	for _, s := range n.Streams {
		if s.Path == n.StreamPath && s.Offset != "" {
			return s.Offset
		}
	}
	return "-1"
}

// InboxMessage is one message sent to the entity (an event of type "inbox"
// on its main stream).
type InboxMessage struct {
	Key       string          // the event's unique key
	From      string          // the sender
	Payload   json.RawMessage // what was sent, as JSON
	Timestamp time.Time       // when it was sent (zero when unreadable)
}

// Wake is one claimed wake, handed to the Handler: what the entity's main
// stream holds past the acked offset, and the means to write to it.
//
// A Wake is valid only during the Handler call that received it; its
// methods are safe for concurrent use.
type Wake struct {
	WakeID     string
	ConsumerID string
	Epoch      int64 // the claim epoch; also the Producer-Epoch of appends
	EntityURL  string
	StreamPath string        // the entity's main stream, /v1/stream/{type}/{id}/main
	LeaseTTL   time.Duration // the claim's lease, extended by heartbeats

	// Offset is where the read began: the entity's acked offset.
	Offset string
	// Events are the main stream's messages after Offset, in order: inbox
	// events and anything else appended and not yet acked.
	Events []json.RawMessage
	// Inbox are the inbox events among Events, decoded.
	Inbox []InboxMessage
	// ReadOffset is the Stream-Next-Offset of the read. When the Handler
	// returns nil, done acks this offset.
	ReadOffset string

	rn         *Runner
	claimToken string
	callback   string
	lost       context.CancelCauseFunc
	log        *slog.Logger

	mu         sync.Mutex // serializes appends: Producer-Seq must not skip
	writeToken string
	seq        int64
	unsure     error // an append given up with its outcome unknown
}

func newWake(rn *Runner, n *notification, lost context.CancelCauseFunc, log *slog.Logger) *Wake {
	return &Wake{
		WakeID: n.WakeID, ConsumerID: n.ConsumerID, Epoch: n.Epoch, EntityURL: n.EntityURL,
		StreamPath: n.StreamPath, LeaseTTL: time.Duration(n.LeaseTTLMS) * time.Millisecond,
		Offset: n.offset(), rn: rn, claimToken: n.ClaimToken, callback: n.Callback,
		lost: lost, log: log, writeToken: n.WriteToken,
	}
}

// ProducerID is the Producer-Id of this library's appends: one producer per
// entity, so the claim epoch fences a previous claim's late writes whichever
// runner made them.
func ProducerID(entityURL string) string { return "entity-" + entityURL }

// read fills Events, Inbox and ReadOffset from the main stream, page by
// page, from Offset up to the tail.
func (w *Wake) read(ctx context.Context) error {
	offset := w.Offset
	bo := w.rn.newBackoff()
	for {
		a, err := w.rn.c.do(ctx, http.MethodGet, w.StreamPath+"?offset="+url.QueryEscape(offset), "", nil)
		if err == nil && a.status != http.StatusOK {
			err = a.apiError("read " + w.StreamPath)
		}
		if err != nil {
			if transient(err) && sleep(ctx, bo.next()) {
				w.log.Warn("main stream read failed; retrying", "err", err)
				continue
			}
			return fmt.Errorf("read %s from %s: %w", w.StreamPath, offset, err)
		}
		bo.reset()
		var page []json.RawMessage
		if err := json.Unmarshal(a.body, &page); err != nil {
			return fmt.Errorf("read %s from %s: the answer is not a JSON array: %w", w.StreamPath, offset, err)
		}
		next := a.header.Get("Stream-Next-Offset")
		if next == "" {
			return fmt.Errorf("read %s from %s: answer without Stream-Next-Offset", w.StreamPath, offset)
		}
		w.Events = append(w.Events, page...)
		for _, ev := range page {
			if m, ok := decodeInbox(ev); ok {
				w.Inbox = append(w.Inbox, m)
			}
		}
		w.ReadOffset = next
		if a.header.Get("Stream-Up-To-Date") == "true" || len(page) == 0 || next == offset {
			return nil
		}
		offset = next
	}
}

func decodeInbox(ev json.RawMessage) (InboxMessage, bool) {
	var e struct {
		Type  string `json:"type"`
		Key   string `json:"key"`
		Value struct {
			From      string          `json:"from"`
			Payload   json.RawMessage `json:"payload"`
			Timestamp string          `json:"timestamp"`
		} `json:"value"`
	}
	if json.Unmarshal(ev, &e) != nil || e.Type != "inbox" {
		return InboxMessage{}, false
	}
	ts, _ := time.Parse(time.RFC3339Nano, e.Value.Timestamp)
	return InboxMessage{Key: e.Key, From: e.Value.From, Payload: e.Value.Payload, Timestamp: ts}, true
}

// Append appends msgs (each encoded as JSON; json.RawMessage is sent as is)
// to the entity's main stream, as one request, and returns the stream's
// next offset after them. It carries the claim's write token and the
// idempotent-producer headers (Producer-Id: ProducerID(EntityURL),
// Producer-Epoch: the claim epoch, Producer-Seq: 0, 1, ... per claim), so a
// retry after a lost answer never stores twice. Transient failures are
// retried until ctx ends; a 401 (the server restarted and forgot the write
// token) re-mints the token through the wake-callback once and retries.
// When the claim has ended it returns ErrClaimLost.
//
// An append given up before its outcome was known (ctx ended while
// retrying) may have been stored; every later Append of this Wake then
// fails, since the same Producer-Seq with other messages would be taken for
// a retry and dropped. Return an error from the Handler: the messages are
// offered to a new claim, with a new epoch.
func (w *Wake) Append(ctx context.Context, msgs ...any) (string, error) {
	if len(msgs) == 0 {
		return "", errors.New("append: no messages")
	}
	// Always an array: the server flattens one level, so each element is
	// one message, even when a message is itself an array.
	body, err := json.Marshal(msgs)
	if err != nil {
		return "", fmt.Errorf("append to %s: encode: %w", w.StreamPath, err)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.unsure != nil {
		return "", fmt.Errorf("append to %s: an earlier append may or may not have been stored (%w); "+
			"return an error so the messages are offered to a new claim", w.StreamPath, w.unsure)
	}
	bo := w.rn.newBackoff()
	reminted := false
	for {
		a, err := w.rn.c.do(ctx, http.MethodPost, w.StreamPath, w.writeToken, body,
			"Producer-Id", ProducerID(w.EntityURL),
			"Producer-Epoch", strconv.FormatInt(w.Epoch, 10),
			"Producer-Seq", strconv.FormatInt(w.seq, 10))
		if err == nil {
			switch {
			case a.status == http.StatusOK || a.status == http.StatusNoContent:
				w.seq++
				return a.header.Get("Stream-Next-Offset"), nil
			case a.status == http.StatusUnauthorized && !reminted:
				reminted = true
				if err := w.remint(ctx); err != nil {
					return "", fmt.Errorf("append to %s: %w", w.StreamPath, err)
				}
				continue
			}
			err = a.apiError("append to " + w.StreamPath)
		}
		if transient(err) && sleep(ctx, bo.next()) {
			w.log.Warn("append failed; retrying with the same Producer-Seq", "err", err, "producer_seq", w.seq)
			continue
		}
		// A refusal (4xx) stored nothing: the next append may reuse the
		// seq. Any other end (the context ended during a retry, a 5xx) may
		// have stored the messages, and a later append with this seq but
		// other messages would be taken for a retry and dropped: refuse
		// further appends of this claim instead.
		var ae *APIError
		if !errors.As(err, &ae) || ae.Status >= 500 {
			w.unsure = err
		}
		return "", fmt.Errorf("append to %s: %w", w.StreamPath, err)
	}
}

// remint asks the wake-callback for a fresh write token (a claim request:
// {"epoch", "wake_id"}), as after a server restart.
func (w *Wake) remint(ctx context.Context) error {
	bo := w.rn.newBackoff()
	for {
		a, err := w.rn.c.do(ctx, http.MethodPost, w.callback, w.claimToken,
			map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID})
		if err == nil {
			switch a.status {
			case http.StatusOK:
				var ans struct {
					WriteToken      string `json:"write_token"`
					WriteTokenCamel string `json:"writeToken"`
				}
				if err := json.Unmarshal(a.body, &ans); err != nil {
					return fmt.Errorf("re-mint write token: %w", err)
				}
				tok := ans.WriteToken
				if tok == "" {
					tok = ans.WriteTokenCamel
				}
				if tok == "" {
					return errors.New("re-mint write token: answer without write_token")
				}
				w.writeToken = tok
				w.log.Info("write token re-minted")
				return nil
			case http.StatusConflict, http.StatusNotFound, http.StatusUnauthorized:
				w.lost(ErrClaimLost)
				return fmt.Errorf("re-mint write token: %w (%w)", ErrClaimLost, a.apiError("claim request"))
			}
			err = a.apiError("re-mint write token")
		}
		if transient(err) && sleep(ctx, bo.next()) {
			continue
		}
		return err
	}
}

// heartbeat extends the claim's lease once. A claim that is no longer
// active cancels the handler's context with ErrClaimLost.
func (w *Wake) heartbeat(ctx context.Context) error {
	a, err := w.rn.c.do(ctx, http.MethodPost, w.callback, w.claimToken, map[string]any{"epoch": w.Epoch})
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	switch a.status {
	case http.StatusOK:
		return nil
	case http.StatusConflict, http.StatusNotFound, http.StatusUnauthorized:
		w.lost(ErrClaimLost)
		return fmt.Errorf("heartbeat: %w (%w)", ErrClaimLost, a.apiError("heartbeat"))
	}
	return a.apiError("heartbeat")
}

// doneResult is the server's answer to a done.
type doneResult struct {
	Released      bool   `json:"released"`
	EntityCleared bool   `json:"entity_cleared"`
	ClaimStatus   string `json:"claim_status"`
	EntityStatus  string `json:"entity_status"`
}

// done releases the claim, acking ReadOffset of the main stream when ack is
// true and nothing otherwise (so what was read is offered again). It
// retries transient failures until ctx ends: a done is idempotent.
func (w *Wake) done(ctx context.Context, ack bool) (doneResult, error) {
	body := map[string]any{"epoch": w.Epoch, "done": true}
	if ack && w.ReadOffset != "" {
		body["acks"] = []map[string]string{{"stream": w.StreamPath, "offset": w.ReadOffset}}
	}
	bo := w.rn.newBackoff()
	for {
		a, err := w.rn.c.do(ctx, http.MethodPost, w.callback, w.claimToken, body)
		if err == nil {
			if a.status == http.StatusOK {
				var res doneResult
				if err := json.Unmarshal(a.body, &res); err != nil {
					return res, fmt.Errorf("done: %w", err)
				}
				return res, nil
			}
			err = a.apiError("done")
		}
		if transient(err) && sleep(ctx, bo.next()) {
			w.log.Warn("done failed; retrying", "err", err)
			continue
		}
		return doneResult{}, err
	}
}
