package runner_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testbin"
	"github.com/pullwake/pullwake/internal/testdb"
	"github.com/pullwake/pullwake/runner"
)

// proc is `pullwake serve` as a child process on a fixed address.
type proc struct {
	t      *testing.T
	addr   string
	env    []string
	log    string
	cmd    *exec.Cmd
	exited chan struct{}
}

func startProc(t *testing.T, dbURL string) *proc {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	var env []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "DATABASE_URL" && !strings.HasPrefix(k, "PULLWAKE_") {
			env = append(env, kv)
		}
	}
	env = append(env, "PULLWAKE_DATABASE_URL="+dbURL, "PULLWAKE_ADDR="+addr, "PULLWAKE_ADMIN_TOKEN="+adminToken,
		"PULLWAKE_LONG_POLL_TIMEOUT=1s", "PULLWAKE_LOG_FORMAT=text")
	p := &proc{t: t, addr: addr, env: env, log: filepath.Join(t.TempDir(), "serve.log")}
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			data, _ := os.ReadFile(p.log)
			t.Logf("server log:\n%s", data)
		}
	})
	p.start()
	return p
}

func (p *proc) url() string { return "http://" + p.addr }

func (p *proc) start() {
	p.t.Helper()
	f, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		p.t.Fatal(err)
	}
	cmd := exec.Command(testbin.Pullwake(p.t), "serve")
	cmd.Env = p.env
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		f.Close()
		p.t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(exited)
	}()
	p.cmd, p.exited = cmd, exited
	hc := &http.Client{Timeout: time.Second}
	defer hc.CloseIdleConnections()
	eventually(p.t, 30*time.Second, "pullwake serve answers /healthz", func() bool {
		select {
		case <-exited:
			p.t.Fatal("pullwake serve exited during start-up")
		default:
		}
		res, err := hc.Get(p.url() + "/healthz")
		if err != nil {
			return false
		}
		res.Body.Close()
		return res.StatusCode == http.StatusOK
	})
}

// kill sends SIGKILL and waits for the process to be gone.
func (p *proc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
}

// The server process is killed (SIGKILL) and started again while a handler
// runs: the runner's wake-stream reader and heartbeats reconnect, the
// handler's append with its write token goes through on the new process
// (no re-mint needed), and the done releases the claim.
func TestServerProcessKilledMidHandler(t *testing.T) {
	t.Parallel()
	d := testdb.New(t)
	p := startProc(t, d.URL)
	e := &env{t: t}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	t.Cleanup(tr.CloseIdleConnections)
	e.rec = &recorder{next: tr}
	e.hc = &http.Client{Transport: e.rec}
	e.adm = &http.Client{Transport: tr}
	e.base = p.url()
	e.pool = d.Pool

	e.spawn("/chat/1")
	sent := e.send("/chat/1", "hi")
	started := make(chan struct{})
	proceed := make(chan struct{})
	var once sync.Once
	cfg := e.config("r1")
	cfg.ServerURL = p.url()
	e.run(cfg, runner.HandlerFunc(func(ctx context.Context, w *runner.Wake) error {
		once.Do(func() { close(started) })
		select {
		case <-proceed:
		case <-ctx.Done():
			return ctx.Err()
		}
		return echo(ctx, w)
	}))
	waitClosed(t, started, "handler started")
	p.kill()
	p.start()
	close(proceed)
	e.settled("/chat/1", sent)

	cs := e.claims("/chat/1")
	if len(cs) != 1 || cs[0].Status != "released" {
		t.Fatalf("claims %+v, want the one claim released", cs)
	}
	var steps []string
	for _, x := range e.rec.exchanges(func(x exchange) bool {
		return x.Method == "POST" && (x.Path == "/v1/stream/chat/1/main" || strings.Contains(x.Body, `"wake_id"`))
	}) {
		steps = append(steps, fmt.Sprintf("%s %d", map[bool]string{true: "claim-request", false: "append"}[strings.Contains(x.Body, `"wake_id"`)], x.Status))
	}
	// The write token outlives the process: the append after the restart
	// is checked against the claim's row and goes through.
	if strings.Join(steps, ", ") != "append 200" {
		t.Fatalf("exchange %v, want append 200 (the token survives the SIGKILL)", steps)
	}
}
