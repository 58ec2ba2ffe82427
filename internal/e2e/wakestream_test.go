package e2e

// Wake streams across a SIGKILL of the server and with wakes queued from
// psql: the events are exactly the queued wakes, and live readers hear of a
// wake whoever committed it.

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/pullwake/pullwake/internal/testdb"
)

type wakeEventJSON struct {
	Type           string `json:"type"`
	SubscriptionID string `json:"subscription_id"`
	Stream         string `json:"stream"`
	Generation     int64  `json:"generation"`
	TS             int64  `json:"ts"`
}

// readWakeEvents reads a runner's whole wake stream (catch-up).
func readWakeEvents(t testing.TB, base, runner, token string) []wakeEventJSON {
	t.Helper()
	s := &runtimeSim{t: t, base: base, hc: &http.Client{Timeout: 10 * time.Second}}
	msgs, _, err := func() ([]json.RawMessage, string, error) {
		var all []json.RawMessage
		offset := "-1"
		for range 100 {
			r, err := s.request(context.Background(), "GET", base+"/runners/"+runner+"/wake?offset="+offset, nil, "Authorization", "Bearer "+token)
			if err != nil || r.Status != 200 {
				return nil, "", fmt.Errorf("read wake stream: %v %v", r, err)
			}
			var m []json.RawMessage
			if err := json.Unmarshal(r.Body, &m); err != nil {
				return nil, "", err
			}
			all = append(all, m...)
			offset = r.Header.Get("Stream-Next-Offset")
			if r.Header.Get("Stream-Up-To-Date") == "true" {
				return all, offset, nil
			}
		}
		return nil, "", fmt.Errorf("never up to date")
	}()
	if err != nil {
		t.Fatal(err)
	}
	out := make([]wakeEventJSON, 0, len(msgs))
	for _, m := range msgs {
		var e wakeEventJSON
		if err := json.Unmarshal(m, &e); err != nil {
			t.Fatalf("event %s: %v", m, err)
		}
		out = append(out, e)
	}
	return out
}

// Sends race a SIGKILL of the server; after the restart (and sends from
// psql while it was down) the wake stream holds exactly one event per
// queued wake: none lost, none twice, none for a send that did not commit.
func TestWakeEventsSurviveSigkill(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL, AdminToken: e2eAdmin})
	c := srv.Client()
	run := registerSim(t, srv.URL(), "r-kill", 201)
	const n = 40
	for i := range n {
		c.must(t, "PUT", fmt.Sprintf("/entities/chat/k%d", i), "", map[string]any{"runner_id": "r-kill"}, 201)
	}

	// Half the sends answered before the kill, the other half in flight
	// when it comes (the kill follows the first of their answers).
	accepted := make(chan string, n)
	for i := range n / 2 {
		url := fmt.Sprintf("/chat/k%d", i)
		c.must(t, "POST", "/entities"+url, "", map[string]any{"payload": i}, 202)
		accepted <- url
	}
	var wg sync.WaitGroup
	first := make(chan struct{}, n)
	for i := n / 2; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			url := fmt.Sprintf("/chat/k%d", i)
			r, err := c.do(context.Background(), "POST", "/entities"+url, "", map[string]any{"payload": i})
			if err == nil && r.Status == 202 {
				accepted <- url
			}
			first <- struct{}{}
		}()
	}
	<-first
	srv.Kill()
	wg.Wait()
	close(accepted)
	// While the server is down, psql queues more.
	conn := sqlConn(t, d.URL)
	for i := n - 3; i < n; i++ {
		if _, err := conn.Exec(context.Background(), `SELECT * FROM send_to_entity($1, '"from psql"')`, fmt.Sprintf("/chat/k%d", i)); err != nil {
			t.Fatal(err)
		}
	}
	srv.Start()

	rows, err := conn.Query(context.Background(), `SELECT e.main_stream FROM wakes w JOIN entities e ON e.url = w.entity_url
		WHERE w.status = 'queued' ORDER BY 1`)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			t.Fatal(err)
		}
		want = append(want, s)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	answered := 0
	for url := range accepted {
		answered++
		found := false
		for _, s := range want {
			found = found || s == "/v1/stream"+url+"/main"
		}
		if !found {
			t.Fatalf("send to %s answered 202 but no wake is queued", url)
		}
	}

	// The restarted server publishes the log (the rows the killed one had
	// not published, and psql's) on its own.
	waitLogPublished(t, conn)
	events := readWakeEvents(t, srv.URL(), "r-kill", run.token)
	var got []string
	for _, e := range events {
		if e.Type != "wake" || e.SubscriptionID != "runner:r-kill" || e.Generation != 1 || e.TS <= 0 {
			t.Fatalf("malformed event %+v", e)
		}
		got = append(got, e.Stream)
	}
	sort.Strings(got)
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("wake events after SIGKILL:\n got %v\nwant %v (one per queued wake)", got, want)
	}
	t.Logf("%d wakes queued (%d sends answered before the kill, 3 from psql), %d events", len(want), answered, len(events))
}

// A runner long-polling its wake stream hears of a wake queued from psql on
// another connection: the server's publisher (its timer) publishes the
// event, and its wake watcher wakes the reader.
func TestWakeFromPsqlReachesLongPoll(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	srv := startServer(t, serverConfig{DatabaseURL: d.URL, AdminToken: e2eAdmin, LongPoll: 30 * time.Second})
	c := srv.Client()
	run := registerSim(t, srv.URL(), "r-psql", 201)
	conn := sqlConn(t, d.URL)
	offset := run.offset
	for i := range 5 {
		url := fmt.Sprintf("/chat/p%d", i)
		c.must(t, "PUT", "/entities"+url, "", map[string]any{"runner_id": "r-psql"}, 201)
		type result struct {
			r   *response
			err error
			at  time.Time
		}
		done := make(chan result, 1)
		go func() {
			r, err := run.request(context.Background(), "GET", srv.URL()+"/runners/r-psql/wake?offset="+offset+"&live=long-poll", nil, run.auth()...)
			done <- result{r, err, time.Now()}
		}()
		var committed time.Time
		if _, err := conn.Exec(context.Background(), `SELECT * FROM send_to_entity($1, '"psql"')`, url); err != nil {
			t.Fatal(err)
		}
		committed = time.Now()
		select {
		case res := <-done:
			if res.err != nil || res.r.Status != 200 {
				t.Fatalf("long-poll: %v %v", res.r, res.err)
			}
			var evs []wakeEventJSON
			if err := json.Unmarshal(res.r.Body, &evs); err != nil || len(evs) != 1 || evs[0].Stream != "/v1/stream"+url+"/main" {
				t.Fatalf("long-poll answer %s (%v), want the event of %s", res.r.Body, err, url)
			}
			offset = res.r.Header.Get("Stream-Next-Offset")
			t.Logf("round %d: event reached the long-poll %v after the psql commit returned", i, res.at.Sub(committed))
		case <-time.After(time.Minute):
			// Not a latency bound: the snapshot fence holds the event back
			// while any older transaction on the cluster is open.
			t.Fatalf("round %d: the wake queued from psql did not reach the long-poll within a minute", i)
		}
	}
}

// waitLogPublished waits (at most a minute) until the wake-event log holds
// no committed row, without publishing itself: the server does.
func waitLogPublished(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		var left bool
		if err := conn.QueryRow(context.Background(), `SELECT EXISTS (SELECT 1 FROM wake_event_log)`).Scan(&left); err != nil {
			t.Fatal(err)
		}
		if !left {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the server did not publish the wake-event log within a minute")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
