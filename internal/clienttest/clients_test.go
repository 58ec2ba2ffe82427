package clienttest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/pullwake/pullwake/internal/nodetest"
	"github.com/pullwake/pullwake/internal/testdb"
)

// nodeTimeout bounds one Node script; each of its waits is bounded far
// lower (15 s), so this only stops a script that hangs.
const nodeTimeout = 2 * time.Minute

func adminToken(t testing.TB) string {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(b)
}

// runNode runs script of project against srv (nil: none) and fails t with
// node's whole output when it fails. A line "@@restart" from node restarts
// the server; node is told "restarted" once it serves again.
func runNode(t *testing.T, project nodetest.Project, script string, srv *server, env ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), nodeTimeout)
	defer cancel()
	restarts := make(chan *nodetest.Run)
	if srv != nil {
		env = append(env, "PULLWAKE_URL="+srv.URL(), "PULLWAKE_ADMIN_TOKEN="+srv.admin)
	}
	run, err := project.Start(ctx, script, env, func(r *nodetest.Run, line string) {
		if strings.TrimSpace(line) == "@@restart" {
			select {
			case restarts <- r:
			case <-ctx.Done():
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- run.Wait() }()
	for {
		select {
		case r := <-restarts:
			if srv == nil {
				t.Fatalf("node %s asked for a restart with no server\nnode output:\n%s", script, run.Output())
			}
			srv.restart()
			if err := r.Reply("restarted"); err != nil {
				t.Fatalf("tell node the server restarted: %v\nnode output:\n%s", err, run.Output())
			}
		case err := <-exited:
			if err != nil {
				t.Fatalf("node %s: %v (timeout %s)\nnode output:\n%s", script, err, nodeTimeout, run.Output())
			}
			t.Logf("node %s:\n%s", script, run.Output())
			return run.Output()
		}
	}
}

// TestShapeClient: Electric's client follows every shape pullwake serves
// (both paths, long-poll and SSE, where/params and columns) while REST
// changes rows, and its rows match REST after each change, after deletes,
// and after the must-refetch a server restart forces.
func TestShapeClient(t *testing.T) {
	t.Parallel()
	project := nodetest.Prepare(t, "shapeclient")
	d := logicalDB(t)
	srv := startServer(t, d.URL, adminToken(t))
	runNode(t, project, "test.mjs", srv)
}

// TestAwaitTxID: Electric's agents UI waits after each action until its
// entities collection (@tanstack/electric-db-collection) has seen the
// answer's txid; the same packages and options resolve awaitTxId after a
// spawn, a rename and a kill, each with the change in the collection.
func TestAwaitTxID(t *testing.T) {
	t.Parallel()
	project := nodetest.Prepare(t, "shapeclient")
	d := logicalDB(t)
	srv := startServer(t, d.URL, adminToken(t))
	runNode(t, project, "txid.mjs", srv)
}

// TestStatusPageBrowser: the status page in headless Chromium asks for the
// admin token, shows the fleet, flags a claim whose lease passed, and
// shows an entity's status change (a message sent: its wake queued; then
// claimed, then done) without a reload.
// PULLWAKE_UPDATE_SCREENSHOT=1 also writes the page's picture to
// docs/img/status-page.png.
func TestStatusPageBrowser(t *testing.T) {
	t.Parallel()
	project := nodetest.Prepare(t, "statuspage")
	chromium := findChromium(t)
	d := logicalDB(t)
	// No expiry sweep during the test: a claim whose lease passed stays
	// active, for the page to flag.
	srv := startServer(t, d.URL, adminToken(t), "PULLWAKE_SWEEP_INTERVAL=1h")
	shot := filepath.Join(t.TempDir(), "status-page.png")
	runNode(t, project, "test.mjs", srv, "CHROMIUM="+chromium, "SCREENSHOT="+shot)
	if _, err := os.Stat(shot); err != nil {
		t.Fatalf("no screenshot: %v", err)
	}
	if os.Getenv("PULLWAKE_UPDATE_SCREENSHOT") == "1" {
		root, _ := testdb.RepoRoot()
		data, err := os.ReadFile(shot)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(root, "docs", "img", "status-page.png"), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestShapeFollower: the status page's own shape follower
// (server/statuspage/static/shape.js) against scripted protocol answers,
// with node's test runner: chunks, live, merged updates, deletes, 409 and
// must-refetch, 401 then a token, an unserved table.
func TestShapeFollower(t *testing.T) {
	t.Parallel()
	project := nodetest.Prepare(t, "statuspage")
	runNode(t, project, "follower.test.mjs", nil)
}

// findChromium returns Debian's Chromium, installed by scripts/chromium.sh
// when missing.
func findChromium(t testing.TB) string {
	t.Helper()
	root, err := testdb.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(root, "scripts", "chromium.sh")).Output()
	if err != nil {
		msg := ""
		if ee, ok := err.(*exec.ExitError); ok {
			msg = string(ee.Stderr)
		}
		t.Fatalf("scripts/chromium.sh: %v\n%s", err, msg)
	}
	return strings.TrimSpace(string(out))
}

// logicalDB is a fresh migrated database on a server with wal_level=logical
// (the private cluster internal/testdb starts for logical decoding).
func logicalDB(t testing.TB) *testdb.DB {
	t.Helper()
	return testdb.NewLogical(t)
}
