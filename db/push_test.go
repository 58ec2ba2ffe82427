package db_test

import (
	"testing"
	"time"
)

// pushClaim calls claim_wake_for_push and reports the claimed epoch and
// webhook URL, or ok = false when it claimed nothing.
func (f *fixture) pushClaim(target, wake string, now time.Time) (epoch int64, url, tail string, ok bool) {
	f.t.Helper()
	rows, err := f.pool.Query(f.ctx, `SELECT epoch, webhook_url, tail_offset FROM claim_wake_for_push($1, $2, NULL, $3)`, target, wake, now)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		if err := rows.Scan(&epoch, &url, &tail); err != nil {
			f.t.Fatal(err)
		}
		ok = true
	}
	if err := rows.Err(); err != nil {
		f.t.Fatalf("claim_wake_for_push(%s, %s): %v", target, wake, err)
	}
	return epoch, url, tail, ok
}

func (f *fixture) pending(now time.Time) []string {
	f.t.Helper()
	var out []string
	rows, err := f.pool.Query(f.ctx, `SELECT target_id || '/' || wake_id FROM push_pending(16, $1)`, now)
	if err != nil {
		f.t.Fatal(err)
	}
	defer rows.Close()
	for rows.Next() {
		var s string
		_ = rows.Scan(&s)
		out = append(out, s)
	}
	return out
}

// A push claim is a claim like a runner's (same rule: single flight, lease,
// release re-queues unacked messages), made only for the wake's own push
// target, once.
func TestClaimWakeForPush(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.spawn("/chat/1")
	f.exec(`SELECT spawn_entity('/chat/2', 'r1')`)
	_, wake := f.send("/chat/1", at(0))
	f.send("/chat/2", at(0)) // a runner's entity: never pushed
	if p := f.pending(at(0)); len(p) != 0 {
		t.Fatalf("pending without subscriptions: %v", p)
	}
	// Subscriptions made after the wake was queued take it.
	f.exec(`SELECT upsert_push_subscription('all-chat', 'chat/**', '{}', 'https://hooks.example/a', 30000, '', $1)`, at(-2*sec))
	f.exec(`SELECT upsert_push_subscription('later', '**', '{}', 'https://hooks.example/b', 30000, '', $1)`, at(-1*sec))

	if p := f.pending(at(0)); len(p) != 1 || p[0] != "all-chat/"+wake {
		t.Fatalf("pending %v", p)
	}
	// Not this target's wake: the oldest matching subscription owns it.
	if _, _, _, ok := f.pushClaim("later", wake, at(1*sec)); ok {
		t.Fatal("a later subscription claimed another's wake")
	}
	epoch, url, tail, ok := f.pushClaim("all-chat", wake, at(1*sec))
	if !ok || epoch != 1 || url != "https://hooks.example/a" || tail != off(1) {
		t.Fatalf("push claim: %d %s %s %v", epoch, url, tail, ok)
	}
	f.wantSlot("/chat/1", wake, 1)
	if r := f.claimRow(wake, 1); r.Status != "active" {
		t.Fatalf("claim %+v", r)
	}
	if _, _, _, ok := f.pushClaim("all-chat", wake, at(2*sec)); ok {
		t.Fatal("the same wake claimed twice")
	}
	f.noClaim("r2", at(2*sec)) // the pushed wake is claimed; r2 may not take /chat/2's
	if p := f.pending(at(2 * sec)); len(p) != 0 {
		t.Fatalf("pending while claimed: %v", p)
	}

	// A release without acks (a failed delivery) queues a new wake for the
	// unacked message, which the target may claim after its back-off.
	r := f.release(wake, 1, []ack{}, at(3*sec))
	if !r.EntityCleared || r.QueuedWakeID == nil {
		t.Fatalf("release %+v", r)
	}
	f.exec(`UPDATE push_subscriptions SET next_attempt_at = $1 WHERE id = 'all-chat'`, at(10*sec))
	if p := f.pending(at(5 * sec)); len(p) != 0 {
		t.Fatalf("pending during back-off: %v", p)
	}
	if p := f.pending(at(10 * sec)); len(p) != 1 {
		t.Fatalf("pending after back-off: %v", p)
	}
	// Deleted, the subscription claims nothing; the wake is left to the
	// next target (here the later subscription) or to runners.
	f.exec(`DELETE FROM push_subscriptions WHERE id = 'all-chat'`)
	if p := f.pending(at(11 * sec)); len(p) != 1 || p[0] != "later/"+*r.QueuedWakeID {
		t.Fatalf("pending after the delete: %v", p)
	}
	if _, _, _, ok := f.pushClaim("all-chat", *r.QueuedWakeID, at(11*sec)); ok {
		t.Fatal("a deleted subscription claimed")
	}
	if _, _, _, ok := f.pushClaim("later", *r.QueuedWakeID, at(11*sec)); !ok {
		t.Fatal("the remaining subscription did not claim")
	}
}

// Entity types with a webhook target push their entities; the target
// follows the type's policy and goes with the type.
func TestEntityTypeWebhookTarget(t *testing.T) {
	t.Parallel()
	f := setup(t)
	f.exec(`INSERT INTO entity_types (name, default_dispatch_policy) VALUES
	          ('agent', '{"targets": [{"type": "webhook", "url": "javascript:x"}, {"type": "webhook", "url": "http://127.0.0.1:9/hook"}]}')`)
	if n := f.rows(`SELECT count(*) FROM push_subscriptions WHERE id = 'entity-type:agent' AND webhook_url = 'http://127.0.0.1:9/hook' AND pattern = 'agent/**'`); n != 1 {
		t.Fatal("no push target for the type's webhook")
	}
	f.exec(`UPDATE entity_types SET default_dispatch_policy = '{"targets": [{"type": "runner", "runnerId": "r1"}]}' WHERE name = 'agent'`)
	if n := f.rows(`SELECT count(*) FROM push_subscriptions`); n != 0 {
		t.Fatal("a runner policy kept the webhook target")
	}
	f.exec(`UPDATE entity_types SET default_dispatch_policy = '{"targets": [{"type": "webhook", "url": "https://x.example"}]}' WHERE name = 'agent'`)
	f.exec(`DELETE FROM entity_types WHERE name = 'agent'`)
	if n := f.rows(`SELECT count(*) FROM push_subscriptions`); n != 0 {
		t.Fatal("a deleted type kept its push target")
	}
}
