package e2e

// Electric's runner runtime (@electric-ax/agents-runtime) against the real
// binary: runtimeSim speaks the runtime's wire format as observed (the wake
// stream read with long-poll, each event posted verbatim to claim, only the
// camelCase notification fields read, the callback claim request with
// wakeId, appends with Producer-Id/-Epoch/-Seq and the write token,
// heartbeats, done with "path" acks).

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

const e2eAdmin = "admin-electric-e2e-0123456789abcdef"

// runtimeNotification is what Electric's runtime reads of a wake
// notification: the camelCase fields, epoch, callback, streams, entity.
type runtimeNotification struct {
	WakeID     string `json:"wakeId"`
	StreamPath string `json:"streamPath"`
	ClaimToken string `json:"claimToken"`
	Epoch      int64  `json:"epoch"`
	Callback   string `json:"callback"`
	Streams    []struct {
		Path   string `json:"path"`
		Offset string `json:"offset"`
	} `json:"streams"`
	Entity struct {
		Type    string            `json:"type"`
		URL     string            `json:"url"`
		Status  string            `json:"status"`
		Streams map[string]string `json:"streams"`
	} `json:"entity"`
}

// runtimeSim is one start of Electric's runtime for one runner id.
type runtimeSim struct {
	t        testing.TB
	base     string
	runnerID string
	token    string // runner token, sent through the runtime's headers option
	offset   string // wake stream offset to read from
	hc       *http.Client

	// crashAfterAppend: on the first wake, stop after the appends and a
	// heartbeat, without done (the process died holding the claim).
	crashAfterAppend bool
	crashed          atomic.Bool

	claimed, skipped, events atomic.Int64
	errs                     chan error
}

// simRequest sends one request with the runtime's headers.
func (s *runtimeSim) request(ctx context.Context, method, url string, body []byte, hdr ...string) (*response, error) {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := s.hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	return &response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// registerSim registers runner id as the runtime's start does; want is 201
// for a first start, 200 for a restart.
func registerSim(t testing.TB, base, id string, want int) *runtimeSim {
	t.Helper()
	s := &runtimeSim{t: t, base: base, runnerID: id, hc: &http.Client{Timeout: 10 * time.Second}, errs: make(chan error, 16)}
	body := fmt.Sprintf(`{"id":%q,"owner_principal":"/principal/user%%3Adriver","label":"driver runtime","kind":"local","admin_status":"enabled","sandbox_profiles":[]}`, id)
	r, err := s.request(context.Background(), "POST", base+"/_electric/runners", []byte(body), "Authorization", "Bearer "+e2eAdmin)
	if err != nil || r.Status != want {
		t.Fatalf("register %s: %v %v, want %d", id, r, err, want)
	}
	var reg struct {
		RunnerToken      string `json:"runner_token"`
		WakeStream       string `json:"wake_stream"`
		WakeStreamOffset string `json:"wake_stream_offset"`
	}
	if err := r.decode(&reg); err != nil || reg.RunnerToken == "" || reg.WakeStream != "/v1/stream/runners/"+id+"/wake" || reg.WakeStreamOffset == "" {
		t.Fatalf("register %s: %s (%v)", id, r, err)
	}
	s.token, s.offset = reg.RunnerToken, reg.WakeStreamOffset
	return s
}

func (s *runtimeSim) auth() []string { return []string{"Authorization", "Bearer " + s.token} }

// heartbeat is the runner heartbeat the runtime sends every few seconds.
func (s *runtimeSim) heartbeat(ctx context.Context) (*response, error) {
	body := fmt.Sprintf(`{"lease_ms":30000,"wake_stream_offset":%q,"diagnostics":{"running":true,"events_received":%d}}`,
		s.offset, s.events.Load())
	return s.request(ctx, "POST", s.base+"/_electric/runners/"+s.runnerID+"/heartbeat", []byte(body), s.auth()...)
}

// run reads the wake stream with long-poll and handles each event, one at a
// time (the runtime drains a wake before reading on), until ctx ends or the
// sim crashes.
func (s *runtimeSim) run(ctx context.Context) {
	if r, err := s.heartbeat(ctx); err != nil || r.Status != 200 {
		s.fail(fmt.Errorf("runner heartbeat: %v %v", r, err))
		return
	}
	wakeURL := s.base + "/runners/" + s.runnerID + "/wake"
	live := ""
	for ctx.Err() == nil && !s.crashed.Load() {
		r, err := s.request(ctx, "GET", wakeURL+"?offset="+s.offset+live, nil, s.auth()...)
		if ctx.Err() != nil {
			return
		}
		if err != nil || (r.Status != 200 && r.Status != 204) {
			s.fail(fmt.Errorf("wake stream read at %s: %v %v", s.offset, r, err))
			return
		}
		var events []json.RawMessage
		if r.Status == 200 && len(bytes.TrimSpace(r.Body)) > 0 {
			if err := json.Unmarshal(r.Body, &events); err != nil {
				s.fail(fmt.Errorf("wake stream body %s: %v", r.Body, err))
				return
			}
		}
		for _, ev := range events {
			var e struct {
				Type string `json:"type"`
			}
			if json.Unmarshal(ev, &e) != nil || e.Type != "wake" {
				continue
			}
			s.events.Add(1)
			if err := s.claimAndProcess(ctx, ev); err != nil {
				if ctx.Err() == nil {
					s.fail(err)
				}
				return
			}
			if s.crashed.Load() {
				return
			}
		}
		if next := r.Header.Get("Stream-Next-Offset"); next != "" {
			s.offset = next
		}
		if r.Header.Get("Stream-Up-To-Date") == "true" || r.Status == 204 {
			live = "&live=long-poll"
		}
	}
}

func (s *runtimeSim) fail(err error) {
	select {
	case s.errs <- err:
	default:
	}
}

// claimAndProcess posts the event verbatim to claim and handles the wake.
func (s *runtimeSim) claimAndProcess(ctx context.Context, event []byte) error {
	r, err := s.request(ctx, "POST", s.base+"/_electric/runners/"+s.runnerID+"/claim", event, s.auth()...)
	if err != nil {
		return fmt.Errorf("claim: %w", err)
	}
	switch {
	case r.Status == 204:
		s.skipped.Add(1)
		return nil
	case r.Status == 409 && (bytes.Contains(r.Body, []byte("ALREADY_CLAIMED")) || bytes.Contains(r.Body, []byte("NO_PENDING_WORK"))):
		s.skipped.Add(1)
		return nil
	case r.Status != 200:
		return fmt.Errorf("claim with event %s: %s", event, r)
	}
	s.claimed.Add(1)
	// Only what the runtime reads: camelCase fields, epoch, callback, streams, entity.
	var n runtimeNotification
	if err := r.decode(&n); err != nil {
		return err
	}
	if n.Entity.Type == "" || n.Entity.URL == "" || n.WakeID == "" || n.StreamPath == "" || n.ClaimToken == "" ||
		n.Callback == "" || n.Entity.Streams["main"] != n.StreamPath {
		return fmt.Errorf("notification lacks what the runtime reads: %s", r.Body)
	}
	offset := "-1"
	for _, st := range n.Streams {
		if st.Path == n.StreamPath {
			offset = st.Offset
		}
	}
	claimHdr := []string{"Authorization", "Bearer " + n.ClaimToken, "electric-runner-id", s.runnerID}

	// Claim request: the runtime takes the write token from its answer.
	cr, err := s.request(ctx, "POST", n.Callback, []byte(fmt.Sprintf(`{"epoch":%d,"wakeId":%q}`, n.Epoch, n.WakeID)), claimHdr...)
	if err != nil || cr.Status != 200 {
		return fmt.Errorf("claim request: %v %v", cr, err)
	}
	var ans struct {
		WriteToken string `json:"writeToken"`
	}
	if err := cr.decode(&ans); err != nil || ans.WriteToken == "" {
		return fmt.Errorf("claim request answer without writeToken: %s", cr)
	}

	// Read the main stream, reply to every inbox message, read again until
	// no new inbox message came; ack the offset read up to.
	seq := 0
	for range 20 {
		msgs, next, err := s.readAll(ctx, n.StreamPath, offset)
		if err != nil {
			return err
		}
		offset = next
		replied := 0
		for _, m := range msgs {
			var ev struct {
				Type string `json:"type"`
				Key  string `json:"key"`
			}
			if json.Unmarshal(m, &ev) != nil || ev.Type != "inbox" {
				continue
			}
			reply := fmt.Sprintf(`[{"type":"reply","key":"reply-%s","value":{"text":"ok"},"headers":{"txid":"tx-%d-%d","from":%q,"operation":"insert"}}]`,
				ev.Key, n.Epoch, seq, n.Entity.URL)
			ar, err := s.request(ctx, "POST", s.base+n.StreamPath, []byte(reply),
				"Authorization", "Bearer "+ans.WriteToken, "Producer-Id", "entity-"+n.Entity.URL,
				"Producer-Epoch", fmt.Sprint(n.Epoch), "Producer-Seq", fmt.Sprint(seq))
			if err != nil || ar.Status != 200 {
				return fmt.Errorf("append reply: %v %v", ar, err)
			}
			seq++
			replied++
		}
		if replied == 0 {
			break
		}
	}
	hb, err := s.request(ctx, "POST", n.Callback, []byte(fmt.Sprintf(`{"epoch":%d}`, n.Epoch)), claimHdr...)
	if err != nil || hb.Status != 200 {
		return fmt.Errorf("wake heartbeat: %v %v", hb, err)
	}
	if s.crashAfterAppend {
		s.crashed.Store(true)
		return nil
	}
	done := fmt.Sprintf(`{"epoch":%d,"acks":[{"path":%q,"offset":%q}],"done":true}`, n.Epoch, n.StreamPath, offset)
	dr, err := s.request(ctx, "POST", n.Callback, []byte(done), claimHdr...)
	if err != nil || dr.Status != 200 || !bytes.Contains(dr.Body, []byte(`"released":true`)) {
		return fmt.Errorf("done: %v %v", dr, err)
	}
	return nil
}

// readAll reads a JSON stream from offset until up to date.
func (s *runtimeSim) readAll(ctx context.Context, path, offset string) ([]json.RawMessage, string, error) {
	var all []json.RawMessage
	for range 100 {
		r, err := s.request(ctx, "GET", s.base+path+"?offset="+offset, nil)
		if err != nil || r.Status != 200 {
			return nil, "", fmt.Errorf("read %s at %s: %v %v", path, offset, r, err)
		}
		var msgs []json.RawMessage
		if len(bytes.TrimSpace(r.Body)) > 0 {
			if err := json.Unmarshal(r.Body, &msgs); err != nil {
				return nil, "", err
			}
		}
		all = append(all, msgs...)
		offset = r.Header.Get("Stream-Next-Offset")
		if r.Header.Get("Stream-Up-To-Date") == "true" {
			return all, offset, nil
		}
	}
	return nil, "", errors.New("read: never up to date")
}

// start runs the sim in the background; the returned stop ends it and
// waits, failing the test on any error the sim met.
func (s *runtimeSim) start() (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); s.run(ctx) }()
	return func() {
		s.t.Helper()
		cancel()
		wg.Wait()
		select {
		case err := <-s.errs:
			s.t.Fatalf("runtime %s: %v", s.runnerID, err)
		default:
		}
	}
}

// settled reports whether every entity is idle, with no claim or queued
// wake, every sent message acked, and every inbox message replied to.
func settled(c *client, urls []string) (bool, string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, u := range urls {
		r, err := c.do(ctx, "GET", "/_electric/entities"+u, "", nil)
		if err != nil || r.Status != 200 {
			return false, fmt.Sprintf("get %s: %v %v", u, r, err)
		}
		var e entity
		if err := r.decode(&e); err != nil {
			return false, err.Error()
		}
		d := e.Dispatch
		if e.Status != "idle" || d.ActiveConsumerID != nil || d.OutstandingWakeID != nil || d.AckedOffset < d.LastSentOffset {
			return false, fmt.Sprintf("%s: %s", u, r.Body)
		}
		msgs, _, err := c.readStream(ctx, "/v1/stream"+u+"/main", "-1")
		if err != nil {
			return false, err.Error()
		}
		inbox, replies := map[string]bool{}, map[string]bool{}
		for _, m := range msgs {
			var ev struct{ Type, Key string }
			_ = json.Unmarshal(m, &ev)
			switch ev.Type {
			case "inbox":
				inbox[ev.Key] = true
			case "reply":
				replies[strings.TrimPrefix(ev.Key, "reply-")] = true
			}
		}
		for k := range inbox {
			if !replies[k] {
				return false, fmt.Sprintf("%s: inbox %s has no reply", u, k)
			}
		}
	}
	return true, ""
}

// Three entities served by one runner id through two restarts of the
// runtime, the second after a crash holding a claim: every entity ends
// idle with every message acked and answered.
func TestElectricRuntimeWireFormat(t *testing.T) {
	t.Parallel()
	srv := startServer(t, serverConfig{
		DatabaseURL: testdb.New(t).URL, AdminToken: e2eAdmin, SweepInterval: 300 * time.Millisecond,
		DefaultLease: 6 * time.Second, LongPoll: time.Second,
	})
	c := srv.Client()
	const runner = "r-electric"

	// What the runtime's registerTypes() sends (by the driver, admin token).
	c.must(t, "POST", "/_electric/entity-types", "", []byte(`{"name":"chat","description":"replies","state_schemas":{"reply":{"type":"object"}},"default_dispatch_policy":{"targets":[{"type":"runner","runnerId":"`+runner+`"}]}}`), 201)
	c.must(t, "POST", "/_electric/entity-types", "", []byte(`{"name":"chat","description":"replies, again","default_dispatch_policy":{"targets":[{"type":"runner","runnerId":"`+runner+`"}]}}`), 201)

	simA := registerSim(t, srv.URL(), runner, 201)
	stopA := simA.start()
	urls := []string{"/chat/e-1", "/chat/e-2", "/chat/e-3"}
	for _, u := range urls {
		r := c.must(t, "PUT", "/_electric/entities"+u, "", map[string]any{}, 201)
		if !bytes.Contains(r.Body, []byte(`"runner_id":"`+runner+`"`)) {
			t.Fatalf("spawn %s did not take the type's runner: %s", u, r)
		}
	}
	send := func(i int) {
		for _, u := range urls {
			c.must(t, "POST", "/_electric/entities"+u+"/send", "", map[string]any{"payload": map[string]any{"text": fmt.Sprint("hello ", i)}}, 200)
		}
	}
	send(1)
	send(2)
	eventually(t, 20*time.Second, 50*time.Millisecond, "entities settle under the first start", func() (bool, string) { return settled(c, urls) })
	stopA()

	// Restart 1: messages sent while no runtime runs; the restart rotates
	// the token and finds their events from the offset registration gave.
	send(3)
	simB := registerSim(t, srv.URL(), runner, 200)
	if simB.token == simA.token {
		t.Fatal("restart kept the runner token")
	}
	if r, err := simA.heartbeat(context.Background()); err != nil || r.Status != 401 {
		t.Fatalf("old token after restart: %v %v, want 401", r, err)
	}
	if r, err := simA.request(context.Background(), "GET", srv.URL()+"/runners/"+runner+"/wake?offset=-1", nil, simA.auth()...); err != nil || r.Status != 401 {
		t.Fatalf("wake stream with the old token: %v %v, want 401", r, err)
	}
	simB.crashAfterAppend = true // restart 2 follows a crash holding a claim
	stopB := simB.start()
	eventually(t, 20*time.Second, 20*time.Millisecond, "second start claims and crashes", func() (bool, string) {
		return simB.crashed.Load(), "no claim yet"
	})
	stopB()

	// Restart 2: the crashed claim ends by lease expiry, its wake comes back
	// as a new event, and the new start finishes everything.
	simC := registerSim(t, srv.URL(), runner, 200)
	if r, err := simB.heartbeat(context.Background()); err != nil || r.Status != 401 {
		t.Fatalf("old token after second restart: %v %v, want 401", r, err)
	}
	stopC := simC.start()
	send(4)
	eventually(t, 30*time.Second, 50*time.Millisecond, "entities settle after two restarts", func() (bool, string) { return settled(c, urls) })
	stopC()

	var expired []claimRow
	if err := c.must(t, "GET", "/_electric/claims?status=expired", "", nil, 200).decode(&expired); err != nil || len(expired) != 1 {
		t.Fatalf("expired claims: %v %v, want the crashed one", expired, err)
	}
	t.Logf("claims: A %d (%d skipped), B %d, C %d (%d skipped); events read A %d B %d C %d",
		simA.claimed.Load(), simA.skipped.Load(), simB.claimed.Load(), simC.claimed.Load(), simC.skipped.Load(),
		simA.events.Load(), simB.events.Load(), simC.events.Load())
}
