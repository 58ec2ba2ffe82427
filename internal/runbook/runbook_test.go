package runbook

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// sqlBlocks returns the ```sql blocks of docs/operations.md, in order.
func sqlBlocks(t *testing.T) []string {
	t.Helper()
	root, err := testdb.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(root, "docs", "operations.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []string
	var cur *strings.Builder
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case cur == nil && strings.TrimSpace(line) == "```sql":
			cur = &strings.Builder{}
		case cur != nil && strings.TrimSpace(line) == "```":
			blocks = append(blocks, cur.String())
			cur = nil
		case cur != nil:
			cur.WriteString(line)
			cur.WriteByte('\n')
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatal("docs/operations.md: unterminated ```sql block")
	}
	return blocks
}

// The runbook's blocks, by their place in the doc. The test fails when the
// doc gains or loses a block, so the two stay in step.
const (
	blockFindLeaks = iota
	blockDispatchState
	blockRelease
	blockExpire
	blockStuckEntities
	blockUncoveredMessages
	numBlocks
)

// markers are text each block must contain: a check that the blocks are
// where the constants above say.
var markers = map[int]string{
	blockFindLeaks:         "c.status = 'active'",
	blockDispatchState:     "e.url = '/chat/42'",
	blockRelease:           "release_claim('wake-123', 4)",
	blockExpire:            "expire_claims()",
	blockStuckEntities:     "e.status IN ('running', 'stopping')",
	blockUncoveredMessages: "d.last_sent_offset > d.acked_offset",
}

type row map[string]string

// run executes one block (one statement) and returns its rows, each value
// formatted with fmt.Sprint ("<nil>" for NULL).
func run(t *testing.T, tdb *testdb.DB, sql string) []row {
	t.Helper()
	rows, err := tdb.Pool.Query(context.Background(), sql)
	if err != nil {
		t.Fatalf("runbook query failed: %v\n%s", err, sql)
	}
	defer rows.Close()
	var out []row
	for rows.Next() {
		vals, err := rows.Values()
		if err != nil {
			t.Fatal(err)
		}
		r := make(row)
		for i, fd := range rows.FieldDescriptions() {
			if tm, ok := vals[i].(time.Time); ok {
				r[fd.Name] = tm.UTC().Format(time.RFC3339Nano)
				continue
			}
			r[fd.Name] = fmt.Sprint(vals[i])
		}
		out = append(out, r)
	}
	if err := rows.Err(); err != nil {
		t.Fatalf("runbook query failed: %v\n%s", err, sql)
	}
	return out
}

// expect checks that got has len(want) rows and that each holds the
// columns of its wanted row ("!<nil>" means any value but NULL).
func expect(t *testing.T, step string, got []row, want ...row) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d rows, the doc says %d:\n%v", step, len(got), len(want), got)
	}
	for i, w := range want {
		for k, v := range w {
			g, ok := got[i][k]
			switch {
			case !ok:
				t.Errorf("%s: row %d has no column %q: %v", step, i, k, got[i])
			case v == "!<nil>" && g == "<nil>":
				t.Errorf("%s: row %d: %s is NULL, the doc says it is set", step, i, k)
			case v != "!<nil>" && g != v:
				t.Errorf("%s: row %d: %s = %q, the doc says %q", step, i, k, g, v)
			}
		}
	}
}

func mustExec(t *testing.T, tdb *testdb.DB, sqls ...string) {
	t.Helper()
	for _, q := range sqls {
		if _, err := tdb.Pool.Exec(context.Background(), q); err != nil {
			t.Fatalf("setup: %s: %v", q, err)
		}
	}
}

// leakedSetup builds the runbook's example: runner r1 holds two claims whose
// leases passed long ago and that no sweeper has ended: wake-123 epoch 4 on
// /chat/42 and wake-124 epoch 1 on /chat/7, each with one unacked message.
func leakedSetup(t *testing.T) *testdb.DB {
	t.Helper()
	tdb := testdb.New(t)
	mustExec(t, tdb,
		`INSERT INTO runners (id, token_hash) VALUES ('r1', '\x00')`,
		`SELECT * FROM spawn_entity('/chat/42', NULL, now() - interval '2 hours')`,
		`SELECT * FROM spawn_entity('/chat/7', NULL, now() - interval '2 hours')`,
		// Three earlier claims of /chat/42 and 122 earlier wakes, so the
		// names match the doc's.
		`UPDATE entity_dispatch_state SET epoch = 3 WHERE entity_url = '/chat/42'`,
		`SELECT setval('wake_seq', 122)`,
		`SELECT * FROM send_to_entity('/chat/42', '"hello"', NULL, now() - interval '1 hour')`,
		`SELECT * FROM claim_next_wake('r1', 60000, now() - interval '1 hour')`,
		`SELECT * FROM send_to_entity('/chat/7', '"hello"', NULL, now() - interval '50 minutes')`,
		`SELECT * FROM claim_next_wake('r1', 60000, now() - interval '50 minutes')`,
	)
	return tdb
}

func TestRunbook(t *testing.T) {
	t.Parallel()
	blocks := sqlBlocks(t)
	if len(blocks) != numBlocks {
		t.Fatalf("docs/operations.md has %d sql blocks, this test knows %d: update both together", len(blocks), numBlocks)
	}
	for i, m := range markers {
		if !strings.Contains(blocks[i], m) {
			t.Fatalf("sql block %d should contain %q (blocks reordered?):\n%s", i, m, blocks[i])
		}
	}

	t.Run("leaked claims found and fixed", func(t *testing.T) {
		t.Parallel()
		tdb := leakedSetup(t)

		// Before the fix both entities are running without a live claim.
		expect(t, "stuck entities before the fix", run(t, tdb, blocks[blockStuckEntities]),
			row{"url": "/chat/42", "status": "running", "active_consumer_id": "wake-123"},
			row{"url": "/chat/7", "status": "running", "active_consumer_id": "wake-124"})

		// 1. Find leaked claims.
		expect(t, "1. find leaked claims", run(t, tdb, blocks[blockFindLeaks]),
			row{"consumer_id": "wake-123", "epoch": "4", "entity_url": "/chat/42", "runner_id": "r1", "why": "lease passed"},
			row{"consumer_id": "wake-124", "epoch": "1", "entity_url": "/chat/7", "runner_id": "r1", "why": "lease passed"})

		// 2. Read the entity's dispatch state.
		got := run(t, tdb, blocks[blockDispatchState])
		expect(t, "2. dispatch state", got,
			row{"url": "/chat/42", "status": "running", "active_consumer_id": "wake-123", "active_epoch": "4",
				"active_runner_id": "r1", "acked_offset": "0000000000000000", "last_sent_offset": "0000000000000001"})
		if lease, err := time.Parse(time.RFC3339Nano, got[0]["active_lease_expires_at"]); err != nil || !lease.Before(time.Now()) {
			t.Errorf("2. dispatch state: active_lease_expires_at %q, the doc says it is in the past", got[0]["active_lease_expires_at"])
		}

		// 3. Release one claim; again: nothing changes.
		expect(t, "3. release", run(t, tdb, blocks[blockRelease]),
			row{"released": "true", "entity_cleared": "true", "claim_status": "released", "entity_url": "/chat/42",
				"entity_status": "idle", "queued_wake_id": "!<nil>"})
		expect(t, "3. release again", run(t, tdb, blocks[blockRelease]),
			row{"released": "false", "entity_cleared": "false", "claim_status": "released", "entity_status": "idle"})

		// 4. Expire lapsed claims by hand.
		expect(t, "4. expire", run(t, tdb, blocks[blockExpire]),
			row{"consumer_id": "wake-124", "epoch": "1", "entity_url": "/chat/7", "entity_cleared": "true",
				"entity_status": "idle", "queued_wake_id": "!<nil>"})

		// 5. Nothing left.
		expect(t, "5. find leaked claims again", run(t, tdb, blocks[blockFindLeaks]))
		expect(t, "5. stuck entities", run(t, tdb, blocks[blockStuckEntities]))
		expect(t, "5. uncovered messages", run(t, tdb, blocks[blockUncoveredMessages]))
		expect(t, "4. expire again", run(t, tdb, blocks[blockExpire]))
	})

	t.Run("uncovered message found and nudged", func(t *testing.T) {
		t.Parallel()
		tdb := testdb.New(t)
		// The bug the last query exists for: a sent message on an idle
		// entity whose wake vanished (here: superseded by hand).
		mustExec(t, tdb,
			`SELECT * FROM spawn_entity('/chat/42')`,
			`SELECT * FROM send_to_entity('/chat/42', '"hello"')`,
			`UPDATE wakes SET status = 'superseded' WHERE entity_url = '/chat/42'`,
			`UPDATE entity_dispatch_state SET outstanding_wake_id = NULL WHERE entity_url = '/chat/42'`,
		)
		expect(t, "uncovered messages", run(t, tdb, blocks[blockUncoveredMessages]),
			row{"url": "/chat/42", "status": "idle", "acked_offset": "0000000000000000", "last_sent_offset": "0000000000000001"})
		// The doc's remedy: send the entity any message.
		mustExec(t, tdb, `SELECT * FROM send_to_entity('/chat/42', '"nudge"')`)
		expect(t, "uncovered messages after a nudge", run(t, tdb, blocks[blockUncoveredMessages]))
	})
}
