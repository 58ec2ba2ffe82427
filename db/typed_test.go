package db_test

import (
	"testing"
)

// An entity's parent must name an entity of the tenant whoever writes it:
// spawn_entity_as checks (PW001, nothing created) and the foreign key
// holds any other writer, psql included, to the same rule.
func TestEntityParentMustExist(t *testing.T) {
	t.Parallel()
	f := setup(t)
	_, err := f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity_as('/chat/kid', NULL, NULL, '/chat/nobody', NULL, NULL)`)
	f.wantCode(err, "PW001", "spawn with a missing parent")
	f.exec(`SELECT * FROM spawn_entity('/chat/boss', NULL, NULL, 'other')`)
	_, err = f.pool.Exec(f.ctx, `SELECT * FROM spawn_entity_as('/chat/kid', NULL, NULL, '/chat/boss', NULL, NULL)`)
	f.wantCode(err, "PW001", "parent in another tenant")
	var n int
	if err := f.pool.QueryRow(f.ctx, `SELECT count(*) FROM entities WHERE tenant_id = 'default'`).Scan(&n); err != nil || n != 0 {
		t.Fatalf("refused spawns left %d entities (%v)", n, err)
	}

	f.exec(`SELECT * FROM spawn_entity('/chat/boss')`)
	f.exec(`SELECT * FROM spawn_entity_as('/chat/kid', NULL, NULL, '/chat/boss', NULL, NULL)`)
	_, err = f.pool.Exec(f.ctx, `UPDATE entities SET parent = '/chat/ghost' WHERE url = '/chat/kid'`)
	f.wantCode(err, "23503", "update naming a missing parent")
	_, err = f.pool.Exec(f.ctx, `INSERT INTO entities (url, main_stream, parent) VALUES ('/chat/x', '/v1/stream/chat/x/main', '/chat/ghost')`)
	f.wantCode(err, "23503", "insert naming a missing parent")
	var parent *string
	if err := f.pool.QueryRow(f.ctx, `SELECT parent FROM entities WHERE url = '/chat/kid'`).Scan(&parent); err != nil || str(parent) != "/chat/boss" {
		t.Fatalf("parent: %s %v", str(parent), err)
	}
}
