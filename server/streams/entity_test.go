package streams

import (
	"context"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/pgnotify"
	"github.com/pullwake/pullwake/internal/testdb"
)

// spawn creates an entity (and its main stream) and gives the fake gate a
// live write token for it.
func (b *bundle) spawn(t *testing.T, url, token string, epoch int64) string {
	t.Helper()
	b.exec(t, "SELECT * FROM spawn_entity($1)", url)
	p := "/v1/stream" + url + "/main"
	b.gate.mu.Lock()
	b.gate.tokens[p], b.gate.epochs[p] = token, epoch
	b.gate.mu.Unlock()
	return p
}

func TestEntityStreamWriteGate(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{adminToken: "admin"})
	p := b.spawn(t, "/chat/42", "tok-42", 3)

	r := b.must(t, 401, "POST", p, `{"a":1}`, "Content-Type", jsonCT)
	if r.body == "" || !contains(r.body, `"UNAUTHORIZED"`) {
		t.Fatalf("401 body %q", r.body)
	}
	b.must(t, 401, "POST", p, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer wrong")
	b.must(t, 401, "POST", p, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer admin") // admin is no write token
	b.must(t, 204, "POST", p, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-42")
	b.must(t, 204, "POST", p, `{"a":2}`, "Content-Type", jsonCT, "electric-claim-token", "tok-42")

	// The entity owns its stream: no PUT or DELETE, not even as admin.
	for _, m := range []string{"PUT", "DELETE"} {
		r := b.must(t, 403, m, p, "", "Content-Type", jsonCT, "Authorization", "Bearer admin")
		if !contains(r.body, `"FORBIDDEN"`) {
			t.Fatalf("%s body %q", m, r.body)
		}
	}
	// A producer epoch older than the claim's is fenced; the claim's is fine.
	r = b.must(t, 403, "POST", p, `{"p":1}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-42",
		"Producer-Id", "runner", "Producer-Epoch", "2", "Producer-Seq", "0")
	if r.header.Get("Producer-Epoch") != "3" {
		t.Fatalf("fence headers %v", r.header)
	}
	b.must(t, 200, "POST", p, `{"p":1}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-42",
		"Producer-Id", "runner", "Producer-Epoch", "3", "Producer-Seq", "0")

	// A stopped entity takes no more writes, even with a valid token.
	b.exec(t, "SELECT * FROM stop_entity('/chat/42')")
	r = b.must(t, 409, "POST", p, `{"a":3}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-42")
	if !contains(r.body, `"ENTITY_STOPPED"`) {
		t.Fatalf("stopped body %q", r.body)
	}
	// The refused write left nothing; the stop's signal event ends the stream.
	if r := b.must(t, 200, "GET", p, ""); !strings.HasPrefix(r.body, `[{"a":1},{"a":2},{"p":1},{`) ||
		strings.Count(r.body, `"type": "signal"`) != 1 || !strings.HasSuffix(r.body, "}}]") {
		t.Fatalf("main stream %s", r.body)
	}
	// Any path of the entity shape is reserved, entity or not.
	b.must(t, 403, "PUT", "/v1/stream/chat/43/main", "", "Content-Type", jsonCT, "Authorization", "Bearer admin")
}

// The write-token check is memory only: an accepted append consults the
// gate before its first query and costs exactly one query (the entity check
// is folded into the write statement, not an extra round trip); a refused
// one is decided by that same single statement.
func TestEntityGateCheckTouchesNoDatabase(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	p := b.spawn(t, "/job/7", "tok-7", 1)
	before := b.queries.n.Load()
	b.must(t, 204, "POST", p, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer tok-7")
	b.gate.mu.Lock()
	calls := append([]int64(nil), b.gate.calls...)
	b.gate.mu.Unlock()
	if len(calls) != 1 || calls[0] != before {
		t.Fatalf("gate calls saw %v queries, want [%d]: the check must come before any query", calls, before)
	}
	if n := b.queries.n.Load() - before; n != 1 {
		t.Fatalf("an accepted append took %d queries, want 1", n)
	}
	before = b.queries.n.Load()
	b.must(t, 401, "POST", p, `{"a":1}`, "Content-Type", jsonCT, "Authorization", "Bearer nope")
	if n := b.queries.n.Load() - before; n != 1 {
		t.Fatalf("a refused append took %d queries, want 1", n)
	}
}

// Appends made elsewhere (another server, send_to_entity) reach live readers
// through NOTIFY and HandleNotification.
func TestNotificationWakesReaderOfAnotherServer(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	pub := pgnotify.New(d.Pool, slog.Default())
	pub.Start(ctx)
	defer pub.Stop()
	a := setup(t, setupOpts{db: d, publisher: pub})
	b := setup(t, setupOpts{db: d})
	conn, err := a.db.Pool.Acquire(ctx)
	if err != nil {
		t.Fatal(err)
	}
	listening := make(chan struct{})
	defer func() {
		cancel()
		<-listening // the listener is done with conn before it goes back
		conn.Release()
	}()
	if _, err := conn.Exec(ctx, "LISTEN "+NotifyChannel); err != nil {
		close(listening)
		t.Fatal(err)
	}
	go func() {
		defer close(listening)
		for {
			n, err := conn.Conn().WaitForNotification(ctx)
			if err != nil {
				return
			}
			b.h.HandleNotification(n.Payload)
		}
	}()
	b.spawn(t, "/chat/9", "t", 1)
	p := "/v1/stream/chat/9/main"
	got := make(chan resp, 1)
	// An explicit offset, not "now": the append may land before the
	// long-poll's first query.
	tail := b.must(t, 200, "HEAD", p, "").header.Get("Stream-Next-Offset")
	go func() { got <- b.do(t, "GET", p+"?live=long-poll&offset="+tail, "") }()
	waitFor(t, "the long-poll on server b", func() bool { return b.h.n.waiting(p) == 1 })
	// Server a sends (send_to_entity appends through pw_stream_append,
	// outside any handler) and then announces the append, as its send
	// route does: after the commit, through the publisher.
	a.exec(t, "SELECT * FROM send_to_entity('/chat/9', '{\"hi\":1}'::jsonb)")
	a.h.Notify(p)
	select {
	case r := <-got:
		if r.status != 200 || !contains(r.body, `"inbox"`) {
			t.Fatalf("long-poll = %d %s", r.status, r.body)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the NOTIFY did not wake server b's reader")
	}
	b.h.HandleNotification("not json") // ignored, no panic
	b.h.HandleNotification(`{"tenant_id":"other","path":"` + p + `"}`)
}

func contains(s, sub string) bool {
	return len(s) >= len(sub) && (s[:len(sub)] == sub || contains(s[1:], sub))
}
