package main

import (
	"context"
	"net"
	"net/http"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

func TestServeRefusesBadGroupCommitAndPprofFlags(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		args   []string
		stderr string
	}{
		{"pprof address", []string{"--pprof-addr", "6060"}, `--pprof-addr "6060" must be host:port`},
		{"in-flight zero", []string{"--group-commit-in-flight", "0"}, `--group-commit-in-flight 0 must be between 1 and 32`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"serve", "--database-url", "postgres://nobody@127.0.0.1:1/x"}, tc.args...)
			pullwake(t, nil, args...).expect(t, 2, `^$`, tc.stderr)
		})
	}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// pprof is served on its own listener when asked for, and not on the API's.
func TestServePprofOnItsOwnListener(t *testing.T) {
	t.Parallel()
	tdb := testdb.New(t)
	api, prof := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "serve", "--database-url", tdb.URL, "--addr", api, "--pprof-addr", prof,
		"--group-commit")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	get := func(url string) (int, error) {
		resp, err := http.Get(url)
		if err != nil {
			return 0, err
		}
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, err := get("http://" + prof + "/debug/pprof/cmdline")
		if err == nil && code == http.StatusOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pprof never answered (%v, %d); log:\n%s", err, code, out.String())
		}
		time.Sleep(20 * time.Millisecond) // poll interval, bounded by the deadline
	}
	if code, err := get("http://" + api + "/debug/pprof/cmdline"); err != nil || code != http.StatusNotFound {
		t.Fatalf("the API listener answers pprof: %d %v", code, err)
	}
	if !strings.Contains(out.String(), `"group_commit":true`) {
		t.Errorf("start-up line does not report group commit on:\n%s", out.String())
	}
}
