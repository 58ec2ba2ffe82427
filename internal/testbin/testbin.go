// Package testbin builds the pullwake binary once per test process, for
// tests that run it as a real process (CLI tests, kills, restarts).
package testbin

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/pullwake/pullwake/internal/testdb"
)

// Version is the version stamped into the test binary, the way make build
// stamps git describe.
const Version = "v0.0.0-test"

var (
	once sync.Once
	path string
	dir  string
	err  error
)

// Pullwake returns the path of a freshly built ./cmd/pullwake, stamped with Version.
func Pullwake(t testing.TB) string {
	t.Helper()
	once.Do(func() {
		var root string
		if root, err = testdb.RepoRoot(); err != nil {
			return
		}
		if dir, err = os.MkdirTemp("", "pullwake-bin-"); err != nil {
			return
		}
		path = filepath.Join(dir, "pullwake")
		cmd := exec.Command("go", "build", "-ldflags", "-X main.version="+Version, "-o", path, "./cmd/pullwake")
		cmd.Dir = root
		if out, berr := cmd.CombinedOutput(); berr != nil {
			err = fmt.Errorf("go build: %v\n%s", berr, out)
		}
	})
	if err != nil {
		t.Fatalf("build pullwake: %v", err)
	}
	return path
}

// Cleanup removes the built binary; call it from TestMain after m.Run.
func Cleanup() {
	if dir != "" {
		os.RemoveAll(dir)
	}
}
