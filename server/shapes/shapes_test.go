package shapes_test

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/server/httpx"
	"github.com/pullwake/pullwake/server/shapes"
)

// No goroutine (the feed, a live reader) may outlive the tests.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type fixture struct {
	t    testing.TB
	db   *testdb.DB
	feed *shapes.Feed
	url  string
}

type fixtureOpts struct {
	maxLive  int
	idle     time.Duration
	maxLog   int
	longPoll time.Duration
}

func setup(t testing.TB, opts ...func(*fixtureOpts)) *fixture {
	t.Helper()
	o := fixtureOpts{longPoll: 10 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	tdb := testdb.NewLogical(t)
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	feed := shapes.NewFeed(shapes.FeedConfig{
		// pool_* parameters are the pool's: the feed's connections drop them.
		Pool: tdb.Pool, ConnString: tdb.URL + "&pool_max_conns=4", Tenant: "default", Logger: log,
		IdleTimeout: o.idle, MaxLogChanges: o.maxLog, StatusInterval: 50 * time.Millisecond,
	})
	h := shapes.New(shapes.Config{Feed: feed, Logger: log, LongPollTimeout: o.longPoll, SSETimeout: 20 * time.Second, KeepAlive: time.Second, MaxLive: o.maxLive})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/shape", func(w http.ResponseWriter, r *http.Request) {
		if err := h.Serve(w, r); err != nil {
			httpx.Fail(log, w, r, err)
		}
	})
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	t.Cleanup(feed.Close) // first: live readers answer, then the server closes
	return &fixture{t: t, db: tdb, feed: feed, url: srv.URL}
}

func (f *fixture) exec(sql string, args ...any) {
	f.t.Helper()
	if _, err := f.db.Pool.Exec(context.Background(), sql, args...); err != nil {
		f.t.Fatalf("%s: %v", sql, err)
	}
}

func (f *fixture) spawn(url string) {
	f.t.Helper()
	f.exec(`SELECT spawn_entity($1)`, url)
}

type message struct {
	Key      string             `json:"key"`
	Value    map[string]*string `json:"value"`
	OldValue map[string]*string `json:"old_value"`
	Headers  map[string]any     `json:"headers"`
}

func (m message) op() string      { s, _ := m.Headers["operation"].(string); return s }
func (m message) control() string { s, _ := m.Headers["control"].(string); return s }
func (m message) val(k string) string {
	if v := m.Value[k]; v != nil {
		return *v
	}
	return "<null>"
}

type answer struct {
	status int
	header http.Header
	msgs   []message
	body   string
}

func (a answer) handle() string { return a.header.Get("electric-handle") }
func (a answer) offset() string { return a.header.Get("electric-offset") }

// changes are the answer's messages without control messages.
func (a answer) changes() []message {
	var out []message
	for _, m := range a.msgs {
		if m.control() == "" {
			out = append(out, m)
		}
	}
	return out
}

func (a answer) upToDate() bool {
	return len(a.msgs) > 0 && a.msgs[len(a.msgs)-1].control() == "up-to-date"
}

func (f *fixture) get(q url.Values) answer {
	f.t.Helper()
	return get(f.t, f.url+"/v1/shape?"+q.Encode())
}

func get(t testing.TB, u string) answer {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusConflict {
		if err := json.Unmarshal(b, &a.msgs); err != nil {
			t.Fatalf("GET %s: %d body %q: %v", u, resp.StatusCode, b, err)
		}
	}
	return a
}

func q(kv ...string) url.Values {
	v := url.Values{}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Add(kv[i], kv[i+1])
	}
	return v
}

// next is base at a's handle and offset.
func next(base url.Values, a answer, kv ...string) url.Values {
	return with(base, append([]string{"handle", a.handle(), "offset", a.offset()}, kv...)...)
}

func with(base url.Values, kv ...string) url.Values {
	v := url.Values{}
	for k, vs := range base {
		v[k] = append([]string{}, vs...)
	}
	for i := 0; i+1 < len(kv); i += 2 {
		v.Set(kv[i], kv[i+1])
	}
	return v
}

func expectStatus(t testing.TB, a answer, want int) {
	t.Helper()
	if a.status != want {
		t.Fatalf("status %d, want %d; body %s", a.status, want, a.body)
	}
}

// catchUp follows a shape to the head (the client's second request).
func (f *fixture) catchUp(base url.Values, a answer) answer {
	f.t.Helper()
	for i := 0; i < 10; i++ {
		n := f.get(with(base, "handle", a.handle(), "offset", a.offset()))
		expectStatus(f.t, n, http.StatusOK)
		if n.upToDate() {
			return n
		}
		a = n
	}
	f.t.Fatal("never up to date")
	return a
}

// live starts a long poll and returns its answer on the channel.
func (f *fixture) live(q url.Values) <-chan answer {
	ch := make(chan answer, 1)
	u := f.url + "/v1/shape?" + with(q, "live", "true").Encode()
	go func() {
		resp, err := http.Get(u)
		if err != nil {
			ch <- answer{status: -1, body: err.Error()}
			return
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		a := answer{status: resp.StatusCode, header: resp.Header, body: string(b)}
		_ = json.Unmarshal(b, &a.msgs)
		ch <- a
	}()
	return ch
}

func recv(t testing.TB, ch <-chan answer) answer {
	t.Helper()
	select {
	case a := <-ch:
		if a.status == -1 {
			t.Fatalf("live request failed: %s", a.body)
		}
		return a
	case <-time.After(60 * time.Second):
		t.Fatal("no live answer within 60s")
	}
	return answer{}
}

// liveUntil long-polls from a until an answer carries changes.
func (f *fixture) liveUntil(base url.Values, a answer, write func()) answer {
	f.t.Helper()
	ch := f.live(with(base, "handle", a.handle(), "offset", a.offset()))
	write()
	for {
		n := recv(f.t, ch)
		expectStatus(f.t, n, http.StatusOK)
		if len(n.changes()) > 0 {
			return n
		}
		ch = f.live(with(base, "handle", n.handle(), "offset", n.offset()))
	}
}

func TestSnapshotHandleOffsetAndLiveChanges(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/a")
	f.spawn("/chat/b")
	base := q("table", "entities")
	snap := f.get(with(base, "offset", "-1"))
	expectStatus(t, snap, http.StatusOK)
	if snap.handle() == "" || snap.offset() == "" || snap.header.Get("electric-schema") == "" {
		t.Fatalf("headers %v", snap.header)
	}
	if snap.upToDate() || hasHeader(snap.header, "electric-up-to-date") {
		t.Fatal("the snapshot answer says up-to-date (Electric's comes on the next request)")
	}
	got := snap.changes()
	if len(got) != 2 || got[0].val("url") != "/chat/a" || got[0].op() != "insert" || got[0].val("type") != "chat" || got[0].val("status") != "idle" {
		t.Fatalf("snapshot %+v", got)
	}
	if got[0].Key != `"public"."entities"/"//chat//a"` {
		t.Fatalf("key %s", got[0].Key)
	}
	var schema map[string]map[string]any
	if err := json.Unmarshal([]byte(snap.header.Get("electric-schema")), &schema); err != nil {
		t.Fatal(err)
	}
	if schema["url"]["pk_index"] != float64(0) || schema["created_at"]["type"] != "int8" || schema["tags"]["type"] != "jsonb" {
		t.Fatalf("schema %v", schema)
	}
	up := f.catchUp(base, snap)
	if up.handle() != snap.handle() || !hasHeader(up.header, "electric-up-to-date") || len(up.changes()) != 0 {
		t.Fatalf("catch-up %+v %v", up.msgs, up.header)
	}

	// Insert, update and delete reach a live reader, each from the offset
	// of the answer before, under the same handle.
	ins := f.liveUntil(base, up, func() { f.spawn("/chat/c") })
	if c := ins.changes(); len(c) != 1 || c[0].op() != "insert" || c[0].val("url") != "/chat/c" || !ins.upToDate() {
		t.Fatalf("insert %+v", ins.msgs)
	}
	if ins.handle() != snap.handle() || ins.offset() <= up.offset() && len(ins.offset()) <= len(up.offset()) || ins.header.Get("electric-cursor") == "" {
		t.Fatalf("live headers %v (before: %v)", ins.header, up.header)
	}
	if h := ins.changes()[0].Headers; h["lsn"] == nil || h["txids"] == nil || h["last"] != true {
		t.Fatalf("headers %v", h)
	}
	upd := f.liveUntil(base, ins, func() { f.exec(`UPDATE entities SET status = 'running' WHERE url = '/chat/c'`) })
	if c := upd.changes(); len(c) != 1 || c[0].op() != "update" || c[0].val("status") != "running" || c[0].val("url") != "/chat/c" {
		t.Fatalf("update %+v", upd.msgs)
	}
	if _, ok := upd.changes()[0].Value["tags"]; ok {
		t.Fatal("an update with replica=default carries an unchanged column")
	}
	del := f.liveUntil(base, upd, func() {
		f.exec(`DELETE FROM entity_dispatch_state WHERE entity_url = '/chat/c'; DELETE FROM entities WHERE url = '/chat/c'`)
	})
	if c := del.changes(); len(c) != 1 || c[0].op() != "delete" || c[0].val("url") != "/chat/c" || len(c[0].Value) != 1 {
		t.Fatalf("delete %+v", del.msgs)
	}
	// A new client's snapshot is the state now.
	again := f.get(with(base, "offset", "-1"))
	if c := again.changes(); len(c) != 2 || again.handle() != snap.handle() {
		t.Fatalf("second snapshot %+v", again.msgs)
	}
	// A long poll with nothing new answers up-to-date at its timeout.
}

func TestLongPollTimesOutUpToDate(t *testing.T) {
	t.Parallel()
	f := setup(t, func(o *fixtureOpts) { o.longPoll = time.Second })
	base := q("table", "entity_types")
	up := f.catchUp(base, f.get(with(base, "offset", "-1")))
	a := recv(t, f.live(next(base, up)))
	expectStatus(t, a, http.StatusOK)
	if len(a.msgs) != 1 || !a.upToDate() || a.header.Get("electric-cursor") == "" || a.header.Get("electric-schema") != "" {
		t.Fatalf("timeout answer %+v %v", a.msgs, a.header)
	}
}

func TestSSE(t *testing.T) {
	t.Parallel()
	f := setup(t)
	base := q("table", "entities")
	up := f.catchUp(base, f.get(with(base, "offset", "-1")))
	u := f.url + "/v1/shape?" + with(next(base, up), "live", "true", "live_sse", "true", "experimental_live_sse", "true").Encode()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") || resp.Header.Get("electric-handle") != up.handle() {
		t.Fatalf("SSE answer %d %v", resp.StatusCode, resp.Header)
	}
	f.spawn("/chat/sse1")
	f.spawn("/chat/sse2")
	sc := bufio.NewScanner(resp.Body)
	var urls []string
	ups := 0
	for len(urls) < 2 || ups < 2 {
		if !sc.Scan() {
			t.Fatalf("stream ended: %v (so far %v)", sc.Err(), urls)
		}
		line := sc.Text()
		if !strings.HasPrefix(line, "data: ") {
			continue
		}
		var m message
		if err := json.Unmarshal([]byte(strings.TrimPrefix(line, "data: ")), &m); err != nil {
			t.Fatal(err)
		}
		switch {
		case m.control() == "up-to-date":
			if m.Headers["global_last_seen_lsn"] == "" {
				t.Fatal("up-to-date without global_last_seen_lsn")
			}
			ups++
		case m.op() == "insert":
			urls = append(urls, m.val("url"))
		}
	}
	if urls[0] != "/chat/sse1" || urls[1] != "/chat/sse2" {
		t.Fatalf("SSE inserts %v", urls)
	}
}

func TestMustRefetch(t *testing.T) {
	t.Parallel()
	f := setup(t)
	base := q("table", "runners")
	snap := f.get(with(base, "offset", "-1"))
	expectStatus(t, snap, http.StatusOK)
	// An unknown handle: 409, the current handle, must-refetch.
	a := f.get(with(base, "handle", "nope-1", "offset", snap.offset()))
	expectStatus(t, a, http.StatusConflict)
	if a.handle() != snap.handle() || len(a.msgs) != 1 || a.msgs[0].control() != "must-refetch" {
		t.Fatalf("409 %v %s", a.header, a.body)
	}
	// The feed's connection dies (as at a database restart): the old
	// handle is gone, a waiting live reader is told so, and a new
	// snapshot comes under a new handle.
	up := f.catchUp(base, snap)
	ch := f.live(next(base, up))
	f.exec(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pullwake-shapes' AND backend_type = 'walsender' AND datname = current_database()`)
	if l := recv(t, ch); l.status != http.StatusConflict {
		t.Fatalf("live reader at the feed's end: %d %s", l.status, l.body)
	}
	// The feed may still be ending when the live reader hears of it: ask
	// until the old handle is refused.
	deadline := time.Now().Add(60 * time.Second)
	var old answer
	for {
		if old = f.get(next(base, up)); old.status == http.StatusConflict || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	expectStatus(t, old, http.StatusConflict)
	if old.handle() == "" || old.handle() == snap.handle() {
		t.Fatalf("409 after restart names handle %q (old %q)", old.handle(), snap.handle())
	}
	fresh := f.get(with(base, "offset", "-1"))
	expectStatus(t, fresh, http.StatusOK)
	if fresh.handle() == snap.handle() {
		t.Fatal("a new feed reuses a handle")
	}
}

func TestIdleFeedStopsAndTrimmedLogRefetches(t *testing.T) {
	t.Parallel()
	f := setup(t, func(o *fixtureOpts) { o.idle = 200 * time.Millisecond; o.maxLog = 2 })
	base := q("table", "entities")
	up := f.catchUp(base, f.get(with(base, "offset", "-1")))
	// Three transactions: the log keeps two changes, so a reader at the
	// old offset is behind it.
	for _, u := range []string{"/t/1", "/t/2", "/t/3"} {
		f.spawn(u)
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		a := f.get(next(base, up))
		if a.status == http.StatusConflict {
			if a.handle() == up.handle() || a.msgs[0].control() != "must-refetch" {
				t.Fatalf("409 %v %s", a.header, a.body)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never told to refetch: %d %s", a.status, a.body)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Nobody reads: the feed stops by itself.
	for f.feed.Running() {
		if time.Now().After(deadline) {
			t.Fatal("the idle feed did not stop")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestChangesOnly(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/old")
	base := q("table", "entities", "log", "changes_only")
	snap := f.get(with(base, "offset", "-1"))
	expectStatus(t, snap, http.StatusOK)
	if len(snap.changes()) != 0 {
		t.Fatalf("changes_only snapshot %+v", snap.msgs)
	}
	up := f.catchUp(base, snap)
	n := f.liveUntil(base, up, func() { f.spawn("/chat/new") })
	if c := n.changes(); len(c) != 1 || c[0].val("url") != "/chat/new" {
		t.Fatalf("changes %+v", n.msgs)
	}
}

func TestColumnsAndReplicaFull(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/x")
	base := q("table", "entities", "columns", `"url",status`, "replica", "full")
	snap := f.get(with(base, "offset", "-1"))
	expectStatus(t, snap, http.StatusOK)
	if c := snap.changes(); len(c) != 1 || len(c[0].Value) != 2 || c[0].val("status") != "idle" {
		t.Fatalf("columns %+v", snap.msgs)
	}
	var schema map[string]any
	_ = json.Unmarshal([]byte(snap.header.Get("electric-schema")), &schema)
	if len(schema) != 2 {
		t.Fatalf("schema %v", schema)
	}
	up := f.catchUp(base, snap)
	n := f.liveUntil(base, up, func() { f.exec(`UPDATE entities SET status = 'running', tags = '{"a":"b"}' WHERE url = '/chat/x'`) })
	c := n.changes()
	if len(c) != 1 || len(c[0].Value) != 2 || c[0].val("status") != "running" || c[0].OldValue["status"] == nil || *c[0].OldValue["status"] != "idle" {
		t.Fatalf("replica=full update %+v", n.msgs)
	}
	// A change to unselected columns only is no message at all.
	n = f.liveUntil(base, n, func() {
		f.exec(`UPDATE entities SET tags = '{"c":"d"}' WHERE url = '/chat/x'`)
		f.exec(`UPDATE entities SET status = 'idle' WHERE url = '/chat/x'`)
	})
	if c := n.changes(); len(c) != 1 || c[0].val("status") != "idle" {
		t.Fatalf("after unselected change %+v", n.msgs)
	}
	for _, cols := range []string{"status", "url,nope", `"url`} {
		a := f.get(q("table", "entities", "offset", "-1", "columns", cols))
		expectStatus(t, a, http.StatusBadRequest)
		if !strings.Contains(a.body, "columns") {
			t.Fatalf("columns=%s: %s", cols, a.body)
		}
	}
}

func TestWhere(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, u := range []string{"/chat/1", "/chat/2", "/mail/1"} {
		f.spawn(u)
	}
	f.exec(`UPDATE entities SET status = 'running', runner_id = 'r1' WHERE url = '/chat/2'`)
	f.exec(`UPDATE entities SET parent = '/chat/1' WHERE url = '/mail/1'`)
	cases := []struct {
		where  string
		params []string
		want   string
	}{
		{`status = 'idle'`, nil, "/chat/1 /mail/1"},
		{`status <> 'idle'`, nil, "/chat/2"},
		{`status != 'idle' OR type = 'mail'`, nil, "/chat/2 /mail/1"},
		{`"type" = 'chat' AND NOT (status = 'running')`, nil, "/chat/1"},
		{`url IN ('/chat/1', '/mail/1', 'x')`, nil, "/chat/1 /mail/1"},
		{`url NOT IN ('/chat/1')`, nil, "/chat/2 /mail/1"},
		{`parent IS NULL`, nil, "/chat/1 /chat/2"},
		{`parent IS NOT NULL`, nil, "/mail/1"},
		{`parent = '/chat/1' OR parent <> '/chat/1'`, nil, "/mail/1"}, // NULL is neither
		{`status = $1`, []string{"running"}, "/chat/2"},
		{`tenant_id = $1 and type = $2`, []string{"default", "mail"}, "/mail/1"},
		{`created_at > 0 AND created_at >= '1'`, nil, "/chat/1 /chat/2 /mail/1"},
	}
	for _, c := range cases {
		v := q("table", "entities", "offset", "-1", "where", c.where)
		for i, p := range c.params {
			v.Set(fmt.Sprintf("params[%d]", i+1), p)
		}
		a := f.get(v)
		expectStatus(t, a, http.StatusOK)
		var urls []string
		for _, m := range a.changes() {
			urls = append(urls, m.val("url"))
		}
		if got := strings.Join(urls, " "); got != c.want {
			t.Errorf("where %s: %q, want %q", c.where, got, c.want)
		}
	}
	// params as JSON, as the client's subset requests send them.
	a := f.get(q("table", "entities", "offset", "-1", "where", "url = $1", "params", `{"1":"/chat/1"}`))
	if len(a.changes()) != 1 {
		t.Fatalf("JSON params: %+v", a.msgs)
	}
	// Rows move into and out of a filtered shape as they change.
	base := q("table", "entities", "where", "status = 'running'")
	up := f.catchUp(base, f.get(with(base, "offset", "-1")))
	in := f.liveUntil(base, up, func() { f.exec(`UPDATE entities SET status = 'running' WHERE url = '/chat/1'`) })
	if c := in.changes(); len(c) != 1 || c[0].op() != "insert" || c[0].val("url") != "/chat/1" || c[0].val("tags") != "{}" {
		t.Fatalf("move in %+v", in.msgs)
	}
	out := f.liveUntil(base, in, func() { f.exec(`UPDATE entities SET status = 'idle' WHERE url = '/chat/2'`) })
	if c := out.changes(); len(c) != 1 || c[0].op() != "delete" || c[0].val("url") != "/chat/2" {
		t.Fatalf("move out %+v", out.msgs)
	}

	for _, bad := range []string{
		`lower(url) = 'x'`, `url = status`, `tags = '{}'`, `1 = 1`, `url = $2`, `url = 'a'; DROP TABLE entities`,
		`url = 'a' -- x`, `url = 'a'::text`, `nope = 'x'`, `url < 'b'`, `url = 'unterminated`, `status IN (SELECT status FROM entities)`,
		`created_at = 'yesterday'`, `url =`, `(url = 'a'`,
	} {
		a := f.get(q("table", "entities", "offset", "-1", "where", bad))
		expectStatus(t, a, http.StatusBadRequest)
		var e struct {
			Error struct{ Code, Message string }
		}
		if err := json.Unmarshal([]byte(a.body), &e); err != nil || e.Error.Code != "INVALID_REQUEST" || !strings.HasPrefix(e.Error.Message, "where: ") {
			t.Errorf("where %s: %s", bad, a.body)
		}
	}
}

func TestBadParameters(t *testing.T) {
	t.Parallel()
	f := setup(t)
	for _, c := range []struct {
		q     url.Values
		field string
	}{
		{q("offset", "-1"), "table"},
		{q("table", "claims", "offset", "-1"), "table"},
		{q("table", "entities"), "offset"},
		{q("table", "entities", "offset", "12"), "offset"},
		{q("table", "entities", "offset", "1_0"), "handle"},
		{q("table", "entities", "offset", "-1", "live", "true"), "live"},
		{q("table", "entities", "offset", "-1", "replica", "half"), "replica"},
		{q("table", "entities", "offset", "-1", "log", "some"), "log"},
	} {
		a := f.get(c.q)
		expectStatus(t, a, http.StatusBadRequest)
		if !strings.Contains(a.body, `"message":"`+c.field+`: `) || a.header.Get("Cache-Control") != "no-store" {
			t.Errorf("%v: %s %v", c.q, a.body, a.header)
		}
	}
}

// The SQL views say in psql what the shapes serve: the rows the feed
// computes in Go, and the rows the views compute in SQL, are the same,
// after the initial copy and after decoded changes alike.
func TestViewsMatchTheFeed(t *testing.T) {
	t.Parallel()
	f := setup(t)
	populate := func(suffix string) {
		f.spawn("/chat/v" + suffix)
		f.spawn("/task/v" + suffix)
		f.exec(`UPDATE entities SET runner_id = 'r"`+suffix+`', tags = '{"k": "v", "a": "b\"c"}', status = 'running' WHERE url = $1`, "/chat/v"+suffix)
		f.exec(`UPDATE entities SET status = 'stopped', stop_signal = 'SIGKILL', parent = '/chat/v`+suffix+`' WHERE url = $1`, "/task/v"+suffix)
		f.exec(`UPDATE entity_dispatch_state SET active_consumer_id = 'wake-"`+suffix+`', active_epoch = 3, active_runner_id = 'r1',
			active_claimed_at = now(), active_lease_expires_at = now() + interval '30 seconds', outstanding_wake_id = 'wake-9',
			acked_offset = 2, last_sent_offset = 5, last_released_at = now(), last_error = 'boom' WHERE entity_url = $1`, "/chat/v"+suffix)
		f.exec(`INSERT INTO entity_types (name, description, inbox_schemas, default_dispatch_policy) VALUES ($1, 'd', '{"m": {"type": "object"}}', '{"targets": [{"type": "runner", "runnerId": "r1"}]}')`, "type"+suffix)
		f.exec(`INSERT INTO runners (id, label, token_hash) VALUES ($1, 'L', '\x00')`, "run"+suffix)
		f.exec(`INSERT INTO runners (id, kind, token_hash, last_seen_at, liveness_lease_expires_at, diagnostics, wake_stream_read_seq) VALUES ($1, 'ci', '\x00', now(), now() + interval '30 seconds', '{"events_received": 3}', 7)`, "beat"+suffix)
	}
	compare := func(stage string) {
		for _, table := range shapes.TableNames() {
			a := f.get(q("table", table, "offset", "-1"))
			expectStatus(t, a, http.StatusOK)
			got := map[string]map[string]*string{}
			for _, m := range a.changes() {
				got[m.Key] = m.Value
			}
			rows, err := f.db.Pool.Query(context.Background(), "SELECT to_jsonb(v) FROM (SELECT * FROM electric_"+table+") v")
			if err != nil {
				t.Fatal(err)
			}
			want := 0
			for rows.Next() {
				var row map[string]any
				if err := rows.Scan(&row); err != nil {
					t.Fatal(err)
				}
				want++
				var match map[string]*string
				for _, g := range got {
					if pk := g[pkOf(table)]; pk != nil && fmt.Sprint(row[pkOf(table)]) == *pk {
						match = g
					}
				}
				if match == nil {
					t.Errorf("%s %s: view row %v not in the shape", stage, table, row)
					continue
				}
				for col, v := range row {
					if !sameValue(v, match[col]) {
						t.Errorf("%s %s.%s: view %v, shape %v", stage, table, col, v, deref(match[col]))
					}
				}
			}
			rows.Close()
			if want != len(got) {
				t.Errorf("%s %s: view has %d rows, shape %d", stage, table, want, len(got))
			}
		}
	}
	populate("1")
	compare("initial copy")
	// Changes decoded after the copy: wait until the feed has them.
	populate("2")
	f.exec(`UPDATE entity_types SET revision = 2, updated_at = now() WHERE name = 'type1'`)
	f.exec(`DELETE FROM runners WHERE id = 'run1'`)
	f.exec(`UPDATE runners SET last_seen_at = now(), liveness_lease_expires_at = now() WHERE id = 'run2'`)
	// The feed applies transactions in commit order: once the last is in
	// a snapshot, so is everything before it.
	f.exec(`UPDATE runners SET wake_stream_read_seq = 99 WHERE id = 'beat2'`)
	deadline := time.Now().Add(60 * time.Second)
	for {
		a := f.get(q("table", "runner_runtime_diagnostics", "offset", "-1", "where", "runner_id = 'beat2'"))
		if c := a.changes(); len(c) == 1 && c[0].val("wake_stream_offset") == "0000000000000099" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the feed never showed the last change")
		}
		time.Sleep(10 * time.Millisecond)
	}
	compare("decoded changes")
}

func pkOf(table string) string {
	switch table {
	case "entities":
		return "url"
	case "entity_types":
		return "name"
	case "runner_runtime_diagnostics":
		return "runner_id"
	case "entity_dispatch_state":
		return "entity_url"
	}
	return "id"
}

func deref(s *string) string {
	if s == nil {
		return "<null>"
	}
	return *s
}

// sameValue compares a view value (from to_jsonb) with a shape's text.
func sameValue(v any, s *string) bool {
	if v == nil || s == nil {
		return v == nil && s == nil
	}
	switch v := v.(type) {
	case string:
		if t1, err := time.Parse(time.RFC3339Nano, v); err == nil && !strings.HasSuffix(v, "Z") {
			t2, err := time.Parse("2006-01-02 15:04:05.999999-07", *s)
			return err == nil && t1.Equal(t2)
		}
		return v == *s
	case float64:
		return fmt.Sprint(int64(v)) == *s
	}
	var a, b any
	j, _ := json.Marshal(v)
	_ = json.Unmarshal(j, &a)
	if err := json.Unmarshal([]byte(*s), &b); err != nil {
		return false
	}
	ja, _ := json.Marshal(a)
	jb, _ := json.Marshal(b)
	return string(ja) == string(jb)
}

func hasHeader(h http.Header, k string) bool { _, ok := h[http.CanonicalHeaderKey(k)]; return ok }

// A write committed before a request is in the request's answer
// (read-your-writes): a non-live answer waits until the feed has decoded
// the WAL flushed when the request came, so a client that wrote and then
// reads the shape never gets the old rows with up-to-date.
func TestReadYourWrites(t *testing.T) {
	t.Parallel()
	f := setup(t)
	base := q("table", "entity_types")
	up := f.catchUp(base, f.get(with(base, "offset", "-1")))
	for i := range 30 {
		name := fmt.Sprintf("ryw-%d", i)
		f.exec(`INSERT INTO entity_types (name) VALUES ($1)`, name)
		// A new client: the snapshot has the type.
		snap := f.get(with(base, "offset", "-1"))
		found := false
		for _, m := range snap.changes() {
			found = found || m.val("name") == name
		}
		if !found {
			t.Fatalf("write %d: a snapshot asked after its commit misses it", i)
		}
		// A client that was up to date: its catch-up has it.
		n := f.get(next(base, up))
		if c := n.changes(); len(c) != 1 || c[0].val("name") != name || !n.upToDate() {
			t.Fatalf("write %d: the catch-up asked after its commit: %+v", i, n.msgs)
		}
		up = n
	}
}

// Live requests are capped: past the cap a live request answers 503 with
// Retry-After at once, and the slot frees when the live answer ends.
func TestLiveReadersAreCapped(t *testing.T) {
	t.Parallel()
	f := setup(t, func(o *fixtureOpts) { o.maxLive = 1; o.longPoll = 60 * time.Second })
	base := q("table", "entities")
	up := f.catchUp(base, f.get(with(base, "offset", "-1")))
	// Four at once: one holds the slot until a change comes, three are
	// refused.
	var chans []<-chan answer
	for range 4 {
		chans = append(chans, f.live(next(base, up)))
	}
	refused := 0
	answers := make(chan answer, 4)
	for _, ch := range chans {
		go func() { answers <- <-ch }()
	}
	for refused < 3 {
		a := <-answers
		if a.status != http.StatusServiceUnavailable || a.header.Get("Retry-After") == "" || !strings.Contains(a.body, "TOO_MANY_READERS") {
			t.Fatalf("over the cap: %d %v %s", a.status, a.header, a.body)
		}
		refused++
	}
	f.spawn("/cap/1")
	if a := <-answers; a.status != http.StatusOK || len(a.changes()) != 1 {
		t.Fatalf("the live request that held the slot: %d %s", a.status, a.body)
	}
	// The slot is free again.
	n := f.liveUntil(base, up, func() { f.spawn("/cap/2") })
	expectStatus(t, n, http.StatusOK)
}
