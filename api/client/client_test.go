package client_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"testing"

	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/api/client"
	"github.com/pullwake/pullwake/internal/testserver"
)

// No goroutine of a client or of the test server outlives the tests.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

const adminToken = "test-admin-token-0123456789abcdef"

// bearer authenticates one request with token (admin, runner, claim or
// write token: all travel as a bearer token).
func bearer(token string) client.RequestEditorFn {
	return func(_ context.Context, req *http.Request) error {
		req.Header.Set("Authorization", "Bearer "+token)
		return nil
	}
}

// One claim cycle through the client generated from api/openapi.yaml and
// nothing else: register a runner, spawn an entity pinned to it, send a
// message, claim the wake, append the runner's output to the main stream
// with the write token, and post done with the ack. The server runs with an
// admin token, so every security scheme of the document is exercised.
func TestGeneratedClientClaimCycle(t *testing.T) {
	t.Parallel()
	srv := testserver.Start(t, testserver.Options{AdminToken: adminToken})
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	c, err := client.NewClientWithResponses(srv.URL, client.WithHTTPClient(&http.Client{Transport: tr}))
	if err != nil {
		t.Fatal(err)
	}
	ctx := t.Context()
	admin := bearer(adminToken)
	const typ, id, runnerID = "chat", "generated-1", "gen-r1"

	reg, err := c.RegisterRunnerWithResponse(ctx, client.RunnerRegistration{Id: runnerID, Label: ptr("generated client")}, admin)
	if err != nil || reg.JSON201 == nil {
		t.Fatalf("register runner: %v: %d %s", err, reg.StatusCode(), reg.Body)
	}
	runnerToken := reg.JSON201.RunnerToken

	// Without the admin token the management routes refuse, with the
	// documented 401 and its WWW-Authenticate.
	denied, err := c.SpawnEntityWithResponse(ctx, typ, id, client.SpawnRequest{})
	if err != nil || denied.JSON401 == nil || denied.Headers401 == nil || denied.Headers401.WWWAuthenticate == nil {
		t.Fatalf("spawn without a token: %v: %d %s", err, denied.StatusCode(), denied.Body)
	}

	spawn, err := c.SpawnEntityWithResponse(ctx, typ, id, client.SpawnRequest{RunnerId: ptr(runnerID)}, admin)
	if err != nil || spawn.JSON201 == nil {
		t.Fatalf("spawn: %v: %d %s", err, spawn.StatusCode(), spawn.Body)
	}
	entity := spawn.JSON201
	if entity.Status != client.EntityStatusIdle || entity.Url != "/"+typ+"/"+id {
		t.Fatalf("spawned entity: status %q, url %q", entity.Status, entity.Url)
	}

	sent, err := c.SendToEntityWithResponse(ctx, typ, id, client.SendRequest{Payload: map[string]any{"text": "hi"}, From: ptr("tester")}, admin)
	if err != nil || sent.JSON202 == nil {
		t.Fatalf("send: %v: %d %s", err, sent.StatusCode(), sent.Body)
	}

	claim, err := c.ClaimWithResponse(ctx, runnerID, client.ClaimRequest{LeaseTtlMs: ptr(30000)}, bearer(runnerToken))
	if err != nil || claim.JSON200 == nil {
		t.Fatalf("claim: %v: %d %s", err, claim.StatusCode(), claim.Body)
	}
	w := claim.JSON200
	if w.EntityUrl != entity.Url || w.StreamPath != entity.MainStream || w.Epoch < 1 {
		t.Fatalf("wake notification: entity %q, stream %q, epoch %d; want %q, %q, >= 1", w.EntityUrl, w.StreamPath, w.Epoch, entity.Url, entity.MainStream)
	}
	// Electric's camelCase aliases decode into their own fields.
	if w.WakeIDCamel != w.WakeId || w.ConsumerIDCamel != w.ConsumerId || w.StreamPathCamel != w.StreamPath ||
		w.ClaimTokenCamel != w.ClaimToken || w.WriteTokenCamel != w.WriteToken || !w.LeaseExpiresAtCamel.Equal(w.LeaseExpiresAt) {
		t.Fatalf("camelCase aliases differ from their snake_case twins: %s", claim.Body)
	}

	// The runner's output: a JSON array is flattened one level, each
	// element one message; the write token authorizes it.
	output := []any{map[string]any{"type": "reply", "text": "hello"}, map[string]any{"type": "reply", "text": "bye"}}
	app, err := c.AppendMainStreamWithResponse(ctx, typ, id, output, bearer(w.WriteToken))
	if err != nil || app.StatusCode() != http.StatusNoContent || app.Headers204 == nil || app.Headers204.StreamNextOffset == nil {
		t.Fatalf("append: %v: %d %s", err, app.StatusCode(), app.Body)
	}
	tail := *app.Headers204.StreamNextOffset
	if tail <= sent.JSON202.Offset {
		t.Fatalf("append: the stream's tail %q is not past the message's offset %q", tail, sent.JSON202.Offset)
	}

	done, err := c.WakeCallbackWithResponse(ctx, w.ConsumerId, client.CallbackRequest{
		Epoch: ptr(w.Epoch), Done: ptr(true),
		Acks: &[]client.Ack{{Stream: ptr(w.StreamPath), Offset: tail}},
	}, bearer(w.ClaimToken))
	if err != nil || done.JSON200 == nil {
		t.Fatalf("done: %v: %d %s", err, done.StatusCode(), done.Body)
	}
	rel, err := done.JSON200.AsReleaseAnswer()
	if err != nil {
		t.Fatalf("done: the answer is no release answer: %v: %s", err, done.Body)
	}
	if !rel.Released || !rel.EntityCleared || rel.ClaimStatus != client.ClaimStatusReleased || rel.EntityStatus != client.EntityStatusIdle {
		t.Fatalf("done: released %v, entity_cleared %v, claim %q, entity %q; want true, true, released, idle: %s",
			rel.Released, rel.EntityCleared, rel.ClaimStatus, rel.EntityStatus, done.Body)
	}
	if rel.AckedOffset == nil || *rel.AckedOffset != tail {
		t.Fatalf("done: acked_offset %v, want %q: %s", rel.AckedOffset, tail, done.Body)
	}

	// A repeated done changes nothing and says so.
	again, err := c.WakeCallbackWithResponse(ctx, w.ConsumerId, client.CallbackRequest{Epoch: ptr(w.Epoch), Done: ptr(true)}, bearer(w.ClaimToken))
	if err != nil || again.JSON200 == nil {
		t.Fatalf("repeated done: %v: %d %s", err, again.StatusCode(), again.Body)
	}
	if rel, err := again.JSON200.AsReleaseAnswer(); err != nil || rel.Released || rel.EntityCleared {
		t.Fatalf("repeated done: %v: %s; want released and entity_cleared false", err, again.Body)
	}

	got, err := c.GetEntityWithResponse(ctx, typ, id, admin)
	if err != nil || got.JSON200 == nil {
		t.Fatalf("get entity: %v: %d %s", err, got.StatusCode(), got.Body)
	}
	if d := got.JSON200.Dispatch; got.JSON200.Status != client.EntityStatusIdle || d.ActiveConsumerId != nil || d.AckedOffset != tail {
		t.Fatalf("entity after done: %s; want idle, no active claim, acked_offset %q", got.Body, tail)
	}
}

func ptr[T any](v T) *T { return &v }
