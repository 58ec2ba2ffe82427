package e2e

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptrace"
	"net/url"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// slack absorbs process scheduling on a loaded 2-core machine; every
// deadline is the spec's bound plus this.
const slack = time.Second

// claimStatus returns the status of claim (consumer, epoch) in the claims list.
func claimStatus(t testing.TB, c *client, w *wake) string {
	t.Helper()
	for _, r := range c.claims(t, "entity_url="+url.QueryEscape(w.EntityURL)) {
		if r.ConsumerID == w.ConsumerID && r.Epoch == w.Epoch {
			return r.Status
		}
	}
	return "(missing)"
}

// appendOK appends one message with token and fails unless it is accepted.
func appendOK(t testing.TB, c *client, stream, token string, msg any) {
	t.Helper()
	r, err := c.appendMsg(context.Background(), stream, token, msg)
	if err != nil {
		t.Fatalf("append to %s: %v", stream, err)
	}
	if r.Status/100 != 2 {
		t.Fatalf("append to %s with the live write token: %s", stream, r)
	}
}

// tokenRejected is a poll check: an append with token gets 401.
func tokenRejected(t testing.TB, c *client, stream, token string) func() (bool, string) {
	return func() (bool, string) {
		r, err := c.appendMsg(context.Background(), stream, token, map[string]any{"type": "probe"})
		if err != nil {
			return false, err.Error()
		}
		return r.Status == http.StatusUnauthorized, "append answered " + r.String()
	}
}

func runnerHealth(t testing.TB, c *client, run runnerCreds) (active int) {
	t.Helper()
	var h struct {
		Claims struct {
			ActiveCount int `json:"active_count"`
		} `json:"claims"`
	}
	if err := c.must(t, "GET", "/_electric/runners/"+run.ID+"/health", run.Token, nil, http.StatusOK).decode(&h); err != nil {
		t.Fatal(err)
	}
	return h.Claims.ActiveCount
}

// TestLeaseExpiry: a claim nobody heartbeats expires within its lease plus
// one sweep interval; the entity goes idle, its wake is queued again (a
// message was sent and nothing acked), the sweeper drops the write token,
// and another runner claims the wake with a higher epoch. The expired
// claim's late done and heartbeat change nothing.
func TestLeaseExpiry(t *testing.T) {
	t.Parallel()
	const sweep, lease = 200 * time.Millisecond, 1000 * time.Millisecond
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL, SweepInterval: sweep})
	c := srv.Client()
	r1, r2 := c.registerRunner(t, "r1"), c.registerRunner(t, "r2")
	const ent = "/task/lease-1"
	c.spawn(t, ent)
	sent := c.send(t, ent, map[string]any{"text": "hello"})

	w1 := c.claim(t, r1, int(lease.Milliseconds()))
	claimedAt := time.Now()
	if w1 == nil || w1.EntityURL != ent {
		t.Fatalf("claim: got %+v, want a wake for %s", w1, ent)
	}
	appendOK(t, c, w1.StreamPath, w1.WriteToken, map[string]any{"type": "reply", "n": 1})

	bound := time.Until(claimedAt.Add(lease + sweep + slack))
	took := eventually(t, bound, 20*time.Millisecond, "claim expired by the sweeper", func() (bool, string) {
		s := claimStatus(t, c, w1)
		return s == "expired", "claim status " + s
	})
	t.Logf("claim expired %s after the claim answered (lease %s, sweep %s)", took, lease, sweep)

	e := c.entity(t, ent)
	if e.Status != "idle" || e.Dispatch.ActiveConsumerID != nil {
		t.Fatalf("after expiry: entity %s, active consumer %v; want idle with an empty slot", e.Status, e.Dispatch.ActiveConsumerID)
	}
	if e.Dispatch.OutstandingWakeID == nil {
		t.Fatalf("after expiry: no outstanding wake, but message %s was never acked (acked %s)", sent, e.Dispatch.AckedOffset)
	}
	if e.Dispatch.AckedOffset >= sent {
		t.Fatalf("acked_offset %s moved past %s without a done", e.Dispatch.AckedOffset, sent)
	}
	eventually(t, time.Second, 20*time.Millisecond, "expired claim's write token rejected", tokenRejected(t, c, w1.StreamPath, w1.WriteToken))
	if n := runnerHealth(t, c, r1); n != 0 {
		t.Fatalf("r1 health: %d active claims after expiry, want 0", n)
	}

	w2 := c.claim(t, r2, 30000)
	if w2 == nil || w2.EntityURL != ent || w2.Epoch <= w1.Epoch {
		t.Fatalf("second claim: got %+v, want %s with epoch > %d", w2, ent, w1.Epoch)
	}
	if w2.Streams[0].Offset != e.Dispatch.AckedOffset {
		t.Fatalf("second claim resumes at %s, want the acked offset %s", w2.Streams[0].Offset, e.Dispatch.AckedOffset)
	}

	// The expired claim's late callbacks change nothing.
	late := c.done(t, w1, ack{Stream: w1.StreamPath, Offset: sent})
	if late.Released || late.EntityCleared || late.ClaimStatus != "expired" {
		t.Fatalf("late done of the expired claim: %+v, want released=false, claim_status=expired", late)
	}
	if r := c.must(t, "POST", callbackPath(w1), w1.ClaimToken, map[string]any{"epoch": w1.Epoch}, http.StatusConflict); r.Code() != "CLAIM_NOT_ACTIVE" {
		t.Fatalf("heartbeat of the expired claim: %s, want CLAIM_NOT_ACTIVE", r)
	}
	if e := c.entity(t, ent); e.Status != "running" || e.Dispatch.ActiveEpoch == nil || *e.Dispatch.ActiveEpoch != w2.Epoch {
		t.Fatalf("after the late done: entity %s epoch %v, want running under epoch %d", e.Status, e.Dispatch.ActiveEpoch, w2.Epoch)
	}
	appendOK(t, c, w2.StreamPath, w2.WriteToken, map[string]any{"type": "reply", "n": 2})

	_, tail, err := c.readStream(context.Background(), w2.StreamPath, w2.Streams[0].Offset)
	if err != nil {
		t.Fatal(err)
	}
	res := c.done(t, w2, ack{Stream: w2.StreamPath, Offset: tail})
	if !res.Released || !res.EntityCleared || res.EntityStatus != "idle" {
		t.Fatalf("done: %+v", res)
	}
	e = c.entity(t, ent)
	if e.Status != "idle" || e.Dispatch.AckedOffset < sent || e.Dispatch.OutstandingWakeID != nil {
		t.Fatalf("after done: entity %s acked %s outstanding %v; want idle, acked >= %s, no wake", e.Status, e.Dispatch.AckedOffset, e.Dispatch.OutstandingWakeID, sent)
	}
}

// TestHeartbeatKeepsClaimAlive: callback heartbeats keep a 1 s claim active
// across more than three lease lengths; once they stop, the claim expires
// within lease + sweep and a further heartbeat gets 409 CLAIM_NOT_ACTIVE.
func TestHeartbeatKeepsClaimAlive(t *testing.T) {
	t.Parallel()
	const sweep, lease = 200 * time.Millisecond, 1000 * time.Millisecond
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL, SweepInterval: sweep})
	c := srv.Client()
	run := c.registerRunner(t, "hb")
	const ent = "/task/hb-1"
	c.spawn(t, ent)
	c.send(t, ent, "work")
	w := c.claim(t, run, int(lease.Milliseconds()))
	if w == nil {
		t.Fatal("no wake")
	}
	start := time.Now()
	beats := 0
	var last time.Time
	for time.Since(start) < 3*lease+lease/2 {
		r := c.must(t, "POST", callbackPath(w), w.ClaimToken, map[string]any{"epoch": w.Epoch}, http.StatusOK)
		last = time.Now()
		var hb struct {
			LeaseExpiresAt time.Time `json:"lease_expires_at"`
		}
		if err := r.decode(&hb); err != nil || !hb.LeaseExpiresAt.After(last.Add(lease/2)) {
			t.Fatalf("heartbeat %d: %s: lease does not run about %s from now", beats, r, lease)
		}
		beats++
		time.Sleep(lease / 4)
	}
	if s := claimStatus(t, c, w); s != "active" {
		t.Fatalf("after %d heartbeats over %s: claim %s, want active", beats, time.Since(start), s)
	}
	appendOK(t, c, w.StreamPath, w.WriteToken, map[string]any{"type": "reply"})
	t.Logf("%d heartbeats kept a %s claim alive for %s", beats, lease, time.Since(start).Round(time.Millisecond))

	eventually(t, time.Until(last.Add(lease+sweep+slack)), 20*time.Millisecond, "claim expired once heartbeats stopped", func() (bool, string) {
		s := claimStatus(t, c, w)
		return s == "expired", "claim status " + s
	})
	if r := c.must(t, "POST", callbackPath(w), w.ClaimToken, map[string]any{"epoch": w.Epoch}, http.StatusConflict); r.Code() != "CLAIM_NOT_ACTIVE" {
		t.Fatalf("heartbeat after expiry: %s, want 409 CLAIM_NOT_ACTIVE", r)
	}
	if e := c.entity(t, ent); e.Status != "idle" {
		t.Fatalf("entity %s after expiry, want idle", e.Status)
	}
}

// TestPsqlReleaseReachesMemory: release_claim run from an operator's SQL
// session ends the claim in the database and, through NOTIFY/LISTEN, the
// server drops the write token within one second.
func TestPsqlReleaseReachesMemory(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL})
	c := srv.Client()
	run := c.registerRunner(t, "psql")
	const ent = "/task/psql-1"
	c.spawn(t, ent)
	c.send(t, ent, "work")
	w := c.claim(t, run, 30000)
	if w == nil {
		t.Fatal("no wake")
	}
	appendOK(t, c, w.StreamPath, w.WriteToken, map[string]any{"type": "reply"})

	conn := sqlConn(t, d.URL)
	var released, cleared bool
	if err := conn.QueryRow(context.Background(), "SELECT released, entity_cleared FROM release_claim($1, $2)",
		w.ConsumerID, w.Epoch).Scan(&released, &cleared); err != nil {
		t.Fatalf("release_claim from SQL: %v", err)
	}
	if !released || !cleared {
		t.Fatalf("release_claim: released=%v entity_cleared=%v", released, cleared)
	}
	took := eventually(t, time.Second, 10*time.Millisecond, "old write token rejected after the SQL release", tokenRejected(t, c, w.StreamPath, w.WriteToken))
	t.Logf("token dropped %s after the SQL release", took)
	if e := c.entity(t, ent); e.Status != "idle" {
		t.Fatalf("entity %s after the SQL release, want idle", e.Status)
	}
}

// listenPIDs returns the backends of db that are LISTENing (the server's
// claim listener), excluding the caller's own.
func listenPIDs(t testing.TB, dbURL string) []int32 {
	t.Helper()
	conn := sqlConn(t, dbURL)
	rows, err := conn.Query(context.Background(), `SELECT pid FROM pg_stat_activity
		WHERE datname = current_database() AND pid <> pg_backend_pid() AND query ILIKE 'LISTEN%'`)
	if err != nil {
		t.Fatalf("pg_stat_activity: %v", err)
	}
	defer rows.Close()
	var pids []int32
	for rows.Next() {
		var p int32
		if err := rows.Scan(&p); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, p)
	}
	return pids
}

// TestListenerReconnect: the server's LISTEN connection is terminated with
// pg_terminate_backend. A release done while it is gone (its notification
// lost) still reaches memory through the reconnect's re-check, and a release
// after the reconnect reaches it through NOTIFY again.
func TestListenerReconnect(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL})
	c := srv.Client()
	run := c.registerRunner(t, "lr")
	for _, e := range []string{"/task/lr-a", "/task/lr-b"} {
		c.spawn(t, e)
	}
	var old []int32
	eventually(t, 10*time.Second, 20*time.Millisecond, "server LISTEN backend visible", func() (bool, string) {
		old = listenPIDs(t, d.URL)
		return len(old) == 1, fmt.Sprintf("LISTEN backends %v", old)
	})

	c.send(t, "/task/lr-a", "a")
	wa := c.claim(t, run, 30000)
	appendOK(t, c, wa.StreamPath, wa.WriteToken, map[string]any{"type": "reply"})

	conn := sqlConn(t, d.URL)
	var ok bool
	if err := conn.QueryRow(context.Background(), "SELECT pg_terminate_backend($1)", old[0]).Scan(&ok); err != nil || !ok {
		t.Fatalf("pg_terminate_backend(%d): %v %v", old[0], ok, err)
	}
	// Released while the listener is down or reconnecting.
	if _, err := conn.Exec(context.Background(), "SELECT * FROM release_claim($1, $2)", wa.ConsumerID, wa.Epoch); err != nil {
		t.Fatal(err)
	}
	took := eventually(t, 5*time.Second, 20*time.Millisecond, "token of the claim released during the outage rejected",
		tokenRejected(t, c, wa.StreamPath, wa.WriteToken))
	t.Logf("release during listener outage reached memory after %s", took)

	took = eventually(t, 5*time.Second, 20*time.Millisecond, "listener reconnected", func() (bool, string) {
		pids := listenPIDs(t, d.URL)
		return len(pids) == 1 && pids[0] != old[0], fmt.Sprintf("LISTEN backends %v (old %d)", pids, old[0])
	})
	t.Logf("new LISTEN backend visible after %s", took)

	c.send(t, "/task/lr-b", "b")
	// The SQL release acked nothing, so lr-a has a wake queued again; either
	// entity's wake will do.
	wb := c.claim(t, run, 30000)
	if wb == nil {
		t.Fatal("no wake after the reconnect")
	}
	appendOK(t, c, wb.StreamPath, wb.WriteToken, map[string]any{"type": "reply"})
	if _, err := conn.Exec(context.Background(), "SELECT * FROM release_claim($1, $2)", wb.ConsumerID, wb.Epoch); err != nil {
		t.Fatal(err)
	}
	took = eventually(t, time.Second, 10*time.Millisecond, "token rejected after a release once reconnected",
		tokenRejected(t, c, wb.StreamPath, wb.WriteToken))
	t.Logf("release after reconnect reached memory after %s", took)
}

// TestSigkillBetweenMintAndDone: the server dies (SIGKILL) after minting a
// write token; a new process on the same database has an empty token map.
// The old token still appends (checked against its claim's row, with no
// new callback), a claim request hands back the same token, and the done
// releases the claim by its durable identity: entity idle, no active
// claim, token gone. A repeated done changes nothing.
func TestSigkillBetweenMintAndDone(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL})
	c := srv.Client()
	run := c.registerRunner(t, "kill")
	const ent = "/task/kill-1"
	c.spawn(t, ent)
	sent := c.send(t, ent, "work")
	w := c.claim(t, run, 30000)
	if w == nil {
		t.Fatal("no wake")
	}
	appendOK(t, c, w.StreamPath, w.WriteToken, map[string]any{"type": "reply", "n": 1})

	srv.Restart() // SIGKILL, then a new process on the same address and database

	appendOK(t, c, w.StreamPath, w.WriteToken, map[string]any{"type": "reply", "n": 2})
	r := c.must(t, "POST", callbackPath(w), w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID}, http.StatusOK)
	var rm struct {
		WriteToken string `json:"write_token"`
	}
	if err := r.decode(&rm); err != nil || rm.WriteToken != w.WriteToken {
		t.Fatalf("claim request after restart: %s, want the claim's token again", r)
	}

	msgs, tail, err := c.readStream(context.Background(), w.StreamPath, w.Streams[0].Offset)
	if err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 3 { // the sent message and both replies survived the SIGKILL
		t.Fatalf("main stream after restart holds %d messages, want 3", len(msgs))
	}
	res := c.done(t, w, ack{Stream: w.StreamPath, Offset: tail})
	if !res.Released || !res.EntityCleared || res.ClaimStatus != "released" || res.EntityStatus != "idle" {
		t.Fatalf("done after restart: %+v", res)
	}
	e := c.entity(t, ent)
	if e.Status != "idle" || e.Dispatch.AckedOffset < sent || e.Dispatch.ActiveConsumerID != nil {
		t.Fatalf("entity after done: %+v", e)
	}
	if n := runnerHealth(t, c, run); n != 0 {
		t.Fatalf("health: %d active claims, want 0", n)
	}
	if n := len(c.claims(t, "status=active")); n != 0 {
		t.Fatalf("%d active claims, want 0", n)
	}
	eventually(t, time.Second, 10*time.Millisecond, "re-minted token dropped by the done", tokenRejected(t, c, w.StreamPath, rm.WriteToken))
	if again := c.done(t, w, ack{Stream: w.StreamPath, Offset: tail}); again.Released || again.ClaimStatus != "released" {
		t.Fatalf("repeated done: %+v, want released=false", again)
	}
	if r := c.must(t, "POST", callbackPath(w), w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID}, http.StatusConflict); r.Code() != "CLAIM_NOT_ACTIVE" {
		t.Fatalf("claim request after done: %s", r)
	}
}

// TestGracefulShutdown: SIGTERM while a long-poll read is in flight. The
// read gets its normal answer (204, up to date: the server releases live
// readers before it waits for in-flight requests) and the process exits 0
// within the shutdown bound (10 s), whether the long-poll timeout is shorter
// or much longer than that bound.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		longPoll time.Duration
		exitIn   time.Duration // SIGTERM to exit, at most
		answered bool          // the long-poll gets its normal answer
	}{
		{"long-poll shorter than the bound", 2 * time.Second, 2*time.Second + 5*time.Second, true},
		{"long-poll longer than the bound", time.Minute, 10*time.Second + 5*time.Second, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			d := testdb.New(t)
			srv := startServer(t, serverConfig{DatabaseURL: d.URL, LongPoll: tc.longPoll})
			c := srv.Client()
			c.hc.Timeout = 2 * time.Minute
			r, err := c.do(context.Background(), "PUT", "/v1/stream/e2e/shutdown", "", []byte{})
			if err != nil || r.Status/100 != 2 {
				t.Fatalf("create stream: %v %v", r, err)
			}
			wrote := make(chan struct{})
			ctx := httptrace.WithClientTrace(context.Background(), &httptrace.ClientTrace{
				WroteRequest: func(httptrace.WroteRequestInfo) { close(wrote) },
			})
			type result struct {
				r   *response
				err error
			}
			got := make(chan result, 1)
			// The long-poll goes over a fresh connection: a request written to
			// an idle keep-alive connection just as the server shuts down may
			// be dropped by the server and retried by the client, by design.
			lp := newClient(srv.URL(), "")
			lp.hc.Timeout = 2 * time.Minute
			lp.hc.Transport.(*http.Transport).DisableKeepAlives = true
			go func() {
				r, err := lp.do(ctx, "GET", "/v1/stream/e2e/shutdown?offset=-1&live=long-poll", "", nil)
				got <- result{r, err}
			}()
			<-wrote
			// Let the server accept the connection and start the handler (a
			// connection still in the listen backlog dies with the listener).
			time.Sleep(300 * time.Millisecond)
			code, took := srv.Terminate(tc.exitIn)
			if code != 0 {
				t.Fatalf("exit code %d after SIGTERM, want 0", code)
			}
			t.Logf("exited %s after SIGTERM", took.Round(time.Millisecond))
			res := <-got
			if tc.answered {
				if res.err != nil || res.r.Status != http.StatusNoContent || res.r.Header.Get("Stream-Up-To-Date") != "true" {
					t.Fatalf("in-flight long-poll: %v %v, want its normal 204 up-to-date answer", res.r, res.err)
				}
			}
			if _, err := c.do(context.Background(), "GET", "/healthz", "", nil); err == nil {
				t.Fatal("the server still answers after exiting")
			}
		})
	}
}

// TestDatabaseLoss: PostgreSQL goes away under a running server. Requests
// during the outage get 503 DATABASE_UNAVAILABLE (never a hang: every request
// has a client timeout, never a 500), and once the database is back the
// server recovers by itself: live write tokens still work, dones and claims
// work, and the listener has reconnected.
func TestDatabaseLoss(t *testing.T) {
	t.Parallel()
	t.Run("postgres stopped and started", func(t *testing.T) {
		t.Parallel()
		pg := startCluster(t)
		srv := startServer(t, serverConfig{DatabaseURL: pg.URL, SweepInterval: 250 * time.Millisecond})
		checkDatabaseLoss(t, srv, pg.URL, func() func() {
			pg.Stop()
			return pg.Start
		})
	})
	t.Run("all backends terminated", func(t *testing.T) {
		t.Parallel()
		d := testdb.New(t)
		srv := startServer(t, serverConfig{DatabaseURL: d.URL, SweepInterval: 250 * time.Millisecond})
		checkDatabaseLoss(t, srv, d.URL, func() func() {
			conn := sqlConn(t, d.URL)
			if _, err := conn.Exec(context.Background(), `SELECT pg_terminate_backend(pid) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid()`); err != nil {
				t.Fatal(err)
			}
			return nil // the database stays up: the next requests meet dead connections
		})
	})
}

// checkDatabaseLoss runs the outage scenario; outage() takes the database
// away and returns the function that brings it back (nil: already back).
func checkDatabaseLoss(t *testing.T, srv *serverProc, dbURL string, outage func() func()) {
	c := srv.Client()
	run := c.registerRunner(t, "dbl")
	const ent = "/task/dbl-1"
	c.spawn(t, ent)
	sent := c.send(t, ent, "before")
	w := c.claim(t, run, 60000)
	if w == nil {
		t.Fatal("no wake")
	}
	appendOK(t, c, w.StreamPath, w.WriteToken, map[string]any{"type": "reply", "n": 1})

	requests := []struct {
		method, path, token string
		body                any
	}{
		{"GET", "/entities" + ent, "", nil},
		{"POST", "/entities" + ent, "", map[string]any{"payload": "during"}},
		{"POST", "/_electric/runners/" + run.ID + "/claim", run.Token, map[string]any{}},
		{"POST", callbackPath(w), w.ClaimToken, map[string]any{"epoch": w.Epoch}},
		{"GET", "/_electric/claims?status=active", "", nil},
		{"POST", w.StreamPath, w.WriteToken, []byte(`{"type":"reply","n":2}`)},
	}
	restore := outage()
	saw503 := 0
	for _, q := range requests {
		r, err := c.do(context.Background(), q.method, q.path, q.token, q.body)
		if err != nil {
			t.Fatalf("%s %s during the outage: %v (a request must be answered, not hang)", q.method, q.path, err)
		}
		switch {
		case r.Status == http.StatusServiceUnavailable:
			if r.Code() != "DATABASE_UNAVAILABLE" || r.Header.Get("Retry-After") == "" {
				t.Errorf("%s %s during the outage: %s (Retry-After %q), want code DATABASE_UNAVAILABLE with Retry-After",
					q.method, q.path, r, r.Header.Get("Retry-After"))
			}
			saw503++
		case r.Status >= 500:
			t.Fatalf("%s %s during the outage: %s, want 503", q.method, q.path, r)
		case restore != nil:
			t.Fatalf("%s %s with PostgreSQL down: %s, want 503", q.method, q.path, r)
		}
	}
	if r := c.must(t, "GET", "/readyz", "", nil, http.StatusOK, http.StatusServiceUnavailable); restore != nil && r.Status != http.StatusServiceUnavailable {
		t.Fatalf("/readyz with PostgreSQL down: %s", r)
	}
	t.Logf("%d of %d requests during the outage answered 503", saw503, len(requests))
	if restore != nil {
		restore()
	}

	took := eventually(t, 20*time.Second, 50*time.Millisecond, "server serves again", func() (bool, string) {
		r, err := c.do(context.Background(), "GET", "/entities"+ent, "", nil)
		if err != nil {
			return false, err.Error()
		}
		if r.Status >= 500 && r.Status != http.StatusServiceUnavailable {
			t.Fatalf("after the outage: %s", r)
		}
		return r.Status == http.StatusOK, r.String()
	})
	t.Logf("recovered %s after the database came back", took.Round(time.Millisecond))
	// Ready once the LISTEN connection is back as well (it retries every 500 ms).
	eventually(t, 10*time.Second, 50*time.Millisecond, "ready again", func() (bool, string) {
		r, err := c.do(context.Background(), "GET", "/readyz", "", nil)
		if err != nil {
			return false, err.Error()
		}
		return r.Status == http.StatusOK, r.String()
	})

	// The live claim's write token survived (memory protects live writes).
	appendOK(t, c, w.StreamPath, w.WriteToken, map[string]any{"type": "reply", "n": 3})
	_, tail, err := c.readStream(context.Background(), w.StreamPath, w.Streams[0].Offset)
	if err != nil {
		t.Fatal(err)
	}
	res := c.done(t, w, ack{Stream: w.StreamPath, Offset: tail})
	if !res.Released || !res.EntityCleared {
		t.Fatalf("done after the outage: %+v", res)
	}
	if e := c.entity(t, ent); e.Status != "idle" || e.Dispatch.AckedOffset < sent {
		t.Fatalf("entity after done: %+v", e)
	}

	// Claims work again, and the listener is back: a SQL release reaches memory.
	c.send(t, ent, "after")
	w2 := c.claim(t, run, 60000)
	if w2 == nil || w2.Epoch <= w.Epoch {
		t.Fatalf("claim after the outage: %+v", w2)
	}
	appendOK(t, c, w2.StreamPath, w2.WriteToken, map[string]any{"type": "reply", "n": 4})
	conn := sqlConn(t, dbURL)
	if _, err := conn.Exec(context.Background(), "SELECT * FROM release_claim($1, $2)", w2.ConsumerID, w2.Epoch); err != nil {
		t.Fatal(err)
	}
	eventually(t, 5*time.Second, 20*time.Millisecond, "SQL release reaches memory after the outage",
		tokenRejected(t, c, w2.StreamPath, w2.WriteToken))
}
