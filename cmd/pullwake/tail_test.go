package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// createStream creates a stream at path with messages, in SQL.
func createStream(t *testing.T, tdb *testdb.DB, path, contentType string, msgs ...string) {
	t.Helper()
	data := make([][]byte, len(msgs))
	for i, m := range msgs {
		data[i] = []byte(m)
	}
	var status string
	err := tdb.Pool.QueryRow(context.Background(),
		`SELECT status FROM pw_stream_create('default', $1, $2, NULL, NULL, false, $3, NULL)`, path, contentType, data).Scan(&status)
	if err != nil || status != "created" {
		t.Fatalf("create %s: %s, %v", path, status, err)
	}
}

// appendStream appends messages (and closes the stream when close), in SQL:
// no notification, as psql would.
func appendStream(t *testing.T, tdb *testdb.DB, path string, close bool, msgs ...string) {
	t.Helper()
	data := make([][]byte, len(msgs))
	for i, m := range msgs {
		data[i] = []byte(m)
	}
	var status string
	err := tdb.Pool.QueryRow(context.Background(),
		`SELECT status FROM pw_stream_write('default', $1,
		   (SELECT content_type FROM streams WHERE tenant_id = 'default' AND path = $1), $2, $3, NULL, NULL, NULL, NULL)`, path, data, close).Scan(&status)
	if err != nil || status != "appended" {
		t.Fatalf("append to %s: %s, %v", path, status, err)
	}
}

func TestTail(t *testing.T) {
	t.Parallel()
	tdb, _ := setup(t) // /chat/1 has one message (an inbox event)
	url := "--database-url=" + tdb.URL
	createStream(t, tdb, "/v1/stream/logs/json", "application/json", `{"n": 1}`, `{"n":2}`, "\"three\"")
	createStream(t, tdb, "/v1/stream/logs/text", "text/plain", "line one\n", "line two\n")
	createStream(t, tdb, "/v1/stream/logs/bytes", "application/octet-stream", "\xff\x00")
	createStream(t, tdb, "/v1/stream/logs/empty", "application/json")

	t.Run("json stream", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "tail", "/v1/stream/logs/json", url).expect(t, 0, "\\A\\{\"n\":1\\}\n\\{\"n\":2\\}\n\"three\"\n\\z", `^$`)
		// The short form of the path, and --from an offset.
		pullwake(t, nil, "tail", "logs/json", "--from", "0000000000000001", url).expect(t, 0, "\\A\\{\"n\":2\\}\n\"three\"\n\\z", `^$`)
		pullwake(t, nil, "tail", "/logs/json", "--from", "0000000000000003", url).expect(t, 0, `\A\z`, `^$`)
		pullwake(t, nil, "tail", "logs/json", "--from", "now", url).expect(t, 0, `\A\z`, `^$`)
		pullwake(t, nil, "tail", "logs/empty", url).expect(t, 0, `\A\z`, `^$`)
	})
	t.Run("entity main stream", func(t *testing.T) {
		t.Parallel()
		r := pullwake(t, nil, "tail", "/v1/stream/chat/1/main", url)
		r.expect(t, 0, `\A\{[^\n]*"type":"inbox",[^\n]*"payload":\{"text":"hi"\}[^\n]*\}\n\z`, `^$`)
	})
	t.Run("bytes", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "tail", "logs/text", url).expect(t, 0, "\\Aline one\nline two\n\\z", `^$`)
		r := pullwake(t, nil, "tail", "logs/bytes", url)
		if r.code != 0 || r.stdout != "\xff\x00" {
			t.Errorf("opaque bytes: exit %d, %q", r.code, r.stdout)
		}
	})
	t.Run("json output", func(t *testing.T) {
		t.Parallel()
		check := func(args []string, want ...tailMessage) {
			t.Helper()
			r := pullwake(t, nil, append([]string{"tail", "--json", url}, args...)...)
			r.expect(t, 0, "", `^$`)
			lines := strings.Split(strings.TrimSuffix(r.stdout, "\n"), "\n")
			if len(lines) != len(want) {
				t.Fatalf("%v: %d lines, want %d:\n%s", args, len(lines), len(want), r.stdout)
			}
			for i, l := range lines {
				var got tailMessage
				if err := json.Unmarshal([]byte(l), &got); err != nil {
					t.Fatalf("line %q: %v", l, err)
				}
				if got.Offset != want[i].Offset || string(got.Message) != string(want[i].Message) ||
					!bytes.Equal(got.MessageBase64, want[i].MessageBase64) {
					t.Errorf("%v: line %d = %s, want %+v", args, i, l, want[i])
				}
			}
		}
		check([]string{"logs/json"},
			tailMessage{Offset: "0000000000000001", Message: json.RawMessage(`{"n":1}`)},
			tailMessage{Offset: "0000000000000002", Message: json.RawMessage(`{"n":2}`)},
			tailMessage{Offset: "0000000000000003", Message: json.RawMessage(`"three"`)})
		check([]string{"logs/json", "--from", "0000000000000002"},
			tailMessage{Offset: "0000000000000003", Message: json.RawMessage(`"three"`)})
		check([]string{"logs/text"},
			tailMessage{Offset: "0000000000000001", Message: json.RawMessage(`"line one\n"`)},
			tailMessage{Offset: "0000000000000002", Message: json.RawMessage(`"line two\n"`)})
		check([]string{"logs/bytes"}, tailMessage{Offset: "0000000000000001", MessageBase64: []byte("\xff\x00")})
	})
	t.Run("errors", func(t *testing.T) {
		t.Parallel()
		pullwake(t, nil, "tail", "logs/nope", url).expect(t, 1, `^$`, `^pullwake tail: stream /v1/stream/logs/nope not found \(tenant default\)\n$`)
		pullwake(t, nil, "tail", "logs/json", url, "--tenant", "other").expect(t, 1, `^$`, `not found \(tenant other\)`)
		pullwake(t, nil, "tail", "logs/json", "--from", "0000000000000009", url).
			expect(t, 2, `^$`, `--from 0000000000000009 is past the tail 0000000000000003 of stream /v1/stream/logs/json`)
		pullwake(t, nil, "tail", "logs/json", "--from", "yesterday", url).expect(t, 2, `^$`, `--from "yesterday": want -1, now or a 16-digit offset`)
		pullwake(t, nil, "tail", "logs/json", "--poll-interval", "1ms", url).expect(t, 2, `^$`, `--poll-interval 1ms: want 100ms to 1h`)
		pullwake(t, nil, "tail", "logs/../x", url).expect(t, 2, `^$`, `is not a stream path`)
		pullwake(t, nil, "tail", "/v1/stream/", url).expect(t, 2, `^$`, `is not a stream path`)
		pullwake(t, nil, "tail", url).expect(t, 2, `^$`, `want STREAM, got 0 argument`)
		pullwake(t, nil, "tail", "logs/json").expect(t, 2, `^$`, `no database`)
		pullwake(t, nil, "tail", "--help").expect(t, 0, `(?s)Usage: pullwake tail STREAM.*-follow.*-from.*-json.*-poll-interval`, `^$`)
	})
}

// follower is a `pullwake tail --follow` running in the background.
type follower struct {
	t      *testing.T
	cmd    *exec.Cmd
	lines  chan string
	stderr *bytes.Buffer
	done   chan error
}

func startTail(t *testing.T, args ...string) *follower {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"tail", "--follow"}, args...)...)
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k == "DATABASE_URL" || strings.HasPrefix(k, "PULLWAKE_") || strings.HasPrefix(k, "PG") {
			continue
		}
		cmd.Env = append(cmd.Env, kv)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	f := &follower{t: t, cmd: cmd, lines: make(chan string, 100), stderr: &bytes.Buffer{}, done: make(chan error, 1)}
	cmd.Stderr = f.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-f.done })
	go func() {
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			f.lines <- sc.Text()
		}
		close(f.lines)
		f.done <- cmd.Wait()
	}()
	return f
}

// next returns the next line printed, failing after 10 s.
func (f *follower) next(what string) string {
	f.t.Helper()
	select {
	case l, ok := <-f.lines:
		if !ok {
			f.t.Fatalf("%s: tail ended; stderr:\n%s", what, f.stderr)
		}
		return l
	case <-time.After(10 * time.Second):
		f.t.Fatalf("%s: nothing printed in 10s; stderr:\n%s", what, f.stderr)
	}
	return ""
}

// exit waits for the process to end and returns its exit code.
func (f *follower) exit() int {
	f.t.Helper()
	for range f.lines { // drain
	}
	select {
	case err := <-f.done:
		f.done <- err // for the cleanup
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			f.t.Fatal(err)
		}
		return 0
	case <-time.After(10 * time.Second):
		f.t.Fatalf("tail did not end; stderr:\n%s", f.stderr)
	}
	return -1
}

// tail --follow prints what is there, then each append as it comes: woken
// by the streams' notification (with a poll interval of an hour, nothing
// else could wake it), or by its re-read for an append that notified
// nobody. Ctrl-C ends it with exit 0; so does the stream's closing.
func TestTailFollow(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	url := "--database-url=" + tdb.URL
	createStream(t, tdb, "/v1/stream/logs/a", "application/json", `{"n":1}`)
	createStream(t, tdb, "/v1/stream/logs/b", "application/json")
	notify := func(path string) {
		t.Helper()
		exec1(t, tdb, fmt.Sprintf(`SELECT pg_notify('pullwake_streams', json_build_object('tenant_id', 'default', 'path', '%s')::text)`, path))
	}

	t.Run("woken by notifications", func(t *testing.T) {
		t.Parallel()
		f := startTail(t, "logs/a", "--poll-interval", "1h", url)
		if l := f.next("the existing message"); l != `{"n":1}` {
			t.Fatalf("first line %q", l)
		}
		// Another stream's notification, then this stream's: one read.
		for i := 2; i <= 3; i++ {
			appendStream(t, tdb, "/v1/stream/logs/a", false, fmt.Sprintf(`{"n":%d}`, i))
			notify("/v1/stream/logs/b")
			notify("/v1/stream/logs/a")
			if l, want := f.next("an appended message"), fmt.Sprintf(`{"n":%d}`, i); l != want {
				t.Fatalf("line %q, want %q", l, want)
			}
		}
		if err := f.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if code := f.exit(); code != 0 {
			t.Errorf("exit code %d after Ctrl-C, want 0; stderr:\n%s", code, f.stderr)
		}
	})
	t.Run("polls and ends at close", func(t *testing.T) {
		t.Parallel()
		f := startTail(t, "-f", "/v1/stream/logs/b", "--poll-interval", "100ms", url)
		// Waits that time out before anything is appended (polled reads).
		deadline := time.Now().Add(300 * time.Millisecond)
		for time.Now().Before(deadline) {
			select {
			case l := <-f.lines:
				t.Fatalf("printed %q before any append", l)
			case <-time.After(50 * time.Millisecond):
			}
		}
		appendStream(t, tdb, "/v1/stream/logs/b", false, `"x"`, `"y"`)
		if l := f.next("first append"); l != `"x"` {
			t.Fatalf("line %q", l)
		}
		if l := f.next("second message"); l != `"y"` {
			t.Fatalf("line %q", l)
		}
		appendStream(t, tdb, "/v1/stream/logs/b", true, `"last"`)
		if l := f.next("the message closing the stream"); l != `"last"` {
			t.Fatalf("line %q", l)
		}
		// The LISTEN connection outlived its waits' timeouts: no fallback
		// to polling was reported.
		if code := f.exit(); code != 0 || f.stderr.String() != "pullwake tail: stream /v1/stream/logs/b is closed\n" {
			t.Errorf("exit %d at close, stderr %q; want 0 and only the note", code, f.stderr)
		}
	})
}

// A stream deleted while followed ends tail with exit 1.
func TestTailFollowDeleted(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	createStream(t, tdb, "/v1/stream/logs/d", "text/plain", "a\n")
	f := startTail(t, "logs/d", "--poll-interval", "100ms", "--database-url="+tdb.URL)
	if l := f.next("the existing message"); l != "a" {
		t.Fatalf("line %q", l)
	}
	exec1(t, tdb, `SELECT pw_stream_delete('default', '/v1/stream/logs/d', NULL)`)
	if code := f.exit(); code != 1 || !strings.Contains(f.stderr.String(), "stream /v1/stream/logs/d not found") {
		t.Errorf("exit %d, stderr %q; want 1 and not found", code, f.stderr)
	}
}
