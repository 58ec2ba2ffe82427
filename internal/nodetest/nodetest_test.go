package nodetest

import (
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Without node, npm and apt-get on PATH the tools check fails, saying what
// to install: a Node test never skips silently.
func TestMissingNodeFailsClearly(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	err := ensureTools()
	if err == nil || !strings.Contains(err.Error(), "install Node.js") {
		t.Fatalf("ensureTools with an empty PATH: %v", err)
	}
}

// npm ci runs only when node_modules was not installed from the lockfile
// as it is: with the stamp matching, nothing runs (PATH has no npm); with
// a changed lockfile, npm ci is attempted.
func TestInstallOnlyWhenTheLockfileChanged(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	dir := t.TempDir()
	lock := []byte(`{"lockfileVersion": 3}`)
	if err := os.WriteFile(filepath.Join(dir, "package-lock.json"), lock, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "node_modules"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(lock)
	if err := os.WriteFile(filepath.Join(dir, "node_modules", stampName), []byte(hex.EncodeToString(sum[:])+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p := Project{Dir: dir}
	if err := p.install(); err != nil {
		t.Fatalf("install with a matching stamp ran something: %v", err)
	}
	if err := os.WriteFile(filepath.Join(dir, "package-lock.json"), []byte(`{"lockfileVersion": 3, "x": 1}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := p.install(); err == nil || !strings.Contains(err.Error(), "npm ci") {
		t.Fatalf("install after the lockfile changed: %v", err)
	}
}
