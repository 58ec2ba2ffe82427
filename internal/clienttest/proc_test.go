package clienttest

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testbin"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbin.Cleanup()
	os.Exit(code)
}

// server is a `pullwake serve` child process on a fixed address and
// database; Restart stops it and starts it again there.
type server struct {
	t     testing.TB
	addr  string
	env   []string
	admin string

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has exited
	log    bytes.Buffer  // every start's output
}

// startServer starts pullwake serve on a free port over databaseURL with an
// admin token, and stops it when the test ends (printing its log if the
// test failed).
func startServer(t testing.TB, databaseURL, admin string, env ...string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	s := &server{t: t, addr: addr, admin: admin}
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if k == "DATABASE_URL" || strings.HasPrefix(k, "PULLWAKE_") || strings.HasPrefix(k, "PG") {
			continue
		}
		s.env = append(s.env, kv)
	}
	s.env = append(s.env, "PULLWAKE_DATABASE_URL="+databaseURL, "PULLWAKE_ADDR="+addr,
		"PULLWAKE_ADMIN_TOKEN="+admin, "PULLWAKE_LOG_FORMAT=text", "PULLWAKE_LONG_POLL_TIMEOUT=5s")
	s.env = append(s.env, env...)
	t.Cleanup(func() {
		s.stop()
		if t.Failed() {
			s.mu.Lock()
			t.Logf("pullwake serve log:\n%s", s.log.String())
			s.mu.Unlock()
		}
	})
	s.start()
	return s
}

func (s *server) URL() string { return "http://" + s.addr }

func (s *server) start() {
	s.t.Helper()
	cmd := exec.Command(testbin.Pullwake(s.t), "serve")
	cmd.Env = s.env
	s.mu.Lock()
	fmt.Fprintf(&s.log, "=== start at %s\n", time.Now().Format(time.RFC3339Nano))
	cmd.Stdout, cmd.Stderr = lockedWriter{s}, lockedWriter{s}
	s.mu.Unlock()
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("start pullwake serve: %v", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.mu.Lock()
	s.cmd, s.exited = cmd, exited
	s.mu.Unlock()
	hc := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(30 * time.Second)
	for {
		select {
		case <-exited:
			s.t.Fatalf("pullwake serve exited during start-up:\n%s", s.logText())
		default:
		}
		if res, err := hc.Get(s.URL() + "/readyz"); err == nil {
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			s.t.Fatalf("pullwake serve not ready within 30s:\n%s", s.logText())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// stop ends the process: SIGTERM (a graceful stop), SIGKILL after 10 s.
func (s *server) stop() {
	s.mu.Lock()
	cmd, exited := s.cmd, s.exited
	s.cmd = nil
	s.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
	}
}

// restart is a stop and a start on the same address and database.
func (s *server) restart() {
	s.t.Helper()
	s.stop()
	s.start()
}

func (s *server) logText() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.log.String()
}

type lockedWriter struct{ s *server }

func (w lockedWriter) Write(p []byte) (int, error) {
	w.s.mu.Lock()
	defer w.s.mu.Unlock()
	return w.s.log.Write(p)
}
