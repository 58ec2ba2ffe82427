// Package nodetest runs the repository's Node test projects (test/*/: a
// package.json with exact pins and a committed package-lock.json, and a
// script) from Go tests, so `go test ./...` drives them like any other
// test.
//
// Node and npm are taken from PATH; when either is missing they are
// installed with apt-get (Debian's nodejs and npm packages), and when that
// fails the test fails saying so: a Node test never skips. Dependencies
// come from `npm ci` against the lockfile, run only when node_modules was
// not installed from the lockfile as it is now (a stamp with the lockfile's
// hash inside node_modules), so a warm checkout runs offline.
package nodetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/testdb"
)

// stampName is the file in node_modules that names the lockfile hash the
// modules were installed from.
const stampName = ".pullwake-lock-sha256"

var (
	toolsOnce sync.Once
	toolsErr  error
	ciMu      sync.Mutex // one npm ci at a time in this process
)

// Project is one Node test project.
type Project struct {
	Dir string // absolute path of the folder holding package.json
}

// Prepare finds the project test/<name> of the repository, makes sure node
// and npm exist, and installs its dependencies from its lockfile. It fails
// t (never skips) when any of that cannot be done.
func Prepare(t testing.TB, name string) Project {
	t.Helper()
	root, err := testdb.RepoRoot()
	if err != nil {
		t.Fatalf("nodetest: %v", err)
	}
	p := Project{Dir: filepath.Join(root, "test", name)}
	toolsOnce.Do(func() {
		if toolsErr = ensureTools(); toolsErr == nil {
			toolsErr = checkVersion()
		}
	})
	if toolsErr != nil {
		t.Fatalf("nodetest: %v", toolsErr)
	}
	if err := p.install(); err != nil {
		t.Fatalf("nodetest: %s: %v", name, err)
	}
	return p
}

// ensureTools installs Debian's nodejs and npm when node or npm is missing.
func ensureTools() error {
	_, nodeErr := exec.LookPath("node")
	_, npmErr := exec.LookPath("npm")
	if nodeErr == nil && npmErr == nil {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return errors.New("node and npm are needed (Node 20 or newer) and neither they nor apt-get are on PATH: install Node.js")
	}
	var out bytes.Buffer
	for _, args := range [][]string{{"update", "-qq"}, {"install", "-y", "-qq", "--no-install-recommends", "nodejs", "npm"}} {
		cmd := exec.Command("apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		cmd.Stdout, cmd.Stderr = &out, &out
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("node or npm is missing and apt-get %s failed (%v): install Node.js 20 or newer\n%s", args[0], err, out.String())
		}
	}
	if _, err := exec.LookPath("node"); err != nil {
		return fmt.Errorf("apt-get installed nodejs but node is not on PATH: %w", err)
	}
	return nil
}

// minNodeMajor is the oldest Node the projects run on (playwright-core's
// engines field says 20).
const minNodeMajor = 20

func checkVersion() error {
	out, err := exec.Command("node", "--version").Output()
	if err != nil {
		return fmt.Errorf("node --version: %w", err)
	}
	v := strings.TrimSpace(string(out))
	var major int
	if _, err := fmt.Sscanf(strings.TrimPrefix(v, "v"), "%d", &major); err != nil || major < minNodeMajor {
		return fmt.Errorf("node %s is too old: the Node tests need Node %d or newer", v, minNodeMajor)
	}
	return nil
}

// install runs npm ci unless node_modules already holds what the lockfile
// names.
func (p Project) install() error {
	ciMu.Lock()
	defer ciMu.Unlock()
	lock, err := os.ReadFile(filepath.Join(p.Dir, "package-lock.json"))
	if err != nil {
		return fmt.Errorf("read the lockfile: %w", err)
	}
	sum := sha256.Sum256(lock)
	want := hex.EncodeToString(sum[:])
	stamp := filepath.Join(p.Dir, "node_modules", stampName)
	if got, err := os.ReadFile(stamp); err == nil && strings.TrimSpace(string(got)) == want {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "npm", "ci", "--no-audit", "--no-fund", "--prefer-offline", "--loglevel=error")
	cmd.Dir = p.Dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("npm ci in %s: %v\n%s", p.Dir, err, out)
	}
	return os.WriteFile(stamp, []byte(want+"\n"), 0o644)
}

// Run is one run of a script of the project: node's output is kept whole
// (Output) and handed line by line to OnLine, which may answer on node's
// standard input through Reply.
type Run struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	mu    sync.Mutex
	out   bytes.Buffer
	done  chan struct{}
	err   error
}

// Start starts `node script` in the project folder with env added to the
// test process's environment. onLine (may be nil) sees every line of
// stdout and stderr, on one goroutine, in order per stream.
func (p Project) Start(ctx context.Context, script string, env []string, onLine func(r *Run, line string)) (*Run, error) {
	r := &Run{done: make(chan struct{})}
	r.cmd = exec.CommandContext(ctx, "node", script)
	r.cmd.Dir = p.Dir
	r.cmd.Env = append(os.Environ(), env...)
	r.cmd.WaitDelay = 5 * time.Second
	var err error
	if r.stdin, err = r.cmd.StdinPipe(); err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	r.cmd.Stdout, r.cmd.Stderr = pw, pw
	if err := r.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start node %s: %w", script, err)
	}
	scanned := make(chan struct{})
	go func() {
		defer close(scanned)
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 64<<10), 4<<20)
		for sc.Scan() {
			line := sc.Text()
			r.mu.Lock()
			r.out.WriteString(line + "\n")
			r.mu.Unlock()
			if onLine != nil {
				onLine(r, line)
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		r.err = r.cmd.Wait()
		pw.Close()
		<-scanned
		close(r.done)
	}()
	return r, nil
}

// Reply writes a line to node's standard input.
func (r *Run) Reply(line string) error {
	_, err := io.WriteString(r.stdin, line+"\n")
	return err
}

// Wait waits for node to exit; the error names its exit status.
func (r *Run) Wait() error {
	<-r.done
	return r.err
}

// Output is everything node printed so far.
func (r *Run) Output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.out.String()
}
