package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/pullwake/pullwake/internal/testserver"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a bytes.Buffer safe for the runner's log and the test.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, arg := range []string{"--help", "-h"} {
		var out, errOut bytes.Buffer
		if code := run(context.Background(), []string{arg}, &out, &errOut); code != 0 {
			t.Fatalf("%s: exit %d, stderr %q", arg, code, errOut.String())
		}
		for _, want := range []string{"Usage: echo-runner", "-server", "PULLWAKE_URL", "-admin-token", "PULLWAKE_ADMIN_TOKEN",
			"-runner-id", "-concurrency", `"type":"echo"`} {
			if !strings.Contains(out.String(), want) {
				t.Fatalf("%s: the help lacks %q:\n%s", arg, want, out.String())
			}
		}
	}
}

func TestBadInvocations(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--bogus"}, 2, "flag provided but not defined"},
		{[]string{"extra"}, 2, `unexpected argument "extra"`},
		{[]string{"--concurrency", "0"}, 2, "--concurrency must be at least 1"},
		{[]string{"--runner-id", "bad id"}, 2, "RunnerID"},
		{[]string{"--server", "127.0.0.1:8080"}, 2, "must start with http://"},
		{[]string{"--server", "http://127.0.0.1:1"}, 1, "does not answer"},
	} {
		var out, errOut bytes.Buffer
		code := run(context.Background(), tc.args, &out, &errOut)
		if code != tc.code || !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit %d and %q", tc.args, code, errOut.String(), tc.code, tc.want)
		}
	}
}

// The example registers, answers a sent message with an echo event, and
// exits 0 on a stop.
func TestEchoesEveryMessage(t *testing.T) {
	t.Parallel()
	const admin = "example-admin-token-0123456789"
	srv := testserver.Start(t, testserver.Options{AdminToken: admin})
	hc := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone()}
	defer hc.CloseIdleConnections()
	do := func(method, path, body string) []byte {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Authorization", "Bearer "+admin)
		req.Header.Set("Content-Type", "application/json")
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		data, _ := io.ReadAll(res.Body)
		if res.StatusCode >= 300 {
			t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, data)
		}
		return data
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr syncBuffer
	exited := make(chan int, 1)
	go func() {
		exited <- run(ctx, []string{"--server", srv.URL, "--admin-token", admin, "--runner-id", "echo-1"}, io.Discard, &stderr)
	}()
	do("PUT", "/entities/chat/1", `{}`)
	do("POST", "/entities/chat/1", `{"payload":{"text":"hello"}}`)
	do("POST", "/entities/chat/1", `{"payload":"second"}`)

	var echoes []map[string]any
	deadline := time.Now().Add(20 * time.Second)
	for len(echoes) < 2 {
		if time.Now().After(deadline) {
			t.Fatalf("not two echoes within 20s; log:\n%s", stderr.String())
		}
		time.Sleep(20 * time.Millisecond)
		var evs []map[string]any
		if err := json.Unmarshal(do("GET", "/v1/stream/chat/1/main?offset=-1", ""), &evs); err != nil {
			t.Fatal(err)
		}
		echoes = echoes[:0]
		for _, ev := range evs {
			if ev["type"] == "echo" {
				echoes = append(echoes, ev)
			}
		}
	}
	first := echoes[0]["value"].(map[string]any)
	if p, _ := first["payload"].(map[string]any); p["text"] != "hello" || first["from"] != "admin" {
		t.Fatalf("first echo %v, want the payload {\"text\":\"hello\"} from admin", first)
	}
	if echoes[1]["value"].(map[string]any)["payload"] != "second" {
		t.Fatalf("second echo %v", echoes[1])
	}
	cancel()
	select {
	case code := <-exited:
		if code != 0 {
			t.Fatalf("exit %d after a stop; log:\n%s", code, stderr.String())
		}
	case <-time.After(time.Minute):
		t.Fatal("echo-runner did not exit within a minute of its stop")
	}
}
