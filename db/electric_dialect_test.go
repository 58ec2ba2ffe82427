package db_test

// Tags, spawn_entity_as and the signal a stop writes
// (migrations/00014_electric_dialect.sql).

import (
	"encoding/json"
	"testing"
)

// mainEvents decodes the State Protocol events of an entity's main stream.
func (f *fixture) mainEvents(url string) []map[string]any {
	f.t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT convert_from(m.data, 'UTF8') FROM stream_messages m
		WHERE m.path = '/v1/stream' || $1 || '/main' ORDER BY m.seq`, url)
	if err != nil {
		f.t.Fatalf("read %s: %v", url, err)
	}
	defer rows.Close()
	var out []map[string]any
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			f.t.Fatal(err)
		}
		var ev map[string]any
		if err := json.Unmarshal([]byte(s), &ev); err != nil {
			f.t.Fatalf("event %s: %v", s, err)
		}
		out = append(out, ev)
	}
	if err := rows.Err(); err != nil {
		f.t.Fatal(err)
	}
	return out
}

func (f *fixture) tags(url string) map[string]string {
	f.t.Helper()
	var tags map[string]string
	if err := f.pool.QueryRow(f.ctx, `SELECT tags FROM entities WHERE url = $1`, url).Scan(&tags); err != nil {
		f.t.Fatalf("tags of %s: %v", url, err)
	}
	return tags
}

func (f *fixture) setTag(url, key string, value *string) error {
	_, err := f.pool.Exec(f.ctx, `SELECT * FROM set_entity_tag($1, $2, $3, $4)`, url, key, value, t0)
	return err
}

func tagEvent(ev map[string]any) (key, op string, value any) {
	h, _ := ev["headers"].(map[string]any)
	op, _ = h["operation"].(string)
	key, _ = ev["key"].(string)
	return key, op, ev["value"]
}

func TestTagsAreWrittenWithTheirEvents(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`SELECT * FROM spawn_entity_as('/chat/1', NULL, '{"b": "2", "a": "1"}', NULL, NULL, NULL, $1)`, t0)
	if got := f.tags("/chat/1"); len(got) != 2 || got["a"] != "1" || got["b"] != "2" {
		t.Fatalf("spawn tags: %v", got)
	}
	for _, step := range []struct {
		key   string
		value *string
	}{
		{"a", ptr("3")}, // update
		{"a", ptr("3")}, // same value: nothing
		{"c", ptr("")},  // insert, an empty value is a value
		{"b", nil},      // delete
		{"zz", nil},     // delete of an absent tag: nothing
	} {
		if err := f.setTag("/chat/1", step.key, step.value); err != nil {
			t.Fatalf("set %s: %v", step.key, err)
		}
	}
	if got := f.tags("/chat/1"); len(got) != 2 || got["a"] != "3" || got["c"] != "" {
		t.Fatalf("tags: %v", got)
	}
	evs := f.mainEvents("/chat/1")
	want := []struct {
		key, op string
		value   any
	}{{"a", "insert", "1"}, {"b", "insert", "2"}, {"a", "update", "3"}, {"c", "insert", ""}, {"b", "delete", nil}}
	if len(evs) != len(want) {
		t.Fatalf("events: %v", evs)
	}
	for i, w := range want {
		k, op, v := tagEvent(evs[i])
		if evs[i]["type"] != "tag" || k != w.key || op != w.op || v != w.value {
			t.Fatalf("event %d: %v, want %v", i, evs[i], w)
		}
	}
	// Refused on a stopped entity, on no entity, with an empty key; nothing changes.
	f.stop("/chat/1", at(sec))
	f.wantCode(f.setTag("/chat/1", "a", ptr("4")), "PW003", "tag of a stopped entity")
	f.wantCode(f.setTag("/chat/1", "d", nil), "PW003", "tag removal on a stopped entity")
	f.wantCode(f.setTag("/chat/404", "a", ptr("1")), "PW001", "tag of no entity")
	f.spawn("/chat/2")
	f.wantCode(f.setTag("/chat/2", "", ptr("1")), "PW008", "empty key")
	if got := f.tags("/chat/1"); got["a"] != "3" {
		t.Fatalf("a refused tag changed the tags: %v", got)
	}
	if n := len(f.mainEvents("/chat/1")); n != len(want)+1 { // + the stop's signal
		t.Fatalf("refused tags appended events: %d", n)
	}
}

func TestTagRollsBackWithItsEvent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	if err := f.setTag("/chat/1", "a", ptr("1")); err != nil {
		t.Fatal(err)
	}
	// From now on the main stream refuses tag events: the tag's write must
	// fail with its event, and leave the tags as they were.
	f.exec(`ALTER TABLE stream_messages ADD CONSTRAINT no_tag_events
		CHECK (convert_from(data, 'UTF8')::jsonb ->> 'type' <> 'tag') NOT VALID`)
	if err := f.setTag("/chat/1", "a", ptr("2")); pgCode(err) != "23514" {
		t.Fatalf("set with a failing event write: %v", err)
	}
	if err := f.setTag("/chat/1", "a", nil); pgCode(err) != "23514" {
		t.Fatalf("remove with a failing event write: %v", err)
	}
	if got := f.tags("/chat/1"); len(got) != 1 || got["a"] != "1" {
		t.Fatalf("the tag changed without its event: %v", got)
	}
	var spawned error
	_, spawned = f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity_as('/chat/2', NULL, '{"x": "1"}', NULL, NULL, NULL, $1)`, t0)
	if pgCode(spawned) != "23514" {
		t.Fatalf("spawn with a failing tag event: %v", spawned)
	}
	var n int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM entities WHERE url = '/chat/2'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("the spawn stayed without its tag events: %d %v", n, err)
	}
}

func TestSpawnEntityAs(t *testing.T) {
	t.Parallel()
	f := setup(t)
	spawn := func(url, tags string, parent *string, msg *string) error {
		_, err := f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity_as($1, NULL, $2::jsonb, $3, $4::jsonb, '/principal/user%3Aa', $5)`,
			url, tags, parent, msg, t0)
		return err
	}
	f.wantCode(spawn("/chat/1", `{}`, ptr("/chat/0"), nil), "PW001", "missing parent")
	f.wantCode(spawn("/chat/1", `{"a": 1}`, nil, nil), "PW008", "a number tag")
	f.wantCode(spawn("/chat/1", `["a"]`, nil, nil), "PW008", "tags not an object")
	var n int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM streams WHERE path LIKE '/v1/stream/chat/%'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a refused spawn left a stream: %d %v", n, err)
	}
	if err := spawn("/chat/1", `{}`, nil, nil); err != nil {
		t.Fatal(err)
	}
	// A child, with an initial message: inbox event from the sender, wake queued.
	if err := spawn("/chat/2", `{"k": "v"}`, ptr("/chat/1"), ptr(`{"hello": 1}`)); err != nil {
		t.Fatal(err)
	}
	var parent *string
	if err := f.pool.QueryRow(f.ctx, `SELECT parent FROM entities WHERE url = '/chat/2'`).Scan(&parent); err != nil || parent == nil || *parent != "/chat/1" {
		t.Fatalf("parent: %v %v", parent, err)
	}
	evs := f.mainEvents("/chat/2")
	if len(evs) != 2 || evs[0]["type"] != "tag" || evs[1]["type"] != "inbox" ||
		evs[1]["value"].(map[string]any)["from"] != "/principal/user%3Aa" {
		t.Fatalf("events: %v", evs)
	}
	if d := f.dispatch("/chat/2"); d.OutstandingWake == nil || d.LastSentOffset != 2 {
		t.Fatalf("the initial message queued no wake: %+v", d)
	}
}

func signalOf(t *testing.T, evs []map[string]any) map[string]any {
	t.Helper()
	if len(evs) == 0 || evs[len(evs)-1]["type"] != "signal" {
		t.Fatalf("the stream does not end with a signal: %v", evs)
	}
	ev := evs[len(evs)-1]
	if k, _ := ev["key"].(string); len(k) < 5 || k[:4] != "sig-" {
		t.Fatalf("signal key: %v", ev)
	}
	return ev["value"].(map[string]any)
}

func TestStopEndsTheStreamWithItsSignal(t *testing.T) {
	t.Parallel()
	f := setup(t)
	// An idle entity: stopped at once, the signal written by the stop.
	f.spawn("/chat/1")
	f.send("/chat/1", t0)
	if st := f.stop("/chat/1", at(sec)); st != "stopped" {
		t.Fatalf("stop: %s", st)
	}
	v := signalOf(t, f.mainEvents("/chat/1"))
	if v["signal"] != "SIGTERM" || v["previous_state"] != "idle" || v["new_state"] != "stopped" || v["sender"] != "/_electric/server" {
		t.Fatalf("plain stop's signal: %v", v)
	}
	// A second stop writes nothing more.
	f.stop("/chat/1", at(2*sec))
	if n := len(f.mainEvents("/chat/1")); n != 2 {
		t.Fatalf("second stop: %d events", n)
	}

	// A running entity: kill_entity marks it stopping, no signal yet; the
	// runner's appends still land; the claim's end writes the signal last.
	f.spawn("/chat/2")
	f.send("/chat/2", t0)
	c := f.claim("r1", 30*sec, at(sec))
	var prev, st string
	if err := f.pool.QueryRow(f.ctx, `SELECT * FROM kill_entity('/chat/2', 'SIGKILL', 'bye', $1)`, at(2*sec)).Scan(&prev, &st); err != nil {
		t.Fatal(err)
	}
	if prev != "running" || st != "stopping" {
		t.Fatalf("kill of a running entity: %s -> %s", prev, st)
	}
	f.exec(`SELECT pw_stream_append('default', '/v1/stream/chat/2/main', ARRAY[convert_to('{"type":"reply"}', 'UTF8')], $1)`, at(3*sec))
	if evs := f.mainEvents("/chat/2"); evs[len(evs)-1]["type"] != "reply" {
		t.Fatalf("a signal before the claim ended: %v", evs)
	}
	f.release(c.ConsumerID, c.Epoch, []any{}, at(4*sec))
	if s := f.entityStatus("/chat/2"); s != "stopped" {
		t.Fatalf("after release: %s", s)
	}
	v = signalOf(t, f.mainEvents("/chat/2"))
	if v["signal"] != "SIGKILL" || v["reason"] != "bye" || v["previous_state"] != "stopping" {
		t.Fatalf("kill's signal: %v", v)
	}
	// The expiry path writes it too.
	f.spawn("/chat/3")
	f.send("/chat/3", t0)
	f.claim("r1", 2*sec, at(sec))
	f.exec(`SELECT * FROM kill_entity('/chat/3', 'SIGTERM', NULL, $1)`, at(sec))
	f.expire(at(10 * sec))
	if v := signalOf(t, f.mainEvents("/chat/3")); v["signal"] != "SIGTERM" {
		t.Fatalf("expiry's signal: %v", v)
	}
	// Bad signals and missing entities change nothing.
	_, err := f.pool.Exec(f.ctx, `SELECT * FROM kill_entity('/chat/404', 'SIGKILL', NULL, $1)`, t0)
	f.wantCode(err, "PW001", "kill of no entity")
	f.spawn("/chat/4")
	_, err = f.pool.Exec(f.ctx, `SELECT * FROM kill_entity('/chat/4', 'SIGSTOP', NULL, $1)`, t0)
	f.wantCode(err, "PW008", "kill with SIGSTOP")
	if s := f.entityStatus("/chat/4"); s != "idle" {
		t.Fatalf("a refused kill: %s", s)
	}
}
