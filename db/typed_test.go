package db_test

import (
	"strings"
	"testing"
)

// spawn_entity's parent must be an existing entity of the tenant: a
// missing one raises PW015 (its message names the code) and creates
// nothing; an existing one is stored. The foreign key holds any other
// writer to the same rule.
func TestSpawnEntityParent(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity('/chat/child', p_parent => '/chat/nobody')`)
	f.wantCode(err, "PW015", "spawn with a missing parent")
	if !strings.Contains(err.Error(), "PW015: parent entity /chat/nobody not found") {
		t.Fatalf("message does not start with its code: %v", err)
	}
	var n int
	if err := f.pool.QueryRow(f.ctx, `SELECT (SELECT count(*) FROM entities) + (SELECT count(*) FROM streams)
		+ (SELECT count(*) FROM entity_dispatch_state)`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("a refused spawn left %d rows (%v)", n, err)
	}
	// Another tenant's entity is not a parent.
	f.exec(`SELECT * FROM spawn_entity('/chat/boss', NULL, NULL, 'other')`)
	_, err = f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity('/chat/child', p_parent => '/chat/boss')`)
	f.wantCode(err, "PW015", "parent in another tenant")

	f.exec(`SELECT * FROM spawn_entity('/chat/boss')`)
	var parent *string
	if err := f.pool.QueryRow(f.ctx, `SELECT parent FROM spawn_entity('/chat/child', p_parent => '/chat/boss')`).Scan(&parent); err != nil {
		t.Fatal(err)
	}
	if str(parent) != "/chat/boss" {
		t.Fatalf("parent stored: %s", str(parent))
	}
	if err := f.pool.QueryRow(f.ctx, `SELECT parent FROM spawn_entity('/chat/orphan')`).Scan(&parent); err != nil || parent != nil {
		t.Fatalf("spawn without parent: %s %v", str(parent), err)
	}
	_, err = f.pool.Exec(f.ctx, `INSERT INTO entities (url, main_stream, parent) VALUES ('/chat/x', '/v1/stream/chat/x/main', '/chat/ghost')`)
	f.wantCode(err, "23503", "insert naming a missing parent")
}
