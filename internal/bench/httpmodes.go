package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// runHTTPMode runs modes 1 and 5 against a server: the configured one, or
// one started for this mode serving a fresh tenant.
func runHTTPMode(ctx context.Context, cfg *Config, pool *pgxpool.Pool, m Mode) (res ModeResult, err error) {
	srv := cfg.Server
	if srv.URL == "" {
		tenant := fmt.Sprintf("bench-%s-m%d", cfg.RunID, m)
		fmt.Fprintf(cfg.Log, "mode %d: starting a server for tenant %s\n", m, tenant)
		var stop func() error
		srv, stop, err = cfg.StartServer(ctx, tenant)
		if err != nil {
			return res, fmt.Errorf("start server: %w", err)
		}
		defer func() {
			if serr := stop(); serr != nil && err == nil {
				err = fmt.Errorf("stop server: %w", serr)
			}
		}()
	}
	srv.URL = strings.TrimRight(srv.URL, "/")
	prefix := fmt.Sprintf("%s-m%d", cfg.RunID, m)
	client := &http.Client{
		Timeout: 30 * time.Second,
		Transport: &http.Transport{
			MaxIdleConns: 2 * cfg.Runners, MaxIdleConnsPerHost: 2 * cfg.Runners,
			IdleConnTimeout: time.Minute, DisableCompression: true,
		},
	}
	defer client.CloseIdleConnections()

	runners := make([]*httpRunner, cfg.Runners)
	for i := range runners {
		id := fmt.Sprintf("%s-r%03d", prefix, i+1)
		tok, err := registerRunner(ctx, client, srv, id)
		if err != nil {
			return res, err
		}
		runners[i] = &httpRunner{c: client, base: srv.URL, id: id, token: tok, leaseMs: cfg.LeaseMs, msg: message(id)}
	}
	ds := dataset{tenant: srv.Tenant, prefix: prefix, entities: cfg.entitiesFor(m)}
	if cfg.PinEntities {
		for _, r := range runners {
			ds.runners = append(ds.runners, r.id)
		}
	}
	fmt.Fprintf(cfg.Log, "mode %d: creating %d entities with queued wakes in tenant %s\n", m, ds.entities, ds.tenant)
	setupStart := time.Now()
	if err := ds.create(ctx, pool, !cfg.NoCheckpoint); err != nil {
		return res, err
	}
	fmt.Fprintf(cfg.Log, "mode %d: set up in %s\n", m, time.Since(setupStart).Round(100*time.Millisecond))
	if m == ModeHTTPBacklog {
		if err := queueBacklog(ctx, cfg, pool, ds.tenant, prefix, m); err != nil {
			return res, err
		}
	}
	// One request per runner opens its keep-alive connection before the clock starts.
	for _, r := range runners {
		if err := r.get(ctx, "/healthz"); err != nil {
			return res, fmt.Errorf("warm up: %w", err)
		}
	}
	dcfg := *cfg
	if m == ModeLiveClaims {
		// Claims until every entity is held: bounded by the work, not the clock.
		dcfg.Duration = 10 * time.Minute
		for _, r := range runners {
			r.leaseMs = 600000
		}
	}
	batches0 := scrapeBatches(ctx, client, srv.URL)
	cpu0 := procCPU(srv.PID)
	res, err = drive(ctx, &dcfg, pool, m, cfg.Runners, func(ctx context.Context, i int) (cycleFunc, func(), error) {
		r := runners[i]
		switch m {
		case ModeHTTPNext:
			return r.cycleNext, func() { r.releaseHeld(ctx) }, nil
		case ModeHTTPAppend:
			n, err := r.claim(ctx, newRecorder(1))
			if err != nil {
				return nil, nil, err
			}
			r.next = n
			return r.appendOnly, func() { r.releaseHeld(ctx) }, nil
		case ModeLiveClaims:
			return r.claimOnly, func() {}, nil
		}
		return r.cycle, func() {}, nil
	})
	res.Entities = ds.entities
	res.Batches = scrapeBatches(ctx, client, srv.URL).minus(batches0)
	if srv.PID > 0 {
		res.ServerRSS = rss(srv.PID)
		res.ServerCPU = procCPU(srv.PID) - cpu0
	}
	if m == ModeLiveClaims {
		res.Note = fmt.Sprintf("%d live claims held when RSS was read", res.Cycles)
		if n, rerr := releaseAll(ctx, pool, ds); rerr != nil && res.FirstErr == "" {
			res.FirstErr = rerr.Error()
		} else {
			fmt.Fprintf(cfg.Log, "mode %d: released %d claims\n", m, n)
		}
	}
	if serr := finishMode(ctx, cfg, pool, ds, m, cfg.Server.URL == ""); serr != nil && res.FirstErr == "" {
		res.FirstErr = serr.Error()
	}
	return res, err
}

// procCPU is a process's user+system CPU time so far, from /proc (Linux;
// 0 when unknown). Clock ticks are taken as 100 per second.
func procCPU(pid int) time.Duration {
	if pid <= 0 {
		return 0
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name, which is in parentheses.
	i := strings.LastIndexByte(string(b), ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(ut+st) * 10 * time.Millisecond
}

// rss reads a process's resident set size from /proc (Linux), in bytes.
func rss(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			f := strings.Fields(v)
			if len(f) >= 1 {
				kb, _ := strconv.ParseInt(f[0], 10, 64)
				return kb * 1024
			}
		}
	}
	return 0
}

func registerRunner(ctx context.Context, c *http.Client, srv Server, id string) (string, error) {
	body, _ := json.Marshal(map[string]string{"id": id, "label": "bench", "kind": "bench"})
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/_electric/runners", bytes.NewReader(body))
	if err != nil {
		return "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if srv.AdminToken != "" {
		req.Header.Set("Authorization", "Bearer "+srv.AdminToken)
	}
	var out struct {
		RunnerToken string `json:"runner_token"`
	}
	if err := do(c, req, http.StatusCreated, &out); err != nil {
		return "", fmt.Errorf("register runner %s: %w", id, err)
	}
	if out.RunnerToken == "" {
		return "", fmt.Errorf("register runner %s: no runner_token in the answer", id)
	}
	return out.RunnerToken, nil
}

// do sends req, wants status want, and decodes a JSON answer into out (when
// not nil). It always drains the body so the connection is reused.
func do(c *http.Client, req *http.Request, want int, out any) error {
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("read answer: %w", err)
	}
	if resp.StatusCode != want {
		return &statusError{code: resp.StatusCode, body: strings.TrimSpace(string(b))}
	}
	if out != nil && len(b) > 0 {
		if err := json.Unmarshal(b, out); err != nil {
			return fmt.Errorf("decode answer: %w", err)
		}
	}
	return nil
}

type statusError struct {
	code int
	body string
}

func (e *statusError) Error() string {
	if len(e.body) > 300 {
		e.body = e.body[:300] + "..."
	}
	return fmt.Sprintf("status %d: %s", e.code, e.body)
}

// notification is the part of a wake notification the cycle uses.
type notification struct {
	ConsumerID string `json:"consumer_id"`
	Epoch      int64  `json:"epoch"`
	StreamPath string `json:"stream_path"`
	ClaimToken string `json:"claim_token"`
	WriteToken string `json:"write_token"`
}

// httpRunner is one runner of an HTTP mode.
type httpRunner struct {
	c       *http.Client
	base    string
	id      string
	token   string
	leaseMs int32
	msg     []byte
	next    *notification // handed over by the previous done (mode 5)
}

func (r *httpRunner) get(ctx context.Context, path string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.base+path, nil)
	if err != nil {
		return err
	}
	return do(r.c, req, http.StatusOK, nil)
}

func (r *httpRunner) post(ctx context.Context, path, token string, body []byte) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, r.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	return req, nil
}

func (r *httpRunner) claim(ctx context.Context, rec *recorder) (*notification, error) {
	var n notification
	err := rec.time(0, func() error {
		req, err := r.post(ctx, "/_electric/runners/"+url.PathEscape(r.id)+"/claim", r.token,
			[]byte(`{"lease_ttl_ms":`+strconv.Itoa(int(r.leaseMs))+`}`))
		if err != nil {
			return err
		}
		resp, err := r.c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, err := io.ReadAll(resp.Body)
		if err != nil {
			return err
		}
		switch resp.StatusCode {
		case http.StatusNoContent:
			return errNoWork
		case http.StatusOK:
			return json.Unmarshal(b, &n)
		}
		return &statusError{code: resp.StatusCode, body: string(b)}
	})
	if err == errNoWork {
		return nil, err
	}
	if err != nil {
		return nil, fmt.Errorf("claim: %w", err)
	}
	return &n, nil
}

func (r *httpRunner) appendMsg(ctx context.Context, rec *recorder, n *notification) (string, error) {
	return r.appendMsgAt(ctx, rec, 1, n)
}

// appendMsgAt appends the runner's message to n's stream, timed as step i.
func (r *httpRunner) appendMsgAt(ctx context.Context, rec *recorder, i int, n *notification) (string, error) {
	var off string
	err := rec.time(i, func() error {
		req, err := r.post(ctx, n.StreamPath, n.WriteToken, r.msg)
		if err != nil {
			return err
		}
		resp, err := r.c.Do(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode/100 != 2 {
			return &statusError{code: resp.StatusCode, body: string(b)}
		}
		off = resp.Header.Get("Stream-Next-Offset")
		if off == "" {
			return fmt.Errorf("no Stream-Next-Offset in the answer")
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("append to %s: %w", n.StreamPath, err)
	}
	return off, nil
}

type doneAnswer struct {
	Released      bool          `json:"released"`
	EntityCleared bool          `json:"entity_cleared"`
	Next          *notification `json:"next"`
}

// done releases n, acking the main stream up to off ("" acks nothing).
func (r *httpRunner) done(ctx context.Context, rec *recorder, n *notification, off string, claimNext bool) (*doneAnswer, error) {
	acks := []map[string]string{}
	if off != "" {
		acks = append(acks, map[string]string{"stream": n.StreamPath, "offset": off})
	}
	body, _ := json.Marshal(map[string]any{"epoch": n.Epoch, "done": true, "claim_next": claimNext, "acks": acks})
	var out doneAnswer
	err := rec.time(2, func() error {
		req, err := r.post(ctx, "/_electric/wake-callbacks/"+url.PathEscape(n.ConsumerID), n.ClaimToken, body)
		if err != nil {
			return err
		}
		return do(r.c, req, http.StatusOK, &out)
	})
	if err != nil {
		return nil, fmt.Errorf("done %s/%d: %w", n.ConsumerID, n.Epoch, err)
	}
	if !out.Released || !out.EntityCleared {
		return nil, fmt.Errorf("done %s/%d: released=%t entity_cleared=%t", n.ConsumerID, n.Epoch, out.Released, out.EntityCleared)
	}
	return &out, nil
}

// cycle is mode 1: claim, append, done; three requests, three commits.
func (r *httpRunner) cycle(ctx context.Context, rec *recorder) error {
	n, err := r.claim(ctx, rec)
	if err != nil {
		return err
	}
	off, err := r.appendMsg(ctx, rec, n)
	if err != nil {
		return err
	}
	_, err = r.done(ctx, rec, n, off, false)
	return err
}

// cycleNext is mode 5: append, then a done that claims the next wake.
func (r *httpRunner) cycleNext(ctx context.Context, rec *recorder) error {
	n := r.next
	if n == nil {
		var err error
		if n, err = r.claim(ctx, rec); err != nil {
			return err
		}
	}
	r.next = nil
	off, err := r.appendMsg(ctx, rec, n)
	if err != nil {
		return err
	}
	a, err := r.done(ctx, rec, n, off, true)
	if err != nil {
		return err
	}
	r.next = a.Next
	return nil
}

// releaseHeld ends the claim a runner of mode 5 still holds when the time
// is up, so the bench leaves no active claim behind. Not timed.
func (r *httpRunner) releaseHeld(ctx context.Context) {
	n := r.next
	if n == nil {
		return
	}
	r.next = nil
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	_, _ = r.done(ctx, newRecorder(3), n, "", false)
}

// appendOnly is mode 7: one append with the held claim's write token.
func (r *httpRunner) appendOnly(ctx context.Context, rec *recorder) error {
	_, err := r.appendMsgAt(ctx, rec, 0, r.next)
	return err
}

// claimOnly is mode 9: claim and keep the claim.
func (r *httpRunner) claimOnly(ctx context.Context, rec *recorder) error {
	_, err := r.claim(ctx, rec)
	return err
}

// releaseAll releases every active claim of the mode's entities through
// release_claim, after mode 9 read the server's memory.
func releaseAll(ctx context.Context, pool *pgxpool.Pool, ds dataset) (int64, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Minute)
	defer cancel()
	var n int64
	err := pool.QueryRow(ctx, `
		SELECT count(*) FROM (
		    SELECT c.consumer_id, c.epoch FROM consumer_claims c
		     WHERE c.tenant_id = $1 AND c.status = 'active' AND c.entity_url LIKE $2
		) a, LATERAL release_claim(a.consumer_id, a.epoch, '[]', NULL, $1)`,
		ds.tenant, "/bench/"+escapeLike(ds.prefix)+"-%").Scan(&n)
	if err != nil {
		return 0, fmt.Errorf("release live claims: %w", err)
	}
	return n, nil
}
