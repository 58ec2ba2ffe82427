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

// send_to_entity records a typed send's message type in its inbox event;
// an untyped send's event has none.
func TestSendRecordsMessageType(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`SELECT * FROM spawn_entity('/chat/1')`)
	f.exec(`SELECT * FROM send_to_entity('/chat/1', '{"text": "hi"}', p_message_type => 'query')`)
	f.exec(`SELECT * FROM send_to_entity('/chat/1', '"plain"')`)
	rows, err := f.pool.Query(f.ctx, `SELECT convert_from(m.data, 'UTF8')::jsonb -> 'value' ->> 'message_type'
		FROM stream_messages m WHERE m.path = '/v1/stream/chat/1/main' ORDER BY m.seq`)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for rows.Next() {
		var mt *string
		if err := rows.Scan(&mt); err != nil {
			t.Fatal(err)
		}
		got = append(got, str(mt))
	}
	if rows.Err() != nil || len(got) != 2 || got[0] != "query" || got[1] != "<nil>" {
		t.Fatalf("message types on the stream: %v %v", got, rows.Err())
	}
}
