package server_test

import (
	"context"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/freezeproxy"
	"github.com/pullwake/pullwake/internal/secret"
	"github.com/pullwake/pullwake/internal/testdb"
)

// staleBound is the documented bound within which every instance refuses a
// released claim's write token (reconcile interval 1 s + one query), plus
// slack for a loaded test machine.
const staleBound = 2*time.Second + time.Second

// heldOnBoth claims a wake on a (a's write token) and re-mints the claim's
// token on b with a claim request (b's write token).
func heldOnBoth(t *testing.T, a, b *bundle) (w wake, ta, tb string) {
	t.Helper()
	rt := a.registerRunner("r1")
	a.spawn("/chat/1")
	a.send("/chat/1", "hello")
	w = a.mustClaim("r1", rt, 60000)
	r := b.must(200, b.callback(w, w.ClaimToken, map[string]any{"epoch": w.Epoch, "wake_id": w.WakeID})).json(t)
	tb, _ = r["write_token"].(string)
	a.must(204, a.appendMain(w, w.WriteToken, map[string]any{"on": "a"}))
	b.must(204, b.appendMain(w, tb, map[string]any{"on": "b"}))
	return w, w.WriteToken, tb
}

// releaseFromPSQL ends the claim the way an operator would, outside any server.
func releaseFromPSQL(t *testing.T, b *bundle, w wake) {
	t.Helper()
	var released bool
	if err := b.pool.QueryRow(context.Background(), "SELECT released FROM release_claim($1, $2)", w.ConsumerID, w.Epoch).Scan(&released); err != nil {
		t.Fatal(err)
	}
	if !released {
		t.Fatal("release_claim did not release")
	}
}

func refusedWithin(t *testing.T, b *bundle, w wake, token, what string) {
	t.Helper()
	eventually(t, staleBound, what, func() bool {
		return b.appendMain(w, token, map[string]any{"stale": true}).status == 401
	})
}

// A DATABASE_URL carrying pgxpool-only parameters (pool_max_conns, ...)
// still gives both instances a working listener: /readyz is ready, and a
// release from psql kills the claim's tokens on both.
func TestStaleTokenPoolParamsInURL(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	u := d.URL + sep(d.URL) + "pool_max_conns=8&pool_min_conns=1&pool_max_conn_idle_time=1m&pool_health_check_period=5s"
	opt := func(o *options) { o.listen, o.publish, o.listenURL = true, true, u }
	a := startOn(t, d, opt)
	b := startOn(t, d, opt)
	for _, s := range []*bundle{a, b} {
		if r := s.do("GET", "/readyz", "", nil); r.status != 200 {
			t.Fatalf("readyz with pool parameters in the URL: %d %s", r.status, r.body)
		}
	}
	w, ta, tb := heldOnBoth(t, a, b)
	releaseFromPSQL(t, a, w)
	refusedWithin(t, a, w, ta, "instance A refuses the released token")
	refusedWithin(t, b, w, tb, "instance B refuses the released token")
}

// A half-open LISTEN connection (nothing flows, nothing resets) on A: A
// still refuses the released token within the bound (the reconcile timer),
// /readyz says why it is not ready, and the listener comes back.
func TestStaleTokenFrozenListener(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	pu, err := url.Parse(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := freezeproxy.Start(t, pu.Host)
	pu.Host = px.Addr()
	a := startOn(t, d, func(o *options) { o.listen, o.publish, o.listenURL = true, true, pu.String() })
	b := startOn(t, d, func(o *options) { o.listen, o.publish = true, true })
	w, ta, tb := heldOnBoth(t, a, b)

	px.Freeze()
	releaseFromPSQL(t, b, w)
	refusedWithin(t, a, w, ta, "A (listener frozen) refuses the released token")
	refusedWithin(t, b, w, tb, "B refuses the released token")
	eventually(t, 10*time.Second, "A's /readyz reports the silent listener", func() bool {
		r := a.do("GET", "/readyz", "", nil)
		return r.status == 503 && strings.Contains(string(r.body), "listener")
	})
	px.Thaw()
	eventually(t, 15*time.Second, "A's /readyz ready again after the listener reconnects", func() bool {
		return a.do("GET", "/readyz", "", nil).status == 200
	})
}

// A /readyz answers 503 while the listener cannot connect at all.
func TestReadyzListenerDown(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	pu, err := url.Parse(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	pu.Path = "/pw_no_such_database"
	a := startOn(t, d, func(o *options) { o.listen, o.listenURL, o.noWait = true, pu.String(), true })
	eventually(t, 10*time.Second, "readyz reports the listener", func() bool {
		r := a.do("GET", "/readyz", "", nil)
		return r.status == 503 && strings.Contains(string(r.body), "listener not connected")
	})
}

// A runner's token rotated from psql: the cached hash is dropped on both
// instances: on B (reconcile timer off) by the trigger's NOTIFY, on A (its
// listener frozen) by the reconcile timer.
func TestRunnerTokenRotationReachesCache(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	pu, err := url.Parse(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := freezeproxy.Start(t, pu.Host)
	pu.Host = px.Addr()
	a := startOn(t, d, func(o *options) { o.listen, o.listenURL = true, pu.String() })
	b := startOn(t, d, func(o *options) { o.listen, o.reconcile = true, time.Hour })
	old := a.registerRunner("r1")
	for _, s := range []*bundle{a, b} { // caches the hash on both
		s.must(200, s.do("GET", "/_electric/runners/r1/health", old, nil))
	}
	px.Freeze()
	fresh := secret.New()
	if _, err := b.pool.Exec(context.Background(), "UPDATE runners SET token_hash = $1 WHERE id = 'r1'", secret.Hash(fresh)); err != nil {
		t.Fatal(err)
	}
	for name, s := range map[string]*bundle{"B (notified)": b, "A (listener frozen)": a} {
		eventually(t, staleBound, name+" refuses the old runner token", func() bool {
			return s.do("GET", "/_electric/runners/r1/health", old, nil).status == 401
		})
		s.must(200, s.do("GET", "/_electric/runners/r1/health", fresh, nil))
	}
}

// An unknown runner with a missing or wrong token is 401, like a known
// one: no credential, no way to learn which runners exist.
func TestRunnerRoutesUnauthorizedBeforeNotFound(t *testing.T) {
	t.Parallel()
	b := setup(t, func(o *options) { o.adminToken = "admin-" + secret.New() })
	rt := b.registerRunner("r1")
	for _, tok := range []string{"", "wrong", rt} {
		for _, path := range []string{"/_electric/runners/ghost/health", "/_electric/runners/ghost/claim", "/_electric/runners/ghost/heartbeat"} {
			method := "POST"
			if strings.HasSuffix(path, "health") {
				method = "GET"
			}
			r := b.do(method, path, tok, map[string]any{})
			if r.status != 401 || r.errorCode(t) != "UNAUTHORIZED" {
				t.Errorf("%s %s with token %q: %d %s, want 401 UNAUTHORIZED", method, path, tok, r.status, r.body)
			}
		}
	}
	if r := b.do("GET", "/_electric/runners/ghost/health", b.admin, nil); r.status != 404 {
		t.Errorf("admin asking for an unknown runner: %d %s, want 404", r.status, r.body)
	}
}

func sep(u string) string {
	if strings.Contains(u, "?") {
		return "&"
	}
	return "?"
}

// A token B never minted, adopted from the claim row on B's first append
// (after a restart, or a runner whose requests land on another instance),
// is refused by B within the bound once the claim ends elsewhere, even
// with B's listener frozen (the reconcile timer drops adopted tokens as it
// drops minted ones); and a fresh instance refuses it without adopting it.
func TestStaleTokenAdoptedOnAnotherInstance(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	pu, err := url.Parse(d.URL)
	if err != nil {
		t.Fatal(err)
	}
	px := freezeproxy.Start(t, pu.Host)
	pu.Host = px.Addr()
	a := startOn(t, d, func(o *options) { o.listen, o.publish = true, true })
	b := startOn(t, d, func(o *options) { o.listen, o.publish, o.listenURL = true, true, pu.String() })
	rt := a.registerRunner("r1")
	a.spawn("/chat/1")
	a.send("/chat/1", "hello")
	w := a.mustClaim("r1", rt, 60000)
	b.must(204, b.appendMain(w, w.WriteToken, map[string]any{"on": "b, adopted"}))
	if n := b.srv.Tokens().Len(); n != 1 {
		t.Fatalf("B holds %d tokens after the append, want 1 (adopted)", n)
	}

	px.Freeze()
	a.must(200, a.done(w))
	refusedWithin(t, a, w, w.WriteToken, "A refuses the released token")
	refusedWithin(t, b, w, w.WriteToken, "B (listener frozen) refuses the adopted token")

	c := startOn(t, d)
	if r := c.appendMain(w, w.WriteToken, map[string]any{"late": true}); r.status != 401 {
		t.Fatalf("fresh instance: append with a released claim's token: %d, want 401", r.status)
	}
	if n := c.srv.Tokens().Len(); n != 0 {
		t.Fatalf("fresh instance adopted %d tokens of ended claims", n)
	}
}
