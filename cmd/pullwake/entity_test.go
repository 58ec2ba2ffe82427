package main

import (
	"github.com/pullwake/pullwake/server"

	"encoding/json"
	"regexp"
	"strings"
	"testing"
)

func TestEntity(t *testing.T) {
	t.Parallel()
	tdb, c := setup(t) // /chat/1: one message sent, claimed by r1
	url := "--database-url=" + tdb.URL
	exec1(t, tdb, `SELECT * FROM spawn_entity('/chat/idle')`)

	t.Run("table", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "entity", "/chat/1", url)
		r.expect(t, 0, `\Aurl\s+/chat/1\n`, `^$`)
		for _, line := range []string{
			`type\s+chat`,
			`status\s+running`,
			`main_stream\s+/v1/stream/chat/1/main`,
			`runner_id\s+-`,
			`created_at\s+\S+Z`,
			`dispatch\.active_consumer_id\s+` + regexp.QuoteMeta(c.consumer),
			`dispatch\.active_epoch\s+1`,
			`dispatch\.active_runner_id\s+r1`,
			`dispatch\.active_lease_expires_at\s+\S+Z`,
			`dispatch\.outstanding_wake_id\s+` + regexp.QuoteMeta(c.consumer),
			`dispatch\.acked_offset\s+0000000000000000`,
			`dispatch\.last_sent_offset\s+0000000000000001`,
			`dispatch\.last_released_at\s+-`,
		} {
			if !regexp.MustCompile(`(?m)^` + line + `$`).MatchString(r.stdout) {
				t.Errorf("no line %s:\n%s", line, r.stdout)
			}
		}
		// Aligned: every value starts in one column.
		lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
		col := strings.Index(lines[0], "/chat/1")
		for _, l := range lines {
			if len(l) <= col || l[col-1] != ' ' || l[col] == ' ' {
				t.Errorf("not aligned:\n%s\n%s", lines[0], l)
			}
		}
		// Without the leading slash too.
		pullwake(t, nil, "entity", "chat/idle", url).expect(t, 0, `(?m)^status\s+idle$`, `^$`)
	})
	t.Run("json", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "entity", "--json", "/chat/1", url)
		r.expect(t, 0, "", `^$`)
		var e server.EntityJSON
		if err := json.Unmarshal([]byte(r.stdout), &e); err != nil {
			t.Fatalf("--json: %v\n%s", err, r.stdout)
		}
		d := e.Dispatch
		if e.URL != "/chat/1" || e.Type != "chat" || e.Status != "running" || e.MainStream != "/v1/stream/chat/1/main" ||
			e.Streams["main"] != e.MainStream || e.RunnerID != nil ||
			d.ActiveConsumerID == nil || *d.ActiveConsumerID != c.consumer || d.ActiveEpoch == nil || *d.ActiveEpoch != 1 ||
			d.ActiveLeaseExpiresAt == nil || d.AckedOffset != "0000000000000000" || d.LastSentOffset != "0000000000000001" {
			t.Errorf("--json = %s", r.stdout)
		}
		// The same keys as GET /entities/{type}/{id} answers.
		var raw map[string]any
		_ = json.Unmarshal([]byte(r.stdout), &raw)
		disp, _ := raw["dispatch"].(map[string]any)
		for _, k := range []string{"active_consumer_id", "active_epoch", "active_runner_id", "active_lease_expires_at",
			"outstanding_wake_id", "acked_offset", "last_released_at"} {
			if _, ok := disp[k]; !ok {
				t.Errorf("dispatch has no %q: %s", k, r.stdout)
			}
		}

		r = pullwake(t, nil, "entity", "/chat/idle", "--json", url)
		_ = json.Unmarshal([]byte(r.stdout), &e)
		if r.code != 0 || e.Status != "idle" || e.Dispatch.ActiveConsumerID != nil || e.Dispatch.OutstandingWakeID != nil {
			t.Errorf("idle entity: exit %d, %s", r.code, r.stdout)
		}
	})
	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "entity", "/chat/nope", url).expect(t, 1, `^$`, `^pullwake entity: entity /chat/nope not found \(tenant default\)\n$`)
		pullwake(t, nil, "entity", "/chat/1", url, "--tenant", "other").expect(t, 1, `^$`, `entity /chat/1 not found \(tenant other\)`)
		pullwake(t, nil, "entity", "/Chat/1", url).expect(t, 2, `^$`, `URL "/Chat/1" is not an entity URL`)
		pullwake(t, nil, "entity", "/chat/1/main", url).expect(t, 2, `^$`, `is not an entity URL`)
		pullwake(t, nil, "entity", url).expect(t, 2, `^$`, `want URL, got 0 argument`)
		pullwake(t, nil, "entity", "/chat/1", "/chat/2", url).expect(t, 2, `^$`, `want URL, got 2 argument`)
		pullwake(t, nil, "entity", "/chat/1", "--bogus", url).expect(t, 2, `^$`, `flag provided but not defined: -bogus`)
		pullwake(t, nil, "entity", "/chat/1").expect(t, 2, `^$`, `no database`)
		pullwake(t, nil, "entity", "--help").expect(t, 0, `(?s)Usage: pullwake entity URL.*-database-url.*-json.*-tenant`, `^$`)
	})
}
